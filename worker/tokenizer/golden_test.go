package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// goldenFile is what testdata/gen_golden.py records from Hugging Face
// tokenizers for the package's own tokenizers.
type goldenFile struct {
	Version string `json:"tokenizers_version"`
	Encode  []struct {
		Text           string  `json:"text"`
		IDs            []int32 `json:"ids"`
		IDsWithSpecial []int32 `json:"ids_with_special"`
	} `json:"encode"`
	Decode []struct {
		IDs             []int32 `json:"ids"`
		Text            *string `json:"text"`              // nil where HF panics
		TextSkipSpecial *string `json:"text_skip_special"` // nil where HF panics
	} `json:"decode"`
}

func loadGolden(t *testing.T, dir string) (*Tokenizer, goldenFile) {
	t.Helper()
	tok, err := LoadFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g goldenFile
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	return tok, g
}

func goldenDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join("testdata", "*", "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no testdata/*/golden.json")
	}
	for i, d := range dirs {
		dirs[i] = filepath.Dir(d)
	}
	return dirs
}

// TestGolden checks Encode and Decode against Hugging Face's outputs for the
// package's own tokenizers (see testdata/gen_golden.py).
func TestGolden(t *testing.T) {
	for _, dir := range goldenDirs(t) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			tok, g := loadGolden(t, dir)
			encOK, decOK, decN := 0, 0, 0
			for _, c := range g.Encode {
				ok := true
				got, err := tok.Encode(c.Text, false)
				if err != nil {
					t.Errorf("Encode(%q): %v", c.Text, err)
					continue
				}
				if d := cmp.Diff(c.IDs, got, cmpIDs); d != "" {
					t.Errorf("Encode(%q, false) (-hf +got):\n%s", c.Text, d)
					ok = false
				}
				got, err = tok.Encode(c.Text, true)
				if err != nil {
					t.Errorf("Encode(%q): %v", c.Text, err)
					continue
				}
				if d := cmp.Diff(c.IDsWithSpecial, got, cmpIDs); d != "" {
					t.Errorf("Encode(%q, true) (-hf +got):\n%s", c.Text, d)
					ok = false
				}
				if ok {
					encOK++
				}
			}
			for _, c := range g.Decode {
				for _, skip := range []bool{false, true} {
					want := c.Text
					if skip {
						want = c.TextSkipSpecial
					}
					got, err := tok.Decode(c.IDs, skip)
					if err != nil {
						t.Errorf("Decode(%v, %v): %v", c.IDs, skip, err)
						continue
					}
					checkStream(t, tok, c.IDs, skip, got)
					if want == nil {
						continue // HF panics here; ours must just not.
					}
					decN++
					if d := cmp.Diff(*want, got); d != "" {
						t.Errorf("Decode(%v, skip=%v) (-hf +got):\n%s", c.IDs, skip, d)
					} else {
						decOK++
					}
				}
			}
			t.Logf("%s (HF tokenizers %s): %d/%d encode exact, %d/%d decode exact",
				filepath.Base(dir), g.Version, encOK, len(g.Encode), decOK, decN)
		})
	}
}

var cmpIDs = cmp.Comparer(func(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
})

// checkStream feeds ids one at a time to a StreamDecoder and checks that
// every piece is valid UTF-8 and that the pieces add up to Decode's string.
func checkStream(t *testing.T, tok *Tokenizer, ids []int32, skip bool, want string) {
	t.Helper()
	d := tok.NewStreamDecoder(skip)
	var all string
	for _, id := range ids {
		s, err := d.Add(id)
		if err != nil {
			t.Errorf("stream Add(%d): %v", id, err)
			return
		}
		if !utf8.ValidString(s) {
			t.Errorf("stream %v: piece %q is not valid UTF-8", ids, s)
		}
		all += s
	}
	all += d.Flush()
	if all != want {
		t.Errorf("stream %v skip=%v: concatenation %q != Decode %q", ids, skip, all, want)
	}
}
