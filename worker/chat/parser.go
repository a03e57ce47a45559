package chat

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// maxParseDepth bounds the nesting of statements and expressions.
const maxParseDepth = 500

type parser struct {
	toks      []token
	i         int
	depth     int
	loopDepth int
}

func parse(src string) ([]node, error) {
	toks, err := lex(normalizeSource(src))
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	body, end, err := p.parseBody()
	if err != nil {
		return nil, err
	}
	if end != "" {
		return nil, p.errorf(p.cur(), "unexpected tag %q", end)
	}
	return body, nil
}

func (p *parser) cur() token  { return p.toks[p.i] }
func (p *parser) peek() token { return p.toks[min(p.i+1, len(p.toks)-1)] }

func (p *parser) next() token {
	t := p.toks[p.i]
	if p.i < len(p.toks)-1 {
		p.i++
	}
	return t
}

func (p *parser) errorf(t token, format string, args ...any) error {
	return &SyntaxError{Pos: t.pos, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) isOp(op string) bool {
	t := p.cur()
	return t.kind == tokOp && t.val == op
}

func (p *parser) isName(name string) bool {
	t := p.cur()
	return t.kind == tokName && t.val == name
}

func (p *parser) expectOp(op string) (token, error) {
	t := p.cur()
	if t.kind != tokOp || t.val != op {
		return t, p.errorf(t, "expected %q, got %s", op, t.describe())
	}
	return p.next(), nil
}

func (p *parser) expectName() (token, error) {
	t := p.cur()
	if t.kind != tokName {
		return t, p.errorf(t, "expected a name, got %s", t.describe())
	}
	return p.next(), nil
}

func (p *parser) expectKeyword(kw string) error {
	t := p.cur()
	if t.kind != tokName || t.val != kw {
		return p.errorf(t, "expected %q, got %s", kw, t.describe())
	}
	p.next()
	return nil
}

func (p *parser) expectBlockEnd() error {
	t := p.cur()
	if t.kind != tokBlockEnd {
		return p.errorf(t, "expected end of statement '%%}', got %s", t.describe())
	}
	p.next()
	return nil
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxParseDepth {
		return p.errorf(p.cur(), "template nested too deeply")
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

// parseBody parses statements until EOF or a block tag whose name is in
// ends; it returns that name ("" at EOF) with the tag's name consumed.
func (p *parser) parseBody(ends ...string) ([]node, string, error) {
	if err := p.enter(); err != nil {
		return nil, "", err
	}
	defer p.leave()
	var body []node
	for {
		t := p.cur()
		switch t.kind {
		case tokEOF:
			if len(ends) > 0 {
				return nil, "", p.errorf(t, "unexpected end of template, expected %s", quoteList(ends))
			}
			return body, "", nil
		case tokData:
			p.next()
			body = append(body, &textNode{text: t.val, pos: t.pos})
		case tokVarBegin:
			p.next()
			x, err := p.parseTuple(true)
			if err != nil {
				return nil, "", err
			}
			if p.cur().kind != tokVarEnd {
				return nil, "", p.errorf(p.cur(), "expected end of print statement '}}', got %s", p.cur().describe())
			}
			p.next()
			body = append(body, &outputNode{x: x, pos: t.pos})
		case tokBlockBegin:
			p.next()
			nt := p.cur()
			if nt.kind != tokName {
				return nil, "", p.errorf(nt, "expected a statement name, got %s", nt.describe())
			}
			for _, e := range ends {
				if nt.val == e {
					p.next()
					return body, e, nil
				}
			}
			n, err := p.parseStatement()
			if err != nil {
				return nil, "", err
			}
			body = append(body, n)
		default:
			return nil, "", p.errorf(t, "unexpected %s", t.describe())
		}
	}
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	return strings.Join(q, " or ")
}

func (p *parser) parseStatement() (node, error) {
	t := p.next()
	switch t.val {
	case "if":
		return p.parseIf(t)
	case "for":
		return p.parseFor(t)
	case "set":
		return p.parseSet(t)
	case "macro":
		return p.parseMacro(t)
	case "call":
		return p.parseCallBlock(t)
	case "filter":
		return p.parseFilterBlock(t)
	case "break", "continue":
		if p.loopDepth == 0 {
			return nil, p.errorf(t, "%q outside of a loop", t.val)
		}
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		if t.val == "break" {
			return &breakNode{pos: t.pos}, nil
		}
		return &continueNode{pos: t.pos}, nil
	case "generation":
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		body, _, err := p.parseBody("endgeneration")
		if err != nil {
			return nil, err
		}
		return &seqNode{body: body, pos: t.pos}, p.expectBlockEnd()
	}
	return nil, p.errorf(t, "unknown or unsupported tag %q", t.val)
}

func (p *parser) parseIf(t token) (node, error) {
	n := &ifNode{pos: t.pos}
	for {
		cond, err := p.parseTuple(false)
		if err != nil {
			return nil, err
		}
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		body, end, err := p.parseBody("elif", "else", "endif")
		if err != nil {
			return nil, err
		}
		n.conds = append(n.conds, cond)
		n.bodies = append(n.bodies, body)
		switch end {
		case "elif":
			continue
		case "else":
			if err := p.expectBlockEnd(); err != nil {
				return nil, err
			}
			n.els, _, err = p.parseBody("endif")
			if err != nil {
				return nil, err
			}
		}
		return n, p.expectBlockEnd()
	}
}

// parseTargets parses assignment targets: one or more names separated by
// commas, optionally in parentheses.
func (p *parser) parseTargets() ([]string, error) {
	paren := false
	if p.isOp("(") {
		p.next()
		paren = true
	}
	var names []string
	for {
		t, err := p.expectName()
		if err != nil {
			return nil, err
		}
		names = append(names, t.val)
		if !p.isOp(",") {
			break
		}
		p.next()
		if p.cur().kind != tokName {
			break
		}
	}
	if paren {
		if _, err := p.expectOp(")"); err != nil {
			return nil, err
		}
	}
	return names, nil
}

func (p *parser) parseFor(t token) (node, error) {
	n := &forNode{pos: t.pos}
	var err error
	if n.targets, err = p.parseTargets(); err != nil {
		return nil, err
	}
	if err := p.expectKeyword("in"); err != nil {
		return nil, err
	}
	if n.iter, err = p.parseTuple(false); err != nil {
		return nil, err
	}
	if p.isName("if") {
		p.next()
		if n.cond, err = p.parseExpression(true); err != nil {
			return nil, err
		}
	}
	if p.isName("recursive") {
		return nil, p.errorf(p.cur(), "recursive loops are not supported")
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	p.loopDepth++
	body, end, err := p.parseBody("endfor", "else")
	p.loopDepth--
	if err != nil {
		return nil, err
	}
	n.body = body
	if end == "else" {
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		if n.els, _, err = p.parseBody("endfor"); err != nil {
			return nil, err
		}
	}
	return n, p.expectBlockEnd()
}

func (p *parser) parseSet(t token) (node, error) {
	n := &setNode{pos: t.pos}
	first, err := p.expectName()
	if err != nil {
		return nil, err
	}
	if p.isOp(".") {
		p.next()
		attr, err := p.expectName()
		if err != nil {
			return nil, err
		}
		n.targets = []string{first.val}
		n.attr = attr.val
	} else {
		n.targets = []string{first.val}
		for p.isOp(",") {
			p.next()
			nt, err := p.expectName()
			if err != nil {
				return nil, err
			}
			n.targets = append(n.targets, nt.val)
		}
	}
	if p.isOp("=") {
		p.next()
		if n.value, err = p.parseTuple(true); err != nil {
			return nil, err
		}
		return n, p.expectBlockEnd()
	}
	if n.attr != "" || len(n.targets) != 1 {
		return nil, p.errorf(p.cur(), "expected '=' in set statement")
	}
	for p.isOp("|") {
		p.next()
		f, err := p.parseFilter(nil)
		if err != nil {
			return nil, err
		}
		n.filters = append(n.filters, f)
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	if n.body, _, err = p.parseBody("endset"); err != nil {
		return nil, err
	}
	return n, p.expectBlockEnd()
}

func (p *parser) parseParams() ([]param, error) {
	if _, err := p.expectOp("("); err != nil {
		return nil, err
	}
	var params []param
	for !p.isOp(")") {
		if len(params) > 0 {
			if _, err := p.expectOp(","); err != nil {
				return nil, err
			}
			if p.isOp(")") {
				break
			}
		}
		nt, err := p.expectName()
		if err != nil {
			return nil, err
		}
		pr := param{name: nt.val}
		if p.isOp("=") {
			p.next()
			if pr.def, err = p.parseExpression(true); err != nil {
				return nil, err
			}
		} else if len(params) > 0 && params[len(params)-1].def != nil {
			return nil, p.errorf(nt, "non-default argument follows default argument")
		}
		params = append(params, pr)
	}
	p.next()
	return params, nil
}

func (p *parser) parseMacro(t token) (node, error) {
	nt, err := p.expectName()
	if err != nil {
		return nil, err
	}
	params, err := p.parseParams()
	if err != nil {
		return nil, err
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	saved := p.loopDepth
	p.loopDepth = 0
	body, _, err := p.parseBody("endmacro")
	p.loopDepth = saved
	if err != nil {
		return nil, err
	}
	if p.cur().kind == tokName && p.cur().val == nt.val {
		p.next()
	}
	return &macroNode{name: nt.val, params: params, body: body, pos: t.pos}, p.expectBlockEnd()
}

func (p *parser) parseCallBlock(t token) (node, error) {
	n := &callBlockNode{pos: t.pos}
	var err error
	if p.isOp("(") {
		if n.params, err = p.parseParams(); err != nil {
			return nil, err
		}
	}
	x, err := p.parseExpression(true)
	if err != nil {
		return nil, err
	}
	call, ok := x.(*callExpr)
	if !ok {
		return nil, p.errorf(t, "expected a call after 'call'")
	}
	n.call = call
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	saved := p.loopDepth
	p.loopDepth = 0
	n.body, _, err = p.parseBody("endcall")
	p.loopDepth = saved
	if err != nil {
		return nil, err
	}
	return n, p.expectBlockEnd()
}

func (p *parser) parseFilterBlock(t token) (node, error) {
	n := &filterBlockNode{pos: t.pos}
	for {
		f, err := p.parseFilter(nil)
		if err != nil {
			return nil, err
		}
		n.filters = append(n.filters, f)
		if !p.isOp("|") {
			break
		}
		p.next()
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	var err error
	if n.body, _, err = p.parseBody("endfilter"); err != nil {
		return nil, err
	}
	return n, p.expectBlockEnd()
}

// parseTuple parses an expression, or a comma-separated tuple of them.
func (p *parser) parseTuple(withCond bool) (expr, error) {
	pos := p.cur().pos
	first, err := p.parseExpression(withCond)
	if err != nil {
		return nil, err
	}
	if !p.isOp(",") {
		return first, nil
	}
	items := []expr{first}
	for p.isOp(",") {
		p.next()
		if !p.startsExpr() {
			break
		}
		x, err := p.parseExpression(withCond)
		if err != nil {
			return nil, err
		}
		items = append(items, x)
	}
	return &listExpr{items: items, tuple: true, pos: pos}, nil
}

// startsExpr reports whether the current token can begin an expression.
func (p *parser) startsExpr() bool {
	t := p.cur()
	switch t.kind {
	case tokName, tokString, tokInt, tokFloat:
		return true
	case tokOp:
		return t.val == "(" || t.val == "[" || t.val == "{" || t.val == "-" || t.val == "+"
	}
	return false
}

func (p *parser) parseExpression(withCond bool) (expr, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	if !withCond {
		return p.parseOr()
	}
	x, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	for p.isName("if") {
		t := p.next()
		cond, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		var els expr
		if p.isName("else") {
			p.next()
			if els, err = p.parseExpression(true); err != nil {
				return nil, err
			}
		}
		x = &condExpr{cond: cond, then: x, els: els, pos: t.pos}
	}
	return x, nil
}

func (p *parser) parseOr() (expr, error) {
	l, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	for p.isName("or") {
		t := p.next()
		r, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{op: "or", l: l, r: r, pos: t.pos}
	}
	return l, nil
}

func (p *parser) parseAnd() (expr, error) {
	l, err := p.parseNot()
	if err != nil {
		return nil, err
	}
	for p.isName("and") {
		t := p.next()
		r, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{op: "and", l: l, r: r, pos: t.pos}
	}
	return l, nil
}

func (p *parser) parseNot() (expr, error) {
	if p.isName("not") {
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer p.leave()
		t := p.next()
		x, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		return &unaryExpr{op: "not", x: x, pos: t.pos}, nil
	}
	return p.parseCompare()
}

func (p *parser) parseCompare() (expr, error) {
	pos := p.cur().pos
	first, err := p.parseMath1()
	if err != nil {
		return nil, err
	}
	c := &compareExpr{first: first, pos: pos}
	for {
		t := p.cur()
		var op string
		switch {
		case t.kind == tokOp && (t.val == "==" || t.val == "!=" || t.val == "<" || t.val == "<=" || t.val == ">" || t.val == ">="):
			op = t.val
			p.next()
		case t.kind == tokName && t.val == "in":
			op = "in"
			p.next()
		case t.kind == tokName && t.val == "not" && p.peek().kind == tokName && p.peek().val == "in":
			op = "not in"
			p.next()
			p.next()
		}
		if op == "" {
			break
		}
		r, err := p.parseMath1()
		if err != nil {
			return nil, err
		}
		c.ops = append(c.ops, op)
		c.rest = append(c.rest, r)
	}
	if len(c.ops) == 0 {
		return first, nil
	}
	return c, nil
}

func (p *parser) parseMath1() (expr, error) {
	l, err := p.parseConcat()
	if err != nil {
		return nil, err
	}
	for p.isOp("+") || p.isOp("-") {
		t := p.next()
		r, err := p.parseConcat()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{op: t.val, l: l, r: r, pos: t.pos}
	}
	return l, nil
}

func (p *parser) parseConcat() (expr, error) {
	l, err := p.parseMath2()
	if err != nil {
		return nil, err
	}
	for p.isOp("~") {
		t := p.next()
		r, err := p.parseMath2()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{op: "~", l: l, r: r, pos: t.pos}
	}
	return l, nil
}

func (p *parser) parseMath2() (expr, error) {
	l, err := p.parsePow()
	if err != nil {
		return nil, err
	}
	for p.isOp("*") || p.isOp("/") || p.isOp("//") || p.isOp("%") {
		t := p.next()
		r, err := p.parsePow()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{op: t.val, l: l, r: r, pos: t.pos}
	}
	return l, nil
}

func (p *parser) parsePow() (expr, error) {
	l, err := p.parseUnary(true)
	if err != nil {
		return nil, err
	}
	for p.isOp("**") {
		t := p.next()
		r, err := p.parseUnary(true)
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{op: "**", l: l, r: r, pos: t.pos}
	}
	return l, nil
}

func (p *parser) parseUnary(withFilter bool) (expr, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	var x expr
	var err error
	if p.isOp("-") || p.isOp("+") {
		t := p.next()
		inner, err := p.parseUnary(false)
		if err != nil {
			return nil, err
		}
		x = &unaryExpr{op: t.val, x: inner, pos: t.pos}
	} else if x, err = p.parsePrimary(); err != nil {
		return nil, err
	}
	if x, err = p.parsePostfix(x); err != nil {
		return nil, err
	}
	if withFilter {
		return p.parseFilterExpr(x)
	}
	return x, nil
}

func (p *parser) parsePrimary() (expr, error) {
	t := p.cur()
	switch t.kind {
	case tokName:
		p.next()
		switch t.val {
		case "true", "True":
			return &literal{val: true, pos: t.pos}, nil
		case "false", "False":
			return &literal{val: false, pos: t.pos}, nil
		case "none", "None":
			return &literal{val: nil, pos: t.pos}, nil
		}
		return &nameExpr{name: t.val, pos: t.pos}, nil
	case tokString:
		p.next()
		var b strings.Builder
		b.WriteString(t.val)
		for p.cur().kind == tokString {
			b.WriteString(p.next().val)
		}
		return &literal{val: b.String(), pos: t.pos}, nil
	case tokInt:
		p.next()
		n, err := strconv.ParseInt(t.val, 10, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(t.val, 64)
			if ferr != nil || math.IsInf(f, 0) {
				return nil, p.errorf(t, "integer literal %s out of range", t.val)
			}
			return &literal{val: f, pos: t.pos}, nil
		}
		return &literal{val: int(n), pos: t.pos}, nil
	case tokFloat:
		p.next()
		f, err := strconv.ParseFloat(t.val, 64)
		if err != nil && !math.IsInf(f, 0) {
			return nil, p.errorf(t, "bad float literal %s", t.val)
		}
		return &literal{val: f, pos: t.pos}, nil
	case tokOp:
		switch t.val {
		case "(":
			p.next()
			if p.isOp(")") {
				p.next()
				return &listExpr{tuple: true, pos: t.pos}, nil
			}
			x, err := p.parseTuple(true)
			if err != nil {
				return nil, err
			}
			if _, err := p.expectOp(")"); err != nil {
				return nil, err
			}
			return x, nil
		case "[":
			p.next()
			l := &listExpr{pos: t.pos}
			for !p.isOp("]") {
				if len(l.items) > 0 {
					if _, err := p.expectOp(","); err != nil {
						return nil, err
					}
					if p.isOp("]") {
						break
					}
				}
				x, err := p.parseExpression(true)
				if err != nil {
					return nil, err
				}
				l.items = append(l.items, x)
			}
			p.next()
			return l, nil
		case "{":
			p.next()
			d := &dictExpr{pos: t.pos}
			for !p.isOp("}") {
				if len(d.keys) > 0 {
					if _, err := p.expectOp(","); err != nil {
						return nil, err
					}
					if p.isOp("}") {
						break
					}
				}
				k, err := p.parseExpression(true)
				if err != nil {
					return nil, err
				}
				if _, err := p.expectOp(":"); err != nil {
					return nil, err
				}
				v, err := p.parseExpression(true)
				if err != nil {
					return nil, err
				}
				d.keys = append(d.keys, k)
				d.vals = append(d.vals, v)
			}
			p.next()
			return d, nil
		}
	}
	return nil, p.errorf(t, "unexpected %s", t.describe())
}

func (p *parser) parsePostfix(x expr) (expr, error) {
	for {
		t := p.cur()
		if t.kind != tokOp {
			return x, nil
		}
		switch t.val {
		case ".":
			p.next()
			nt := p.cur()
			switch nt.kind {
			case tokName:
				p.next()
				x = &attrExpr{obj: x, name: nt.val, pos: x.exprPos()}
			case tokInt:
				p.next()
				n, err := strconv.Atoi(nt.val)
				if err != nil {
					return nil, p.errorf(nt, "bad index %s", nt.val)
				}
				x = &indexExpr{obj: x, key: &literal{val: n, pos: nt.pos}, pos: x.exprPos()}
			default:
				return nil, p.errorf(nt, "expected an attribute name after '.', got %s", nt.describe())
			}
		case "[":
			p.next()
			var err error
			if x, err = p.parseSubscript(x, t); err != nil {
				return nil, err
			}
		case "(":
			var err error
			if x, err = p.parseCall(x); err != nil {
				return nil, err
			}
		default:
			return x, nil
		}
	}
}

func (p *parser) parseSubscript(obj expr, t token) (expr, error) {
	var parts [3]expr
	colons := 0
	for {
		if p.isOp("]") {
			break
		}
		if p.isOp(":") {
			p.next()
			colons++
			if colons > 2 {
				return nil, p.errorf(p.cur(), "too many ':' in subscript")
			}
			continue
		}
		if parts[colons] != nil {
			return nil, p.errorf(p.cur(), "expected ']' or ':' in subscript, got %s", p.cur().describe())
		}
		x, err := p.parseExpression(true)
		if err != nil {
			return nil, err
		}
		parts[colons] = x
	}
	p.next()
	if colons == 0 {
		if parts[0] == nil {
			return nil, p.errorf(t, "empty subscript")
		}
		return &indexExpr{obj: obj, key: parts[0], pos: obj.exprPos()}, nil
	}
	return &sliceExpr{obj: obj, start: parts[0], stop: parts[1], step: parts[2], pos: obj.exprPos()}, nil
}

func (p *parser) parseArgs() ([]expr, []kwExpr, error) {
	if _, err := p.expectOp("("); err != nil {
		return nil, nil, err
	}
	var args []expr
	var kwargs []kwExpr
	first := true
	for !p.isOp(")") {
		if !first {
			if _, err := p.expectOp(","); err != nil {
				return nil, nil, err
			}
			if p.isOp(")") {
				break
			}
		}
		first = false
		if p.cur().kind == tokName && p.peek().kind == tokOp && p.peek().val == "=" {
			name := p.next().val
			p.next()
			x, err := p.parseExpression(true)
			if err != nil {
				return nil, nil, err
			}
			kwargs = append(kwargs, kwExpr{name: name, x: x})
			continue
		}
		if len(kwargs) > 0 {
			return nil, nil, p.errorf(p.cur(), "positional argument follows keyword argument")
		}
		x, err := p.parseExpression(true)
		if err != nil {
			return nil, nil, err
		}
		args = append(args, x)
	}
	p.next()
	return args, kwargs, nil
}

func (p *parser) parseCall(fn expr) (expr, error) {
	pos := fn.exprPos()
	args, kwargs, err := p.parseArgs()
	if err != nil {
		return nil, err
	}
	return &callExpr{fn: fn, args: args, kwargs: kwargs, pos: pos}, nil
}

func (p *parser) dottedName() (token, error) {
	t, err := p.expectName()
	if err != nil {
		return t, err
	}
	for p.isOp(".") && p.peek().kind == tokName {
		p.next()
		t.val += "." + p.next().val
	}
	return t, nil
}

func (p *parser) parseFilter(x expr) (*filterExpr, error) {
	t, err := p.dottedName()
	if err != nil {
		return nil, err
	}
	if _, ok := filters[t.val]; !ok {
		return nil, p.errorf(t, "no filter named '%s'", t.val)
	}
	f := &filterExpr{x: x, name: t.val, pos: t.pos}
	if p.isOp("(") {
		if f.args, f.kwargs, err = p.parseArgs(); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (p *parser) parseFilterExpr(x expr) (expr, error) {
	for {
		switch {
		case p.isOp("|"):
			p.next()
			f, err := p.parseFilter(x)
			if err != nil {
				return nil, err
			}
			x = f
		case p.isName("is"):
			p.next()
			tx, err := p.parseTest(x)
			if err != nil {
				return nil, err
			}
			x = tx
		case p.isOp("("):
			c, err := p.parseCall(x)
			if err != nil {
				return nil, err
			}
			x = c
		default:
			return x, nil
		}
	}
}

func (p *parser) parseTest(x expr) (expr, error) {
	negate := false
	if p.isName("not") {
		p.next()
		negate = true
	}
	t, err := p.dottedName()
	if err != nil {
		return nil, err
	}
	if _, ok := tests[t.val]; !ok {
		return nil, p.errorf(t, "no test named '%s'", t.val)
	}
	te := &testExpr{x: x, name: t.val, negate: negate, pos: t.pos}
	c := p.cur()
	switch {
	case p.isOp("("):
		args, kwargs, err := p.parseArgs()
		if err != nil {
			return nil, err
		}
		if len(kwargs) > 0 {
			return nil, p.errorf(c, "keyword arguments to tests are not supported")
		}
		te.args = args
	case c.kind == tokString || c.kind == tokInt || c.kind == tokFloat || p.isOp("[") || p.isOp("{") ||
		c.kind == tokName && c.val != "else" && c.val != "or" && c.val != "and":
		if c.kind == tokName && c.val == "is" {
			return nil, p.errorf(c, "you cannot chain multiple tests with 'is'")
		}
		arg, err := p.parsePrimary()
		if err != nil {
			return nil, err
		}
		if arg, err = p.parsePostfix(arg); err != nil {
			return nil, err
		}
		te.args = []expr{arg}
	}
	return te, nil
}
