package chat

// node is a template statement.
type node interface{ nodePos() Pos }

// expr is a template expression.
type expr interface{ exprPos() Pos }

type (
	textNode struct {
		text string
		pos  Pos
	}
	outputNode struct {
		x   expr
		pos Pos
	}
	ifNode struct {
		conds  []expr
		bodies [][]node
		els    []node
		pos    Pos
	}
	forNode struct {
		targets []string
		iter    expr
		cond    expr
		body    []node
		els     []node
		pos     Pos
	}
	setNode struct {
		targets []string
		attr    string // non-empty for {% set ns.attr = v %}
		value   expr
		body    []node // block set when value is nil
		filters []*filterExpr
		pos     Pos
	}
	macroNode struct {
		name   string
		params []param
		body   []node
		pos    Pos
	}
	callBlockNode struct {
		call   *callExpr
		params []param
		body   []node
		pos    Pos
	}
	filterBlockNode struct {
		filters []*filterExpr
		body    []node
		pos     Pos
	}
	breakNode    struct{ pos Pos }
	continueNode struct{ pos Pos }
	seqNode      struct {
		body []node
		pos  Pos
	}
)

type param struct {
	name string
	def  expr
}

func (n *textNode) nodePos() Pos        { return n.pos }
func (n *outputNode) nodePos() Pos      { return n.pos }
func (n *ifNode) nodePos() Pos          { return n.pos }
func (n *forNode) nodePos() Pos         { return n.pos }
func (n *setNode) nodePos() Pos         { return n.pos }
func (n *macroNode) nodePos() Pos       { return n.pos }
func (n *callBlockNode) nodePos() Pos   { return n.pos }
func (n *filterBlockNode) nodePos() Pos { return n.pos }
func (n *breakNode) nodePos() Pos       { return n.pos }
func (n *continueNode) nodePos() Pos    { return n.pos }
func (n *seqNode) nodePos() Pos         { return n.pos }

type (
	literal struct {
		val value
		pos Pos
	}
	nameExpr struct {
		name string
		pos  Pos
	}
	listExpr struct {
		items []expr
		tuple bool
		pos   Pos
	}
	dictExpr struct {
		keys, vals []expr
		pos        Pos
	}
	attrExpr struct {
		obj  expr
		name string
		pos  Pos
	}
	indexExpr struct {
		obj, key expr
		pos      Pos
	}
	sliceExpr struct {
		obj               expr
		start, stop, step expr
		pos               Pos
	}
	callExpr struct {
		fn     expr
		args   []expr
		kwargs []kwExpr
		pos    Pos
	}
	filterExpr struct {
		x      expr // nil inside a filter block
		name   string
		args   []expr
		kwargs []kwExpr
		pos    Pos
	}
	testExpr struct {
		x      expr
		name   string
		args   []expr
		negate bool
		pos    Pos
	}
	unaryExpr struct {
		op  string
		x   expr
		pos Pos
	}
	binaryExpr struct {
		op   string
		l, r expr
		pos  Pos
	}
	compareExpr struct {
		first expr
		ops   []string
		rest  []expr
		pos   Pos
	}
	condExpr struct {
		cond, then, els expr
		pos             Pos
	}
)

type kwExpr struct {
	name string
	x    expr
}

func (e *literal) exprPos() Pos     { return e.pos }
func (e *nameExpr) exprPos() Pos    { return e.pos }
func (e *listExpr) exprPos() Pos    { return e.pos }
func (e *dictExpr) exprPos() Pos    { return e.pos }
func (e *attrExpr) exprPos() Pos    { return e.pos }
func (e *indexExpr) exprPos() Pos   { return e.pos }
func (e *sliceExpr) exprPos() Pos   { return e.pos }
func (e *callExpr) exprPos() Pos    { return e.pos }
func (e *filterExpr) exprPos() Pos  { return e.pos }
func (e *testExpr) exprPos() Pos    { return e.pos }
func (e *unaryExpr) exprPos() Pos   { return e.pos }
func (e *binaryExpr) exprPos() Pos  { return e.pos }
func (e *compareExpr) exprPos() Pos { return e.pos }
func (e *condExpr) exprPos() Pos    { return e.pos }
