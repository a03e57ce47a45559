package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// randomText draws from pieces that exercise every alternative of the word
// regexes: contractions in any case, letters and numbers of several
// scripts (Unicode 16 ones included), whitespace runs with and without
// newlines, punctuation, and arbitrary code points.
func randomText(rng *rand.Rand) string {
	frags := []string{
		"'", "'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'Ll", "'d", "'ſ", "ſ", "s", "re",
		" ", "  ", "\t", "\n", "\r\n", "\r", " \n ", "\u00a0", "\u3000", "\u2028", "\u0085",
		"a", "Z", "hello", "é", "中文", "ж", "\U00016100", "\U00010D40", "\U0002EBF0",
		"0", "12", "3456", "٣", "Ⅻ", "½", ".", ",", "!?", "...", "-", "_", "(", "\"", "😀", "\u0301", "\x00", "\x1f",
	}
	var b strings.Builder
	for range rng.IntN(12) + 1 {
		if rng.IntN(8) == 0 {
			r := rune(rng.IntN(0x30000))
			if r >= 0xD800 && r <= 0xDFFF {
				r = 'x'
			}
			b.WriteRune(r)
			continue
		}
		b.WriteString(frags[rng.IntN(len(frags))])
	}
	return b.String()
}

// TestFastSplitters checks the hand-written GPT-2 and Llama 3 matchers
// against the regex engine (with the same Unicode classes).
func TestFastSplitters(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		pattern string
		fast    matcher
	}{{gpt2Pattern, gpt2Splitter{}}, {llama3Pattern, llama3Splitter{}}} {
		re, err := compileRegex(c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		for range 5000 {
			s := randomText(rng)
			compareMatchers(t, re, c.fast, s)
		}
	}
}

func compareMatchers(t *testing.T, re, fast matcher, s string) {
	t.Helper()
	if strings.Contains(s, "'ſ") {
		// Oniguruma (HF) case-folds U+017F to s in (?i:'s); regexp2 does
		// not. The goldens check the fast path against HF itself here.
		return
	}
	want, err := re.find(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fast.find(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 && len(got) == 0 {
		return
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("%T on %q (-regex +fast):\n%s", fast, s, d)
	}
}

func FuzzSplitters(f *testing.F) {
	for _, s := range []string{"", "I'm here", "a  b\n\n c", "'ſx", "123456 x", " ..\r\n", "\t\tword"} {
		f.Add(s)
	}
	gpt2, err := compileRegex(gpt2Pattern)
	if err != nil {
		f.Fatal(err)
	}
	llama3, err := compileRegex(llama3Pattern)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		s = strings.ToValidUTF8(s, "\uFFFD")
		compareMatchers(t, gpt2, gpt2Splitter{}, s)
		compareMatchers(t, llama3, llama3Splitter{}, s)
	})
}

// TestWidenClasses checks the rewrite that adds HF's newer Unicode to
// \p{..} classes inside and outside brackets.
func TestWidenClasses(t *testing.T) {
	for _, c := range []struct {
		pattern, text string
		matches       int
	}{
		{`\p{L}+`, "\U00016100\U00016101ab", 1},
		{`[^\s\p{L}\p{N}]`, "!?", 2},
		{`\pL`, "\U00016100", 1},
		{`\p{N}`, "\U00010D407", 2},
		{`[\]\p{L}]+`, "]\U00016100", 1},
	} {
		m, err := compileRegex(c.pattern)
		if err != nil {
			t.Fatalf("%s: %v", c.pattern, err)
		}
		got, err := m.find(c.text)
		if err != nil || len(got) != c.matches || got[0][0] != 0 || got[len(got)-1][1] != len(c.text) {
			t.Errorf("%s on %+q: %v %v, want %d matches covering it", c.pattern, c.text, got, err, c.matches)
		}
	}
	m, err := compileRegex(`[^\s\p{L}\p{N}]+`)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := m.find("\U00016100\U00010D40"); len(got) != 0 {
		t.Errorf("negated class matched new letters/digits: %v", got)
	}
	// The tables must hold nothing below U+0800: inExtra skips those.
	for name, tab := range hfExtraClass {
		for _, r := range tab.R16 {
			if r.Lo < 0x800 {
				t.Errorf("hfExtraClass[%q] has %U", name, r.Lo)
			}
		}
	}
	for name, tab := range hfNormKeep {
		for _, r := range tab.R16 {
			if r.Lo < 0x800 {
				t.Errorf("hfNormKeep[%q] has %U", name, r.Lo)
			}
		}
	}
}
