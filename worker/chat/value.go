package chat

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// value is a template value: nil (None), undefined, bool, int, float64,
// string, []any (list), tuple, *dict, *namespace, *loopInfo or callable.
type value = any

// undefined is a missing variable, attribute or item: falsy, renders empty,
// iterates as empty; most other uses are errors.
type undefined struct{ hint string }

// tuple is an immutable sequence; it differs from a list only in repr.
type tuple []any

// kwarg is one keyword argument of a call.
type kwarg struct {
	name string
	val  value
}

// callable is a function the template can call.
type callable func(st *state, args []value, kwargs []kwarg) (value, error)

// namespace is the mutable object returned by namespace(...).
type namespace struct{ attrs *dict }

// dict is an insertion-ordered mapping, the template's equivalent of a
// Python dict. Keys are strings, ints, floats, bools or nil.
type dict struct {
	keys []value
	vals map[value]value
}

// newDict returns an empty dict.
func newDict() *dict { return &dict{vals: map[value]value{}} }

func normKey(k value) (value, bool) {
	switch v := k.(type) {
	case nil, string, int:
		return v, true
	case bool:
		if v {
			return 1, true
		}
		return 0, true
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<62 {
			return int(v), true
		}
		return v, true
	case tuple:
		return tupleKey(reprString(v)), true
	}
	return nil, false
}

// tupleKey is the map key of a tuple, distinct from any string key.
type tupleKey string

// set stores v under key k, keeping the first insertion position.
func (d *dict) set(k, v value) {
	nk, ok := normKey(k)
	if !ok {
		nk = reprString(k)
	}
	if _, exists := d.vals[nk]; !exists {
		d.keys = append(d.keys, k)
	}
	d.vals[nk] = v
}

// get returns the value stored under k.
func (d *dict) get(k value) (value, bool) {
	nk, ok := normKey(k)
	if !ok {
		return nil, false
	}
	v, found := d.vals[nk]
	return v, found
}

// size returns the number of keys.
func (d *dict) size() int { return len(d.keys) }

// toValue converts a Go value into a template value. JSON raw messages are
// decoded preserving key order; Go maps are converted with sorted keys.
func toValue(x any) (value, error) {
	return toValueDepth(x, 0)
}

func toValueDepth(x any, depth int) (value, error) {
	if depth > 100 {
		return nil, fmt.Errorf("value nested too deeply")
	}
	switch v := x.(type) {
	case nil, bool, int, float64, string, undefined, *dict, *namespace, callable:
		return v, nil
	case int8:
		return int(v), nil
	case int16:
		return int(v), nil
	case int32:
		return int(v), nil
	case int64:
		return int(v), nil
	case uint8:
		return int(v), nil
	case uint16:
		return int(v), nil
	case uint32:
		return int(v), nil
	case uint:
		if v > math.MaxInt64 {
			return float64(v), nil
		}
		return int(v), nil
	case uint64:
		if v > math.MaxInt64 {
			return float64(v), nil
		}
		return int(v), nil
	case float32:
		return float64(v), nil
	case json.Number:
		if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return int(n), nil
		}
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return nil, fmt.Errorf("bad JSON number %q", string(v))
		}
		return f, nil
	case json.RawMessage:
		return decodeJSON(v)
	case Message:
		return v.toDict()
	case []Message:
		out := make([]any, len(v))
		for i, m := range v {
			d, err := m.toDict()
			if err != nil {
				return nil, err
			}
			out[i] = d
		}
		return out, nil
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			c, err := toValueDepth(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d := newDict()
		for _, k := range keys {
			c, err := toValueDepth(v[k], depth+1)
			if err != nil {
				return nil, err
			}
			d.set(k, c)
		}
		return d, nil
	}
	rv := reflect.ValueOf(x)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		out := make([]any, rv.Len())
		for i := range out {
			c, err := toValueDepth(rv.Index(i).Interface(), depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			break
		}
		keys := rv.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
		d := newDict()
		for _, k := range keys {
			c, err := toValueDepth(rv.MapIndex(k).Interface(), depth+1)
			if err != nil {
				return nil, err
			}
			d.set(k.String(), c)
		}
		return d, nil
	case reflect.Pointer:
		if rv.IsNil() {
			return nil, nil
		}
		return toValueDepth(rv.Elem().Interface(), depth+1)
	case reflect.String:
		return rv.String(), nil
	case reflect.Bool:
		return rv.Bool(), nil
	}
	// Anything else (structs): go through JSON, which keeps field order.
	b, err := json.Marshal(x)
	if err != nil {
		return nil, fmt.Errorf("cannot pass %T to a template: %w", x, err)
	}
	return decodeJSON(b)
}

// decodeJSON decodes JSON into template values, keeping object key order.
func decodeJSON(b []byte) (value, error) {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	v, err := decodeJSONValue(dec, 0)
	if err != nil {
		return nil, fmt.Errorf("decoding JSON: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("decoding JSON: trailing data")
	}
	return v, nil
}

func decodeJSONValue(dec *json.Decoder, depth int) (value, error) {
	if depth > 200 {
		return nil, fmt.Errorf("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '[':
			out := []any{}
			for dec.More() {
				v, err := decodeJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				out = append(out, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return out, nil
		case '{':
			d := newDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("object key is not a string")
				}
				v, err := decodeJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				d.set(k, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return d, nil
		}
		return nil, fmt.Errorf("unexpected delimiter %v", t)
	case json.Number:
		return toValue(t)
	default:
		return t, nil
	}
}

// truthy is Python's bool().
func truthy(v value) bool {
	switch x := v.(type) {
	case nil, undefined:
		return false
	case bool:
		return x
	case int:
		return x != 0
	case float64:
		return x != 0
	case string:
		return x != ""
	case []any:
		return len(x) > 0
	case tuple:
		return len(x) > 0
	case *dict:
		return x.size() > 0
	}
	return true
}

// typeName is the Python type name of v, for error messages.
func typeName(v value) string {
	switch v.(type) {
	case nil:
		return "NoneType"
	case undefined:
		return "Undefined"
	case bool:
		return "bool"
	case int:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []any:
		return "list"
	case tuple:
		return "tuple"
	case *dict:
		return "dict"
	case *namespace:
		return "Namespace"
	case *loopInfo:
		return "LoopContext"
	case callable:
		return "function"
	}
	return fmt.Sprintf("%T", v)
}

// formatFloat is Python's repr(float).
func formatFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	case math.IsNaN(f):
		return "nan"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64)
	mant, expStr, _ := strings.Cut(e, "e")
	exp, err := strconv.Atoi(expStr)
	if err != nil {
		return e
	}
	if exp < -4 || exp >= 16 {
		sign := "+"
		if exp < 0 {
			sign = "-"
			exp = -exp
		}
		return fmt.Sprintf("%se%s%02d", mant, sign, exp)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// str is Python's str() of a template value.
func str(v value) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case undefined:
		return ""
	case string:
		return x
	case bool:
		if x {
			return "True"
		}
		return "False"
	case int:
		return strconv.Itoa(x)
	case float64:
		return formatFloat(x)
	}
	return reprString(v)
}

// reprString is Python's repr() of a template value.
func reprString(v value) string {
	var b strings.Builder
	writeRepr(&b, v, 0)
	return b.String()
}

func writeRepr(b *strings.Builder, v value, depth int) {
	if depth > maxValueDepth || b.Len() > DefaultLimits.MaxOutput {
		b.WriteString("...")
		return
	}
	switch x := v.(type) {
	case string:
		b.WriteString(pyQuote(x))
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, e, depth+1)
		}
		b.WriteByte(']')
	case tuple:
		b.WriteByte('(')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, e, depth+1)
		}
		if len(x) == 1 {
			b.WriteByte(',')
		}
		b.WriteByte(')')
	case *dict:
		b.WriteByte('{')
		for i, k := range x.keys {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, k, depth+1)
			b.WriteString(": ")
			val, _ := x.get(k)
			writeRepr(b, val, depth+1)
		}
		b.WriteByte('}')
	case *namespace:
		b.WriteString("<Namespace ")
		writeRepr(b, x.attrs, depth+1)
		b.WriteByte('>')
	case undefined:
		b.WriteString("Undefined")
	case *loopInfo:
		b.WriteString("<LoopContext>")
	case callable:
		b.WriteString("<function>")
	default:
		b.WriteString(str(v))
	}
}

// pyQuote is Python's repr() of a str.
func pyQuote(s string) string {
	q := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		q = '"'
	}
	plain := strings.IndexFunc(s, func(r rune) bool {
		return r == '\'' || r == '"' || r == '\\' || !unicode.IsPrint(r)
	}) < 0
	if plain {
		return "'" + s + "'"
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == rune(q) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case unicode.IsPrint(r):
			b.WriteRune(r)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r < 0x10000:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	b.WriteByte(q)
	return b.String()
}

// maxValueDepth bounds recursion into nested values.
const maxValueDepth = 100

// equal is Python's == for template values.
func equal(a, b value) bool { return equalDepth(a, b, 0) }

func equalDepth(a, b value, depth int) bool {
	if depth > maxValueDepth {
		return false
	}
	switch x := a.(type) {
	case nil:
		return b == nil
	case undefined:
		_, ok := b.(undefined)
		return ok
	case bool, int, float64:
		fa, ok1 := toFloat(a)
		fb, ok2 := toFloat(b)
		if !ok1 || !ok2 {
			return false
		}
		ia, aInt := asInt(a)
		ib, bInt := asInt(b)
		if aInt && bInt {
			return ia == ib
		}
		return fa == fb
	case string:
		y, ok := b.(string)
		return ok && x == y
	case []any:
		y, ok := b.([]any)
		return ok && seqEqual(x, y, depth)
	case tuple:
		y, ok := b.(tuple)
		return ok && seqEqual(x, y, depth)
	case *dict:
		y, ok := b.(*dict)
		if !ok || x.size() != y.size() {
			return false
		}
		for _, k := range x.keys {
			va, _ := x.get(k)
			vb, found := y.get(k)
			if !found || !equalDepth(va, vb, depth+1) {
				return false
			}
		}
		return true
	case *namespace:
		y, ok := b.(*namespace)
		return ok && x == y
	case *loopInfo:
		y, ok := b.(*loopInfo)
		return ok && x == y
	}
	return false
}

func seqEqual(a, b []any, depth int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !equalDepth(a[i], b[i], depth+1) {
			return false
		}
	}
	return true
}

// asInt returns v as an int when it is an int or a bool.
func asInt(v value) (int, bool) {
	switch x := v.(type) {
	case int:
		return x, true
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}

// toFloat returns v as a float when it is a number or a bool.
func toFloat(v value) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	case float64:
		return x, true
	}
	return 0, false
}

func isNumber(v value) bool {
	switch v.(type) {
	case int, float64, bool:
		return true
	}
	return false
}

// compare orders a and b like Python's <, returning -1, 0 or 1.
func compare(a, b value) (int, error) { return compareDepth(a, b, 0) }

func compareDepth(a, b value, depth int) (int, error) {
	if depth > maxValueDepth {
		return 0, fmt.Errorf("values nested too deeply to compare")
	}
	if isNumber(a) && isNumber(b) {
		ia, aInt := asInt(a)
		ib, bInt := asInt(b)
		if aInt && bInt {
			return cmpOrdered(ia, ib), nil
		}
		fa, _ := toFloat(a)
		fb, _ := toFloat(b)
		return cmpOrdered(fa, fb), nil
	}
	switch x := a.(type) {
	case string:
		if y, ok := b.(string); ok {
			return strings.Compare(x, y), nil
		}
	case []any:
		if y, ok := b.([]any); ok {
			return compareSeq(x, y, depth)
		}
	case tuple:
		if y, ok := b.(tuple); ok {
			return compareSeq(x, y, depth)
		}
	}
	return 0, fmt.Errorf("'<' not supported between instances of '%s' and '%s'", typeName(a), typeName(b))
}

func cmpOrdered[T int | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func compareSeq(a, b []any, depth int) (int, error) {
	for i := 0; i < len(a) && i < len(b); i++ {
		if equalDepth(a[i], b[i], depth+1) {
			continue
		}
		return compareDepth(a[i], b[i], depth+1)
	}
	return cmpOrdered(len(a), len(b)), nil
}

// iterate returns the items a for loop visits: list/tuple elements, string
// characters, dict keys. Undefined iterates as empty.
func iterate(v value) ([]any, error) {
	switch x := v.(type) {
	case undefined:
		return nil, nil
	case []any:
		return x, nil
	case tuple:
		return x, nil
	case string:
		out := make([]any, 0, len(x))
		for _, r := range x {
			out = append(out, string(r))
		}
		return out, nil
	case *dict:
		return append([]any(nil), x.keys...), nil
	case *namespace:
		return nil, fmt.Errorf("'Namespace' object is not iterable")
	}
	return nil, fmt.Errorf("'%s' object is not iterable", typeName(v))
}

// length is Python's len().
func length(v value) (int, error) {
	switch x := v.(type) {
	case undefined:
		return 0, nil
	case string:
		return utf8.RuneCountInString(x), nil
	case []any:
		return len(x), nil
	case tuple:
		return len(x), nil
	case *dict:
		return x.size(), nil
	}
	return 0, fmt.Errorf("object of type '%s' has no len()", typeName(v))
}

// contains is Python's "needle in haystack".
func contains(haystack, needle value) (bool, error) {
	switch h := haystack.(type) {
	case string:
		n, ok := needle.(string)
		if !ok {
			return false, fmt.Errorf("'in <string>' requires string as left operand, not %s", typeName(needle))
		}
		return strings.Contains(h, n), nil
	case []any:
		for _, e := range h {
			if equal(e, needle) {
				return true, nil
			}
		}
		return false, nil
	case tuple:
		for _, e := range h {
			if equal(e, needle) {
				return true, nil
			}
		}
		return false, nil
	case *dict:
		if _, ok := needle.(undefined); ok {
			return false, nil
		}
		if _, ok := normKey(needle); !ok {
			return false, fmt.Errorf("unhashable type: '%s'", typeName(needle))
		}
		_, found := h.get(needle)
		return found, nil
	case undefined:
		return false, nil
	}
	return false, fmt.Errorf("argument of type '%s' is not iterable", typeName(haystack))
}
