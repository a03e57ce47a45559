package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// piece is one part of the input on its way through the pipeline: the
// (normalized) text, or an added token already recognised (id >= 0).
//
// Hugging Face keeps a full byte alignment between the normalized and the
// original text. The only place where that alignment changes ids is the
// Metaspace pre-tokenizer's prepend_scheme "first", which asks whether a
// piece starts at original offset 0. So instead of the whole alignment we
// keep just enough to answer that: atStart (this piece's original offset is
// 0) and zero (how many leading bytes of s are aligned with original offset
// 0; a slice starting before zero also starts at offset 0).
type piece struct {
	s       string
	id      int32
	atStart bool
	zero    int
}

func newPiece(s string, atStart bool) piece {
	p := piece{s: s, id: -1, atStart: atStart}
	if atStart && s != "" {
		_, n := utf8.DecodeRuneInString(s)
		p.zero = n
	}
	return p
}

// slice returns p.s[a:b] as a piece, following HF's NormalizedString.slice.
func (p piece) slice(a, b int) piece {
	q := piece{s: p.s[a:b], id: -1, atStart: p.atStart && a < p.zero}
	if q.atStart {
		q.zero = min(p.zero, b) - a
	}
	return q
}

// fixZero keeps zero inside s and on a character boundary.
func fixZero(s string, zero int) int {
	if zero <= 0 {
		return 0
	}
	if zero >= len(s) {
		return len(s)
	}
	for zero < len(s) && !utf8.RuneStart(s[zero]) {
		zero++
	}
	return zero
}

// normalizer changes a piece's text (HF's Normalizer).
type normalizer interface {
	normalize(p *piece) error
}

type seqNormalizer []normalizer

func (n seqNormalizer) normalize(p *piece) error {
	for _, x := range n {
		if err := x.normalize(p); err != nil {
			return err
		}
	}
	return nil
}

type prependNormalizer struct{ prefix string }

func (n prependNormalizer) normalize(p *piece) error {
	if p.s == "" {
		return nil
	}
	p.s = n.prefix + p.s
	if p.zero > 0 {
		p.zero += len(n.prefix)
	}
	return nil
}

// replaceNormalizer replaces every match of a pattern (a literal string or
// a regex) with content.
type replaceNormalizer struct {
	pat     matcher
	content string
}

func (n replaceNormalizer) normalize(p *piece) error {
	ms, err := n.pat.find(p.s)
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		return nil
	}
	var b strings.Builder
	b.Grow(len(p.s))
	zero, stillZero := 0, p.zero > 0
	last := 0
	keep := func(a, e int) {
		b.WriteString(p.s[a:e])
		if stillZero && a < e {
			if a < p.zero {
				zero += min(e, p.zero) - a
			}
			if e > p.zero {
				stillZero = false
			}
		}
	}
	for _, m := range ms {
		keep(last, m[0])
		b.WriteString(n.content)
		// Inserted text takes the alignment of the match's last byte
		// (or offset 0 for an empty match at the very start).
		if stillZero && n.content != "" {
			if m[1] == 0 || m[1]-1 < p.zero {
				zero += len(n.content)
			} else {
				stillZero = false
			}
		}
		last = m[1]
	}
	keep(last, len(p.s))
	p.s = b.String()
	p.zero = fixZero(p.s, zero)
	return nil
}

type lowercaseNormalizer struct{}

func (lowercaseNormalizer) normalize(p *piece) error {
	if p.zero > 0 {
		p.zero = len(lowerFull(p.s[:p.zero]))
	}
	p.s = lowerFull(p.s)
	p.zero = fixZero(p.s, p.zero)
	return nil
}

type unicodeNormalizer struct {
	form norm.Form
	name string
}

func (n unicodeNormalizer) normalize(p *piece) error {
	if p.zero > 0 {
		p.zero = len(normalizeHF(n.form, n.name, p.s[:p.zero]))
	}
	p.s = normalizeHF(n.form, n.name, p.s)
	p.zero = fixZero(p.s, p.zero)
	return nil
}

type stripNormalizer struct{ left, right bool }

func (n stripNormalizer) normalize(p *piece) error {
	s := p.s
	if n.left {
		t := strings.TrimLeftFunc(s, unicode.IsSpace)
		p.zero = max(0, p.zero-(len(s)-len(t)))
		s = t
	}
	if n.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	p.s = s
	p.zero = fixZero(s, p.zero)
	return nil
}

type stripAccentsNormalizer struct{}

func (stripAccentsNormalizer) normalize(p *piece) error {
	keep := func(r rune) rune {
		if r >= 0x300 && isStrippedMark(r) {
			return -1
		}
		return r
	}
	if p.zero > 0 {
		p.zero = len(strings.Map(keep, p.s[:p.zero]))
	}
	p.s = strings.Map(keep, p.s)
	p.zero = fixZero(p.s, p.zero)
	return nil
}

// isStrippedMark is HF's is_combining_mark, with its Unicode version.
func isStrippedMark(r rune) bool {
	if unicode.Is(unicode.M, r) {
		return !unicode.Is(hfMarkKeep, r)
	}
	return unicode.Is(hfMarkStrip, r)
}

func parseNormalizer(raw []byte) (normalizer, error) {
	typ, err := componentType(raw)
	if err != nil {
		return nil, fmt.Errorf("normalizer: %w", err)
	}
	switch typ {
	case "Sequence":
		var c struct {
			Normalizers []jsonRaw `json:"normalizers"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("normalizer Sequence: %w", err)
		}
		var seq seqNormalizer
		for _, r := range c.Normalizers {
			n, err := parseNormalizer(r)
			if err != nil {
				return nil, err
			}
			if n != nil {
				seq = append(seq, n)
			}
		}
		return seq, nil
	case "Prepend":
		var c struct {
			Prepend *string `json:"prepend"`
		}
		if err := json.Unmarshal(raw, &c); err != nil || c.Prepend == nil {
			return nil, fmt.Errorf("normalizer Prepend: missing or bad \"prepend\" (%v)", err)
		}
		return prependNormalizer{*c.Prepend}, nil
	case "Replace":
		var c struct {
			Pattern patternJSON `json:"pattern"`
			Content *string     `json:"content"`
		}
		if err := json.Unmarshal(raw, &c); err != nil || c.Content == nil {
			return nil, fmt.Errorf("normalizer Replace: missing or bad field (%v)", err)
		}
		m, err := c.Pattern.compile()
		if err != nil {
			return nil, fmt.Errorf("normalizer Replace: %w", err)
		}
		return replaceNormalizer{pat: m, content: *c.Content}, nil
	case "NFC":
		return unicodeNormalizer{norm.NFC, "NFC"}, nil
	case "NFD":
		return unicodeNormalizer{norm.NFD, "NFD"}, nil
	case "NFKC":
		return unicodeNormalizer{norm.NFKC, "NFKC"}, nil
	case "NFKD":
		return unicodeNormalizer{norm.NFKD, "NFKD"}, nil
	case "Lowercase":
		return lowercaseNormalizer{}, nil
	case "Strip":
		var c struct {
			Left  bool `json:"strip_left"`
			Right bool `json:"strip_right"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("normalizer Strip: %w", err)
		}
		return stripNormalizer{left: c.Left, right: c.Right}, nil
	case "StripAccents":
		return stripAccentsNormalizer{}, nil
	}
	return nil, unsupported("normalizer", typ)
}
