package chat

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary template text to Parse and renders what parses,
// under tight limits: neither may panic or hang.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"", "{{", "{%", "{#", "}}", "{{ }}", "{% %}", "{%- -%}", "{{- x -}}", "{% raw %}", "{% endraw %}",
		"{{ 'a' ~ b | upper }}", "{% for k, v in d.items() %}{{ k }}{% endfor %}",
		"{% set ns = namespace(a=1) %}{% set ns.a = ns.a + 1 %}{{ ns.a }}",
		"{% macro m(a, b=2) %}{{ a }}{{ caller() if caller }}{% endmacro %}{% call m(1) %}x{% endcall %}",
		"{{ [1, 2, 3][::-1] | tojson(indent=2) }}", "{{ x if y else z }}", "{{ 'a' is string and not b is defined }}",
		"{{ ((((((((((1)))))))))) }}", "{{ -1 ** 2 // 3 % 4 }}", "{{ '\\u00e9\\x41\\n' }}",
	}
	b, err := os.ReadFile(filepath.Join("testdata", "golden.json"))
	if err != nil {
		f.Fatalf("reading golden corpus: %v", err)
	}
	var g struct {
		Templates map[string]string `json:"templates"`
		Cases     []struct {
			Template string `json:"template"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		f.Fatalf("golden.json: %v", err)
	}
	for _, c := range g.Cases {
		if c.Template != "" {
			seeds = append(seeds, c.Template)
		}
	}
	for _, tmpl := range g.Templates {
		seeds = append(seeds, tmpl)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	msgs := []Message{
		{Role: "system", Content: "sys"},
		{Role: "user", Content: []any{map[string]any{"type": "text", "text": "hi"}}},
		{Role: "assistant", Content: nil, ToolCalls: []any{map[string]any{"function": map[string]any{"name": "f", "arguments": map[string]any{"a": 1}}}}},
	}
	limits := Limits{MaxSteps: 20_000, MaxOutput: 1 << 16, MaxCallDepth: 16}
	f.Fuzz(func(t *testing.T, src string) {
		tmpl, err := Parse(src)
		if errors.Is(err, errInternal) {
			t.Fatalf("Parse panicked: %v", err)
		}
		if err != nil {
			if tmpl != nil {
				t.Fatalf("Parse returned a template and an error: %v", err)
			}
			return
		}
		out, err := tmpl.WithLimits(limits).Render(msgs, RenderOptions{
			AddGenerationPrompt: true, BOSToken: "<s>", EOSToken: "</s>",
			Tools: []any{map[string]any{"name": "f"}}, Extra: map[string]any{"d": map[string]any{"k": "v"}},
		})
		if errors.Is(err, errInternal) {
			t.Fatalf("Render panicked: %v", err)
		}
		if err == nil && len(out) > limits.MaxOutput {
			t.Fatalf("output of %d bytes passed the %d-byte limit", len(out), limits.MaxOutput)
		}
	})
}
