package chat

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// loopInfo is the special "loop" variable inside a for loop.
type loopInfo struct {
	items []any
	index int
}

func (l *loopInfo) attr(name string) (value, bool) {
	n := len(l.items)
	switch name {
	case "index":
		return l.index + 1, true
	case "index0":
		return l.index, true
	case "revindex":
		return n - l.index, true
	case "revindex0":
		return n - l.index - 1, true
	case "first":
		return l.index == 0, true
	case "last":
		return l.index == n-1, true
	case "length":
		return n, true
	case "depth":
		return 1, true
	case "depth0":
		return 0, true
	case "previtem":
		if l.index > 0 {
			return l.items[l.index-1], true
		}
		return undefined{hint: "there is no previous item"}, true
	case "nextitem":
		if l.index+1 < n {
			return l.items[l.index+1], true
		}
		return undefined{hint: "there is no next item"}, true
	case "cycle":
		return callable(func(_ *state, args []value, _ []kwarg) (value, error) {
			if len(args) == 0 {
				return nil, fmt.Errorf("no items for cycling given")
			}
			return args[l.index%len(args)], nil
		}), true
	}
	return nil, false
}

// argAt returns the i-th positional argument, or the keyword argument name,
// or def.
func argAt(args []value, kwargs []kwarg, i int, name string, def value) value {
	if i < len(args) {
		return args[i]
	}
	for _, k := range kwargs {
		if k.name == name {
			return k.val
		}
	}
	return def
}

func checkArgs(fname string, args []value, kwargs []kwarg, names ...string) error {
	if len(args) > len(names) {
		return fmt.Errorf("%s() takes at most %d arguments (%d given)", fname, len(names), len(args))
	}
	for _, k := range kwargs {
		found := false
		for _, n := range names {
			found = found || n == k.name
		}
		if !found {
			return fmt.Errorf("%s() got an unexpected keyword argument '%s'", fname, k.name)
		}
	}
	return nil
}

func stringArg(fname string, v value) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s() argument must be str, not %s", fname, typeName(v))
	}
	return s, nil
}

// method returns the bound method name of obj, if it has one.
func method(obj value, name string) (value, bool) {
	switch x := obj.(type) {
	case string:
		return stringMethod(x, name)
	case *dict:
		return dictMethod(x, name)
	}
	return nil, false
}

func stripFunc(chars value) (func(rune) bool, error) {
	if chars == nil {
		return isPySpace, nil
	}
	cs, ok := chars.(string)
	if !ok {
		return nil, fmt.Errorf("strip arg must be None or str")
	}
	return func(r rune) bool { return strings.ContainsRune(cs, r) }, nil
}

func stringMethod(s, name string) (value, bool) {
	var f func(args []value, kwargs []kwarg) (value, error)
	switch name {
	case "strip", "lstrip", "rstrip":
		f = func(args []value, kwargs []kwarg) (value, error) {
			if err := checkArgs(name, args, kwargs, "chars"); err != nil {
				return nil, err
			}
			fn, err := stripFunc(argAt(args, kwargs, 0, "chars", nil))
			if err != nil {
				return nil, err
			}
			switch name {
			case "strip":
				return strings.TrimFunc(s, fn), nil
			case "lstrip":
				return strings.TrimLeftFunc(s, fn), nil
			}
			return strings.TrimRightFunc(s, fn), nil
		}
	case "startswith", "endswith":
		f = func(args []value, kwargs []kwarg) (value, error) {
			if len(args) != 1 || len(kwargs) > 0 {
				return nil, fmt.Errorf("%s() takes exactly one argument", name)
			}
			var cands []any
			switch a := args[0].(type) {
			case string:
				cands = []any{a}
			case tuple:
				cands = a
			case []any:
				return nil, fmt.Errorf("%s first arg must be str or a tuple of str, not list", name)
			default:
				return nil, fmt.Errorf("%s first arg must be str or a tuple of str, not %s", name, typeName(a))
			}
			for _, c := range cands {
				cs, err := stringArg(name, c)
				if err != nil {
					return nil, err
				}
				if name == "startswith" && strings.HasPrefix(s, cs) || name == "endswith" && strings.HasSuffix(s, cs) {
					return true, nil
				}
			}
			return false, nil
		}
	case "split", "rsplit":
		f = func(args []value, kwargs []kwarg) (value, error) {
			if err := checkArgs(name, args, kwargs, "sep", "maxsplit"); err != nil {
				return nil, err
			}
			sep := argAt(args, kwargs, 0, "sep", nil)
			maxv, ok := asInt(argAt(args, kwargs, 1, "maxsplit", -1))
			if !ok {
				return nil, fmt.Errorf("maxsplit must be an integer")
			}
			return pySplit(s, sep, maxv, name == "rsplit")
		}
	case "lower":
		f = noArgs(name, func() value { return strings.ToLower(s) })
	case "upper":
		f = noArgs(name, func() value { return strings.ToUpper(s) })
	case "title":
		f = noArgs(name, func() value { return pyTitle(s) })
	case "capitalize":
		f = noArgs(name, func() value { return pyCapitalize(s) })
	case "isdigit":
		f = noArgs(name, func() value {
			return s != "" && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) }) < 0
		})
	case "isspace":
		f = noArgs(name, func() value { return s != "" && strings.TrimFunc(s, isPySpace) == "" })
	case "isalpha":
		f = noArgs(name, func() value {
			return s != "" && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsLetter(r) }) < 0
		})
	case "splitlines":
		f = noArgs(name, func() value {
			var out []any
			for _, l := range strings.SplitAfter(s, "\n") {
				if l == "" {
					continue
				}
				out = append(out, strings.TrimSuffix(strings.TrimSuffix(l, "\n"), "\r"))
			}
			if out == nil {
				out = []any{}
			}
			return out
		})
	case "replace":
		f = func(args []value, kwargs []kwarg) (value, error) {
			if len(args) < 2 || len(args) > 3 || len(kwargs) > 0 {
				return nil, fmt.Errorf("replace() takes 2 or 3 arguments")
			}
			old, err := stringArg(name, args[0])
			if err != nil {
				return nil, err
			}
			nw, err := stringArg(name, args[1])
			if err != nil {
				return nil, err
			}
			n := -1
			if len(args) == 3 {
				c, ok := asInt(args[2])
				if !ok {
					return nil, fmt.Errorf("replace() count must be an integer")
				}
				n = c
			}
			return replaceBounded(s, old, nw, n)
		}
	case "find", "count", "index", "rfind":
		f = func(args []value, kwargs []kwarg) (value, error) {
			if len(args) != 1 || len(kwargs) > 0 {
				return nil, fmt.Errorf("%s() takes exactly one argument", name)
			}
			sub, err := stringArg(name, args[0])
			if err != nil {
				return nil, err
			}
			switch name {
			case "count":
				if sub == "" {
					return len([]rune(s)) + 1, nil
				}
				return strings.Count(s, sub), nil
			case "rfind":
				i := strings.LastIndex(s, sub)
				if i < 0 {
					return -1, nil
				}
				return len([]rune(s[:i])), nil
			}
			i := strings.Index(s, sub)
			if i < 0 {
				if name == "index" {
					return nil, fmt.Errorf("substring not found")
				}
				return -1, nil
			}
			return len([]rune(s[:i])), nil
		}
	case "format":
		f = func(args []value, kwargs []kwarg) (value, error) { return strFormat(s, args, kwargs) }
	case "join":
		f = func(args []value, kwargs []kwarg) (value, error) {
			if len(args) != 1 || len(kwargs) > 0 {
				return nil, fmt.Errorf("join() takes exactly one argument")
			}
			items, err := iterate(args[0])
			if err != nil {
				return nil, err
			}
			parts := make([]string, len(items))
			total := 0
			for i, it := range items {
				p, ok := it.(string)
				if !ok {
					return nil, fmt.Errorf("sequence item %d: expected str instance, %s found", i, typeName(it))
				}
				parts[i] = p
				total += len(p) + len(s)
				if total > DefaultLimits.MaxOutput {
					return nil, fmt.Errorf("%w: join() result too large", ErrLimit)
				}
			}
			return strings.Join(parts, s), nil
		}
	default:
		return nil, false
	}
	return callable(func(_ *state, args []value, kwargs []kwarg) (value, error) { return f(args, kwargs) }), true
}

// replaceBounded is strings.Replace with a bound on the result size.
func replaceBounded(s, old, nw string, n int) (value, error) {
	cnt := strings.Count(s, old)
	if n >= 0 && n < cnt {
		cnt = n
	}
	if len(s)+cnt*(len(nw)-len(old)) > DefaultLimits.MaxOutput {
		return nil, fmt.Errorf("%w: replace() result too large", ErrLimit)
	}
	if old == "" && n < 0 {
		// Python inserts nw between every character and at both ends.
		var b strings.Builder
		b.WriteString(nw)
		for _, r := range s {
			b.WriteRune(r)
			b.WriteString(nw)
		}
		return b.String(), nil
	}
	return strings.Replace(s, old, nw, n), nil
}

func noArgs(name string, fn func() value) func([]value, []kwarg) (value, error) {
	return func(args []value, kwargs []kwarg) (value, error) {
		if len(args) > 0 || len(kwargs) > 0 {
			return nil, fmt.Errorf("%s() takes no arguments", name)
		}
		return fn(), nil
	}
}

func pySplit(s string, sep value, maxsplit int, fromRight bool) (value, error) {
	var parts []string
	if sep == nil {
		parts = splitSpace(s, maxsplit, fromRight)
	} else {
		sp, ok := sep.(string)
		if !ok {
			return nil, fmt.Errorf("must be str or None, not %s", typeName(sep))
		}
		if sp == "" {
			return nil, fmt.Errorf("empty separator")
		}
		switch {
		case maxsplit < 0 || maxsplit >= len(s):
			parts = strings.Split(s, sp)
		case !fromRight:
			parts = strings.SplitN(s, sp, maxsplit+1)
		default:
			var rev []string
			rest := s
			for i := 0; i < maxsplit; i++ {
				j := strings.LastIndex(rest, sp)
				if j < 0 {
					break
				}
				rev = append(rev, rest[j+len(sp):])
				rest = rest[:j]
			}
			parts = append(parts, rest)
			for i := len(rev) - 1; i >= 0; i-- {
				parts = append(parts, rev[i])
			}
		}
	}
	out := make([]any, len(parts))
	for i, p := range parts {
		out[i] = p
	}
	return out, nil
}

// splitSpace is Python's str.split() / str.rsplit() without a separator:
// runs of whitespace separate fields, and at most maxsplit splits are made
// (all when negative), the remainder kept whole.
func splitSpace(s string, maxsplit int, fromRight bool) []string {
	if maxsplit < 0 {
		return strings.FieldsFunc(s, isPySpace)
	}
	var parts []string
	if !fromRight {
		rest := strings.TrimLeftFunc(s, isPySpace)
		for i := 0; i < maxsplit && rest != ""; i++ {
			j := strings.IndexFunc(rest, isPySpace)
			if j < 0 {
				break
			}
			parts = append(parts, rest[:j])
			rest = strings.TrimLeftFunc(rest[j:], isPySpace)
		}
		if rest != "" {
			parts = append(parts, rest)
		}
		return parts
	}
	rest := strings.TrimRightFunc(s, isPySpace)
	var rev []string
	for i := 0; i < maxsplit && rest != ""; i++ {
		j := strings.LastIndexFunc(rest, isPySpace)
		if j < 0 {
			break
		}
		_, size := utf8.DecodeRuneInString(rest[j:])
		rev = append(rev, rest[j+size:])
		rest = strings.TrimRightFunc(rest[:j], isPySpace)
	}
	if rest != "" {
		parts = append(parts, rest)
	}
	for i := len(rev) - 1; i >= 0; i-- {
		parts = append(parts, rev[i])
	}
	return parts
}

// pyTitle is Python's str.title().
func pyTitle(s string) string {
	var b strings.Builder
	prevCased := false
	for _, r := range s {
		if prevCased {
			b.WriteRune(unicode.ToLower(r))
		} else {
			b.WriteRune(unicode.ToTitle(r))
		}
		prevCased = unicode.IsUpper(r) || unicode.IsLower(r) || unicode.IsTitle(r)
	}
	return b.String()
}

// pyCapitalize is Python's str.capitalize().
func pyCapitalize(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i == 0 {
			b.WriteRune(unicode.ToTitle(r))
		} else {
			b.WriteRune(unicode.ToLower(r))
		}
	}
	return b.String()
}

func dictMethod(d *dict, name string) (value, bool) {
	var f func(args []value, kwargs []kwarg) (value, error)
	switch name {
	case "get":
		f = func(args []value, kwargs []kwarg) (value, error) {
			if len(args) < 1 || len(args) > 2 || len(kwargs) > 0 {
				return nil, fmt.Errorf("get expected 1 or 2 arguments")
			}
			if v, ok := d.get(args[0]); ok {
				return v, nil
			}
			if len(args) == 2 {
				return args[1], nil
			}
			return nil, nil
		}
	case "items":
		f = noArgs(name, func() value { return dictItems(d) })
	case "keys":
		f = noArgs(name, func() value { return append([]any{}, d.keys...) })
	case "values":
		f = noArgs(name, func() value {
			out := make([]any, len(d.keys))
			for i, k := range d.keys {
				out[i], _ = d.get(k)
			}
			return out
		})
	default:
		return nil, false
	}
	return callable(func(_ *state, args []value, kwargs []kwarg) (value, error) { return f(args, kwargs) }), true
}

func dictItems(d *dict) []any {
	out := make([]any, len(d.keys))
	for i, k := range d.keys {
		v, _ := d.get(k)
		out[i] = tuple{k, v}
	}
	return out
}

// strFormat implements Python's str.format for plain replacement fields:
// "{}", "{0}" and "{name}", with "{{" and "}}" as literal braces. Format
// specs and conversions are not supported.
func strFormat(f string, args []value, kwargs []kwarg) (value, error) {
	var b strings.Builder
	auto := 0
	for i := 0; i < len(f); i++ {
		c := f[i]
		switch {
		case c == '{' && i+1 < len(f) && f[i+1] == '{':
			b.WriteByte('{')
			i++
		case c == '}' && i+1 < len(f) && f[i+1] == '}':
			b.WriteByte('}')
			i++
		case c == '}':
			return nil, fmt.Errorf("single '}' encountered in format string")
		case c == '{':
			j := strings.IndexByte(f[i:], '}')
			if j < 0 {
				return nil, fmt.Errorf("single '{' encountered in format string")
			}
			field := f[i+1 : i+j]
			i += j
			if strings.ContainsAny(field, ":!") {
				return nil, fmt.Errorf("format specs are not supported in %q", field)
			}
			var v value
			switch n, err := strconv.Atoi(field); {
			case field == "":
				if auto >= len(args) {
					return nil, fmt.Errorf("replacement index %d out of range", auto)
				}
				v = args[auto]
				auto++
			case err == nil:
				if n < 0 || n >= len(args) {
					return nil, fmt.Errorf("replacement index %d out of range", n)
				}
				v = args[n]
			default:
				found := false
				for _, k := range kwargs {
					if k.name == field {
						v, found = k.val, true
					}
				}
				if !found {
					return nil, fmt.Errorf("missing format argument '%s'", field)
				}
			}
			b.WriteString(str(v))
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}
