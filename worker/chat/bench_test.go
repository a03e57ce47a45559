package chat

import (
	"encoding/json"
	"fmt"
	"testing"
)

// BenchmarkRender renders each public golden template for a 20-turn
// conversation with tools.
func BenchmarkRender(b *testing.B) {
	templates := map[string]string{}
	for _, c := range loadGolden(b) {
		if c.Public && c.TemplateRef != "" {
			templates[c.TemplateRef] = c.Template
		}
	}
	var msgs []Message
	for i := range 10 {
		msgs = append(msgs,
			Message{Role: "user", Content: fmt.Sprintf("Question %d: what is the weather like in a city with a long name?", i)},
			Message{Role: "assistant", Content: fmt.Sprintf("Answer %d: it is sunny, with a light breeze and some clouds later.", i)})
	}
	tools := []any{json.RawMessage(`{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}`)}
	for _, name := range []string{"chatml", "llama31", "qwen2", "qwen3"} {
		tmpl, err := Parse(templates[name])
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := tmpl.Render(msgs, RenderOptions{AddGenerationPrompt: true, Tools: tools, BOSToken: "<s>"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
