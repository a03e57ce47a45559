package tokenizer

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// The decoder is HF's decoder chain recast as a pipeline of streaming
// stages, so that Decode and the StreamDecoder are one mechanism: Decode
// runs every token through and ends the stream, the StreamDecoder hands out
// what has come out so far. Concatenating the stream's pieces therefore
// gives Decode's string exactly, by construction.
//
// HF decoders map a list of token strings to a list of strings, which are
// joined at the end. Until a Fuse or ByteLevel decoder, stages see whole
// tokens (token); after one, the list is a single string that grows as
// tokens arrive (text). A stage holds back only what a later token could
// still change: a run of <0xNN> byte tokens, an incomplete UTF-8 sequence,
// trailing characters a Strip may remove, the start of a Replace pattern.

// decoderStep is one configured decoder; newStage makes its per-run state.
type decoderStep interface {
	newStage(next stage, fused bool) stage
	fuses() bool // after this step, stages see one growing string
}

type stage interface {
	token(s string) // a whole token (before any fuse)
	text(s string)  // more of the single fused string
	end()
}

// newPipeline builds the stages for one decoding run, writing into out.
func newPipeline(steps []decoderStep, out *strings.Builder) stage {
	fused := make([]bool, len(steps)+1)
	for i, s := range steps {
		fused[i+1] = fused[i] || s.fuses()
	}
	var next stage = &sinkStage{out: out, joinSpace: len(steps) == 0}
	for i := len(steps) - 1; i >= 0; i-- {
		next = steps[i].newStage(next, fused[i])
	}
	return next
}

// sinkStage joins the final strings: with "" after a decoder, with " " when
// there is no decoder at all (HF's tokens.join(" ")).
type sinkStage struct {
	out       *strings.Builder
	joinSpace bool
	n         int
}

func (s *sinkStage) token(t string) {
	if s.joinSpace && s.n > 0 {
		s.out.WriteByte(' ')
	}
	s.n++
	s.out.WriteString(t)
}
func (s *sinkStage) text(t string) { s.out.WriteString(t) }
func (s *sinkStage) end()          {}

// --- Replace ---

type replaceStep struct {
	pat     matcher
	literal string // the pattern when it is a non-empty literal
	content string
}

func (r replaceStep) fuses() bool { return false }
func (r replaceStep) newStage(next stage, fused bool) stage {
	return &replaceStage{cfg: r, next: next}
}

func (r replaceStep) apply(s string) string {
	if r.literal != "" {
		return strings.ReplaceAll(s, r.literal, r.content)
	}
	ms, err := r.pat.find(s)
	if err != nil || len(ms) == 0 {
		// A regex that fails at run time leaves the token unchanged.
		return s
	}
	var b strings.Builder
	last := 0
	for _, m := range ms {
		b.WriteString(s[last:m[0]])
		b.WriteString(r.content)
		last = m[1]
	}
	b.WriteString(s[last:])
	return b.String()
}

type replaceStage struct {
	cfg     replaceStep
	next    stage
	pending string
}

func (r *replaceStage) token(s string) { r.next.token(r.cfg.apply(s)) }

func (r *replaceStage) text(s string) {
	r.pending += s
	lit := r.cfg.literal
	if lit == "" {
		return // a regex needs the whole string
	}
	// Replace the complete matches, scanning left to right as the whole
	// string would be scanned; of the rest, keep back the longest suffix
	// that could still grow into a match.
	var b strings.Builder
	pos := 0
	for {
		i := strings.Index(r.pending[pos:], lit)
		if i < 0 {
			break
		}
		b.WriteString(r.pending[pos : pos+i])
		b.WriteString(r.cfg.content)
		pos += i + len(lit)
	}
	rest := r.pending[pos:]
	keep := 0
	for k := min(len(lit)-1, len(rest)); k > 0; k-- {
		if strings.HasSuffix(rest, lit[:k]) {
			keep = k
			break
		}
	}
	b.WriteString(rest[:len(rest)-keep])
	r.pending = rest[len(rest)-keep:]
	if b.Len() > 0 {
		r.next.text(b.String())
	}
}

func (r *replaceStage) end() {
	if r.pending != "" {
		r.next.text(r.cfg.apply(r.pending))
		r.pending = ""
	}
	r.next.end()
}

// --- ByteFallback ---

type byteFallbackStep struct{}

func (byteFallbackStep) fuses() bool { return false }
func (byteFallbackStep) newStage(next stage, fused bool) stage {
	return &byteFallbackStage{next: next}
}

// parseByteToken recognises "<0xNN>" as HF does (Rust's from_str_radix
// also takes a leading '+').
func parseByteToken(s string) (byte, bool) {
	if len(s) != 6 || s[:3] != "<0x" || s[5] != '>' {
		return 0, false
	}
	h := s[3:5]
	if h[0] == '+' {
		h = h[1:]
	}
	v := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		var d int
		switch {
		case c >= '0' && c <= '9':
			d = int(c - '0')
		case c >= 'a' && c <= 'f':
			d = int(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = int(c-'A') + 10
		default:
			return 0, false
		}
		v = v*16 + d
	}
	return byte(v), true
}

type byteFallbackStage struct {
	next    stage
	pending []byte
	// Fused mode: the one string is a byte token only if it is exactly
	// "<0xNN>", so hold its first 6 bytes until that is decided.
	head    string
	decided bool
}

func (b *byteFallbackStage) token(s string) {
	if v, ok := parseByteToken(s); ok {
		b.pending = append(b.pending, v)
		return
	}
	b.flush()
	b.next.token(s)
}

func (b *byteFallbackStage) flush() {
	if len(b.pending) == 0 {
		return
	}
	if utf8.Valid(b.pending) {
		b.next.token(string(b.pending))
	} else {
		for range b.pending {
			b.next.token("\uFFFD")
		}
	}
	b.pending = b.pending[:0]
}

func (b *byteFallbackStage) text(s string) {
	if b.decided {
		b.next.text(s)
		return
	}
	b.head += s
	if len(b.head) > 6 {
		b.decided = true
		b.next.text(b.head)
		b.head = ""
	}
}

func (b *byteFallbackStage) end() {
	b.flush()
	if !b.decided && b.head != "" {
		if v, ok := parseByteToken(b.head); ok {
			if v < utf8.RuneSelf {
				b.next.text(string(rune(v)))
			} else {
				b.next.text("\uFFFD")
			}
		} else {
			b.next.text(b.head)
		}
	}
	b.head, b.decided = "", false
	b.next.end()
}

// --- Fuse ---

type fuseStep struct{}

func (fuseStep) fuses() bool { return true }
func (fuseStep) newStage(next stage, fused bool) stage {
	return &fuseStage{next: next}
}

type fuseStage struct{ next stage }

func (f *fuseStage) token(s string) { f.next.text(s) }
func (f *fuseStage) text(s string)  { f.next.text(s) }
func (f *fuseStage) end()           { f.next.end() }

// --- Strip ---

type stripStep struct {
	content     rune
	start, stop int
}

func (stripStep) fuses() bool { return false }
func (s stripStep) newStage(next stage, fused bool) stage {
	return &stripStage{cfg: s, next: next, lead: s.start}
}

// apply strips one whole token (HF's Strip.decode_chain).
func (s stripStep) apply(tok string) string {
	lead := 0
	for i, r := range tok {
		if lead >= s.start || r != s.content {
			tok = tok[i:]
			break
		}
		lead++
		if i+utf8.RuneLen(r) == len(tok) {
			tok = ""
			break
		}
	}
	for n := 0; n < s.stop && tok != ""; n++ {
		r, size := utf8.DecodeLastRuneInString(tok)
		if r != s.content {
			break
		}
		tok = tok[:len(tok)-size]
	}
	return tok
}

type stripStage struct {
	cfg      stripStep
	next     stage
	lead     int  // leading content characters still to drop
	leadDone bool // a character other than content was seen
	trail    int  // content characters held back at the end
}

func (s *stripStage) token(t string) { s.next.token(s.cfg.apply(t)) }

func (s *stripStage) text(t string) {
	var b strings.Builder
	c := s.cfg.content
	for _, r := range t {
		if !s.leadDone {
			if s.lead > 0 && r == c {
				s.lead--
				continue
			}
			s.leadDone = true
		}
		if s.cfg.stop > 0 && r == c {
			s.trail++
			if s.trail > s.cfg.stop {
				b.WriteRune(c)
				s.trail--
			}
			continue
		}
		for ; s.trail > 0; s.trail-- {
			b.WriteRune(c)
		}
		b.WriteRune(r)
	}
	if b.Len() > 0 {
		s.next.text(b.String())
	}
}

func (s *stripStage) end() {
	s.lead, s.leadDone, s.trail = s.cfg.start, false, 0
	s.next.end()
}

// --- Metaspace ---

type metaspaceStep struct {
	replacement rune
	dropFirst   bool // prepend_scheme is not "never"
}

func (metaspaceStep) fuses() bool { return false }
func (m metaspaceStep) newStage(next stage, fused bool) stage {
	return &metaspaceStage{cfg: m, next: next}
}

// apply turns the replacement character back into spaces; in the first
// token (HF: index 0 of the list this decoder sees) it is dropped instead.
func (m metaspaceStep) apply(tok string, first bool) string {
	if !strings.ContainsRune(tok, m.replacement) {
		return tok
	}
	if first && m.dropFirst {
		return strings.ReplaceAll(tok, string(m.replacement), "")
	}
	return strings.ReplaceAll(tok, string(m.replacement), " ")
}

type metaspaceStage struct {
	cfg  metaspaceStep
	next stage
	n    int
}

func (m *metaspaceStage) token(s string) {
	m.n++
	m.next.token(m.cfg.apply(s, m.n == 1))
}

// After a fuse, everything is the one token at index 0.
func (m *metaspaceStage) text(s string) { m.next.text(m.cfg.apply(s, true)) }
func (m *metaspaceStage) end() {
	m.n = 0
	m.next.end()
}

// --- ByteLevel ---

type byteLevelStep struct{}

func (byteLevelStep) fuses() bool { return true }
func (byteLevelStep) newStage(next stage, fused bool) stage {
	return &byteLevelStage{next: next}
}

type byteLevelStage struct {
	next    stage
	pending []byte // bytes of an incomplete UTF-8 sequence
	whole   string // after a fuse: the one string, decoded at the end
}

func (b *byteLevelStage) token(s string) {
	b.pending = appendTokenBytes(b.pending, s)
	out, used := lossyPrefix(nil, b.pending, false)
	b.pending = append(b.pending[:0], b.pending[used:]...)
	if len(out) > 0 {
		b.next.text(string(out))
	}
}

// text: a ByteLevel decoder after a fuse must see the whole string, since a
// single unmapped character makes HF keep the string's own bytes.
func (b *byteLevelStage) text(s string) { b.whole += s }

func (b *byteLevelStage) end() {
	if b.whole != "" {
		b.pending = appendTokenBytes(b.pending, b.whole)
		b.whole = ""
	}
	if len(b.pending) > 0 {
		out, _ := lossyPrefix(nil, b.pending, true)
		b.pending = b.pending[:0]
		b.next.text(string(out))
	}
	b.next.end()
}

func parseDecoder(raw []byte) ([]decoderStep, error) {
	typ, err := componentType(raw)
	if err != nil {
		return nil, fmt.Errorf("decoder: %w", err)
	}
	switch typ {
	case "Sequence":
		var c struct {
			Decoders []jsonRaw `json:"decoders"`
		}
		if err := unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("decoder Sequence: %w", err)
		}
		var steps []decoderStep
		for _, r := range c.Decoders {
			s, err := parseDecoder(r)
			if err != nil {
				return nil, err
			}
			steps = append(steps, s...)
		}
		return steps, nil
	case "Replace":
		var c struct {
			Pattern patternJSON `json:"pattern"`
			Content *string     `json:"content"`
		}
		if err := unmarshal(raw, &c); err != nil || c.Content == nil {
			return nil, fmt.Errorf("decoder Replace: missing or bad field (%v)", err)
		}
		m, err := c.Pattern.compile()
		if err != nil {
			return nil, fmt.Errorf("decoder Replace: %w", err)
		}
		step := replaceStep{pat: m, content: *c.Content}
		if l, ok := m.(literalMatcher); ok {
			step.literal = string(l)
		}
		return []decoderStep{step}, nil
	case "ByteFallback":
		return []decoderStep{byteFallbackStep{}}, nil
	case "Fuse":
		return []decoderStep{fuseStep{}}, nil
	case "Strip":
		var c struct {
			Content *string `json:"content"`
			Start   int     `json:"start"`
			Stop    int     `json:"stop"`
		}
		if err := unmarshal(raw, &c); err != nil || c.Content == nil || utf8.RuneCountInString(*c.Content) != 1 {
			return nil, fmt.Errorf("decoder Strip: \"content\" must be one character (%v)", err)
		}
		if c.Start < 0 || c.Stop < 0 {
			return nil, fmt.Errorf("decoder Strip: negative start/stop")
		}
		r, _ := utf8.DecodeRuneInString(*c.Content)
		return []decoderStep{stripStep{content: r, start: c.Start, stop: c.Stop}}, nil
	case "Metaspace":
		m, err := parseMetaspace(raw)
		if err != nil {
			return nil, fmt.Errorf("decoder Metaspace: %w", err)
		}
		return []decoderStep{metaspaceStep{replacement: m.replacement, dropFirst: m.scheme != prependNever}}, nil
	case "ByteLevel":
		return []decoderStep{byteLevelStep{}}, nil
	}
	return nil, unsupported("decoder", typ)
}
