package tokenizer

import (
	"encoding/json"
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
	newStage(next stage) stage
}

// stage is a decoder's state in one run. Stages before the first Fuse or
// ByteLevel receive token; the ones after it receive text.
type stage interface {
	token(s string) // a whole token (before any fuse)
	text(s string)  // more of the single fused string
	end()
}

// newPipeline builds the stages for one decoding run, writing into out.
func newPipeline(steps []decoderStep, out *strings.Builder) stage {
	var next stage = &sinkStage{out: out, joinSpace: len(steps) == 0}
	for i := len(steps) - 1; i >= 0; i-- {
		next = steps[i].newStage(next)
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

func (r replaceStep) newStage(next stage) stage {
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
	whole   strings.Builder // a regex pattern needs the whole fused string
}

func (r *replaceStage) token(s string) { r.next.token(r.cfg.apply(s)) }

func (r *replaceStage) text(s string) {
	lit := r.cfg.literal
	if lit == "" {
		r.whole.WriteString(s)
		return
	}
	r.pending += s
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
	if r.whole.Len() > 0 {
		r.pending = r.whole.String()
		r.whole.Reset()
	}
	if r.pending != "" {
		r.next.text(r.cfg.apply(r.pending))
		r.pending = ""
	}
	r.next.end()
}

// --- ByteFallback ---

type byteFallbackStep struct{}

func (byteFallbackStep) newStage(next stage) stage {
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
	pending []byte // the current run of byte tokens
	valid   int    // pending[:valid] is whole, valid UTF-8 characters
	// doomed: the run already holds an invalid sequence, so HF will turn
	// every byte of it into U+FFFD whatever follows; those are final.
	doomed bool
	// Fused mode: the one string is a byte token only if it is exactly
	// "<0xNN>", so hold its first 6 bytes until that is decided.
	head    string
	decided bool
}

// A run of byte tokens becomes its UTF-8 text if the whole run is valid,
// else one U+FFFD per byte; until the run ends, a valid start can still be
// spoiled, so only a doomed run is handed on early.
func (b *byteFallbackStage) token(s string) {
	v, ok := parseByteToken(s)
	if !ok {
		b.flush()
		b.next.token(s)
		return
	}
	if b.doomed {
		b.next.token("\uFFFD")
		return
	}
	b.pending = append(b.pending, v)
	// Check only the new bytes: O(1) per byte token.
	for b.valid < len(b.pending) && utf8.FullRune(b.pending[b.valid:]) {
		r, n := utf8.DecodeRune(b.pending[b.valid:])
		if r == utf8.RuneError && n == 1 {
			b.doomed = true
			for range b.pending {
				b.next.token("\uFFFD")
			}
			b.pending, b.valid = b.pending[:0], 0
			return
		}
		b.valid += n
	}
}

func (b *byteFallbackStage) flush() {
	b.doomed = false
	if len(b.pending) == 0 {
		return
	}
	if b.valid == len(b.pending) {
		b.next.token(string(b.pending))
	} else { // an incomplete character at the end
		for range b.pending {
			b.next.token("\uFFFD")
		}
	}
	b.pending, b.valid = b.pending[:0], 0
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
	b.next.end()
}

// --- Fuse ---

type fuseStep struct{}

func (fuseStep) newStage(next stage) stage {
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

func (s stripStep) newStage(next stage) stage {
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

// end drops the held trailing content characters (at most stop of them).
func (s *stripStage) end() { s.next.end() }

// --- Metaspace ---

type metaspaceStep struct {
	replacement rune
	dropFirst   bool // prepend_scheme is not "never"
}

func (m metaspaceStep) newStage(next stage) stage {
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
func (m *metaspaceStage) end()          { m.next.end() }

// --- ByteLevel ---

type byteLevelStep struct{}

func (byteLevelStep) newStage(next stage) stage {
	return &byteLevelStage{next: next}
}

type byteLevelStage struct {
	next    stage
	pending []byte          // bytes of an incomplete UTF-8 sequence
	whole   strings.Builder // after a fuse: the one string, decoded at the end
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
func (b *byteLevelStage) text(s string) { b.whole.WriteString(s) }

func (b *byteLevelStage) end() {
	if b.whole.Len() > 0 {
		b.pending = appendTokenBytes(b.pending, b.whole.String())
		b.whole.Reset()
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
		if err := json.Unmarshal(raw, &c); err != nil {
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
		if err := json.Unmarshal(raw, &c); err != nil || c.Content == nil {
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
		if err := json.Unmarshal(raw, &c); err != nil || c.Content == nil || utf8.RuneCountInString(*c.Content) != 1 {
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
