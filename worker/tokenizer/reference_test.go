package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The project's fixtures (scripts/make_fixtures.py): tiny models with real
// trained tokenizers, and what transformers / tokenizers return for them.
const fixtures = "../../testdata"

// refCase is one entry of reference/<model>/tokenize.json or
// tokenizers/<name>/expected.json.
type refCase struct {
	Text               string  `json:"text"`
	AddSpecialTokens   bool    `json:"add_special_tokens"`
	IDs                []int32 `json:"ids"`
	Decoded            string  `json:"decoded"`
	DecodedSkipSpecial string  `json:"decoded_skip_special"`
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// referenceSets lists (name, tokenizer.json, cases file) for every fixture.
func referenceSets(t *testing.T) [][3]string {
	t.Helper()
	var sets [][3]string
	refs, _ := filepath.Glob(filepath.Join(fixtures, "reference", "*", "tokenize.json"))
	for _, f := range refs {
		m := filepath.Base(filepath.Dir(f))
		sets = append(sets, [3]string{m, filepath.Join(fixtures, "models", m, "tokenizer.json"), f})
	}
	toks, _ := filepath.Glob(filepath.Join(fixtures, "tokenizers", "*", "expected.json"))
	for _, f := range toks {
		sets = append(sets, [3]string{filepath.Base(filepath.Dir(f)), filepath.Join(filepath.Dir(f), "tokenizer.json"), f})
	}
	if len(refs) == 0 || len(toks) == 0 {
		t.Fatalf("fixtures missing under %s (reference/*/tokenize.json: %d, tokenizers/*/expected.json: %d); run scripts/make_fixtures.py",
			fixtures, len(refs), len(toks))
	}
	return sets
}

// TestReference checks exact ids and decoded strings against every case of
// the project's tokenizer fixtures, and the stream decoder against Decode.
func TestReference(t *testing.T) {
	for _, set := range referenceSets(t) {
		t.Run(set[0], func(t *testing.T) {
			tok, err := LoadFile(set[1])
			if err != nil {
				t.Fatal(err)
			}
			var cases []refCase
			readJSON(t, set[2], &cases)
			if len(cases) == 0 {
				t.Fatalf("%s: no cases", set[2])
			}
			encOK, decOK := 0, 0
			for _, c := range cases {
				ids, err := tok.Encode(c.Text, c.AddSpecialTokens)
				if err != nil {
					t.Errorf("Encode(%q): %v", c.Text, err)
				} else if d := cmp.Diff(c.IDs, ids, cmpIDs); d != "" {
					t.Errorf("Encode(%q, %v) (-want +got):\n%s", c.Text, c.AddSpecialTokens, d)
				} else {
					encOK++
				}
				ok := true
				for _, skip := range []bool{false, true} {
					want := c.Decoded
					if skip {
						want = c.DecodedSkipSpecial
					}
					got, err := tok.Decode(c.IDs, skip)
					if err != nil {
						t.Errorf("Decode(%v): %v", c.IDs, err)
						ok = false
						continue
					}
					if d := cmp.Diff(want, got); d != "" {
						t.Errorf("Decode(%v, skip=%v) (-want +got):\n%s", c.IDs, skip, d)
						ok = false
					}
					checkStream(t, tok, c.IDs, skip, got)
				}
				if ok {
					decOK++
				}
			}
			t.Logf("%s: %d/%d encode exact, %d/%d decode exact", set[0], encOK, len(cases), decOK, len(cases))
		})
	}
}

// TestReferenceChatAndGreedy checks the rendered chat prompts' ids (the
// template output tokenized without added BOS) and the decoded greedy
// continuations of the model fixtures.
func TestReferenceChatAndGreedy(t *testing.T) {
	refs, _ := filepath.Glob(filepath.Join(fixtures, "reference", "*", "chat.json"))
	if len(refs) == 0 {
		t.Fatalf("no %s/reference/*/chat.json; run scripts/make_fixtures.py", fixtures)
	}
	for _, f := range refs {
		dir := filepath.Dir(f)
		m := filepath.Base(dir)
		t.Run(m, func(t *testing.T) {
			tok, err := LoadFile(filepath.Join(fixtures, "models", m, "tokenizer.json"))
			if err != nil {
				t.Fatal(err)
			}
			var chats []struct {
				Rendered string  `json:"rendered"`
				IDs      []int32 `json:"ids"`
				Error    bool    `json:"error"`
			}
			readJSON(t, f, &chats)
			n := 0
			for _, c := range chats {
				if c.Error {
					continue
				}
				n++
				got, err := tok.Encode(c.Rendered, false)
				if err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(c.IDs, got, cmpIDs); d != "" {
					t.Errorf("Encode(%q) (-want +got):\n%s", c.Rendered, d)
				}
			}
			var greedy []struct {
				OutputIDs  []int32 `json:"output_ids"`
				OutputText string  `json:"output_text"`
			}
			readJSON(t, filepath.Join(dir, "greedy.json"), &greedy)
			for _, g := range greedy {
				got, err := tok.Decode(g.OutputIDs, false)
				if err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(g.OutputText, got); d != "" {
					t.Errorf("Decode(%v) (-want +got):\n%s", g.OutputIDs, d)
				}
				checkStream(t, tok, g.OutputIDs, false, got)
			}
			t.Logf("%s: %d chat prompts, %d greedy outputs", m, n, len(greedy))
		})
	}
}
