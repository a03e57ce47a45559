package api

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Error types, in OpenAI's words. OpenAI puts every client error under
// "invalid_request_error"; the HTTP status tells them apart.
const (
	// TypeInvalidRequest is the type of every 4xx error caused by the request.
	TypeInvalidRequest = "invalid_request_error"
	// TypeServer is the type of errors that are the server's fault (5xx).
	TypeServer = "server_error"
)

// Error codes used in the error object's "code" field.
const (
	// CodeModelNotFound: the request names a model this server does not serve.
	CodeModelNotFound = "model_not_found"
	// CodeInvalidAPIKey: the Authorization header is missing or wrong.
	CodeInvalidAPIKey = "invalid_api_key"
	// CodeContextLengthExceeded: prompt plus completion do not fit the context.
	CodeContextLengthExceeded = "context_length_exceeded"
	// CodeUnsupported: the request uses a feature this server does not have.
	CodeUnsupported = "unsupported_parameter"
	// CodeKVTransferFailed: a generation worker could not get the context
	// worker's KV (unreachable, too slow, expired, corrupt). The generation
	// worker is fine: the proxy re-runs the prefill elsewhere.
	CodeKVTransferFailed = "kv_transfer_failed"
)

// Error is the OpenAI error object, the value of "error" in an error body:
//
//	{"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
//
// Status is the HTTP status to answer with; it is not serialized.
type Error struct {
	// Message says what is wrong, for a human.
	Message string `json:"message"`
	// Type is TypeInvalidRequest or TypeServer.
	Type string `json:"type"`
	// Param names the offending request field, or is null.
	Param *string `json:"param"`
	// Code is a machine-readable code, or null.
	Code *string `json:"code"`
	// Status is the HTTP status code that goes with the error.
	Status int `json:"-"`
}

// Error implements the error interface.
func (e *Error) Error() string {
	if e.Param != nil {
		return fmt.Sprintf("%s (param %s): %s", e.Type, *e.Param, e.Message)
	}
	return e.Type + ": " + e.Message
}

// ErrorResponse is the body of an error answer: {"error": {...}}.
type ErrorResponse struct {
	// Error is the error object.
	Error *Error `json:"error"`
}

// WithCode returns a copy of e with its code set.
func (e *Error) WithCode(code string) *Error {
	c := *e
	c.Code = &code
	return &c
}

// NewError builds an error with the given status, type, param ("" for none)
// and message.
func NewError(status int, typ, param, message string) *Error {
	e := &Error{Message: message, Type: typ, Status: status}
	if param != "" {
		e.Param = &param
	}
	return e
}

// InvalidRequest is a 400 error about the request field param ("" for none).
func InvalidRequest(param, format string, args ...any) *Error {
	return NewError(http.StatusBadRequest, TypeInvalidRequest, param, fmt.Sprintf(format, args...))
}

// ModelNotFound is the 404 answer to a request for a model not served here.
func ModelNotFound(model string) *Error {
	return NewError(http.StatusNotFound, TypeInvalidRequest, "model",
		fmt.Sprintf("The model `%s` does not exist.", model)).WithCode(CodeModelNotFound)
}

// Unauthorized is the 401 answer to a missing or wrong API key.
func Unauthorized() *Error {
	return NewError(http.StatusUnauthorized, TypeInvalidRequest, "",
		"Incorrect or missing API key: send it as `Authorization: Bearer <key>`.").WithCode(CodeInvalidAPIKey)
}

// NotFound is the 404 answer to an unknown path.
func NotFound(method, path string) *Error {
	return NewError(http.StatusNotFound, TypeInvalidRequest, "",
		fmt.Sprintf("Unknown request URL: %s %s.", method, path))
}

// MethodNotAllowed is the 405 answer to a known path with the wrong method.
func MethodNotAllowed(method, path string) *Error {
	return NewError(http.StatusMethodNotAllowed, TypeInvalidRequest, "",
		fmt.Sprintf("Method %s is not allowed on %s.", method, path))
}

// BodyTooLarge is the 413 answer to a body over limit bytes.
func BodyTooLarge(limit int64) *Error {
	return NewError(http.StatusRequestEntityTooLarge, TypeInvalidRequest, "",
		fmt.Sprintf("Request body is larger than the limit of %d bytes.", limit))
}

// Internal is a 500 error; message should not leak internals the client
// cannot act on.
func Internal(format string, args ...any) *Error {
	return NewError(http.StatusInternalServerError, TypeServer, "", fmt.Sprintf(format, args...))
}

// Unavailable is a 503 error (server not ready, or out of capacity).
func Unavailable(format string, args ...any) *Error {
	return NewError(http.StatusServiceUnavailable, TypeServer, "", fmt.Sprintf(format, args...))
}

// WriteError writes e as an OpenAI error body with e.Status (500 when unset).
// It returns the error from writing the body.
func WriteError(w http.ResponseWriter, e *Error) error {
	status := e.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	body, err := json.Marshal(ErrorResponse{Error: e})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(body, '\n'))
	return err
}
