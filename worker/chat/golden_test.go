package chat

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// goldenCase is one rendering by Python's jinja2 (see testdata/gen_golden.py).
type goldenCase struct {
	Name         string  `json:"name"`
	Template     string  `json:"template"`
	TemplateRef  string  `json:"template_ref"`
	VarsRef      string  `json:"vars"`
	Public       bool    `json:"public"`
	Rendered     *string `json:"rendered"`
	Error        bool    `json:"error"`
	ErrorMessage string  `json:"error_message"`
	// Vars is the resolved variable set.
	Vars map[string]json.RawMessage `json:"-"`
}

// fixedNow is the clock gen_golden.py gives strftime_now.
var fixedNow = time.Date(2024, 7, 5, 9, 3, 7, 0, time.Local)

func loadGolden(t testing.TB) []goldenCase {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "golden.json"))
	if err != nil {
		t.Fatalf("reading golden corpus: %v", err)
	}
	var g struct {
		VarSets   map[string]map[string]json.RawMessage `json:"var_sets"`
		Templates map[string]string                     `json:"templates"`
		Cases     []goldenCase                          `json:"cases"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatalf("parsing golden corpus: %v", err)
	}
	if len(g.Cases) == 0 {
		t.Fatal("golden corpus is empty")
	}
	for i := range g.Cases {
		c := &g.Cases[i]
		vars, ok := g.VarSets[c.VarsRef]
		if !ok {
			t.Fatalf("case %s: unknown variable set %q", c.Name, c.VarsRef)
		}
		c.Vars = vars
		if c.TemplateRef != "" {
			if c.Template, ok = g.Templates[c.TemplateRef]; !ok {
				t.Fatalf("case %s: unknown template %q", c.Name, c.TemplateRef)
			}
		}
	}
	return g.Cases
}

func useFixedClock(t *testing.T) {
	t.Helper()
	saved := timeNow
	timeNow = func() time.Time { return fixedNow }
	t.Cleanup(func() { timeNow = saved })
}

// TestGolden renders every golden case through Execute with the case's
// variables (JSON kept in order) and compares with jinja2's output.
func TestGolden(t *testing.T) {
	useFixedClock(t)
	for _, c := range loadGolden(t) {
		t.Run(c.Name, func(t *testing.T) {
			vars := make(map[string]any, len(c.Vars))
			for k, v := range c.Vars {
				vars[k] = v
			}
			got, err := renderSource(c.Template, vars)
			if c.Error {
				if err == nil {
					t.Fatalf("want an error (jinja2: %s), got %q", c.ErrorMessage, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if diff := cmp.Diff(*c.Rendered, got); diff != "" {
				t.Errorf("rendering differs from jinja2 (-want +got):\n%s", diff)
			}
		})
	}
}

// TestGoldenRender renders the public templates through the Render API with
// typed Messages.
func TestGoldenRender(t *testing.T) {
	useFixedClock(t)
	for _, c := range loadGolden(t) {
		if !c.Public {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			msgs := decodeMessages(t, c.Vars["messages"])
			var opts RenderOptions
			for key, dst := range map[string]any{
				"add_generation_prompt": &opts.AddGenerationPrompt,
				"bos_token":             &opts.BOSToken,
				"eos_token":             &opts.EOSToken,
			} {
				if err := json.Unmarshal(c.Vars[key], dst); err != nil {
					t.Fatalf("%s: %v", key, err)
				}
			}
			for k, v := range c.Vars {
				switch k {
				case "messages", "add_generation_prompt", "bos_token", "eos_token", "tools":
				default:
					if opts.Extra == nil {
						opts.Extra = map[string]any{}
					}
					opts.Extra[k] = v
				}
			}
			// Tools as raw JSON keep their key order, as tojson needs.
			var tools []json.RawMessage
			if err := json.Unmarshal(c.Vars["tools"], &tools); err != nil {
				t.Fatalf("tools: %v", err)
			}
			for _, tool := range tools {
				opts.Tools = append(opts.Tools, tool)
			}
			tmpl, err := Parse(c.Template)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, err := tmpl.Render(msgs, opts)
			if c.Error {
				if err == nil {
					t.Fatalf("want an error (jinja2: %s), got %q", c.ErrorMessage, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if diff := cmp.Diff(*c.Rendered, got); diff != "" {
				t.Errorf("rendering differs from jinja2 (-want +got):\n%s", diff)
			}
		})
	}
}

func renderSource(src string, vars map[string]any) (string, error) {
	tmpl, err := Parse(src)
	if err != nil {
		return "", err
	}
	return tmpl.Execute(vars)
}

// decodeMessages decodes messages keeping the key order of structured
// content and tool calls (json.RawMessage), as a server should.
func decodeMessages(t *testing.T, raw json.RawMessage) []Message {
	t.Helper()
	var wire []struct {
		Role       string          `json:"role"`
		Content    json.RawMessage `json:"content"`
		Name       string          `json:"name"`
		ToolCalls  json.RawMessage `json:"tool_calls"`
		ToolCallID string          `json:"tool_call_id"`
	}
	if err := json.Unmarshal(raw, &wire); err != nil {
		t.Fatalf("messages: %v", err)
	}
	msgs := make([]Message, len(wire))
	for i, w := range wire {
		m := Message{Role: w.Role, Name: w.Name, ToolCallID: w.ToolCallID}
		var s string
		switch {
		case len(w.Content) == 0 || string(w.Content) == "null":
		case json.Unmarshal(w.Content, &s) == nil:
			m.Content = s
		default:
			m.Content = w.Content
		}
		if len(w.ToolCalls) > 0 && string(w.ToolCalls) != "null" {
			m.ToolCalls = w.ToolCalls
		}
		msgs[i] = m
	}
	return msgs
}
