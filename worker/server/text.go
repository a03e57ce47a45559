package server

import (
	"strings"
	"unicode/utf8"
)

// decodeStream is the StreamDecoder used when Deps gives none: it decodes a
// sliding window of ids with Tokenizer.Decode and emits the new text once it
// no longer ends in an incomplete character (U+FFFD). The window starts one
// emission back, so that tokenizers that treat the first token specially
// (a leading space) decode the new tokens as they would in context.
type decodeStream struct {
	tok          Tokenizer
	skip         bool
	ids          []int32
	prefix, read int
}

func newDecodeStream(tok Tokenizer, skip bool) *decodeStream {
	return &decodeStream{tok: tok, skip: skip}
}

// Add implements StreamDecoder.
func (d *decodeStream) Add(id int32) (string, error) {
	d.ids = append(d.ids, id)
	prev, err := d.tok.Decode(d.ids[d.prefix:d.read], d.skip)
	if err != nil {
		return "", err
	}
	cur, err := d.tok.Decode(d.ids[d.prefix:], d.skip)
	if err != nil {
		return "", err
	}
	if len(cur) <= len(prev) || strings.HasSuffix(cur, string(utf8.RuneError)) {
		return "", nil
	}
	d.prefix, d.read = d.read, len(d.ids)
	return strings.TrimPrefix(cur, prev), nil
}

// Flush implements StreamDecoder.
func (d *decodeStream) Flush() string {
	prev, err := d.tok.Decode(d.ids[d.prefix:d.read], d.skip)
	if err != nil {
		return ""
	}
	cur, err := d.tok.Decode(d.ids[d.prefix:], d.skip)
	if err != nil || len(cur) <= len(prev) {
		return ""
	}
	d.prefix, d.read = len(d.ids), len(d.ids)
	return strings.TrimPrefix(cur, prev)
}

// stopMatcher cuts a stream of text at the first stop string. While
// streaming it holds back the longest suffix that could begin a stop string,
// so no text that a stop string removes is ever sent. Each stop string runs
// a Knuth-Morris-Pratt automaton over the bytes, so a push costs
// O(len(piece) * len(stops)) whatever the stop strings' lengths.
type stopMatcher struct {
	stops []stopAutomaton
	held  string
	done  bool
}

// stopAutomaton tracks one stop string: state is the length of the longest
// prefix of s that the text seen so far ends with.
type stopAutomaton struct {
	s     string
	fail  []int // fail[i]: longest proper prefix of s[:i+1] that is also its suffix
	state int
}

func newStopMatcher(stops []string) *stopMatcher {
	m := &stopMatcher{}
	for _, s := range stops {
		if s == "" {
			continue
		}
		fail := make([]int, len(s))
		for i, k := 1, 0; i < len(s); i++ {
			for k > 0 && s[i] != s[k] {
				k = fail[k-1]
			}
			if s[i] == s[k] {
				k++
			}
			fail[i] = k
		}
		m.stops = append(m.stops, stopAutomaton{s: s, fail: fail})
	}
	return m
}

// push adds piece and returns the text that is safe to emit. stopped
// reports that a stop string was found: the text returned ends just before
// it, and nothing more should be pushed.
func (m *stopMatcher) push(piece string) (out string, stopped bool) {
	if m.done {
		return "", true
	}
	if len(m.stops) == 0 {
		return piece, false
	}
	buf := m.held + piece
	base := len(m.held)
	for i := 0; i < len(piece); i++ {
		c := piece[i]
		cut := -1
		for j := range m.stops {
			a := &m.stops[j]
			for a.state > 0 && a.s[a.state] != c {
				a.state = a.fail[a.state-1]
			}
			if a.s[a.state] == c {
				a.state++
			}
			if a.state == len(a.s) {
				if start := base + i + 1 - len(a.s); cut < 0 || start < cut {
					cut = start
				}
			}
		}
		if cut >= 0 {
			m.held, m.done = "", true
			return buf[:cut], true
		}
	}
	hold := 0
	for _, a := range m.stops {
		hold = max(hold, a.state)
	}
	m.held = buf[len(buf)-hold:]
	return buf[:len(buf)-hold], false
}

// flush returns the held-back text at the end of the sequence.
func (m *stopMatcher) flush() string {
	h := m.held
	m.held = ""
	return h
}
