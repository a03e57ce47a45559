package chat

import (
	"encoding/json"
	"fmt"
)

// Config is what a tokenizer_config.json says about chat formatting.
type Config struct {
	// Template is the parsed chat template; nil when the file has none.
	Template *Template
	// BOSToken and EOSToken are the special tokens' text ("" when unset).
	BOSToken, EOSToken string
	// AddBOSToken reports whether the tokenizer prepends BOS when encoding.
	AddBOSToken bool
}

// FromTokenizerConfig reads tokenizer_config.json bytes: chat_template (a
// string, or a list of {name, template} of which "default" is taken),
// bos_token / eos_token (a string or an AddedToken object {"content": ...})
// and add_bos_token.
func FromTokenizerConfig(data []byte) (*Config, error) {
	var raw struct {
		ChatTemplate json.RawMessage `json:"chat_template"`
		BOSToken     json.RawMessage `json:"bos_token"`
		EOSToken     json.RawMessage `json:"eos_token"`
		AddBOSToken  *bool           `json:"add_bos_token"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("chat: parsing tokenizer_config.json: %w", err)
	}
	cfg := &Config{}
	var err error
	if cfg.BOSToken, err = tokenText(raw.BOSToken); err != nil {
		return nil, fmt.Errorf("chat: tokenizer_config.json bos_token: %w", err)
	}
	if cfg.EOSToken, err = tokenText(raw.EOSToken); err != nil {
		return nil, fmt.Errorf("chat: tokenizer_config.json eos_token: %w", err)
	}
	if raw.AddBOSToken != nil {
		cfg.AddBOSToken = *raw.AddBOSToken
	}
	src, err := templateSource(raw.ChatTemplate)
	if err != nil {
		return nil, fmt.Errorf("chat: tokenizer_config.json chat_template: %w", err)
	}
	if src != "" {
		if cfg.Template, err = Parse(src); err != nil {
			return nil, fmt.Errorf("chat: tokenizer_config.json chat_template: %w", err)
		}
	}
	return cfg, nil
}

// tokenText reads a special token given as a string, an AddedToken object or null.
func tokenText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Content == nil {
		return "", fmt.Errorf("want a string or an object with \"content\", got %s", truncate(string(raw), 60))
	}
	return *obj.Content, nil
}

// templateSource picks the template text: a plain string, or the entry named
// "default" of a list of named templates.
func templateSource(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("want a string or a list of {name, template}, got %s", truncate(string(raw), 60))
	}
	for _, e := range list {
		if e.Name == "default" {
			return e.Template, nil
		}
	}
	return "", fmt.Errorf("no template named \"default\" among %d named templates", len(list))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Render renders messages with the model's chat template, filling in the
// config's BOS and EOS tokens where opts leaves them empty. It returns
// ErrNoTemplate when the model has no chat template.
func (c *Config) Render(messages []Message, opts RenderOptions) (string, error) {
	if c == nil || c.Template == nil {
		return "", ErrNoTemplate
	}
	if opts.BOSToken == "" {
		opts.BOSToken = c.BOSToken
	}
	if opts.EOSToken == "" {
		opts.EOSToken = c.EOSToken
	}
	return c.Template.Render(messages, opts)
}
