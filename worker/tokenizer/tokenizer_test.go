package tokenizer

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
)

func loadTestdata(t testing.TB, name string) *Tokenizer {
	t.Helper()
	tok, err := LoadFile(filepath.Join("testdata", name, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVocabAPI(t *testing.T) {
	tok, err := LoadFile(filepath.Join(fixtures, "models", "tiny-llama2", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.VocabSize(); got != 1000 {
		t.Errorf("VocabSize = %d, want 1000", got)
	}
	for _, c := range []struct {
		tok     string
		id      int32
		special bool
	}{{"<unk>", 0, true}, {"<s>", 1, true}, {"</s>", 2, true}, {"<0x00>", 3, false}, {"<0xFF>", 258, false}} {
		id, ok := tok.TokenID(c.tok)
		if !ok || id != c.id {
			t.Errorf("TokenID(%q) = %d, %v; want %d", c.tok, id, ok, c.id)
		}
		s, ok := tok.Token(c.id)
		if !ok || s != c.tok {
			t.Errorf("Token(%d) = %q, %v; want %q", c.id, s, ok, c.tok)
		}
		if got := tok.IsSpecial(c.id); got != c.special {
			t.Errorf("IsSpecial(%d) = %v", c.id, got)
		}
	}
	if _, ok := tok.TokenID("no such token"); ok {
		t.Error("TokenID of an unknown token succeeded")
	}
	for _, id := range []int32{-1, 1000, 1 << 30} {
		if _, ok := tok.Token(id); ok {
			t.Errorf("Token(%d) succeeded", id)
		}
		if tok.IsSpecial(id) {
			t.Errorf("IsSpecial(%d)", id)
		}
		_, err := tok.Decode([]int32{5, id}, false)
		if err == nil || !strings.Contains(err.Error(), "token id") {
			t.Errorf("Decode with id %d: err = %v, want one naming the id", id, err)
		}
		if _, err := tok.NewStreamDecoder(false).Add(id); err == nil {
			t.Errorf("stream Add(%d) succeeded", id)
		}
	}

	tok3, err := LoadFile(filepath.Join(fixtures, "models", "tiny-llama3", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := tok3.VocabSize(); got != 1205 {
		t.Errorf("llama3 VocabSize = %d, want 1205", got)
	}
	if id, ok := tok3.TokenID("<|eot_id|>"); !ok || id != 1204 || !tok3.IsSpecial(id) {
		t.Errorf("<|eot_id|>: %d %v special=%v", id, ok, tok3.IsSpecial(id))
	}
}

func TestLoadFS(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "handmade-unk", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{"m/tokenizer.json": {Data: data}}
	tok, err := LoadFS(fsys, "m/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if ids, err := tok.Encode("ab", false); err != nil || len(ids) != 1 {
		t.Errorf("Encode = %v, %v", ids, err)
	}
	if _, err := LoadFS(fsys, "missing.json"); err == nil {
		t.Error("LoadFS of a missing file succeeded")
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("LoadFile of a missing file succeeded")
	}
}

// TestLoadErrors: unsupported components are refused with an error naming
// their type; malformed files with an error saying what is wrong.
func TestLoadErrors(t *testing.T) {
	const model = `"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}`
	for _, c := range []struct {
		json        string
		want        string
		unsupported bool
	}{
		{`{"model":{"type":"Unigram","vocab":[]}}`, `model type "Unigram"`, true},
		{`{"model":{"type":"WordPiece","vocab":{}}}`, `model type "WordPiece"`, true},
		{`{` + model + `,"normalizer":{"type":"BertNormalizer"}}`, `normalizer type "BertNormalizer"`, true},
		{`{` + model + `,"normalizer":{"type":"Sequence","normalizers":[{"type":"Precompiled","precompiled_charsmap":""}]}}`, `normalizer type "Precompiled"`, true},
		{`{` + model + `,"pre_tokenizer":{"type":"BertPreTokenizer"}}`, `pre_tokenizer type "BertPreTokenizer"`, true},
		{`{` + model + `,"pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"UnicodeScripts"}]}}`, `pre_tokenizer type "UnicodeScripts"`, true},
		{`{` + model + `,"post_processor":{"type":"Frobnicate"}}`, `post_processor type "Frobnicate"`, true},
		{`{` + model + `,"decoder":{"type":"WordPiece","prefix":"##"}}`, `decoder type "WordPiece"`, true},
		{`{` + model + `,"decoder":{"type":"Sequence","decoders":[{"type":"CTC"}]}}`, `decoder type "CTC"`, true},
		{`not json`, "not a tokenizer.json", false},
		{`{}`, "model: missing", false},
		{`{"version":"2.0",` + model + `}`, `version "2.0"`, false},
		{`{"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}}`, `"b" not in vocab`, false},
		{`{"model":{"type":"BPE","vocab":{"a":0},"merges":["a b c"]}}`, "not two tokens", false},
		{`{"model":{"type":"BPE","vocab":{"a":0},"merges":[["a","b","c"]]}}`, "want 2", false},
		{`{"model":{"type":"BPE","vocab":{"a":0},"merges":[],"dropout":0.1}}`, "dropout", false},
		{`{` + model + `,"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(a"},"behavior":"Isolated","invert":false}}`, "regex", false},
		{`{` + model + `,"pre_tokenizer":{"type":"Split","pattern":{"String":"a"},"behavior":"Sideways","invert":false}}`, "Sideways", false},
		{`{` + model + `,"pre_tokenizer":{"type":"Metaspace","replacement":"ab"}}`, "one character", false},
		{`{` + model + `,"normalizer":{"type":"Replace","pattern":{"String":"a","Regex":"b"},"content":"x"}}`, "exactly one", false},
		{`{` + model + `,"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}}],"pair":[],"special_tokens":{}}}`, `missing special token "<s>"`, false},
		{`{` + model + `,"decoder":{"type":"Strip","content":"","start":1,"stop":0}}`, "one character", false},
		{`{` + model + `,"decoder":{}}`, `without a "type"`, false},
		{`{"model":{"type":"BPE","vocab":{"a":0,"b":2000000000},"merges":[]}}`, "too sparse", false},
		{`{` + model + `,"post_processor":{"type":"TemplateProcessing","single":[],"pair":[],"special_tokens":{"x":{"id":"x","ids":[-1]}}}}`, "has id -1", false},
	} {
		_, err := Load([]byte(c.json))
		if err == nil {
			t.Errorf("Load(%s) succeeded", c.json)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%s) = %v, want an error containing %q", c.json, err, c.want)
		}
		if got := errors.Is(err, ErrUnsupported); got != c.unsupported {
			t.Errorf("Load(%s): errors.Is(err, ErrUnsupported) = %v", c.json, got)
		}
	}
}

// TestStreamDecoder checks what the stream hands out, token by token.
func TestStreamDecoder(t *testing.T) {
	llama2, err := LoadFile(filepath.Join(fixtures, "models", "tiny-llama2", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	llama3, err := LoadFile(filepath.Join(fixtures, "models", "tiny-llama3", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	id := func(tok *Tokenizer, s string) int32 {
		t.Helper()
		i, ok := tok.TokenID(s)
		if !ok {
			t.Fatalf("no token %q", s)
		}
		return i
	}
	for _, c := range []struct {
		name   string
		tok    *Tokenizer
		skip   bool
		ids    []int32
		pieces []string // what each Add returns, then Flush
	}{
		{
			// "中" as three byte tokens: nothing until the character is whole.
			"byte fallback", llama2, false,
			// The run is held until it ends: a later byte could still make
			// it invalid, and HF then turns every byte of it into U+FFFD.
			[]int32{id(llama2, "<0xE4>"), id(llama2, "<0xB8>"), id(llama2, "<0xAD>"), id(llama2, "<0x21>"), id(llama2, "▁the")},
			[]string{"", "", "", "", "中! the", ""},
		},
		{
			// Once a run is invalid it stays so: its U+FFFDs are final.
			"doomed run", llama2, false,
			[]int32{id(llama2, "<0xE4>"), id(llama2, "<0x41>"), id(llama2, "<0xB8>"), id(llama2, "▁the")},
			[]string{"", "\uFFFD\uFFFD", "\uFFFD", " the", ""},
		},
		{
			// The leading "▁" is dropped only at the very start.
			"metaspace start", llama2, false,
			[]int32{id(llama2, "▁the"), id(llama2, "▁the")},
			[]string{"the", " the", ""},
		},
		{
			// Skipped BOS: the first kept token is still the start.
			"skip bos", llama2, true,
			[]int32{1, id(llama2, "▁the"), 2, id(llama2, "▁the")},
			[]string{"", "the", "", " the", ""},
		},
		{
			// Kept BOS: "<s>" then " the".
			"keep bos", llama2, false,
			[]int32{1, id(llama2, "▁the")},
			[]string{"<s>", " the", ""},
		},
		{
			// An invalid byte run is final only when it ends: <0x41> alone
			// would be "A", but with <0xE4> after it both become U+FFFD.
			"invalid run", llama2, false,
			[]int32{id(llama2, "<0x41>"), id(llama2, "<0xE4>"), id(llama2, "▁the")},
			[]string{"", "", "\uFFFD\uFFFD the", ""},
		},
		{
			// Byte-level: "🦙" is four bytes, each its own token here.
			"byte level", llama3, false,
			[]int32{id(llama3, "ðŁ"), id(llama3, "¦"), id(llama3, "Ļ"), id(llama3, "Hello")},
			[]string{"", "", "🦙", "Hello", ""},
		},
		{
			// An incomplete sequence at the end comes out at Flush.
			"byte level tail", llama3, false,
			[]int32{id(llama3, "Hello"), id(llama3, "ðŁ")},
			[]string{"Hello", "", "\uFFFD"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := c.tok.NewStreamDecoder(c.skip)
			var got []string
			for _, i := range c.ids {
				s, err := d.Add(i)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, s)
			}
			got = append(got, d.Flush())
			if diff := cmp.Diff(c.pieces, got); diff != "" {
				t.Errorf("pieces (-want +got):\n%s", diff)
			}
			want, err := c.tok.Decode(c.ids, c.skip)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "") != want {
				t.Errorf("concatenation %q != Decode %q", strings.Join(got, ""), want)
			}
			// After Flush the decoder starts a new sequence.
			again := ""
			for _, i := range c.ids {
				s, _ := d.Add(i)
				again += s
			}
			if again += d.Flush(); again != want {
				t.Errorf("second sequence %q, want %q", again, want)
			}
		})
	}
}

// TestLongWord: a 100,000-character word (no pre-tokenizer split, so the
// BPE merges over the whole of it) encodes in O(n log n), and decodes back.
func TestLongWord(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	letters := func(n int, alphabet []rune) string {
		b := make([]rune, n)
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	words := map[string]func(n int) string{
		"same letter": func(n int) string { return strings.Repeat("a", n) },
		"letters":     func(n int) string { return letters(n, []rune("abcdefghijklmnopqrstuvwxyz")) },
		"cjk":         func(n int) string { return letters(n, []rune("中文日本語字")) },
		"digits":      func(n int) string { return letters(n, []rune("0123456789")) },
	}
	for _, name := range []string{"llama2-metaspace", "llama3", "gpt2", "handmade-affix"} {
		tok := loadTestdata(t, name)
		for kind, gen := range words {
			small, large := gen(10_000), gen(100_000)
			tSmall := timeEncode(t, tok, small)
			tLarge := timeEncode(t, tok, large)
			ids, err := tok.Encode(large, false)
			if err != nil {
				t.Fatal(err)
			}
			if name != "handmade-affix" {
				if got, err := tok.Decode(ids, false); err != nil || got != large {
					t.Errorf("%s %s: round trip failed (%v)", name, kind, err)
				}
			}
			// n log n: ten times the input takes about 12 times as long;
			// quadratic would be 100 times.
			if tLarge > 40*tSmall+200*time.Millisecond {
				t.Errorf("%s %s: 100k chars took %v, 10k took %v: worse than n log n", name, kind, tLarge, tSmall)
			}
			t.Logf("%s %s: 10k %v, 100k %v (%d ids)", name, kind, tSmall, tLarge, len(ids))
		}
	}
}

func timeEncode(t *testing.T, tok *Tokenizer, s string) time.Duration {
	t.Helper()
	best := time.Duration(1<<63 - 1)
	for range 3 {
		start := time.Now()
		if _, err := tok.Encode(s, false); err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(start))
	}
	return best
}

// TestConcurrent encodes and decodes from many goroutines at once (run
// with -race); results must match the sequential ones.
func TestConcurrent(t *testing.T) {
	tok := loadTestdata(t, "llama3")
	_, g := loadGolden(t, filepath.Join("testdata", "llama3"))
	type result struct {
		ids  []int32
		text string
	}
	want := make([]result, len(g.Encode))
	for i, c := range g.Encode {
		want[i].ids = c.IDsWithSpecial
		text, err := tok.Decode(c.IDsWithSpecial, true)
		if err != nil {
			t.Fatal(err)
		}
		want[i].text = text
	}
	fresh := loadTestdata(t, "llama3") // empty cache: goroutines race to fill it
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for k := range g.Encode {
				i := (k + w*17) % len(g.Encode)
				ids, err := fresh.Encode(g.Encode[i].Text, true)
				if err != nil {
					t.Error(err)
					return
				}
				if !cmp.Equal(ids, want[i].ids, cmpIDs) {
					t.Errorf("Encode(%q) = %v, want %v", g.Encode[i].Text, ids, want[i].ids)
					return
				}
				text, err := fresh.Decode(ids, true)
				if err != nil || text != want[i].text {
					t.Errorf("Decode = %q, %v; want %q", text, err, want[i].text)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestInvalidUTF8: invalid bytes are read as U+FFFD, one per byte.
func TestInvalidUTF8(t *testing.T) {
	tok := loadTestdata(t, "llama3")
	got, err := tok.Encode("a\xffb\xe4\xb8", false)
	if err != nil {
		t.Fatal(err)
	}
	want, err := tok.Encode("a\uFFFDb\uFFFD\uFFFD", false)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got, cmpIDs); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

// TestLongStream: decoding is linear too, for a long run of byte tokens
// (held until it ends) and for ordinary text.
func TestLongStream(t *testing.T) {
	llama2 := loadTestdata(t, "llama2-metaspace")
	cjk := func(n int) []int32 {
		ids := make([]int32, 0, n)
		for len(ids) < n {
			for _, b := range []byte("中") {
				id, _ := llama2.TokenID(fmt.Sprintf("<0x%02X>", b))
				ids = append(ids, id)
			}
		}
		return ids
	}
	llama3 := loadTestdata(t, "llama3")
	words, err := llama3.Encode(strings.Repeat("The quick brown fox, 🦙 naïve café. ", 4000), false)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		tok *Tokenizer
		ids func(n int) []int32
	}{
		"byte run": {llama2, cjk},
		"text":     {llama3, func(n int) []int32 { return words[:n] }},
	} {
		run := func(ids []int32) time.Duration {
			start := time.Now()
			d := c.tok.NewStreamDecoder(false)
			var b strings.Builder
			for _, id := range ids {
				s, err := d.Add(id)
				if err != nil {
					t.Fatal(err)
				}
				b.WriteString(s)
			}
			b.WriteString(d.Flush())
			want, err := c.tok.Decode(ids, false)
			if err != nil || b.String() != want {
				t.Fatalf("%s: stream differs from Decode (%v)", name, err)
			}
			return time.Since(start)
		}
		small, large := run(c.ids(3000)), run(c.ids(30000))
		if large > 40*small+200*time.Millisecond {
			t.Errorf("%s: 30k ids took %v, 3k took %v: worse than linear", name, large, small)
		}
	}
}
