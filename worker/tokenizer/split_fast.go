package tokenizer

import "unicode/utf8"

// Hand-written matchers for the two word regexes nearly every byte-level
// tokenizer uses. They give exactly the regex's matches (each alternative
// below is the regex's, tried in the same order, with the same greedy
// backtracking) and run an order of magnitude faster than a backtracking
// engine. TestFastSplitters checks them against regexp2 on random text.

// llama3Pattern is Llama 3's pre-tokenizer regex (also used by Qwen2 with
// \p{N} instead of \p{N}{1,3}; only this exact string takes the fast path).
const llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// fastMatcher returns a hand-written matcher for pattern, if there is one.
func fastMatcher(pattern string) (matcher, bool) {
	switch pattern {
	case gpt2Pattern:
		return gpt2Splitter{}, true
	case llama3Pattern:
		return llama3Splitter{}, true
	}
	return nil, false
}

type runeClass uint8

const (
	classOther runeClass = iota // not whitespace, letter or number
	classLetter
	classNumber
	classSpace
)

func classify(r rune) runeClass {
	switch {
	case r < utf8.RuneSelf:
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z':
			return classLetter
		case '0' <= r && r <= '9':
			return classNumber
		case r == ' ', '\t' <= r && r <= '\r':
			return classSpace
		}
		return classOther
	case isLetterHF(r):
		return classLetter
	case isNumberHF(r):
		return classNumber
	case isSpaceHF(r):
		return classSpace
	}
	return classOther
}

var asciiClass = func() (t [utf8.RuneSelf]runeClass) {
	for r := range t {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z':
			t[r] = classLetter
		case '0' <= r && r <= '9':
			t[r] = classNumber
		case r == ' ', '\t' <= r && r <= '\r':
			t[r] = classSpace
		}
	}
	return t
}()

// at decodes the rune at byte offset i of s, with its class.
func at(s string, i int) (rune, int, runeClass) {
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1, asciiClass[c]
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	return r, n, classify(r)
}

// runEnd returns the end of the run of runes of class c starting at i.
func runEnd(s string, i int, c runeClass) int {
	for i < len(s) {
		_, n, ci := at(s, i)
		if ci != c {
			break
		}
		i += n
	}
	return i
}

// spaceTail matches `\s+(?!\S)|\s+` at i (a whitespace rune): the
// whitespace run, less its last rune when a non-space follows it, unless
// that would leave nothing.
func spaceTail(s string, i int) int {
	j, last := i, i
	for j < len(s) {
		_, n, c := at(s, j)
		if c != classSpace {
			break
		}
		last = j
		j += n
	}
	if j < len(s) && last > i {
		return last
	}
	return j
}

// matchAll collects the contiguous matches next finds from each offset.
func matchAll(s string, next func(i int) int) [][2]int {
	out := make([][2]int, 0, len(s)/4+1)
	for i := 0; i < len(s); {
		j := next(i)
		out = append(out, [2]int{i, j})
		i = j
	}
	return out
}

// byteAt returns s[i], or 0 past the end.
func byteAt(s string, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}

// gpt2Splitter matches
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
type gpt2Splitter struct{}

func (gpt2Splitter) find(s string) ([][2]int, error) {
	return matchAll(s, func(i int) int {
		r, n, c := at(s, i)
		if r == '\'' {
			switch byteAt(s, i+1) {
			case 's', 't', 'm', 'd':
				return i + 2
			case 'r', 'v':
				if byteAt(s, i+2) == 'e' {
					return i + 3
				}
			case 'l':
				if byteAt(s, i+2) == 'l' {
					return i + 3
				}
			}
		}
		// ` ?X+` for X in letters, numbers, other: a space joins the run
		// of the class that follows it.
		if r == ' ' && i+n < len(s) {
			if _, _, c2 := at(s, i+n); c2 != classSpace {
				return runEnd(s, i+n, c2)
			}
		}
		if c != classSpace {
			return runEnd(s, i, c)
		}
		return spaceTail(s, i)
	}), nil
}

// llama3Splitter matches llama3Pattern.
type llama3Splitter struct{}

func (llama3Splitter) find(s string) ([][2]int, error) {
	return matchAll(s, func(i int) int {
		r, n, c := at(s, i)
		// (?i:'s|'t|'re|'ve|'m|'ll|'d); Oniguruma's case folding also
		// takes U+017F (long s) for s.
		if r == '\'' {
			switch b := byteAt(s, i+1); b {
			case 's', 'S', 't', 'T', 'm', 'M', 'd', 'D':
				return i + 2
			case 'r', 'R', 'v', 'V':
				if e := byteAt(s, i+2); e == 'e' || e == 'E' {
					return i + 3
				}
			case 'l', 'L':
				if l := byteAt(s, i+2); l == 'l' || l == 'L' {
					return i + 3
				}
			case 0xC5: // U+017F is C5 BF
				if byteAt(s, i+2) == 0xBF {
					return i + 3
				}
			}
		}
		// [^\r\n\p{L}\p{N}]?\p{L}+
		if c == classLetter {
			return runEnd(s, i, classLetter)
		}
		var c2 runeClass = classSpace // class of the next rune, if any
		if i+n < len(s) {
			_, _, c2 = at(s, i+n)
		}
		if c != classNumber && r != '\r' && r != '\n' && c2 == classLetter {
			return runEnd(s, i+n, classLetter)
		}
		// \p{N}{1,3}
		if c == classNumber {
			j := i + n
			for k := 1; k < 3 && j < len(s); k++ {
				_, m, cj := at(s, j)
				if cj != classNumber {
					break
				}
				j += m
			}
			return j
		}
		// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
		start := -1
		if c == classOther {
			start = i
		} else if r == ' ' && i+n < len(s) && c2 == classOther {
			start = i + n
		}
		if start >= 0 {
			j := runEnd(s, start, classOther)
			for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
				j++
			}
			return j
		}
		// Whitespace. \s*[\r\n]+: up to the last \r or \n of the
		// whitespace run, if it has one.
		j, nl := i, -1
		for j < len(s) {
			r, m, cj := at(s, j)
			if cj != classSpace {
				break
			}
			j += m
			if r == '\r' || r == '\n' {
				nl = j
			}
		}
		if nl >= 0 {
			return nl
		}
		return spaceTail(s, i)
	}), nil
}
