package chat

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
)

// jsonOpts mirrors the json.dumps arguments transformers' tojson exposes.
type jsonOpts struct {
	ensureASCII bool
	sortKeys    bool
	indented    bool
	indent      string
	itemSep     string
	keySep      string
}

// writeJSON writes v the way Python's json.dumps does.
func writeJSON(b *strings.Builder, v value, o jsonOpts, level, limit int) error {
	if level > 100 {
		return fmt.Errorf("value nested too deeply for JSON")
	}
	if b.Len() > limit {
		return fmt.Errorf("%w: JSON output too large", ErrLimit)
	}
	newline := func(l int) {
		if o.indented {
			b.WriteByte('\n')
			for range l {
				b.WriteString(o.indent)
			}
		}
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case int:
		b.WriteString(strconv.Itoa(x))
	case float64:
		switch {
		case math.IsNaN(x):
			b.WriteString("NaN")
		case math.IsInf(x, 1):
			b.WriteString("Infinity")
		case math.IsInf(x, -1):
			b.WriteString("-Infinity")
		default:
			b.WriteString(formatFloat(x))
		}
	case string:
		writeJSONString(b, x, o.ensureASCII)
	case []any, tuple:
		items, ok := x.([]any)
		if !ok {
			items = x.(tuple)
		}
		if len(items) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, it := range items {
			if i > 0 {
				b.WriteString(o.itemSep)
			}
			newline(level + 1)
			if err := writeJSON(b, it, o, level+1, limit); err != nil {
				return err
			}
		}
		newline(level)
		b.WriteByte(']')
	case *dict:
		if x.size() == 0 {
			b.WriteString("{}")
			return nil
		}
		type kv struct {
			k string
			v value
		}
		pairs := make([]kv, 0, x.size())
		for _, k := range x.keys {
			var ks string
			switch kk := k.(type) {
			case string:
				ks = kk
			case nil:
				ks = "null"
			case bool:
				ks = "false"
				if kk {
					ks = "true"
				}
			case int, float64:
				ks = str(kk)
			default:
				return fmt.Errorf("keys must be str, int, float, bool or None, not %s", typeName(k))
			}
			val, _ := x.get(k)
			pairs = append(pairs, kv{ks, val})
		}
		if o.sortKeys {
			sort.SliceStable(pairs, func(i, j int) bool { return pairs[i].k < pairs[j].k })
		}
		b.WriteByte('{')
		for i, p := range pairs {
			if i > 0 {
				b.WriteString(o.itemSep)
			}
			newline(level + 1)
			writeJSONString(b, p.k, o.ensureASCII)
			b.WriteString(o.keySep)
			if err := writeJSON(b, p.v, o, level+1, limit); err != nil {
				return err
			}
		}
		newline(level)
		b.WriteByte('}')
	default:
		return fmt.Errorf("Object of type %s is not JSON serializable", typeName(v))
	}
	return nil
}

func writeJSONString(b *strings.Builder, s string, ascii bool) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			switch {
			case r < 0x20:
				fmt.Fprintf(b, `\u%04x`, r)
			case ascii && r > 0x7e:
				if r > 0xffff {
					r1, r2 := utf16.EncodeRune(r)
					fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
				} else {
					fmt.Fprintf(b, `\u%04x`, r)
				}
			default:
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}
