package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Character classes as Hugging Face sees them (see unicode_tables.go).
var (
	extraL  = hfExtraClass["L"]
	extraN  = hfExtraClass["N"]
	extraM  = hfExtraClass["M"]
	extraNd = hfExtraClass["Nd"]
)

// inExtra reports whether r is in t; the tables hold no code point below
// U+0800, so ASCII and Latin text never searches them.
func inExtra(t *unicode.RangeTable, r rune) bool {
	return r >= 0x800 && t != nil && unicode.Is(t, r)
}

func isLetterHF(r rune) bool { return unicode.IsLetter(r) || inExtra(extraL, r) }
func isNumberHF(r rune) bool { return unicode.IsNumber(r) || inExtra(extraN, r) }

// isSpaceHF is Unicode White_Space (Oniguruma's \s, Rust's is_whitespace).
func isSpaceHF(r rune) bool { return unicode.IsSpace(r) }

// isWordChar is Rust regex's Unicode \w: Alphabetic, marks, decimal
// digits, connector punctuation and the joiners.
func isWordChar(r rune) bool {
	if r < utf8.RuneSelf {
		return r == '_' || ('0' <= r && r <= '9') || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z')
	}
	return unicode.In(r, unicode.L, unicode.Nl, unicode.Other_Alphabetic, unicode.M, unicode.Nd, unicode.Pc) ||
		r == 0x200C || r == 0x200D || inExtra(extraL, r) || inExtra(extraM, r) || inExtra(extraNd, r)
}

// lowerFull lowercases like Rust's char::to_lowercase (the full mapping,
// e.g. U+0130 becomes "i̇"), with HF's Unicode version.
func lowerFull(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		if r >= 0x80 {
			if l, ok := hfLower[r]; ok {
				b.WriteString(l)
				continue
			}
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// normalizeHF applies a Unicode normalization form as HF's tables do: code
// points those tables do not know are left alone, and since they are then
// starters with no mappings, the text between them normalizes on its own.
func normalizeHF(form norm.Form, name string, s string) string {
	keep := hfNormKeep[name]
	if keep == nil || !strings.ContainsFunc(s, func(r rune) bool { return inExtra(keep, r) }) {
		return form.String(s)
	}
	var b strings.Builder
	last := 0
	for i, r := range s {
		if inExtra(keep, r) {
			b.WriteString(form.String(s[last:i]))
			b.WriteRune(r)
			last = i + utf8.RuneLen(r)
		}
	}
	b.WriteString(form.String(s[last:]))
	return b.String()
}

// widenClasses rewrites an Oniguruma pattern for regexp2 so that \p{X}
// (and \pX) also covers the code points HF's newer Unicode puts in X. A
// \P{X} is left as it is.
func widenClasses(pattern string) string {
	if !strings.Contains(pattern, `\p`) {
		return pattern
	}
	var b strings.Builder
	depth := 0 // inside [...] (regexp2 allows nesting for subtraction)
	for i := 0; i < len(pattern); i++ {
		c := pattern[i]
		switch {
		case c == '\\' && i+1 < len(pattern):
			name, n := classEscape(pattern[i:])
			extra := hfExtraClass[name]
			if n == 0 || extra == nil {
				b.WriteString(pattern[i : i+2])
				i++
				continue
			}
			if depth == 0 {
				b.WriteByte('[')
			}
			b.WriteString(pattern[i : i+n])
			writeRanges(&b, extra)
			if depth == 0 {
				b.WriteByte(']')
			}
			i += n - 1
		case c == '[':
			depth++
			b.WriteByte(c)
			// A ']' right after '[' or '[^' is a literal.
			if i+1 < len(pattern) && pattern[i+1] == '^' {
				b.WriteByte('^')
				i++
			}
			if i+1 < len(pattern) && pattern[i+1] == ']' {
				b.WriteByte(']')
				i++
			}
		case c == ']' && depth > 0:
			depth--
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// classEscape parses "\p{Name}" or "\pN" at the start of s.
func classEscape(s string) (name string, n int) {
	if len(s) < 3 || s[0] != '\\' || s[1] != 'p' {
		return "", 0
	}
	if s[2] != '{' {
		return s[2:3], 3
	}
	end := strings.IndexByte(s, '}')
	if end < 0 {
		return "", 0
	}
	return s[3:end], end + 1
}

func writeRanges(b *strings.Builder, t *unicode.RangeTable) {
	emit := func(lo, hi, stride uint32) {
		if stride == 1 {
			b.WriteRune(rune(lo))
			if hi > lo {
				b.WriteByte('-')
				b.WriteRune(rune(hi))
			}
			return
		}
		for r := lo; r <= hi; r += stride {
			b.WriteRune(rune(r))
		}
	}
	for _, r := range t.R16 {
		emit(uint32(r.Lo), uint32(r.Hi), uint32(r.Stride))
	}
	for _, r := range t.R32 {
		emit(r.Lo, r.Hi, r.Stride)
	}
}
