package strictyaml

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type inner struct {
	Size int    `yaml:"size"`
	Name string `yaml:"name"`
}

type outer struct {
	Count int    `yaml:"count"`
	In    inner  `yaml:"inner"`
	Opt   *inner `yaml:"opt"`
}

func TestDecode(t *testing.T) {
	got := outer{Count: 7, In: inner{Size: 1}}
	w, err := Decode([]byte("inner:\n  name: x\n  legacy: 3\nopt:\n  size: 2\nold: true\n"), &got,
		func(full string) (string, bool) {
			return "not implemented; ignored", full == "old" || full == "inner.legacy"
		})
	if err != nil {
		t.Fatal(err)
	}
	want := outer{Count: 7, In: inner{Size: 1, Name: "x"}, Opt: &inner{Size: 2}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("decoded (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"inner.legacy (line 3): not implemented; ignored", "old (line 6): not implemented; ignored"}, w); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"cuont: 1", `unknown key "cuont" (line 1); did you mean "count"?; valid keys here: count, inner, opt`},
		{"inner:\n  sise: 1", `unknown key "inner.sise" (line 2); did you mean "inner.size"?`},
		{"qqqqqqqqqq: 1", `unknown key "qqqqqqqqqq" (line 1); valid keys here`},
		{"inner: 5", "inner (line 1) must be a mapping"},
		{"- 1", "top level must be a mapping"},
		{"count: many", "cannot unmarshal"},
	} {
		var o outer
		_, err := Decode([]byte(tc.yaml), &o, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to contain %q", tc.yaml, err, tc.want)
		}
	}
	var o outer
	if w, err := Decode(nil, &o, nil); err != nil || w != nil {
		t.Errorf("empty file: %v %v", w, err)
	}
	if _, err := Decode([]byte("a: 1"), o, nil); err == nil {
		t.Error("decode into a non-pointer succeeded")
	}
}
