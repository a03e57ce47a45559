package chat

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

type filterFunc func(st *state, v value, args []value, kwargs []kwarg) (value, error)

var filters map[string]filterFunc

func init() {
	filters = map[string]filterFunc{
		"trim":       filterTrim,
		"length":     filterLength,
		"count":      filterLength,
		"upper":      strFilter(strings.ToUpper),
		"lower":      strFilter(strings.ToLower),
		"capitalize": strFilter(pyCapitalize),
		"title":      strFilter(jinjaTitle),
		"default":    filterDefault,
		"d":          filterDefault,
		"join":       filterJoin,
		"tojson":     filterToJSON,
		"first":      filterFirst,
		"last":       filterLast,
		"items":      filterItems,
		"list":       filterList,
		"string":     func(_ *state, v value, _ []value, _ []kwarg) (value, error) { return str(v), nil },
		"int":        filterInt,
		"float":      filterFloat,
		"replace":    filterReplace,
		"selectattr": selectFilter(true, false),
		"rejectattr": selectFilter(true, true),
		"select":     selectFilter(false, false),
		"reject":     selectFilter(false, true),
		"map":        filterMap,
		"safe":       func(_ *state, v value, _ []value, _ []kwarg) (value, error) { return v, nil },
		"abs":        filterAbs,
		"round":      filterRound,
		"sum":        filterSum,
		"min":        minMaxFilter(-1),
		"max":        minMaxFilter(1),
		"unique":     filterUnique,
		"reverse":    filterReverse,
		"sort":       filterSort,
		"dictsort":   filterDictsort,
		"indent":     filterIndent,
		"wordcount":  filterWordcount,
		"center":     filterCenter,
		"attr":       filterAttr,
		"escape":     filterEscape,
		"e":          filterEscape,
		"format":     filterFormat,
	}
}

func (st *state) applyFilter(f *filterExpr, v value, sc *scope) (value, error) {
	fn, ok := filters[f.name]
	if !ok {
		return nil, &RenderError{Pos: f.pos, Msg: fmt.Sprintf("no filter named '%s'", f.name)}
	}
	args, kwargs, err := st.evalArgs(f.args, f.kwargs, sc)
	if err != nil {
		return nil, err
	}
	if err := st.charge(v, f.pos); err != nil {
		return nil, err
	}
	out, err := fn(st, v, args, kwargs)
	if err != nil {
		return nil, wrap(fmt.Errorf("filter %s: %w", f.name, err), f.pos)
	}
	if s, ok := out.(string); ok {
		if err := st.checkSize(len(s)); err != nil {
			return nil, wrap(err, f.pos)
		}
	}
	return out, st.charge(out, f.pos)
}

func strFilter(fn func(string) string) filterFunc {
	return func(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
		if len(args) > 0 || len(kwargs) > 0 {
			return nil, fmt.Errorf("takes no arguments")
		}
		return fn(str(v)), nil
	}
}

var wordBeginning = regexp.MustCompile(`[-\s({\[<]+`)

// jinjaTitle is Jinja's title filter: upper-case the first letter of each
// word, where words begin after spaces, dashes and opening brackets.
func jinjaTitle(s string) string {
	var b strings.Builder
	last := 0
	for _, loc := range wordBeginning.FindAllStringIndex(s, -1) {
		b.WriteString(capWord(s[last:loc[0]]))
		b.WriteString(s[loc[0]:loc[1]])
		last = loc[1]
	}
	b.WriteString(capWord(s[last:]))
	return b.String()
}

func capWord(w string) string {
	if w == "" {
		return w
	}
	rs := []rune(w)
	return string(unicode.ToUpper(rs[0])) + strings.ToLower(string(rs[1:]))
}

func filterTrim(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("trim", args, kwargs, "chars"); err != nil {
		return nil, err
	}
	fn, err := stripFunc(argAt(args, kwargs, 0, "chars", nil))
	if err != nil {
		return nil, err
	}
	return strings.TrimFunc(str(v), fn), nil
}

func filterLength(_ *state, v value, _ []value, _ []kwarg) (value, error) {
	return length(v)
}

func filterDefault(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("default", args, kwargs, "default_value", "boolean"); err != nil {
		return nil, err
	}
	def := argAt(args, kwargs, 0, "default_value", "")
	boolean := truthy(argAt(args, kwargs, 1, "boolean", false))
	if _, ok := v.(undefined); ok || boolean && !truthy(v) {
		return def, nil
	}
	return v, nil
}

// attrGetter resolves a dotted attribute path like Jinja's make_attrgetter.
func attrGetter(path value) (func(value) (value, error), error) {
	if path == nil {
		return func(v value) (value, error) { return v, nil }, nil
	}
	if n, ok := path.(int); ok {
		return func(v value) (value, error) { return getItem(v, n) }, nil
	}
	s, ok := path.(string)
	if !ok {
		return nil, fmt.Errorf("attribute must be a string, not %s", typeName(path))
	}
	parts := strings.Split(s, ".")
	return func(v value) (value, error) {
		for _, p := range parts {
			var key value = p
			if n, err := strconv.Atoi(p); err == nil {
				key = n
			}
			var err error
			if v, err = getItem(v, key); err != nil {
				return nil, err
			}
		}
		return v, nil
	}, nil
}

func filterJoin(st *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("join", args, kwargs, "d", "attribute"); err != nil {
		return nil, err
	}
	sep := str(argAt(args, kwargs, 0, "d", ""))
	get, err := attrGetter(argAt(args, kwargs, 1, "attribute", nil))
	if err != nil {
		return nil, err
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	parts := make([]string, len(items))
	total := 0
	for i, it := range items {
		x, err := get(it)
		if err != nil {
			return nil, err
		}
		parts[i] = str(x)
		total += len(parts[i]) + len(sep)
		if total > st.limits.MaxOutput {
			return nil, st.checkSize(total)
		}
	}
	return strings.Join(parts, sep), nil
}

func filterToJSON(st *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("tojson", args, kwargs, "ensure_ascii", "indent", "separators", "sort_keys"); err != nil {
		return nil, err
	}
	o := jsonOpts{ensureASCII: truthy(argAt(args, kwargs, 0, "ensure_ascii", false)), sortKeys: truthy(argAt(args, kwargs, 3, "sort_keys", false))}
	o.itemSep, o.keySep = ", ", ": "
	switch ind := argAt(args, kwargs, 1, "indent", nil).(type) {
	case nil:
	case int:
		o.indent = strings.Repeat(" ", max(0, min(ind, 64)))
		o.indented = true
	case string:
		if len(ind) > 64 {
			return nil, fmt.Errorf("indent string longer than 64 bytes")
		}
		o.indent = ind
		o.indented = true
	default:
		return nil, fmt.Errorf("indent must be an int or a string, not %s", typeName(ind))
	}
	if o.indented {
		o.itemSep = ","
	}
	if sep := argAt(args, kwargs, 2, "separators", nil); sep != nil {
		items, err := iterate(sep)
		if err != nil || len(items) != 2 {
			return nil, fmt.Errorf("separators must be a pair of strings")
		}
		a, ok1 := items[0].(string)
		b, ok2 := items[1].(string)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("separators must be a pair of strings")
		}
		o.itemSep, o.keySep = a, b
	}
	var b strings.Builder
	if err := writeJSON(&b, v, o, 0, st.limits.MaxOutput); err != nil {
		return nil, err
	}
	return b.String(), nil
}

func filterFirst(_ *state, v value, _ []value, _ []kwarg) (value, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return undefined{hint: "No first item, sequence was empty."}, nil
	}
	return items[0], nil
}

func filterLast(_ *state, v value, _ []value, _ []kwarg) (value, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return undefined{hint: "No last item, sequence was empty."}, nil
	}
	return items[len(items)-1], nil
}

func filterItems(_ *state, v value, _ []value, _ []kwarg) (value, error) {
	switch x := v.(type) {
	case undefined:
		return []any{}, nil
	case *dict:
		return dictItems(x), nil
	}
	return nil, fmt.Errorf("can only get item pairs from a mapping")
}

func filterList(_ *state, v value, _ []value, _ []kwarg) (value, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	return append([]any{}, items...), nil
}

func parsePyInt(s string, base int) (int, bool) {
	s = strings.TrimFunc(s, isPySpace)
	s = strings.ReplaceAll(s, "_", "")
	n, err := strconv.ParseInt(s, base, 64)
	return int(n), err == nil
}

func filterInt(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("int", args, kwargs, "default", "base"); err != nil {
		return nil, err
	}
	def := argAt(args, kwargs, 0, "default", 0)
	if _, ok := v.(undefined); ok {
		return nil, undefinedErr(v)
	}
	base, ok := asInt(argAt(args, kwargs, 1, "base", 10))
	if !ok || base < 2 || base > 36 {
		base = 10
	}
	switch x := v.(type) {
	case int:
		return x, nil
	case bool:
		n, _ := asInt(x)
		return n, nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) || math.Abs(x) >= 1<<63 {
			return def, nil
		}
		return int(x), nil
	case string:
		if n, ok := parsePyInt(x, base); ok {
			return n, nil
		}
		if f, err := strconv.ParseFloat(strings.TrimFunc(x, isPySpace), 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) && math.Abs(f) < 1<<63 {
			return int(f), nil
		}
	}
	return def, nil
}

func filterFloat(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("float", args, kwargs, "default"); err != nil {
		return nil, err
	}
	def := argAt(args, kwargs, 0, "default", 0.0)
	if _, ok := v.(undefined); ok {
		return nil, undefinedErr(v)
	}
	if f, ok := toFloat(v); ok {
		return f, nil
	}
	if s, ok := v.(string); ok {
		if f, err := strconv.ParseFloat(strings.TrimFunc(s, isPySpace), 64); err == nil {
			return f, nil
		}
	}
	return def, nil
}

func filterReplace(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("replace", args, kwargs, "old", "new", "count"); err != nil {
		return nil, err
	}
	old := str(argAt(args, kwargs, 0, "old", ""))
	nw := str(argAt(args, kwargs, 1, "new", ""))
	n := -1
	if c := argAt(args, kwargs, 2, "count", nil); c != nil {
		k, ok := asInt(c)
		if !ok {
			return nil, fmt.Errorf("count must be an integer")
		}
		n = k
	}
	return replaceBounded(str(v), old, nw, n)
}

func selectFilter(byAttr, reject bool) filterFunc {
	return func(st *state, v value, args []value, kwargs []kwarg) (value, error) {
		if !truthy(v) {
			// Jinja's select family yields nothing for a falsy input.
			return []any{}, nil
		}
		items, err := iterate(v)
		if err != nil {
			return nil, err
		}
		get := func(x value) (value, error) { return x, nil }
		if byAttr {
			if len(args) == 0 {
				return nil, fmt.Errorf("missing attribute argument")
			}
			if get, err = attrGetter(args[0]); err != nil {
				return nil, err
			}
			args = args[1:]
		}
		var test testFunc
		var targs []value
		if len(args) > 0 {
			name, ok := args[0].(string)
			if !ok {
				return nil, fmt.Errorf("test name must be a string")
			}
			if test, ok = tests[name]; !ok {
				return nil, fmt.Errorf("no test named '%s'", name)
			}
			targs = args[1:]
		}
		out := []any{}
		for _, it := range items {
			if err := st.checkSteps(); err != nil {
				return nil, err
			}
			x, err := get(it)
			if err != nil {
				return nil, err
			}
			var ok bool
			if test == nil {
				ok = truthy(x)
			} else if ok, err = test(x, targs); err != nil {
				return nil, err
			}
			if ok != reject {
				out = append(out, it)
			}
		}
		return out, nil
	}
}

func filterMap(st *state, v value, args []value, kwargs []kwarg) (value, error) {
	if !truthy(v) {
		// Jinja's map yields nothing for a falsy input.
		return []any{}, nil
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	out := make([]any, 0, len(items))
	if len(args) == 0 {
		attr := argAt(nil, kwargs, 0, "attribute", nil)
		if attr == nil {
			return nil, fmt.Errorf("map requires a filter name or attribute=")
		}
		get, err := attrGetter(attr)
		if err != nil {
			return nil, err
		}
		def, hasDef := value(nil), false
		for _, k := range kwargs {
			if k.name == "default" {
				def, hasDef = k.val, true
			}
		}
		for _, it := range items {
			x, err := get(it)
			if err != nil {
				return nil, err
			}
			if _, ok := x.(undefined); ok && hasDef {
				x = def
			}
			out = append(out, x)
		}
		return out, nil
	}
	name, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("filter name must be a string")
	}
	fn, ok := filters[name]
	if !ok {
		return nil, fmt.Errorf("no filter named '%s'", name)
	}
	for _, it := range items {
		if err := st.checkSteps(); err != nil {
			return nil, err
		}
		x, err := fn(st, it, args[1:], kwargs)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

func filterAbs(_ *state, v value, _ []value, _ []kwarg) (value, error) {
	switch x := v.(type) {
	case int:
		if x < 0 {
			return -x, nil
		}
		return x, nil
	case bool:
		n, _ := asInt(x)
		return n, nil
	case float64:
		return math.Abs(x), nil
	}
	return nil, fmt.Errorf("bad operand type for abs(): '%s'", typeName(v))
}

func filterRound(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("round", args, kwargs, "precision", "method"); err != nil {
		return nil, err
	}
	f, ok := toFloat(v)
	if !ok {
		return nil, fmt.Errorf("round requires a number, not %s", typeName(v))
	}
	prec, ok := asInt(argAt(args, kwargs, 0, "precision", 0))
	if !ok {
		return nil, fmt.Errorf("precision must be an integer")
	}
	prec = max(-300, min(prec, 300))
	if n, isInt := asInt(v); isInt && prec >= 0 {
		// Python's round() keeps an int an int.
		return n, nil
	}
	p := math.Pow(10, float64(prec))
	switch argAt(args, kwargs, 1, "method", "common") {
	case "common":
		// Python's round(): half to even.
		return math.RoundToEven(f*p) / p, nil
	case "floor":
		return math.Floor(f*p) / p, nil
	case "ceil":
		return math.Ceil(f*p) / p, nil
	}
	return nil, fmt.Errorf("method must be common, ceil or floor")
}

func filterSum(st *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("sum", args, kwargs, "attribute", "start"); err != nil {
		return nil, err
	}
	get, err := attrGetter(argAt(args, kwargs, 0, "attribute", nil))
	if err != nil {
		return nil, err
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	total := argAt(args, kwargs, 1, "start", 0)
	for _, it := range items {
		if err := st.checkSteps(); err != nil {
			return nil, err
		}
		x, err := get(it)
		if err != nil {
			return nil, err
		}
		if total, err = st.binary("+", total, x); err != nil {
			return nil, err
		}
	}
	return total, nil
}

// sortKey lowers strings when the comparison is case-insensitive.
func sortKey(v value, caseSensitive bool) value {
	if s, ok := v.(string); ok && !caseSensitive {
		return strings.ToLower(s)
	}
	return v
}

func minMaxFilter(sign int) filterFunc {
	return func(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
		if err := checkArgs("min/max", args, kwargs, "case_sensitive", "attribute"); err != nil {
			return nil, err
		}
		cs := truthy(argAt(args, kwargs, 0, "case_sensitive", false))
		get, err := attrGetter(argAt(args, kwargs, 1, "attribute", nil))
		if err != nil {
			return nil, err
		}
		items, err := iterate(v)
		if err != nil {
			return nil, err
		}
		if len(items) == 0 {
			return undefined{hint: "no items in sequence"}, nil
		}
		best := items[0]
		bk, err := get(best)
		if err != nil {
			return nil, err
		}
		for _, it := range items[1:] {
			k, err := get(it)
			if err != nil {
				return nil, err
			}
			c, err := compare(sortKey(k, cs), sortKey(bk, cs))
			if err != nil {
				return nil, err
			}
			if c*sign > 0 {
				best, bk = it, k
			}
		}
		return best, nil
	}
}

func filterUnique(st *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("unique", args, kwargs, "case_sensitive", "attribute"); err != nil {
		return nil, err
	}
	cs := truthy(argAt(args, kwargs, 0, "case_sensitive", false))
	get, err := attrGetter(argAt(args, kwargs, 1, "attribute", nil))
	if err != nil {
		return nil, err
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	out := []any{}
	seen := map[value]bool{}
	var unhashable []value
outer:
	for _, it := range items {
		k, err := get(it)
		if err != nil {
			return nil, err
		}
		k = sortKey(k, cs)
		if nk, ok := normKey(k); ok {
			if seen[nk] {
				continue
			}
			seen[nk] = true
			out = append(out, it)
			continue
		}
		st.steps += len(unhashable)
		if err := st.checkSteps(); err != nil {
			return nil, err
		}
		for _, u := range unhashable {
			if equal(u, k) {
				continue outer
			}
		}
		unhashable = append(unhashable, k)
		out = append(out, it)
	}
	return out, nil
}

func filterReverse(_ *state, v value, _ []value, _ []kwarg) (value, error) {
	if s, ok := v.(string); ok {
		rs := []rune(s)
		for i, j := 0, len(rs)-1; i < j; i, j = i+1, j-1 {
			rs[i], rs[j] = rs[j], rs[i]
		}
		return string(rs), nil
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	out := make([]any, len(items))
	for i, it := range items {
		out[len(items)-1-i] = it
	}
	return out, nil
}

func sortValues(items []any, key func(value) (value, error), reverse bool) ([]any, error) {
	out := append([]any{}, items...)
	keys := make([]value, len(out))
	for i, it := range out {
		k, err := key(it)
		if err != nil {
			return nil, err
		}
		keys[i] = k
	}
	idx := make([]int, len(out))
	for i := range idx {
		idx[i] = i
	}
	var cmpErr error
	sort.SliceStable(idx, func(a, b int) bool {
		c, err := compare(keys[idx[a]], keys[idx[b]])
		if err != nil {
			cmpErr = err
		}
		if reverse {
			return c > 0
		}
		return c < 0
	})
	if cmpErr != nil {
		return nil, cmpErr
	}
	res := make([]any, len(out))
	for i, j := range idx {
		res[i] = out[j]
	}
	return res, nil
}

func filterSort(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("sort", args, kwargs, "reverse", "case_sensitive", "attribute"); err != nil {
		return nil, err
	}
	rev := truthy(argAt(args, kwargs, 0, "reverse", false))
	cs := truthy(argAt(args, kwargs, 1, "case_sensitive", false))
	get, err := attrGetter(argAt(args, kwargs, 2, "attribute", nil))
	if err != nil {
		return nil, err
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	return sortValues(items, func(x value) (value, error) {
		k, err := get(x)
		return sortKey(k, cs), err
	}, rev)
}

func filterDictsort(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("dictsort", args, kwargs, "case_sensitive", "by", "reverse"); err != nil {
		return nil, err
	}
	d, ok := v.(*dict)
	if !ok {
		return nil, fmt.Errorf("dictsort requires a mapping")
	}
	cs := truthy(argAt(args, kwargs, 0, "case_sensitive", false))
	pos := 0
	switch argAt(args, kwargs, 1, "by", "key") {
	case "key":
	case "value":
		pos = 1
	default:
		return nil, fmt.Errorf("you can only sort by either 'key' or 'value'")
	}
	rev := truthy(argAt(args, kwargs, 2, "reverse", false))
	return sortValues(dictItems(d), func(x value) (value, error) {
		return sortKey(x.(tuple)[pos], cs), nil
	}, rev)
}

func filterIndent(st *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("indent", args, kwargs, "width", "first", "blank"); err != nil {
		return nil, err
	}
	var ind string
	switch w := argAt(args, kwargs, 0, "width", 4).(type) {
	case string:
		ind = w
	default:
		n, ok := asInt(w)
		if !ok {
			return nil, fmt.Errorf("width must be an integer or a string")
		}
		ind = strings.Repeat(" ", max(0, min(n, 256)))
	}
	first := truthy(argAt(args, kwargs, 1, "first", false))
	blank := truthy(argAt(args, kwargs, 2, "blank", false))
	sv, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("indent needs a string, not %s", typeName(v))
	}
	s := sv + "\n"
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if err := st.checkSize(len(s) + len(lines)*(len(ind)+1)); err != nil {
		return nil, err
	}
	var rv string
	if blank {
		rv = strings.Join(lines, "\n"+ind)
	} else {
		rv = lines[0]
		for _, l := range lines[1:] {
			rv += "\n"
			if l != "" {
				rv += ind + l
			}
		}
	}
	if first {
		rv = ind + rv
	}
	return rv, nil
}

var wordRe = regexp.MustCompile(`[\p{L}\p{N}_]+`)

func filterWordcount(st *state, v value, _ []value, _ []kwarg) (value, error) {
	s := str(v)
	st.steps += len(s) / 64
	return len(wordRe.FindAllString(s, -1)), st.checkSteps()
}

func filterCenter(_ *state, v value, args []value, kwargs []kwarg) (value, error) {
	if err := checkArgs("center", args, kwargs, "width"); err != nil {
		return nil, err
	}
	w, ok := asInt(argAt(args, kwargs, 0, "width", 80))
	if !ok {
		return nil, fmt.Errorf("width must be an integer")
	}
	s := str(v)
	n := len([]rune(s))
	if w <= n || w > 1<<16 {
		return s, nil
	}
	total := w - n
	left := total / 2
	if total%2 == 1 && w%2 == 1 {
		left++
	}
	return strings.Repeat(" ", left) + s + strings.Repeat(" ", total-left), nil
}

func filterAttr(_ *state, v value, args []value, _ []kwarg) (value, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("attr takes one argument")
	}
	name, ok := args[0].(string)
	if !ok {
		return undefined{}, nil
	}
	return getAttr(v, name)
}

func filterEscape(_ *state, v value, _ []value, _ []kwarg) (value, error) {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;")
	return r.Replace(str(v)), nil
}

func filterFormat(_ *state, v value, args []value, _ []kwarg) (value, error) {
	var a value = tuple(args)
	if len(args) == 1 {
		a = args[0]
	}
	return percentFormat(str(v), a)
}
