package chat

import (
	"fmt"
	"strings"
	"unicode"
)

// testFunc is a Jinja test ("x is name(args)").
type testFunc func(v value, args []value) (bool, error)

var tests map[string]testFunc

func oneArg(name string, fn func(v, a value) (bool, error)) testFunc {
	return func(v value, args []value) (bool, error) {
		if len(args) != 1 {
			return false, fmt.Errorf("test '%s' takes one argument", name)
		}
		return fn(v, args[0])
	}
}

func cmpTest(name, op string) testFunc {
	return oneArg(name, func(v, a value) (bool, error) { return compareOp(op, v, a) })
}

func init() {
	isType := func(fn func(v value) bool) testFunc {
		return func(v value, args []value) (bool, error) { return fn(v), nil }
	}
	tests = map[string]testFunc{
		"defined":   isType(func(v value) bool { _, u := v.(undefined); return !u }),
		"undefined": isType(func(v value) bool { _, u := v.(undefined); return u }),
		"none":      isType(func(v value) bool { return v == nil }),
		"string":    isType(func(v value) bool { _, ok := v.(string); return ok }),
		"mapping":   isType(func(v value) bool { _, ok := v.(*dict); return ok }),
		"iterable": isType(func(v value) bool {
			switch v.(type) {
			case undefined, string, []any, tuple, *dict:
				return true
			}
			return false
		}),
		"sequence": isType(func(v value) bool {
			switch v.(type) {
			case undefined, string, []any, tuple, *dict:
				return true
			}
			return false
		}),
		"number":  isType(isNumber),
		"integer": isType(func(v value) bool { _, ok := v.(int); return ok }),
		"float":   isType(func(v value) bool { _, ok := v.(float64); return ok }),
		"boolean": isType(func(v value) bool { _, ok := v.(bool); return ok }),
		"true":    isType(func(v value) bool { b, ok := v.(bool); return ok && b }),
		"false":   isType(func(v value) bool { b, ok := v.(bool); return ok && !b }),
		"callable": isType(func(v value) bool {
			_, ok := v.(callable)
			return ok
		}),
		"escaped": isType(func(v value) bool { return false }),
		"lower": isType(func(v value) bool {
			s := str(v)
			return strings.ToLower(s) == s && strings.IndexFunc(s, unicode.IsLower) >= 0
		}),
		"upper": isType(func(v value) bool {
			s := str(v)
			return strings.ToUpper(s) == s && strings.IndexFunc(s, unicode.IsUpper) >= 0
		}),
		"odd": func(v value, _ []value) (bool, error) {
			if !isNumber(v) {
				return false, fmt.Errorf("test 'odd' needs a number, not %s", typeName(v))
			}
			m, err := arith("%", v, 2)
			return err == nil && equal(m, 1), err
		},
		"even": func(v value, _ []value) (bool, error) {
			if !isNumber(v) {
				return false, fmt.Errorf("test 'even' needs a number, not %s", typeName(v))
			}
			m, err := arith("%", v, 2)
			return err == nil && equal(m, 0), err
		},
		"divisibleby": oneArg("divisibleby", func(v, a value) (bool, error) {
			n, ok1 := asInt(v)
			d, ok2 := asInt(a)
			if !ok1 || !ok2 || d == 0 {
				return false, fmt.Errorf("test 'divisibleby' needs non-zero integers")
			}
			return n%d == 0, nil
		}),
		"sameas": oneArg("sameas", func(v, a value) (bool, error) {
			switch x := v.(type) {
			case nil, bool:
				return v == a, nil
			case *dict:
				y, ok := a.(*dict)
				return ok && x == y, nil
			}
			return equal(v, a) && typeName(v) == typeName(a), nil
		}),
		"in": oneArg("in", func(v, a value) (bool, error) { return contains(a, v) }),
	}
	for _, n := range []string{"equalto", "eq", "=="} {
		tests[n] = cmpTest(n, "==")
	}
	for _, n := range []string{"ne", "!="} {
		tests[n] = cmpTest(n, "!=")
	}
	for n, op := range map[string]string{"lt": "<", "lessthan": "<", "<": "<", "le": "<=", "<=": "<=", "gt": ">", "greaterthan": ">", ">": ">", "ge": ">=", ">=": ">="} {
		tests[n] = cmpTest(n, op)
	}
}

func (st *state) evalTest(e *testExpr, sc *scope) (value, error) {
	v, err := st.eval(e.x, sc)
	if err != nil {
		return nil, err
	}
	fn, ok := tests[e.name]
	if !ok {
		return nil, &RenderError{Pos: e.pos, Msg: fmt.Sprintf("no test named '%s'", e.name)}
	}
	args, _, err := st.evalArgs(e.args, nil, sc)
	if err != nil {
		return nil, err
	}
	if err := st.charge(v, e.pos); err != nil {
		return nil, err
	}
	if e.name == "lower" || e.name == "upper" {
		// These tests format their value, which may be large: charge for it.
		s := str(v)
		st.steps += len(s) / 64
		if err := st.step(e.pos); err != nil {
			return nil, err
		}
		v = s
	}
	res, err := fn(v, args)
	if err != nil {
		return nil, wrap(err, e.pos)
	}
	return res != e.negate, nil
}
