package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// preTokenizer splits pieces into words (HF's PreTokenizer). Pieces that
// are added tokens (id >= 0) pass through untouched.
type preTokenizer interface {
	preTokenize(ps []piece) ([]piece, error)
}

// splitEach replaces each non-token piece by what fn makes of it, dropping
// empty results (HF's PreTokenizedString.split).
func splitEach(ps []piece, fn func(p piece, out []piece) ([]piece, error)) ([]piece, error) {
	out := make([]piece, 0, len(ps))
	var err error
	for _, p := range ps {
		if p.id >= 0 {
			out = append(out, p)
			continue
		}
		n := len(out)
		out, err = fn(p, out)
		if err != nil {
			return nil, err
		}
		// Drop empty pieces in place.
		k := n
		for _, q := range out[n:] {
			if q.s != "" {
				out[k] = q
				k++
			}
		}
		out = out[:k]
	}
	return out, nil
}

type splitBehavior int

const (
	behaviorRemoved splitBehavior = iota
	behaviorIsolated
	behaviorMergedWithPrevious
	behaviorMergedWithNext
	behaviorContiguous
)

func parseBehavior(s string) (splitBehavior, error) {
	switch s {
	case "Removed":
		return behaviorRemoved, nil
	case "Isolated":
		return behaviorIsolated, nil
	case "MergedWithPrevious":
		return behaviorMergedWithPrevious, nil
	case "MergedWithNext":
		return behaviorMergedWithNext, nil
	case "Contiguous":
		return behaviorContiguous, nil
	}
	return 0, fmt.Errorf("unknown split behavior %q", s)
}

// splitPiece cuts p at the matches of m and handles the delimiters as HF's
// NormalizedString.split does; results are appended to out.
func splitPiece(p piece, m matcher, invert bool, b splitBehavior, out []piece) ([]piece, error) {
	ms, err := m.find(p.s)
	if err != nil {
		return nil, err
	}
	spans := matchesToSplits(p.s, ms)
	if invert {
		for i := range spans {
			spans[i].match = !spans[i].match
		}
	}
	// After this, span.match means "remove".
	switch b {
	case behaviorRemoved:
	case behaviorIsolated:
		for i := range spans {
			spans[i].match = false
		}
	case behaviorContiguous:
		merged := spans[:0:0]
		prev := false
		for _, s := range spans {
			if s.match == prev && len(merged) > 0 {
				merged[len(merged)-1].end = s.end
			} else {
				merged = append(merged, span{s.start, s.end, false})
			}
			prev = s.match
		}
		spans = merged
	case behaviorMergedWithPrevious:
		merged := spans[:0:0]
		prev := false
		for _, s := range spans {
			if s.match && !prev && len(merged) > 0 {
				merged[len(merged)-1].end = s.end
			} else {
				merged = append(merged, span{s.start, s.end, false})
			}
			prev = s.match
		}
		spans = merged
	case behaviorMergedWithNext:
		merged := spans[:0:0]
		prev := false
		for i := len(spans) - 1; i >= 0; i-- {
			s := spans[i]
			if s.match && !prev && len(merged) > 0 {
				merged[len(merged)-1].start = s.start
			} else {
				merged = append(merged, span{s.start, s.end, false})
			}
			prev = s.match
		}
		for i, j := 0, len(merged)-1; i < j; i, j = i+1, j-1 {
			merged[i], merged[j] = merged[j], merged[i]
		}
		spans = merged
	}
	for _, s := range spans {
		if !s.match {
			out = append(out, p.slice(s.start, s.end))
		}
	}
	return out, nil
}

type seqPreTokenizer []preTokenizer

func (s seqPreTokenizer) preTokenize(ps []piece) ([]piece, error) {
	var err error
	for _, p := range s {
		if ps, err = p.preTokenize(ps); err != nil {
			return nil, err
		}
	}
	return ps, nil
}

type prependScheme int

const (
	prependAlways prependScheme = iota
	prependFirst
	prependNever
)

type metaspacePre struct {
	replacement rune
	scheme      prependScheme
	split       bool
}

func (m metaspacePre) preTokenize(ps []piece) ([]piece, error) {
	repl := string(m.replacement)
	spaces := replaceNormalizer{pat: charMatcher(' '), content: repl}
	return splitEach(ps, func(p piece, out []piece) ([]piece, error) {
		if err := spaces.normalize(&p); err != nil {
			return nil, err
		}
		if !strings.HasPrefix(p.s, repl) &&
			(m.scheme == prependAlways || (m.scheme == prependFirst && p.atStart)) {
			_ = prependNormalizer{repl}.normalize(&p)
		}
		if !m.split {
			return append(out, p), nil
		}
		return splitPiece(p, charMatcher(m.replacement), false, behaviorMergedWithNext, out)
	})
}

// gpt2Pattern is the GPT-2 word regex the ByteLevel pre-tokenizer uses.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

type byteLevelPre struct {
	addPrefixSpace bool
	useRegex       bool
}

func (b byteLevelPre) preTokenize(ps []piece) ([]piece, error) {
	ps, err := splitEach(ps, func(p piece, out []piece) ([]piece, error) {
		if b.addPrefixSpace && !strings.HasPrefix(p.s, " ") {
			_ = prependNormalizer{" "}.normalize(&p)
		}
		if !b.useRegex {
			return append(out, p), nil
		}
		return splitPiece(p, gpt2Splitter{}, false, behaviorIsolated, out)
	})
	if err != nil {
		return nil, err
	}
	for i := range ps {
		if ps[i].id < 0 {
			if ps[i].zero > 0 {
				ps[i].zero = len(bytesToChars(ps[i].s[:ps[i].zero]))
			}
			ps[i].s = bytesToChars(ps[i].s)
		}
	}
	return ps, nil
}

type splitPre struct {
	pat      matcher
	behavior splitBehavior
	invert   bool
}

func (s splitPre) preTokenize(ps []piece) ([]piece, error) {
	return splitEach(ps, func(p piece, out []piece) ([]piece, error) {
		return splitPiece(p, s.pat, s.invert, s.behavior, out)
	})
}

// funcMatcher matches every character for which the function is true, one
// match per character (HF's Pattern for Fn(char) -> bool).
type funcMatcher func(rune) bool

func (f funcMatcher) find(s string) ([][2]int, error) {
	var out [][2]int
	for i, r := range s {
		if f(r) {
			out = append(out, [2]int{i, i + utf8.RuneLen(r)})
		}
	}
	return out, nil
}

type digitsPre struct{ individual bool }

func (d digitsPre) preTokenize(ps []piece) ([]piece, error) {
	b := behaviorContiguous
	if d.individual {
		b = behaviorIsolated
	}
	// Rust's char::is_numeric: general categories Nd, Nl and No.
	isNumeric := funcMatcher(isNumberHF)
	return splitEach(ps, func(p piece, out []piece) ([]piece, error) {
		return splitPiece(p, isNumeric, false, b, out)
	})
}

type whitespaceSplitPre struct{}

func (whitespaceSplitPre) preTokenize(ps []piece) ([]piece, error) {
	return splitEach(ps, func(p piece, out []piece) ([]piece, error) {
		return splitPiece(p, funcMatcher(isSpaceHF), false, behaviorRemoved, out)
	})
}

func parsePreTokenizer(raw []byte) (preTokenizer, error) {
	typ, err := componentType(raw)
	if err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %w", err)
	}
	switch typ {
	case "Sequence":
		var c struct {
			PreTokenizers []jsonRaw `json:"pretokenizers"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("pre_tokenizer Sequence: %w", err)
		}
		var seq seqPreTokenizer
		for _, r := range c.PreTokenizers {
			p, err := parsePreTokenizer(r)
			if err != nil {
				return nil, err
			}
			seq = append(seq, p)
		}
		return seq, nil
	case "Metaspace":
		m, err := parseMetaspace(raw)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer Metaspace: %w", err)
		}
		return m, nil
	case "ByteLevel":
		c := struct {
			AddPrefixSpace *bool `json:"add_prefix_space"`
			UseRegex       *bool `json:"use_regex"`
		}{}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("pre_tokenizer ByteLevel: %w", err)
		}
		return byteLevelPre{addPrefixSpace: boolOr(c.AddPrefixSpace, true), useRegex: boolOr(c.UseRegex, true)}, nil
	case "Split":
		var c struct {
			Pattern  patternJSON `json:"pattern"`
			Behavior string      `json:"behavior"`
			Invert   bool        `json:"invert"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("pre_tokenizer Split: %w", err)
		}
		b, err := parseBehavior(c.Behavior)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer Split: %w", err)
		}
		var m matcher
		switch {
		case c.Pattern.String != nil && c.Pattern.Regex == nil:
			// HF compiles the escaped string as a regex; an empty one
			// matches everywhere.
			m = literalMatcher(*c.Pattern.String)
		default:
			if m, err = c.Pattern.compile(); err != nil {
				return nil, fmt.Errorf("pre_tokenizer Split: %w", err)
			}
		}
		return splitPre{pat: m, behavior: b, invert: c.Invert}, nil
	case "Digits":
		var c struct {
			Individual bool `json:"individual_digits"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("pre_tokenizer Digits: %w", err)
		}
		return digitsPre{individual: c.Individual}, nil
	case "WhitespaceSplit":
		return whitespaceSplitPre{}, nil
	}
	return nil, unsupported("pre_tokenizer", typ)
}

// parseMetaspace reads the Metaspace fields shared by the pre-tokenizer and
// the decoder, including the legacy add_prefix_space.
func parseMetaspace(raw []byte) (metaspacePre, error) {
	var c struct {
		Replacement    *string `json:"replacement"`
		AddPrefixSpace *bool   `json:"add_prefix_space"`
		PrependScheme  *string `json:"prepend_scheme"`
		Split          *bool   `json:"split"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return metaspacePre{}, err
	}
	if c.Replacement == nil || utf8.RuneCountInString(*c.Replacement) != 1 {
		return metaspacePre{}, fmt.Errorf("\"replacement\" must be one character")
	}
	r, _ := utf8.DecodeRuneInString(*c.Replacement)
	m := metaspacePre{replacement: r, scheme: prependAlways, split: boolOr(c.Split, true)}
	if c.PrependScheme != nil {
		switch *c.PrependScheme {
		case "always":
			m.scheme = prependAlways
		case "first":
			m.scheme = prependFirst
		case "never":
			m.scheme = prependNever
		default:
			return metaspacePre{}, fmt.Errorf("unknown prepend_scheme %q", *c.PrependScheme)
		}
	}
	if c.AddPrefixSpace != nil && !*c.AddPrefixSpace {
		if m.scheme != prependNever && c.PrependScheme != nil {
			return metaspacePre{}, fmt.Errorf("add_prefix_space does not match declared prepend_scheme")
		}
		m.scheme = prependNever
	}
	return m, nil
}

func boolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}
