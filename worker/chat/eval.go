package chat

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// Limits bound the work one Render may do, so that a hostile template cannot
// hang or exhaust the server.
type Limits struct {
	// MaxSteps bounds statements executed, loop iterations and calls made.
	MaxSteps int
	// MaxOutput bounds the bytes of output and of any single string or list built.
	MaxOutput int
	// MaxCallDepth bounds nested macro calls.
	MaxCallDepth int
}

// DefaultLimits are the limits Render uses.
var DefaultLimits = Limits{MaxSteps: 2_000_000, MaxOutput: 4 << 20, MaxCallDepth: 64}

var (
	errBreak    = errors.New("break")
	errContinue = errors.New("continue")
)

type scope struct {
	vars   map[string]value
	parent *scope
}

func newScope(parent *scope) *scope { return &scope{vars: map[string]value{}, parent: parent} }

func (s *scope) lookup(name string) (value, bool) {
	for c := s; c != nil; c = c.parent {
		if v, ok := c.vars[name]; ok {
			return v, true
		}
	}
	return nil, false
}

type state struct {
	out     *strings.Builder
	written int
	steps   int
	depth   int
	edepth  int
	limits  Limits
}

func (st *state) step(pos Pos) error {
	st.steps++
	if st.steps > st.limits.MaxSteps {
		return &RenderError{Pos: pos, Msg: fmt.Sprintf("template exceeded %d execution steps", st.limits.MaxSteps), Err: ErrLimit}
	}
	return nil
}

// checkSteps is step without a position: the caller's wrap adds one.
func (st *state) checkSteps() error {
	st.steps++
	if st.steps > st.limits.MaxSteps {
		return fmt.Errorf("%w: template exceeded %d execution steps", ErrLimit, st.limits.MaxSteps)
	}
	return nil
}

func (st *state) write(s string, pos Pos) error {
	st.written += len(s)
	if st.written > st.limits.MaxOutput {
		return &RenderError{Pos: pos, Msg: fmt.Sprintf("template output exceeded %d bytes", st.limits.MaxOutput), Err: ErrLimit}
	}
	st.out.WriteString(s)
	return nil
}

// cost is the work a value stands for when a filter or call handles it.
func cost(v value) int {
	switch x := v.(type) {
	case string:
		return len(x) / 64
	case []any:
		return len(x)
	case tuple:
		return len(x)
	case *dict:
		return x.size()
	}
	return 0
}

// charge counts the work of handling v against the step limit.
func (st *state) charge(v value, pos Pos) error {
	st.steps += cost(v)
	return st.step(pos)
}

// checkSize rejects a string or list of n bytes/items beyond the output limit.
func (st *state) checkSize(n int) error {
	if n > st.limits.MaxOutput || n < 0 {
		return fmt.Errorf("%w: value of size %d exceeds the limit of %d", ErrLimit, n, st.limits.MaxOutput)
	}
	return nil
}

// wrap attaches a position to an error that lacks one.
func wrap(err error, pos Pos) error {
	if err == nil || err == errBreak || err == errContinue {
		return err
	}
	var re *RenderError
	if errors.As(err, &re) {
		return err
	}
	r := &RenderError{Pos: pos, Msg: err.Error(), Err: err}
	var rx *raisedError
	if errors.As(err, &rx) {
		r.Err = ErrRaised
	}
	if errors.Is(err, ErrLimit) {
		r.Err = ErrLimit
	}
	return r
}

// raisedError is what raise_exception produces.
type raisedError struct{ msg string }

func (e *raisedError) Error() string { return e.msg }

func (st *state) execBody(body []node, sc *scope) error {
	for _, n := range body {
		if err := st.exec(n, sc); err != nil {
			return err
		}
	}
	return nil
}

func (st *state) capture(body []node, sc *scope) (string, error) {
	saved := st.out
	var b strings.Builder
	st.out = &b
	err := st.execBody(body, sc)
	st.out = saved
	return b.String(), err
}

func (st *state) exec(n node, sc *scope) error {
	if err := st.step(n.nodePos()); err != nil {
		return err
	}
	switch n := n.(type) {
	case *textNode:
		return st.write(n.text, n.pos)
	case *outputNode:
		v, err := st.eval(n.x, sc)
		if err != nil {
			return err
		}
		return st.write(str(v), n.pos)
	case *ifNode:
		for i, c := range n.conds {
			v, err := st.eval(c, sc)
			if err != nil {
				return err
			}
			if truthy(v) {
				return st.execBody(n.bodies[i], sc)
			}
		}
		return st.execBody(n.els, sc)
	case *forNode:
		return st.execFor(n, sc)
	case *setNode:
		return st.execSet(n, sc)
	case *macroNode:
		sc.vars[n.name] = st.makeMacro(n.name, n.params, n.body, sc)
		return nil
	case *callBlockNode:
		caller := st.makeMacro("caller", n.params, n.body, sc)
		fn, err := st.eval(n.call.fn, sc)
		if err != nil {
			return err
		}
		m, ok := fn.(callable)
		if !ok {
			return &RenderError{Pos: n.pos, Msg: fmt.Sprintf("'%s' object is not callable", typeName(fn))}
		}
		args, kwargs, err := st.evalArgs(n.call.args, n.call.kwargs, sc)
		if err != nil {
			return err
		}
		v, err := m(st, args, append(kwargs, kwarg{name: "caller", val: caller}))
		if err != nil {
			return wrap(err, n.pos)
		}
		return st.write(str(v), n.pos)
	case *filterBlockNode:
		s, err := st.capture(n.body, sc)
		if err != nil {
			return err
		}
		var v value = s
		for _, f := range n.filters {
			if v, err = st.applyFilter(f, v, sc); err != nil {
				return err
			}
		}
		return st.write(str(v), n.pos)
	case *breakNode:
		return errBreak
	case *continueNode:
		return errContinue
	case *seqNode:
		return st.execBody(n.body, sc)
	}
	return fmt.Errorf("internal error: unknown node %T", n)
}

func assignTargets(sc *scope, targets []string, v value) error {
	if len(targets) == 1 {
		sc.vars[targets[0]] = v
		return nil
	}
	items, err := iterate(v)
	if err != nil {
		return fmt.Errorf("cannot unpack non-iterable %s object", typeName(v))
	}
	if len(items) != len(targets) {
		return fmt.Errorf("cannot unpack %d values into %d names", len(items), len(targets))
	}
	for i, t := range targets {
		sc.vars[t] = items[i]
	}
	return nil
}

func (st *state) execFor(n *forNode, sc *scope) error {
	iv, err := st.eval(n.iter, sc)
	if err != nil {
		return err
	}
	items, err := iterate(iv)
	if err != nil {
		return wrap(err, n.iter.exprPos())
	}
	if n.cond != nil {
		var kept []any
		for _, it := range items {
			if err := st.step(n.pos); err != nil {
				return err
			}
			fs := newScope(sc)
			if err := assignTargets(fs, n.targets, it); err != nil {
				return wrap(err, n.pos)
			}
			c, err := st.eval(n.cond, fs)
			if err != nil {
				return err
			}
			if truthy(c) {
				kept = append(kept, it)
			}
		}
		items = kept
	}
	loop := &loopInfo{items: items}
	// Like Jinja, the else branch runs unless some iteration reached the end
	// of the body: break and continue skip that mark.
	completed := false
	for i, it := range items {
		if err := st.step(n.pos); err != nil {
			return err
		}
		loop.index = i
		is := newScope(sc)
		if err := assignTargets(is, n.targets, it); err != nil {
			return wrap(err, n.pos)
		}
		is.vars["loop"] = loop
		err := st.execBody(n.body, is)
		if err == errBreak {
			break
		}
		if err == errContinue {
			continue
		}
		if err != nil {
			return err
		}
		completed = true
	}
	if !completed {
		return st.execBody(n.els, sc)
	}
	return nil
}

func (st *state) execSet(n *setNode, sc *scope) error {
	var v value
	var err error
	if n.value != nil {
		if v, err = st.eval(n.value, sc); err != nil {
			return err
		}
	} else {
		s, err := st.capture(n.body, sc)
		if err != nil {
			return err
		}
		v = s
		for _, f := range n.filters {
			if v, err = st.applyFilter(f, v, sc); err != nil {
				return err
			}
		}
	}
	if n.attr != "" {
		obj, ok := sc.lookup(n.targets[0])
		if !ok {
			return &RenderError{Pos: n.pos, Msg: fmt.Sprintf("'%s' is undefined", n.targets[0])}
		}
		ns, ok := obj.(*namespace)
		if !ok {
			return &RenderError{Pos: n.pos, Msg: "cannot assign attribute on non-namespace object"}
		}
		ns.attrs.set(n.attr, v)
		return nil
	}
	return wrap(assignTargets(sc, n.targets, v), n.pos)
}

func (st *state) makeMacro(name string, params []param, body []node, defScope *scope) callable {
	return func(st *state, args []value, kwargs []kwarg) (value, error) {
		if len(args) > len(params) {
			return nil, fmt.Errorf("macro '%s' takes not more than %d argument(s)", name, len(params))
		}
		st.depth++
		defer func() { st.depth-- }()
		if st.depth > st.limits.MaxCallDepth {
			return nil, fmt.Errorf("%w: macro calls nested deeper than %d", ErrLimit, st.limits.MaxCallDepth)
		}
		ms := newScope(defScope)
		for i, p := range params {
			if i < len(args) {
				ms.vars[p.name] = args[i]
				continue
			}
			found := false
			for _, kw := range kwargs {
				if kw.name == p.name {
					ms.vars[p.name] = kw.val
					found = true
				}
			}
			if found {
				continue
			}
			if p.def != nil {
				v, err := st.eval(p.def, ms)
				if err != nil {
					return nil, err
				}
				ms.vars[p.name] = v
			} else {
				ms.vars[p.name] = undefined{hint: fmt.Sprintf("'%s' is undefined", p.name)}
			}
		}
		for _, kw := range kwargs {
			if kw.name == "caller" {
				// The body of a {% call %} block, for caller().
				ms.vars["caller"] = kw.val
				continue
			}
			known := false
			for _, p := range params {
				known = known || p.name == kw.name
			}
			if !known {
				return nil, fmt.Errorf("macro '%s' takes no keyword argument '%s'", name, kw.name)
			}
		}
		return st.capture(body, ms)
	}
}

// maxEvalDepth bounds expression nesting at run time: long operator or
// filter chains parse iteratively but evaluate recursively.
const maxEvalDepth = 2000

func (st *state) eval(e expr, sc *scope) (value, error) {
	st.edepth++
	if st.edepth > maxEvalDepth {
		st.edepth--
		return nil, &RenderError{Pos: e.exprPos(), Msg: "expression nested too deeply", Err: ErrLimit}
	}
	v, err := st.eval1(e, sc)
	st.edepth--
	if err != nil {
		return nil, wrap(err, e.exprPos())
	}
	return v, nil
}

func (st *state) eval1(e expr, sc *scope) (value, error) {
	switch e := e.(type) {
	case *literal:
		return e.val, nil
	case *nameExpr:
		if v, ok := sc.lookup(e.name); ok {
			return v, nil
		}
		return undefined{hint: fmt.Sprintf("'%s' is undefined", e.name)}, nil
	case *listExpr:
		items := make([]any, len(e.items))
		for i, x := range e.items {
			v, err := st.eval(x, sc)
			if err != nil {
				return nil, err
			}
			items[i] = v
		}
		if e.tuple {
			return tuple(items), nil
		}
		return items, nil
	case *dictExpr:
		d := newDict()
		for i := range e.keys {
			k, err := st.eval(e.keys[i], sc)
			if err != nil {
				return nil, err
			}
			if _, ok := normKey(k); !ok {
				return nil, fmt.Errorf("unhashable type: '%s'", typeName(k))
			}
			v, err := st.eval(e.vals[i], sc)
			if err != nil {
				return nil, err
			}
			d.set(k, v)
		}
		return d, nil
	case *attrExpr:
		obj, err := st.eval(e.obj, sc)
		if err != nil {
			return nil, err
		}
		if s, ok := obj.(string); ok {
			// A string method will scan the receiver.
			if err := st.charge(s, e.pos); err != nil {
				return nil, err
			}
		}
		return getAttr(obj, e.name)
	case *indexExpr:
		obj, err := st.eval(e.obj, sc)
		if err != nil {
			return nil, err
		}
		if s, ok := obj.(string); ok {
			if err := st.charge(s, e.pos); err != nil {
				return nil, err
			}
		}
		key, err := st.eval(e.key, sc)
		if err != nil {
			return nil, err
		}
		return getItem(obj, key)
	case *sliceExpr:
		return st.evalSlice(e, sc)
	case *callExpr:
		return st.evalCall(e, sc)
	case *filterExpr:
		v, err := st.eval(e.x, sc)
		if err != nil {
			return nil, err
		}
		return st.applyFilter(e, v, sc)
	case *testExpr:
		return st.evalTest(e, sc)
	case *unaryExpr:
		v, err := st.eval(e.x, sc)
		if err != nil {
			return nil, err
		}
		switch e.op {
		case "not":
			return !truthy(v), nil
		case "-":
			switch x := v.(type) {
			case int:
				if x == math.MinInt {
					return -float64(x), nil
				}
				return -x, nil
			case bool:
				n, _ := asInt(x)
				return -n, nil
			case float64:
				return -x, nil
			}
			return nil, fmt.Errorf("bad operand type for unary -: '%s'", typeName(v))
		default:
			if isNumber(v) {
				if b, ok := v.(bool); ok {
					n, _ := asInt(b)
					return n, nil
				}
				return v, nil
			}
			return nil, fmt.Errorf("bad operand type for unary +: '%s'", typeName(v))
		}
	case *binaryExpr:
		l, err := st.eval(e.l, sc)
		if err != nil {
			return nil, err
		}
		switch e.op {
		case "and":
			if !truthy(l) {
				return l, nil
			}
			return st.eval(e.r, sc)
		case "or":
			if truthy(l) {
				return l, nil
			}
			return st.eval(e.r, sc)
		}
		r, err := st.eval(e.r, sc)
		if err != nil {
			return nil, err
		}
		return st.binary(e.op, l, r)
	case *compareExpr:
		l, err := st.eval(e.first, sc)
		if err != nil {
			return nil, err
		}
		for i, op := range e.ops {
			r, err := st.eval(e.rest[i], sc)
			if err != nil {
				return nil, err
			}
			if err := st.charge(r, e.pos); err != nil {
				return nil, err
			}
			ok, err := compareOp(op, l, r)
			if err != nil {
				return nil, err
			}
			if !ok {
				return false, nil
			}
			l = r
		}
		return true, nil
	case *condExpr:
		c, err := st.eval(e.cond, sc)
		if err != nil {
			return nil, err
		}
		if truthy(c) {
			return st.eval(e.then, sc)
		}
		if e.els == nil {
			return undefined{}, nil
		}
		return st.eval(e.els, sc)
	}
	return nil, fmt.Errorf("internal error: unknown expression %T", e)
}

func compareOp(op string, l, r value) (bool, error) {
	switch op {
	case "==":
		return equal(l, r), nil
	case "!=":
		return !equal(l, r), nil
	case "in":
		return contains(r, l)
	case "not in":
		ok, err := contains(r, l)
		return !ok, err
	}
	if _, ok := l.(undefined); ok {
		return false, undefinedErr(l)
	}
	if _, ok := r.(undefined); ok {
		return false, undefinedErr(r)
	}
	c, err := compare(l, r)
	if err != nil {
		return false, fmt.Errorf("'%s' not supported between instances of '%s' and '%s'", op, typeName(l), typeName(r))
	}
	switch op {
	case "<":
		return c < 0, nil
	case "<=":
		return c <= 0, nil
	case ">":
		return c > 0, nil
	default:
		return c >= 0, nil
	}
}

func undefinedErr(v value) error {
	u, _ := v.(undefined)
	if u.hint == "" {
		return errors.New("value is undefined")
	}
	return errors.New(u.hint)
}

// binary applies a binary operator and charges the work by the result's size.
func (st *state) binary(op string, l, r value) (value, error) {
	st.steps += cost(l) + cost(r)
	v, err := st.binaryOp(op, l, r)
	if err != nil {
		return nil, err
	}
	st.steps += cost(v)
	return v, st.checkSteps()
}

func (st *state) binaryOp(op string, l, r value) (value, error) {
	if op == "~" {
		s := str(l) + str(r)
		if err := st.checkSize(len(s)); err != nil {
			return nil, err
		}
		return s, nil
	}
	if _, ok := l.(undefined); ok {
		return nil, undefinedErr(l)
	}
	if _, ok := r.(undefined); ok {
		return nil, undefinedErr(r)
	}
	if isNumber(l) && isNumber(r) {
		return arith(op, l, r)
	}
	switch op {
	case "+":
		switch x := l.(type) {
		case string:
			if y, ok := r.(string); ok {
				if err := st.checkSize(len(x) + len(y)); err != nil {
					return nil, err
				}
				return x + y, nil
			}
		case []any:
			if y, ok := r.([]any); ok {
				if err := st.checkSize(len(x) + len(y)); err != nil {
					return nil, err
				}
				return append(append([]any{}, x...), y...), nil
			}
		case tuple:
			if y, ok := r.(tuple); ok {
				if err := st.checkSize(len(x) + len(y)); err != nil {
					return nil, err
				}
				return append(append(tuple{}, x...), y...), nil
			}
		}
	case "*":
		seq, n := l, r
		if isNumber(l) {
			seq, n = r, l
		}
		k, ok := asInt(n)
		if ok {
			k = max(k, 0)
			switch x := seq.(type) {
			case tuple:
				if len(x) > 0 && k > st.limits.MaxOutput/len(x) {
					return nil, st.checkSize(-1)
				}
				out := make(tuple, 0, len(x)*k)
				for range k {
					out = append(out, x...)
				}
				return out, nil
			case string:
				if len(x) > 0 && k > st.limits.MaxOutput/len(x) {
					return nil, st.checkSize(-1)
				}
				return strings.Repeat(x, k), nil
			case []any:
				if len(x) > 0 && k > st.limits.MaxOutput/len(x) {
					return nil, st.checkSize(-1)
				}
				out := make([]any, 0, len(x)*k)
				for range k {
					out = append(out, x...)
				}
				return out, nil
			}
		}
	case "%":
		if s, ok := l.(string); ok {
			v, err := percentFormat(s, r)
			if err != nil {
				return nil, err
			}
			return v, st.checkSize(len(v.(string)))
		}
	}
	return nil, fmt.Errorf("unsupported operand type(s) for %s: '%s' and '%s'", op, typeName(l), typeName(r))
}

func arith(op string, l, r value) (value, error) {
	li, lInt := asInt(l)
	ri, rInt := asInt(r)
	lf, _ := toFloat(l)
	rf, _ := toFloat(r)
	both := lInt && rInt
	switch op {
	case "+":
		if both {
			s := li + ri
			if (s > li) == (ri > 0) {
				return s, nil
			}
			return lf + rf, nil
		}
		return lf + rf, nil
	case "-":
		if both {
			s := li - ri
			if (s < li) == (ri > 0) {
				return s, nil
			}
			return lf - rf, nil
		}
		return lf - rf, nil
	case "*":
		if both {
			if li == 0 || ri == 0 {
				return 0, nil
			}
			p := li * ri
			if p/ri == li && !(li == -1 && ri == math.MinInt) && !(ri == -1 && li == math.MinInt) {
				return p, nil
			}
			return lf * rf, nil
		}
		return lf * rf, nil
	case "/":
		if rf == 0 {
			return nil, fmt.Errorf("division by zero")
		}
		return lf / rf, nil
	case "//":
		if rf == 0 {
			return nil, fmt.Errorf("integer division or modulo by zero")
		}
		if both {
			if li == math.MinInt && ri == -1 {
				return -float64(li), nil
			}
			q := li / ri
			if (li%ri != 0) && ((li < 0) != (ri < 0)) {
				q--
			}
			return q, nil
		}
		return math.Floor(lf / rf), nil
	case "%":
		if rf == 0 {
			return nil, fmt.Errorf("integer division or modulo by zero")
		}
		if both {
			if ri == -1 {
				return 0, nil
			}
			m := li % ri
			if m != 0 && ((m < 0) != (ri < 0)) {
				m += ri
			}
			return m, nil
		}
		m := math.Mod(lf, rf)
		if m != 0 && ((m < 0) != (rf < 0)) {
			m += rf
		}
		return m, nil
	case "**":
		if both && ri >= 0 {
			if r, ok := intPow(li, ri); ok {
				return r, nil
			}
		}
		return math.Pow(lf, rf), nil
	}
	return nil, fmt.Errorf("unsupported operator %s", op)
}

// percentFormat implements a subset of Python's "fmt % args".
func percentFormat(f string, arg value) (value, error) {
	var args []any
	mappingLike := false
	switch t := arg.(type) {
	case tuple:
		args = t
	case []any, *dict:
		// Python treats a lone sequence or mapping as a mapping argument,
		// so unused it is not an error.
		args = []any{arg}
		mappingLike = true
	default:
		args = []any{arg}
	}
	var b strings.Builder
	ai := 0
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+1 >= len(f) {
			return nil, fmt.Errorf("incomplete format")
		}
		i++
		verb := f[i]
		if verb == '%' {
			b.WriteByte('%')
			continue
		}
		if ai >= len(args) {
			return nil, fmt.Errorf("not enough arguments for format string")
		}
		a := args[ai]
		ai++
		switch verb {
		case 's':
			b.WriteString(str(a))
		case 'r':
			b.WriteString(reprString(a))
		case 'd', 'i':
			if fv, ok := toFloat(a); ok {
				b.WriteString(fmt.Sprint(int(fv)))
			} else {
				return nil, fmt.Errorf("%%d format: a real number is required, not %s", typeName(a))
			}
		default:
			return nil, fmt.Errorf("unsupported format character '%c'", verb)
		}
	}
	if ai < len(args) && !(mappingLike && ai == 0) {
		return nil, fmt.Errorf("not all arguments converted during string formatting")
	}
	return b.String(), nil
}

func (st *state) evalSlice(e *sliceExpr, sc *scope) (value, error) {
	obj, err := st.eval(e.obj, sc)
	if err != nil {
		return nil, err
	}
	if err := st.charge(obj, e.pos); err != nil {
		return nil, err
	}
	var bounds [3]*int
	for i, x := range []expr{e.start, e.stop, e.step} {
		if x == nil {
			continue
		}
		v, err := st.eval(x, sc)
		if err != nil {
			return nil, err
		}
		if v == nil {
			continue
		}
		n, ok := asInt(v)
		if !ok {
			return nil, fmt.Errorf("slice indices must be integers or None, not %s", typeName(v))
		}
		bounds[i] = &n
	}
	return sliceValue(obj, bounds[0], bounds[1], bounds[2])
}

// sliceIndices computes Python slice positions for a sequence of length n.
func sliceIndices(n int, start, stop, step *int) ([]int, error) {
	st := 1
	if step != nil {
		st = *step
	}
	if st == 0 {
		return nil, fmt.Errorf("slice step cannot be zero")
	}
	clamp := func(p *int, def int, lo, hi int) int {
		if p == nil {
			return def
		}
		v := *p
		if v < 0 {
			v += n
			if v < lo {
				v = lo
			}
		} else if v > hi {
			v = hi
		}
		return v
	}
	// Any step beyond the length picks at most one item; clamping keeps
	// the index arithmetic below from overflowing.
	st = max(-(n + 1), min(st, n+1))
	var idx []int
	if st > 0 {
		a := clamp(start, 0, 0, n)
		b := clamp(stop, n, 0, n)
		for i := a; i < b; i += st {
			idx = append(idx, i)
		}
	} else {
		a := clamp(start, n-1, -1, n-1)
		b := clamp(stop, -1, -1, n-1)
		for i := a; i > b; i += st {
			idx = append(idx, i)
		}
	}
	return idx, nil
}

func sliceValue(obj value, start, stop, step *int) (value, error) {
	switch x := obj.(type) {
	case []any:
		idx, err := sliceIndices(len(x), start, stop, step)
		if err != nil {
			return nil, err
		}
		out := make([]any, len(idx))
		for i, j := range idx {
			out[i] = x[j]
		}
		return out, nil
	case tuple:
		idx, err := sliceIndices(len(x), start, stop, step)
		if err != nil {
			return nil, err
		}
		out := make(tuple, len(idx))
		for i, j := range idx {
			out[i] = x[j]
		}
		return out, nil
	case string:
		rs := []rune(x)
		idx, err := sliceIndices(len(rs), start, stop, step)
		if err != nil {
			return nil, err
		}
		out := make([]rune, len(idx))
		for i, j := range idx {
			out[i] = rs[j]
		}
		return string(out), nil
	case undefined:
		return nil, undefinedErr(x)
	case *dict:
		return nil, fmt.Errorf("unhashable type: 'slice'")
	}
	// Jinja compiles slices to plain Python subscripts, which fail here.
	return nil, fmt.Errorf("'%s' object is not subscriptable", typeName(obj))
}

func (st *state) evalArgs(args []expr, kwargs []kwExpr, sc *scope) ([]value, []kwarg, error) {
	av := make([]value, len(args))
	for i, a := range args {
		v, err := st.eval(a, sc)
		if err != nil {
			return nil, nil, err
		}
		av[i] = v
	}
	var kv []kwarg
	for _, k := range kwargs {
		v, err := st.eval(k.x, sc)
		if err != nil {
			return nil, nil, err
		}
		kv = append(kv, kwarg{name: k.name, val: v})
	}
	return av, kv, nil
}

func (st *state) evalCall(e *callExpr, sc *scope) (value, error) {
	fn, err := st.eval(e.fn, sc)
	if err != nil {
		return nil, err
	}
	args, kwargs, err := st.evalArgs(e.args, e.kwargs, sc)
	if err != nil {
		return nil, err
	}
	if err := st.step(e.pos); err != nil {
		return nil, err
	}
	switch f := fn.(type) {
	case callable:
		v, err := f(st, args, kwargs)
		if err != nil {
			return nil, err
		}
		return v, st.charge(v, e.pos)
	case undefined:
		return nil, undefinedErr(f)
	}
	return nil, fmt.Errorf("'%s' object is not callable", typeName(fn))
}

// getAttr is Jinja's a.b: attribute (method) first, then item.
func getAttr(obj value, name string) (value, error) {
	if u, ok := obj.(undefined); ok {
		return nil, undefinedErr(u)
	}
	if m, ok := method(obj, name); ok {
		return m, nil
	}
	switch x := obj.(type) {
	case *dict:
		if v, ok := x.get(name); ok {
			return v, nil
		}
	case *namespace:
		if v, ok := x.attrs.get(name); ok {
			return v, nil
		}
	case *loopInfo:
		if v, ok := x.attr(name); ok {
			return v, nil
		}
	}
	return undefined{hint: fmt.Sprintf("'%s object' has no attribute '%s'", typeName(obj), name)}, nil
}

// getItem is Jinja's a[b]: item first, then attribute.
func getItem(obj, key value) (value, error) {
	if u, ok := obj.(undefined); ok {
		return nil, undefinedErr(u)
	}
	switch x := obj.(type) {
	case *dict:
		if v, ok := x.get(key); ok {
			return v, nil
		}
	case []any:
		if i, ok := asInt(key); ok {
			if i < 0 {
				i += len(x)
			}
			if i >= 0 && i < len(x) {
				return x[i], nil
			}
			return undefined{hint: "'list object' has no element " + str(key)}, nil
		}
	case tuple:
		if i, ok := asInt(key); ok {
			if i < 0 {
				i += len(x)
			}
			if i >= 0 && i < len(x) {
				return x[i], nil
			}
			return undefined{}, nil
		}
	case string:
		if i, ok := asInt(key); ok {
			rs := []rune(x)
			if i < 0 {
				i += len(rs)
			}
			if i >= 0 && i < len(rs) {
				return string(rs[i]), nil
			}
			return undefined{}, nil
		}
	}
	if s, ok := key.(string); ok {
		return getAttr(obj, s)
	}
	return undefined{hint: fmt.Sprintf("'%s object' has no element %s", typeName(obj), reprString(key))}, nil
}

// intPow computes base**exp by squaring, reporting false on overflow.
func intPow(base, exp int) (int, bool) {
	switch base {
	case 0:
		if exp == 0 {
			return 1, true
		}
		return 0, true
	case 1:
		return 1, true
	case -1:
		if exp%2 == 0 {
			return 1, true
		}
		return -1, true
	}
	res := 1
	for exp > 0 {
		if exp&1 == 1 {
			n := res * base
			if n/base != res {
				return 0, false
			}
			res = n
		}
		exp >>= 1
		if exp > 0 {
			sq := base * base
			if sq/base != base {
				return 0, false
			}
			base = sq
		}
	}
	return res, true
}
