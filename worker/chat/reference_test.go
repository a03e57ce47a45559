package chat

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// refCase is one apply_chat_template result computed by Hugging Face
// transformers (testdata/reference/<model>/chat.json at the repository root).
type refCase struct {
	Messages            []Message `json:"messages"`
	AddGenerationPrompt bool      `json:"add_generation_prompt"`
	Rendered            *string   `json:"rendered"`
	Error               bool      `json:"error"`
	ErrorMessage        string    `json:"error_message"`
}

func TestReferenceChat(t *testing.T) {
	root := filepath.Join("..", "..", "testdata")
	for _, model := range []string{"tiny-llama2", "tiny-llama3"} {
		t.Run(model, func(t *testing.T) {
			cfgBytes, err := os.ReadFile(filepath.Join(root, "models", model, "tokenizer_config.json"))
			if err != nil {
				t.Fatalf("reading tokenizer config: %v", err)
			}
			cfg, err := FromTokenizerConfig(cfgBytes)
			if err != nil {
				t.Fatalf("FromTokenizerConfig: %v", err)
			}
			if cfg.Template == nil {
				t.Fatal("tokenizer config has no chat template")
			}
			refBytes, err := os.ReadFile(filepath.Join(root, "reference", model, "chat.json"))
			if err != nil {
				t.Fatalf("reading reference: %v", err)
			}
			var cases []refCase
			if err := json.Unmarshal(refBytes, &cases); err != nil {
				t.Fatalf("parsing reference: %v", err)
			}
			if len(cases) == 0 {
				t.Fatal("no reference cases")
			}
			for i, c := range cases {
				got, err := cfg.Template.Render(c.Messages, RenderOptions{
					AddGenerationPrompt: c.AddGenerationPrompt,
					BOSToken:            cfg.BOSToken,
					EOSToken:            cfg.EOSToken,
				})
				if c.Error {
					if err == nil {
						t.Errorf("case %d: want an error (%s), got %q", i, c.ErrorMessage, got)
						continue
					}
					if !errors.Is(err, ErrRaised) && c.ErrorMessage != "" {
						t.Errorf("case %d: error %v is not ErrRaised", i, err)
					}
					if c.ErrorMessage != "" && !strings.Contains(err.Error(), c.ErrorMessage) {
						t.Errorf("case %d: error %q does not carry the template's message %q", i, err, c.ErrorMessage)
					}
					continue
				}
				if err != nil {
					t.Errorf("case %d: Render: %v", i, err)
					continue
				}
				if c.Rendered == nil {
					t.Fatalf("case %d: no rendered text in reference", i)
				}
				if diff := cmp.Diff(*c.Rendered, got); diff != "" {
					t.Errorf("case %d: differs from transformers (-want +got):\n%s", i, diff)
				}
			}
		})
	}
}
