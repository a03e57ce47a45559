package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"unicode"
	"unicode/utf8"
)

// FieldError is a decoding error about one request field; the decoder turns
// it into a 400 Error whose param is Param.
type FieldError struct {
	// Param is the field's name in the request, e.g. "prompt".
	Param string
	// Message says what is wrong with it.
	Message string
}

// Error implements the error interface.
func (e *FieldError) Error() string { return e.Param + ": " + e.Message }

// ReadBody reads at most limit bytes of r. A longer body is a 413 error. A
// reader already limited by http.MaxBytesReader reports its own limit the
// same way.
func ReadBody(r io.Reader, limit int64) ([]byte, *Error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, BodyTooLarge(tooBig.Limit)
	case err != nil:
		return nil, InvalidRequest("", "Could not read the request body: %v.", err)
	case int64(len(data)) > limit:
		return nil, BodyTooLarge(limit)
	}
	return data, nil
}

// DecodeJSON decodes body into v, the pointer to a request struct. The body
// must be valid UTF-8 and one JSON object; unknown fields are ignored, as
// OpenAI and vLLM do. Any failure is a 400 Error naming the field when one is
// to blame.
func DecodeJSON(body []byte, v any) *Error {
	if !utf8.Valid(body) {
		return InvalidRequest("", "The request body is not valid UTF-8.")
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return InvalidRequest("", "The request body is empty; expected a JSON object.")
	}
	if trimmed[0] != '{' {
		return InvalidRequest("", "The request body must be a JSON object.")
	}
	err := json.Unmarshal(trimmed, v)
	if err == nil {
		return nil
	}
	var (
		fieldErr  *FieldError
		typeErr   *json.UnmarshalTypeError
		syntaxErr *json.SyntaxError
	)
	switch {
	case errors.As(err, &fieldErr):
		return InvalidRequest(fieldErr.Param, "Invalid value for '%s': %s", fieldErr.Param, fieldErr.Message)
	case errors.As(err, &typeErr):
		field := jsonPath(typeErr.Field)
		if field == "" {
			return InvalidRequest("", "The request body must be a JSON object.")
		}
		return InvalidRequest(field, "Invalid type for '%s': expected %s, got %s.",
			field, jsonKind(typeErr.Type), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return InvalidRequest("", "Malformed JSON in the request body at byte %d: %v.", syntaxErr.Offset, syntaxErr)
	}
	return InvalidRequest("", "Malformed JSON in the request body: %v.", err)
}

// jsonPath drops the names of embedded Go structs (capitalized) from a
// decoder's field path, leaving the JSON names.
func jsonPath(field string) string {
	parts := strings.Split(field, ".")
	kept := parts[:0]
	for _, p := range parts {
		if p != "" && !unicode.IsUpper(rune(p[0])) {
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, ".")
}

// jsonKind names a Go type the way a JSON user would.
func jsonKind(t reflect.Type) string {
	if t == nil {
		return "a different type"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return fmt.Sprintf("a %s", t.Kind())
}
