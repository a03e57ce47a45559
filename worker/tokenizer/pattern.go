package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// matcher finds the non-overlapping matches of a pattern, left to right, as
// byte ranges [start, end).
type matcher interface {
	find(s string) ([][2]int, error)
}

// literalMatcher matches a literal string (HF compiles it as an escaped
// regex; leftmost non-overlapping matches are the same thing).
type literalMatcher string

func (m literalMatcher) find(s string) ([][2]int, error) {
	if m == "" {
		// An empty regex matches at every character boundary.
		out := make([][2]int, 0, len(s)+1)
		for i := range s {
			out = append(out, [2]int{i, i})
		}
		return append(out, [2]int{len(s), len(s)}), nil
	}
	var out [][2]int
	for off := 0; ; {
		i := strings.Index(s[off:], string(m))
		if i < 0 {
			return out, nil
		}
		start := off + i
		off = start + len(m)
		out = append(out, [2]int{start, off})
	}
}

// charMatcher matches every occurrence of one character.
type charMatcher rune

func (m charMatcher) find(s string) ([][2]int, error) {
	var out [][2]int
	for i, r := range s {
		if r == rune(m) {
			out = append(out, [2]int{i, i + utf8.RuneLen(r)})
		}
	}
	return out, nil
}

// regexMatcher runs a pattern written for Oniguruma (what HF uses) on
// regexp2, which has the lookarounds, \p{..} classes and inline flags those
// patterns need and Go's regexp lacks.
type regexMatcher struct {
	re *regexp2.Regexp
}

const regexTimeout = 10 * time.Second

func compileRegex(pattern string) (regexMatcher, error) {
	re, err := regexp2.Compile(widenClasses(pattern), regexp2.None)
	if err != nil {
		return regexMatcher{}, fmt.Errorf("regex %q: %w", pattern, err)
	}
	// A backtracking engine can take exponential time on a pathological
	// pattern; fail the encode rather than hang it.
	re.MatchTimeout = regexTimeout
	return regexMatcher{re: re}, nil
}

func (m regexMatcher) find(s string) ([][2]int, error) {
	if s == "" {
		return nil, nil
	}
	runes := []rune(s)
	// byteAt[i] is the byte offset of rune i.
	byteAt := make([]int, len(runes)+1)
	off := 0
	for i, r := range runes {
		byteAt[i] = off
		off += utf8.RuneLen(r)
	}
	byteAt[len(runes)] = off
	var out [][2]int
	match, err := m.re.FindRunesMatch(runes)
	lastEnd := -1
	for err == nil && match != nil {
		start, end := match.Index, match.Index+match.Length
		// Like Oniguruma's iterator (and Rust's regex), an empty match
		// right where the previous match ended is not reported.
		if !(start == end && end == lastEnd) {
			out = append(out, [2]int{byteAt[start], byteAt[end]})
		}
		lastEnd = end
		match, err = m.re.FindNextMatch(match)
	}
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", m.re.String(), err)
	}
	return out, nil
}

// patternJSON is HF's {"String": "..."} or {"Regex": "..."}.
type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func (p patternJSON) compile() (matcher, error) {
	switch {
	case p.String != nil && p.Regex == nil:
		return literalMatcher(*p.String), nil
	case p.Regex != nil && p.String == nil:
		if m, ok := fastMatcher(*p.Regex); ok {
			return m, nil
		}
		return compileRegex(*p.Regex)
	}
	return nil, fmt.Errorf("pattern must have exactly one of \"String\" or \"Regex\"")
}

// matchesToSplits turns matches into HF's find_matches output: contiguous
// ranges covering s, each flagged as a match or not. An empty s gives one
// empty non-match.
func matchesToSplits(s string, ms [][2]int) []span {
	if s == "" {
		return []span{{0, 0, false}}
	}
	out := make([]span, 0, 2*len(ms)+1)
	prev := 0
	for _, m := range ms {
		if prev != m[0] {
			out = append(out, span{prev, m[0], false})
		}
		out = append(out, span{m[0], m[1], true})
		prev = m[1]
	}
	if prev != len(s) {
		out = append(out, span{prev, len(s), false})
	}
	return out
}

type span struct {
	start, end int
	match      bool
}

type jsonRaw = json.RawMessage
