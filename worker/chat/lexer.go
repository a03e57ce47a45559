package chat

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// tokKind is the kind of a lexical token.
type tokKind int

const (
	tokEOF        tokKind = iota
	tokData               // literal template text
	tokVarBegin           // {{
	tokVarEnd             // }}
	tokBlockBegin         // {%
	tokBlockEnd           // %}
	tokName               // identifier or keyword
	tokString             // string literal (value already unescaped)
	tokInt                // integer literal
	tokFloat              // float literal
	tokOp                 // operator or punctuation
)

func (k tokKind) String() string {
	switch k {
	case tokEOF:
		return "end of template"
	case tokData:
		return "template data"
	case tokVarBegin:
		return "'{{'"
	case tokVarEnd:
		return "'}}'"
	case tokBlockBegin:
		return "'{%'"
	case tokBlockEnd:
		return "'%}'"
	case tokName:
		return "name"
	case tokString:
		return "string"
	case tokInt:
		return "integer"
	case tokFloat:
		return "float"
	default:
		return "operator"
	}
}

// Pos is a position in the template source (1-based line and column).
type Pos struct {
	Line, Col int
}

// String formats the position as "line L col C".
func (p Pos) String() string { return fmt.Sprintf("line %d col %d", p.Line, p.Col) }

type token struct {
	kind tokKind
	val  string
	pos  Pos
}

func (t token) describe() string {
	switch t.kind {
	case tokName, tokOp:
		return fmt.Sprintf("%q", t.val)
	case tokString:
		return "string literal"
	case tokInt, tokFloat:
		return "number " + t.val
	}
	return t.kind.String()
}

// maxBracketDepth bounds nesting inside one tag so that the recursive-descent
// parser cannot overflow the stack on hostile input.
const maxBracketDepth = 200

// lexer turns template source into tokens with Jinja2's whitespace rules for
// trim_blocks=True and lstrip_blocks=True.
type lexer struct {
	src          string
	pos          int
	lineStarting bool
	toks         []token
	// lineStarts holds the byte offset of each line start, for positions.
	lineStarts []int
	// lastOff and lastPos cache the latest position computed, so that
	// positions of tokens in source order cost O(1) each.
	lastOff int
	lastPos Pos
}

// normalizeSource applies Jinja2's source normalisation: every newline
// sequence becomes "\n" and one trailing newline is dropped
// (keep_trailing_newline=False).
func normalizeSource(src string) string {
	if strings.ContainsRune(src, '\r') {
		src = strings.ReplaceAll(src, "\r\n", "\n")
		src = strings.ReplaceAll(src, "\r", "\n")
	}
	return strings.TrimSuffix(src, "\n")
}

func lex(src string) ([]token, error) {
	lx := &lexer{src: src, lineStarting: true, lineStarts: []int{0}}
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			lx.lineStarts = append(lx.lineStarts, i+1)
		}
	}
	if err := lx.run(); err != nil {
		return nil, err
	}
	return lx.toks, nil
}

func (lx *lexer) posAt(off int) Pos {
	if lx.lastPos.Line > 0 && off >= lx.lastOff && strings.IndexByte(lx.src[lx.lastOff:off], '\n') < 0 {
		p := Pos{Line: lx.lastPos.Line, Col: lx.lastPos.Col + utf8.RuneCountInString(lx.src[lx.lastOff:off])}
		lx.lastOff, lx.lastPos = off, p
		return p
	}
	lo, hi := 0, len(lx.lineStarts)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if lx.lineStarts[mid] <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	col := utf8.RuneCountInString(lx.src[lx.lineStarts[lo]:off]) + 1
	p := Pos{Line: lo + 1, Col: col}
	lx.lastOff, lx.lastPos = off, p
	return p
}

func (lx *lexer) errorf(off int, format string, args ...any) error {
	return &SyntaxError{Pos: lx.posAt(off), Msg: fmt.Sprintf(format, args...)}
}

func (lx *lexer) emit(kind tokKind, val string, off int) {
	lx.toks = append(lx.toks, token{kind: kind, val: val, pos: lx.posAt(off)})
}

// isPySpace reports whether r is whitespace for Python's str.isspace.
func isPySpace(r rune) bool {
	if r >= 0x1c && r <= 0x1f {
		return true
	}
	return unicode.IsSpace(r)
}

func trimRightSpace(s string) string { return strings.TrimRightFunc(s, isPySpace) }

// skipSpace returns the offset after the whitespace that starts at off.
func (lx *lexer) skipSpace(off int) int {
	for off < len(lx.src) {
		r, n := utf8.DecodeRuneInString(lx.src[off:])
		if !isPySpace(r) {
			break
		}
		off += n
	}
	return off
}

// stripText applies the '-' and lstrip_blocks rules to the data that precedes
// a tag whose opening has the given sign.
func (lx *lexer) stripText(text string, sign byte, isVar bool) string {
	if sign == '-' {
		return trimRightSpace(text)
	}
	if sign == '+' || isVar {
		return text
	}
	lpos := strings.LastIndexByte(text, '\n') + 1
	if lpos > 0 || lx.lineStarting {
		rest := text[lpos:]
		if rest != "" && strings.TrimLeftFunc(rest, isPySpace) == "" {
			return text[:lpos]
		}
	}
	return text
}

func (lx *lexer) run() error {
	src := lx.src
	for lx.pos < len(src) {
		idx := -1
		for i := lx.pos; i+1 < len(src); i++ {
			if src[i] == '{' && (src[i+1] == '{' || src[i+1] == '%' || src[i+1] == '#') {
				idx = i
				break
			}
		}
		if idx < 0 {
			lx.emit(tokData, src[lx.pos:], lx.pos)
			lx.pos = len(src)
			break
		}
		kind := src[idx+1]
		var sign byte
		after := idx + 2
		if after < len(src) && (src[after] == '-' || src[after] == '+') {
			sign = src[after]
			after++
		}
		text := lx.stripText(src[lx.pos:idx], sign, kind == '{')
		if text != "" {
			lx.emit(tokData, text, lx.pos)
		}
		switch kind {
		case '#':
			if err := lx.comment(idx, after); err != nil {
				return err
			}
		case '%':
			if end, ok := lx.rawBegin(after); ok {
				if err := lx.raw(idx, end); err != nil {
					return err
				}
				continue
			}
			lx.emit(tokBlockBegin, "{%", idx)
			if err := lx.tag(after, false); err != nil {
				return err
			}
		default:
			lx.emit(tokVarBegin, "{{", idx)
			if err := lx.tag(after, true); err != nil {
				return err
			}
		}
	}
	lx.emit(tokEOF, "", len(src))
	return nil
}

// endTrim consumes what follows a closing delimiter at off with the given
// modifier and sets lineStarting.
func (lx *lexer) endTrim(off int, sign byte, trimNewline bool) {
	start := off
	switch {
	case sign == '-':
		off = lx.skipSpace(off)
	case sign == '+':
	case trimNewline && off < len(lx.src) && lx.src[off] == '\n':
		off++
	}
	lx.pos = off
	if off > start {
		lx.lineStarting = lx.src[off-1] == '\n'
	} else {
		lx.lineStarting = false
	}
}

func (lx *lexer) comment(begin, contentStart int) error {
	j := strings.Index(lx.src[contentStart:], "#}")
	if j < 0 {
		return lx.errorf(begin, "missing end of comment tag")
	}
	j += contentStart
	var sign byte
	if j-1 >= contentStart && (lx.src[j-1] == '-' || lx.src[j-1] == '+') {
		sign = lx.src[j-1]
	}
	lx.endTrim(j+2, sign, true)
	return nil
}

// rawBegin matches "\s*raw\s*(-%}\s*|%})" at off and returns the offset after it.
func (lx *lexer) rawBegin(off int) (int, bool) {
	o := lx.skipSpace(off)
	if !strings.HasPrefix(lx.src[o:], "raw") {
		return 0, false
	}
	o += 3
	if o < len(lx.src) && isIdentByte(lx.src[o]) {
		return 0, false
	}
	o = lx.skipSpace(o)
	switch {
	case strings.HasPrefix(lx.src[o:], "-%}"):
		return lx.skipSpace(o + 3), true
	case strings.HasPrefix(lx.src[o:], "%}"):
		return o + 2, true
	}
	return 0, false
}

// raw lexes the body of a raw block starting at off up to its endraw tag.
func (lx *lexer) raw(begin, off int) error {
	lx.lineStarting = off > 0 && lx.src[off-1] == '\n'
	for i := off; i+1 < len(lx.src); i++ {
		if lx.src[i] != '{' || lx.src[i+1] != '%' {
			continue
		}
		o := i + 2
		var sign byte
		if o < len(lx.src) && (lx.src[o] == '-' || lx.src[o] == '+') {
			sign = lx.src[o]
			o++
		}
		o = lx.skipSpace(o)
		if !strings.HasPrefix(lx.src[o:], "endraw") {
			continue
		}
		o = lx.skipSpace(o + 6)
		var esign byte
		switch {
		case strings.HasPrefix(lx.src[o:], "+%}"):
			esign = '+'
			o += 3
		case strings.HasPrefix(lx.src[o:], "-%}"):
			esign = '-'
			o += 3
		case strings.HasPrefix(lx.src[o:], "%}"):
			o += 2
		default:
			continue
		}
		text := lx.stripText(lx.src[off:i], sign, false)
		if text != "" {
			lx.emit(tokData, text, off)
		}
		lx.endTrim(o, esign, true)
		return nil
	}
	return lx.errorf(begin, "missing end of raw directive")
}

func isIdentByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

var threeOps = []string{"//", "**", "==", "!=", "<=", ">="}

// tag lexes the inside of a {{ }} or {% %} tag starting at off.
func (lx *lexer) tag(off int, isVar bool) error {
	src := lx.src
	begin := off - 2
	depth := 0
	var stack []byte
	for {
		off = lx.skipSpace(off)
		if off >= len(src) {
			if isVar {
				return lx.errorf(begin, "unexpected end of template, expected '}}'")
			}
			return lx.errorf(begin, "unexpected end of template, expected '%%}'")
		}
		rest := src[off:]
		if depth == 0 {
			if isVar {
				if strings.HasPrefix(rest, "-}}") {
					lx.emit(tokVarEnd, "}}", off)
					lx.endTrim(off+3, '-', false)
					return nil
				}
				if strings.HasPrefix(rest, "}}") {
					lx.emit(tokVarEnd, "}}", off)
					lx.endTrim(off+2, 0, false)
					return nil
				}
			} else {
				for _, e := range []struct {
					s    string
					sign byte
				}{{"+%}", '+'}, {"-%}", '-'}, {"%}", 0}} {
					if strings.HasPrefix(rest, e.s) {
						lx.emit(tokBlockEnd, "%}", off)
						lx.endTrim(off+len(e.s), e.sign, true)
						return nil
					}
				}
			}
		}
		c := rest[0]
		switch {
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			n := 1
			for n < len(rest) && isIdentByte(rest[n]) {
				n++
			}
			lx.emit(tokName, rest[:n], off)
			off += n
		case c >= '0' && c <= '9':
			n, isFloat := scanNumber(rest)
			kind := tokInt
			if isFloat {
				kind = tokFloat
			}
			lx.emit(kind, strings.ReplaceAll(rest[:n], "_", ""), off)
			off += n
		case c == '\'' || c == '"':
			s, n, err := unquote(rest)
			if err != nil {
				return lx.errorf(off, "%v", err)
			}
			lx.emit(tokString, s, off)
			off += n
		default:
			op := ""
			for _, o := range threeOps {
				if strings.HasPrefix(rest, o) {
					op = o
					break
				}
			}
			if op == "" {
				if !strings.ContainsRune("+-/*%~[](){}<>=.:|,;", rune(c)) {
					r, _ := utf8.DecodeRuneInString(rest)
					return lx.errorf(off, "unexpected character %q", r)
				}
				op = rest[:1]
			}
			switch op {
			case "(", "[", "{":
				depth++
				if depth > maxBracketDepth {
					return lx.errorf(off, "brackets nested too deeply")
				}
				stack = append(stack, op[0])
			case ")", "]", "}":
				want := map[byte]byte{')': '(', ']': '[', '}': '{'}[op[0]]
				if depth == 0 || stack[len(stack)-1] != want {
					return lx.errorf(off, "unexpected %q", op)
				}
				depth--
				stack = stack[:len(stack)-1]
			}
			lx.emit(tokOp, op, off)
			off += len(op)
		}
	}
}

// scanNumber scans an integer or float literal (with optional underscores
// and exponent) and reports its length and whether it is a float.
func scanNumber(s string) (int, bool) {
	digits := func(i int) int {
		start := i
		for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '_' && i > start && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9') {
			i++
		}
		return i
	}
	n := digits(0)
	isFloat := false
	if n+1 < len(s) && s[n] == '.' && s[n+1] >= '0' && s[n+1] <= '9' {
		n = digits(n + 1)
		isFloat = true
	}
	if n < len(s) && (s[n] == 'e' || s[n] == 'E') {
		m := n + 1
		if m < len(s) && (s[m] == '+' || s[m] == '-') {
			m++
		}
		if m < len(s) && s[m] >= '0' && s[m] <= '9' {
			n = digits(m)
			isFloat = true
		}
	}
	return n, isFloat
}

// unquote reads a Python-style quoted string at the start of s and returns
// its value and length in bytes.
func unquote(s string) (string, int, error) {
	q := s[0]
	var b strings.Builder
	i := 1
	for i < len(s) {
		c := s[i]
		if c == q {
			return b.String(), i + 1, nil
		}
		if c != '\\' {
			b.WriteByte(c)
			i++
			continue
		}
		if i+1 >= len(s) {
			break
		}
		e := s[i+1]
		i += 2
		switch e {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '\\', '\'', '"':
			b.WriteByte(e)
		case '\n':
		case 'a':
			b.WriteByte('\a')
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'v':
			b.WriteByte('\v')
		case '0':
			b.WriteByte(0)
		case 'x', 'u', 'U':
			n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
			if i+n > len(s) {
				return "", 0, fmt.Errorf("truncated \\%c escape in string literal", e)
			}
			var r rune
			for _, h := range s[i : i+n] {
				d := unhex(h)
				if d < 0 {
					return "", 0, fmt.Errorf("bad \\%c escape in string literal", e)
				}
				r = r*16 + rune(d)
			}
			if r > unicode.MaxRune {
				return "", 0, fmt.Errorf("bad \\%c escape in string literal", e)
			}
			b.WriteRune(r)
			i += n
		default:
			b.WriteByte('\\')
			b.WriteByte(e)
		}
	}
	return "", 0, fmt.Errorf("unterminated string literal")
}

func unhex(r rune) int {
	switch {
	case r >= '0' && r <= '9':
		return int(r - '0')
	case r >= 'a' && r <= 'f':
		return int(r-'a') + 10
	case r >= 'A' && r <= 'F':
		return int(r-'A') + 10
	}
	return -1
}
