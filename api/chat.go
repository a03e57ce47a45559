package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Chat roles accepted in messages.
const (
	RoleSystem    = "system"
	RoleDeveloper = "developer"
	RoleUser      = "user"
	RoleAssistant = "assistant"
	RoleTool      = "tool"
)

// ContentPart is one element of a message's content given as a list of
// parts. Only "text" parts are supported.
type ContentPart struct {
	// Type is the part's type; "text" is the one supported.
	Type string `json:"type"`
	// Text is the text of a "text" part.
	Text string `json:"text"`
}

// MessageContent is a chat message's "content": a string, a list of parts,
// or null/absent. Decoding never fails on a bad shape; Validate reports it
// with the message's index, so the error names "messages[i].content".
type MessageContent struct {
	// Text is the string content, or the text parts joined with "\n".
	Text string
	// Parts holds the content when it was given as a list of parts.
	Parts []ContentPart
	// Present is false when content was absent or null.
	Present bool

	bad string // why the JSON value has a shape we do not accept
}

// Content returns a MessageContent holding the string s.
func Content(s string) MessageContent { return MessageContent{Text: s, Present: true} }

// UnmarshalJSON accepts null, a string or an array of part objects.
func (c *MessageContent) UnmarshalJSON(data []byte) error {
	*c = MessageContent{}
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("null")) {
		return nil
	}
	c.Present = true
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &c.Text); err != nil {
			c.bad = "expected a string or an array of content parts."
		}
		return nil
	}
	var parts []ContentPart
	if err := json.Unmarshal(data, &parts); err != nil {
		c.bad = "expected a string or an array of content parts ({\"type\": \"text\", \"text\": ...})."
		return nil
	}
	c.Parts = parts
	texts := make([]string, 0, len(parts))
	for _, p := range parts {
		if p.Type == "text" {
			texts = append(texts, p.Text)
		}
	}
	c.Text = strings.Join(texts, "\n")
	return nil
}

// MarshalJSON writes the parts, the string, or null.
func (c MessageContent) MarshalJSON() ([]byte, error) {
	switch {
	case c.Parts != nil:
		return json.Marshal(c.Parts)
	case c.Present:
		return json.Marshal(c.Text)
	}
	return []byte("null"), nil
}

// ChatMessage is one message of a chat request.
type ChatMessage struct {
	// Role is one of the Role constants.
	Role string `json:"role"`
	// Content is the message text.
	Content MessageContent `json:"content"`
	// Name optionally names the participant.
	Name string `json:"name,omitempty"`
	// ToolCalls are an assistant message's tool calls, passed to the
	// template as they came.
	ToolCalls json.RawMessage `json:"tool_calls,omitempty"`
	// ToolCallID is the call a tool message answers.
	ToolCallID string `json:"tool_call_id,omitempty"`
}

// ChatCompletionRequest is the body of POST /v1/chat/completions.
type ChatCompletionRequest struct {
	// Model is the served model name; empty means the one model served.
	Model string `json:"model"`
	// Messages is the conversation; at least one.
	Messages []ChatMessage `json:"messages"`
	// MaxTokens (deprecated by OpenAI, still sent by most clients) is the
	// most tokens to generate; default: up to the context length.
	MaxTokens *int `json:"max_tokens,omitempty"`
	// MaxCompletionTokens wins over MaxTokens when both are set.
	MaxCompletionTokens *int `json:"max_completion_tokens,omitempty"`
	// Logprobs asks for the sampled tokens' log probabilities.
	Logprobs bool `json:"logprobs,omitempty"`
	// TopLogprobs in [0, MaxLogprobs] also returns the most likely
	// alternatives; needs Logprobs.
	TopLogprobs *int `json:"top_logprobs,omitempty"`
	// AddGenerationPrompt (vLLM) ends the rendered prompt with the
	// assistant's turn header; default true.
	AddGenerationPrompt *bool `json:"add_generation_prompt,omitempty"`
	// PromptTokenIDs (trtllm disaggregated) carries the context worker's
	// tokenization of the rendered prompt to the generation worker, which
	// then neither renders nor tokenizes again.
	PromptTokenIDs []int32 `json:"prompt_token_ids,omitempty"`
	// LogitBias: not supported (400 when not empty).
	LogitBias map[string]float64 `json:"logit_bias,omitempty"`

	SamplingOptions
}

// MaxTokensRequested is max_completion_tokens, else max_tokens, else nil.
func (r *ChatCompletionRequest) MaxTokensRequested() *int {
	if r.MaxCompletionTokens != nil {
		return r.MaxCompletionTokens
	}
	return r.MaxTokens
}

// WantsGenerationPrompt is add_generation_prompt, default true.
func (r *ChatCompletionRequest) WantsGenerationPrompt() bool {
	return r.AddGenerationPrompt == nil || *r.AddGenerationPrompt
}

// Validate checks the fields that do not need the model. maxN is the
// server's limit for n.
func (r *ChatCompletionRequest) Validate(maxN int) *Error {
	if len(r.Messages) == 0 {
		return InvalidRequest("messages", "messages must be a non-empty array.")
	}
	for i, m := range r.Messages {
		if e := m.validate(i); e != nil {
			return e
		}
	}
	if r.MaxTokens != nil && *r.MaxTokens < 1 {
		return InvalidRequest("max_tokens", "max_tokens must be at least 1; got %d.", *r.MaxTokens)
	}
	if r.MaxCompletionTokens != nil && *r.MaxCompletionTokens < 1 {
		return InvalidRequest("max_completion_tokens", "max_completion_tokens must be at least 1; got %d.", *r.MaxCompletionTokens)
	}
	if r.TopLogprobs != nil {
		if *r.TopLogprobs < 0 || *r.TopLogprobs > MaxLogprobs {
			return InvalidRequest("top_logprobs", "top_logprobs must be in [0, %d]; got %d.", MaxLogprobs, *r.TopLogprobs)
		}
		if *r.TopLogprobs > 0 && !r.Logprobs {
			return InvalidRequest("top_logprobs", "top_logprobs needs logprobs to be true.")
		}
	}
	if len(r.LogitBias) > 0 {
		return InvalidRequest("logit_bias", "logit_bias is not supported.").WithCode(CodeUnsupported)
	}
	if e := r.SamplingOptions.Validate(maxN); e != nil {
		return e
	}
	if mt := r.MaxTokensRequested(); mt != nil && r.MinTokens != nil && *r.MinTokens > *mt {
		return InvalidRequest("min_tokens", "min_tokens (%d) must not exceed max_tokens (%d).", *r.MinTokens, *mt)
	}
	return nil
}

func (m *ChatMessage) validate(i int) *Error {
	param := func(f string) string { return fmt.Sprintf("messages[%d].%s", i, f) }
	switch m.Role {
	case "":
		return InvalidRequest(param("role"), "messages[%d] has no role.", i)
	case RoleSystem, RoleDeveloper, RoleUser, RoleAssistant, RoleTool:
	default:
		return InvalidRequest(param("role"), "messages[%d] has an unknown role %q; expected one of system, developer, user, assistant, tool.", i, m.Role)
	}
	if m.Content.bad != "" {
		return InvalidRequest(param("content"), "Invalid content in messages[%d]: %s", i, m.Content.bad)
	}
	for j, p := range m.Content.Parts {
		if p.Type != "text" {
			return InvalidRequest(fmt.Sprintf("messages[%d].content[%d].type", i, j),
				"Content parts of type %q are not supported; only \"text\".", p.Type).WithCode(CodeUnsupported)
		}
	}
	if !m.Content.Present && !(m.Role == RoleAssistant && len(m.ToolCalls) > 0) {
		return InvalidRequest(param("content"), "messages[%d] (%s) has no content.", i, m.Role)
	}
	return nil
}
