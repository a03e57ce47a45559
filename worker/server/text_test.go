package server

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestStopMatcher(t *testing.T) {
	tests := []struct {
		name    string
		stops   []string
		pieces  []string
		want    []string // emitted per push
		stopped bool
		tail    string // flushed at the end when not stopped
	}{
		{"no stops passes through", nil, []string{"ab", "c"}, []string{"ab", "c"}, false, ""},
		{"match inside one piece", []string{"lo"}, []string{"hello"}, []string{"hel"}, true, ""},
		{"match across pieces", []string{"o w"}, []string{"hell", "o", " ", "wor"}, []string{"hell", "", "", ""}, true, ""},
		{"held prefix released", []string{"xyz"}, []string{"ab x", "yq"}, []string{"ab ", "xyq"}, false, ""},
		{"held prefix at end flushed", []string{"xyz"}, []string{"abxy"}, []string{"ab"}, false, "xy"},
		{"earliest of two", []string{"cd", "bc"}, []string{"abcd"}, []string{"a"}, true, ""},
		{"longest possible prefix held", []string{"aab"}, []string{"xa", "a", "c"}, []string{"x", "", "aac"}, false, ""},
		{"multibyte", []string{"é!"}, []string{"caf", "é", "!"}, []string{"caf", "", ""}, true, ""},
		{"stop spanning held and new", []string{"abc"}, []string{"xab", "cy"}, []string{"x", ""}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newStopMatcher(tt.stops)
			var got []string
			stopped := false
			for _, p := range tt.pieces {
				if stopped {
					break
				}
				var out string
				out, stopped = m.push(p)
				got = append(got, out)
			}
			want := tt.want
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("emitted (-want +got):\n%s", diff)
			}
			if stopped != tt.stopped {
				t.Errorf("stopped %v, want %v", stopped, tt.stopped)
			}
			if !stopped {
				if tail := m.flush(); tail != tt.tail {
					t.Errorf("tail %q, want %q", tail, tt.tail)
				}
			}
		})
	}
}

func TestDecodeStreamWholeCharacters(t *testing.T) {
	text := "naïve 日本語 🙂 done"
	ids, err := byteTokenizer{}.Encode(text, true)
	if err != nil {
		t.Fatal(err)
	}
	d := newDecodeStream(byteTokenizer{}, true)
	var b strings.Builder
	for _, id := range ids {
		piece, err := d.Add(id)
		if err != nil {
			t.Fatal(err)
		}
		if strings.ContainsRune(piece, '\uFFFD') {
			t.Fatalf("partial character emitted: %q", piece)
		}
		b.WriteString(piece)
	}
	b.WriteString(d.Flush())
	if b.String() != text {
		t.Errorf("got %q, want %q", b.String(), text)
	}
}

func TestDecodeStreamFlushesIncomplete(t *testing.T) {
	d := newDecodeStream(byteTokenizer{}, true)
	ids, err := byteTokenizer{}.Encode("a\xc3", false)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, id := range ids {
		piece, err := d.Add(id)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(piece)
	}
	b.WriteString(d.Flush())
	if b.String() != "a\uFFFD" {
		t.Errorf("got %q", b.String())
	}
}

// TestStopMatcherRandom compares the matcher over random splits with a
// direct search: the text ends before the stop string that completes first.
func TestStopMatcherRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	word := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = "abc"[rng.IntN(3)]
		}
		return string(b)
	}
	for iter := 0; iter < 3000; iter++ {
		text := word(rng.IntN(40))
		var stops []string
		for k := rng.IntN(4); k > 0; k-- {
			stops = append(stops, word(1+rng.IntN(5)))
		}
		want, wantStop := text, false
		bestEnd, bestStart := len(text)+1, 0
		for _, s := range stops {
			if i := strings.Index(text, s); i >= 0 && (i+len(s) < bestEnd || i+len(s) == bestEnd && i < bestStart) {
				bestEnd, bestStart = i+len(s), i
			}
		}
		if bestEnd <= len(text) {
			want, wantStop = text[:bestStart], true
		}
		m := newStopMatcher(stops)
		var got strings.Builder
		stopped := false
		for rest := text; rest != "" && !stopped; {
			n := 1 + rng.IntN(len(rest))
			var out string
			out, stopped = m.push(rest[:n])
			got.WriteString(out)
			rest = rest[n:]
		}
		if !stopped {
			got.WriteString(m.flush())
		}
		if got.String() != want || stopped != wantStop {
			t.Fatalf("text %q stops %q: got %q (stopped %v), want %q (%v)", text, stops, got.String(), stopped, want, wantStop)
		}
	}
}
