package chat

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFromTokenizerConfig(t *testing.T) {
	type result struct {
		HasTemplate        bool
		BOSToken, EOSToken string
		AddBOSToken        bool
		Rendered           string
	}
	msgs := []Message{{Role: "user", Content: "hi"}}
	tests := []struct {
		name    string
		json    string
		want    result
		wantErr bool
	}{
		{
			name: "string template and string tokens",
			json: `{"chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}", "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}`,
			want: result{HasTemplate: true, BOSToken: "<s>", EOSToken: "</s>", AddBOSToken: true, Rendered: "<s>hi</s>"},
		},
		{
			name: "AddedToken objects",
			json: `{"chat_template": "x", "bos_token": {"__type": "AddedToken", "content": "<|b|>", "lstrip": false}, "eos_token": {"content": "<|e|>"}}`,
			want: result{HasTemplate: true, BOSToken: "<|b|>", EOSToken: "<|e|>", Rendered: "x"},
		},
		{
			name: "named templates take default",
			json: `{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages|length }}"}], "eos_token": null}`,
			want: result{HasTemplate: true, Rendered: "D1"},
		},
		{
			name: "no template",
			json: `{"bos_token": "<s>"}`,
			want: result{BOSToken: "<s>"},
		},
		{name: "named templates without default", json: `{"chat_template": [{"name": "rag", "template": "R"}]}`, wantErr: true},
		{name: "bad json", json: `{"chat_template": `, wantErr: true},
		{name: "bad token", json: `{"bos_token": 3}`, wantErr: true},
		{name: "bad template type", json: `{"chat_template": 3}`, wantErr: true},
		{name: "template syntax error", json: `{"chat_template": "{% if %}"}`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := FromTokenizerConfig([]byte(tc.json))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %+v", cfg)
				}
				return
			}
			if err != nil {
				t.Fatalf("FromTokenizerConfig: %v", err)
			}
			got := result{HasTemplate: cfg.Template != nil, BOSToken: cfg.BOSToken, EOSToken: cfg.EOSToken, AddBOSToken: cfg.AddBOSToken}
			if cfg.Template != nil {
				got.Rendered, err = cfg.Template.Render(msgs, RenderOptions{BOSToken: cfg.BOSToken, EOSToken: cfg.EOSToken})
				if err != nil {
					t.Fatalf("Render: %v", err)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestConfigRender(t *testing.T) {
	cfg, err := FromTokenizerConfig([]byte(`{"bos_token": "<s>"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Render(nil, RenderOptions{}); !errors.Is(err, ErrNoTemplate) {
		t.Fatalf("want ErrNoTemplate, got %v", err)
	}
	cfg, err = FromTokenizerConfig([]byte(`{"chat_template": "{{ bos_token }}{{ eos_token }}", "bos_token": "<s>", "eos_token": "</s>"}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := cfg.Render(nil, RenderOptions{EOSToken: "<e>"})
	if err != nil {
		t.Fatal(err)
	}
	if got != "<s><e>" {
		t.Errorf("got %q, want %q", got, "<s><e>")
	}
}

func TestRenderMessages(t *testing.T) {
	tmpl, err := Parse(`{% for m in messages %}{{ m.role }}|{{ m.name is defined }}|{{ m.name }}|{{ m.tool_call_id }}|{{ m.tool_calls | tojson if m.tool_calls is defined else '-' }}|{{ m.content | tojson }};{% endfor %}{{ tools | tojson }}|{{ extra }}|{{ add_generation_prompt }}`)
	if err != nil {
		t.Fatal(err)
	}
	msgs := []Message{
		{Role: "user", Content: []map[string]any{{"type": "text", "text": "a"}}, Name: "bob"},
		{Role: "assistant", Content: nil, ToolCalls: json.RawMessage(`[{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]`)},
		{Role: "tool", Content: "r", ToolCallID: "c1"},
	}
	got, err := tmpl.Render(msgs, RenderOptions{
		AddGenerationPrompt: true,
		Tools:               []any{map[string]any{"b": 1, "a": 2}, json.RawMessage(`{"z": 1, "y": 2}`)},
		Extra:               map[string]any{"extra": 7, "messages": "ignored"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `user|True|bob||-|[{"text": "a", "type": "text"}];` +
		`assistant|False|||[{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]|null;` +
		`tool|False||c1|-|"r";` +
		`[{"a": 2, "b": 1}, {"z": 1, "y": 2}]|7|True`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestNoToolsIsNone(t *testing.T) {
	tmpl, err := Parse(`{{ tools is none }}{% if tools %}T{% endif %}{{ bos_token is defined }}{{ documents is none }}`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tmpl.Render(nil, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "TrueFalseTrue"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestSyntaxErrorPositions(t *testing.T) {
	tests := []struct {
		src  string
		want Pos
		msg  string
	}{
		{"{% if %}", Pos{1, 7}, "unexpected '%}'"},
		{"line\n  {{ 1 + }}", Pos{2, 10}, "unexpected '}}'"},
		{"{% for x in y %}\nabc", Pos{2, 4}, `expected "endfor" or "else"`},
		{"a\n\n{# open", Pos{3, 1}, "missing end of comment tag"},
		{"{{ 'abc }}", Pos{1, 4}, "unterminated string literal"},
		{"{% frobnicate %}", Pos{1, 4}, `unknown or unsupported tag "frobnicate"`},
		{"{{ x ]}}", Pos{1, 6}, `unexpected "]"`},
		{"{% break %}", Pos{1, 4}, `"break" outside of a loop`},
		{"{{ a is frob }}", Pos{1, 9}, "no test named 'frob'"},
		{"\n{{ 1 | frob }}", Pos{2, 8}, "no filter named 'frob'"},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			_, err := Parse(tc.src)
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("want *SyntaxError, got %v", err)
			}
			if diff := cmp.Diff(tc.want, se.Pos); diff != "" {
				t.Errorf("position (-want +got):\n%s\n(error: %v)", diff, err)
			}
			if !strings.Contains(se.Msg, tc.msg) {
				t.Errorf("message %q does not contain %q", se.Msg, tc.msg)
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name   string
		src    string
		is     error
		pos    Pos
		substr string
	}{
		{"raise", "ok\n{{ raise_exception('bad role: ' ~ 'x') }}", ErrRaised, Pos{2, 4}, "bad role: x"},
		{"undefined attribute", "{{ nope.x }}", nil, Pos{1, 4}, "'nope' is undefined"},
		{"type error", "\n\n   {{ 'a' + 1 }}", nil, Pos{3, 11}, "unsupported operand"},
		{"call non-callable", "{{ messages() }}", nil, Pos{1, 4}, "not callable"},
		{"loop limit", "{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}", ErrLimit, Pos{}, "execution steps"},
		{"string growth", "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", ErrLimit, Pos{}, "limit"},
		{"list growth", "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", ErrLimit, Pos{}, "exceeded"},
		{"repeat", "{{ 'x' * 100000000 }}", ErrLimit, Pos{}, "limit"},
		{"big range", "{{ range(100000000) | length }}", ErrLimit, Pos{}, "range"},
		{"recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", ErrLimit, Pos{}, "nested deeper"},
		{"output", "{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", ErrLimit, Pos{}, "output exceeded"},
		{"method on big string", "{% set big = 'a' * 4000000 %}{% for i in range(1000000) %}{{ big.count('b') }}{% endfor %}", ErrLimit, Pos{}, "exceeded"},
		{"test on big list", "{% set l = ['x' * 1000000] * 4 %}{% for i in range(1000000) %}{{ l is lower }}{% endfor %}", ErrLimit, Pos{}, "exceeded"},
		{"concat big repr", "{% set l = ['x' * 1000000] * 4 %}{% for i in range(100000) %}{% set y = l ~ '' %}{% endfor %}", ErrLimit, Pos{}, "exceeded"},
		{"sum of strings", "{% set l = ['a'] * 1000000 %}{{ l | sum(start='') | length }}", ErrLimit, Pos{}, "exceeded"},
		{"unique distinct", "{% for i in range(100) %}{{ range(30000) | unique | list | length }}{% endfor %}", ErrLimit, Pos{}, "exceeded"},
		{"join growth", "{% set ns = namespace(l=['ab']) %}{% for i in range(40) %}{% set ns.l = [(ns.l * 2) | join] %}{% endfor %}", ErrLimit, Pos{}, "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := Parse(tc.src)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			// The bound is the step/output limit (ErrLimit), not a clock:
			// timing assertions belong in benchmarks.
			_, err = tmpl.Render([]Message{{Role: "user", Content: "hi"}}, RenderOptions{})
			if err == nil {
				t.Fatal("want an error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.substr) {
				t.Errorf("error %q does not contain %q", err, tc.substr)
			}
			var re *RenderError
			if !errors.As(err, &re) {
				t.Fatalf("want *RenderError, got %T", err)
			}
			if tc.pos != (Pos{}) {
				if diff := cmp.Diff(tc.pos, re.Pos); diff != "" {
					t.Errorf("position (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestWithLimits(t *testing.T) {
	tmpl, err := Parse("{% for i in range(100) %}{{ i }}{% endfor %}")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmpl.Render(nil, RenderOptions{}); err != nil {
		t.Fatalf("default limits: %v", err)
	}
	_, err = tmpl.WithLimits(Limits{MaxSteps: 50, MaxOutput: 1 << 20, MaxCallDepth: 8}).Render(nil, RenderOptions{})
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("want ErrLimit, got %v", err)
	}
}

func TestConcurrentRender(t *testing.T) {
	tmpl, err := Parse("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}")
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 50 {
				got, err := tmpl.Render([]Message{{Role: "user"}, {Role: "assistant"}}, RenderOptions{})
				if err == nil && got != "2" {
					err = errors.New("got " + got)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestFormatFloat(t *testing.T) {
	tests := map[float64]string{
		0: "0.0", 1: "1.0", -2.5: "-2.5", 1e16: "1e+16", 1e15: "1000000000000000.0",
		1e-4: "0.0001", 1e-5: "1e-05", 1.0 / 3: "0.3333333333333333", 1.5e300: "1.5e+300",
	}
	for f, want := range tests {
		if got := formatFloat(f); got != want {
			t.Errorf("formatFloat(%v) = %q, want %q", f, got, want)
		}
	}
}

// TestLargeTemplates feeds long and deeply nested templates: each must
// finish quickly with a result or an error, never crash.
func TestLargeTemplates(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr bool
	}{
		{"many outputs", strings.Repeat("{{ 'a' }}", 50000), false},
		{"adjacent strings", "{{ " + strings.Repeat("'ab' ", 50000) + "}}", false},
		{"long line then error", strings.Repeat("x ", 200000) + "{{ 1 +", true},
		{"nested ifs", strings.Repeat("{% if true %}", 400) + "x" + strings.Repeat("{% endif %}", 400), false},
		{"too many nested ifs", strings.Repeat("{% if true %}", 1000) + strings.Repeat("{% endif %}", 1000), true},
		{"deep parentheses", "{{ " + strings.Repeat("(", 150) + "1" + strings.Repeat(")", 150) + " }}", false},
		{"deep brackets", "{{ " + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + " }}", true},
		{"not chain", "{{ " + strings.Repeat("not ", 100000) + "1 }}", true},
		{"minus chain", "{{ " + strings.Repeat("-", 100000) + "1 }}", true},
		{"plus chain", "{{ " + strings.Repeat("1 + ", 100000) + "1 }}", true},
		{"attribute chain", "{{ " + strings.Repeat("a.", 100000) + "b }}", true},
		{"filter chain", "{{ x" + strings.Repeat("|trim", 100000) + " }}", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := Parse(tc.src)
			if err == nil {
				_, err = tmpl.Render(nil, RenderOptions{})
			}
			if (err != nil) != tc.wantErr {
				t.Errorf("error = %v, want an error: %v", err, tc.wantErr)
			}
			if errors.Is(err, errInternal) {
				t.Errorf("internal error: %v", err)
			}
		})
	}
}
