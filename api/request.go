package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
)

// Limits on request fields that do not depend on the model.
const (
	// MaxLogprobs is the largest completions "logprobs" and chat
	// "top_logprobs" accepted (vLLM's default max_logprobs is 20).
	MaxLogprobs = 20
	// MaxStopStrings is the most stop strings a request may give.
	MaxStopStrings = 64
	// DefaultCompletionMaxTokens is max_tokens when a completions request
	// leaves it out, as OpenAI's legacy completions API does.
	DefaultCompletionMaxTokens = 16
)

// StreamOptions are the options of a streaming request.
type StreamOptions struct {
	// IncludeUsage adds a last chunk with usage and no choices.
	IncludeUsage bool `json:"include_usage"`
}

// Request types of DisaggregatedParams.RequestType, as in TensorRT-LLM.
const (
	// RequestContextOnly: run the prefill only and keep the KV for transfer.
	RequestContextOnly = "context_only"
	// RequestGenerationOnly: take the KV from a context worker and decode.
	RequestGenerationOnly = "generation_only"
	// RequestContextAndGeneration: the whole request on one worker.
	RequestContextAndGeneration = "context_and_generation"
)

// DisaggregatedParams are the fields TensorRT-LLM's disaggregated serving
// carries between the proxy, the context worker and the generation worker.
// The server carries them; the roles act on them.
type DisaggregatedParams struct {
	// RequestType is RequestContextOnly, RequestGenerationOnly or
	// RequestContextAndGeneration.
	RequestType string `json:"request_type,omitempty"`
	// FirstGenTokens are the tokens the context worker sampled.
	FirstGenTokens []int32 `json:"first_gen_tokens,omitempty"`
	// CtxRequestID is the context worker's id of the request.
	CtxRequestID *int64 `json:"ctx_request_id,omitempty"`
	// DisaggRequestID is the proxy's id of the request across both workers.
	DisaggRequestID *int64 `json:"disagg_request_id,omitempty"`
	// EncodedOpaqueState is the context worker's transfer state (ours:
	// versioned and authenticated), base64 text.
	EncodedOpaqueState string `json:"encoded_opaque_state,omitempty"`
}

// StopList is the "stop" field: a string or a list of strings. Empty
// strings are dropped (they would match at once).
type StopList []string

// UnmarshalJSON accepts null, a string or an array of strings.
func (s *StopList) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("null")) {
		*s = nil
		return nil
	}
	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		*s = nil
		if one != "" {
			*s = StopList{one}
		}
		return nil
	}
	var many []string
	if err := json.Unmarshal(data, &many); err != nil {
		return &FieldError{Param: "stop", Message: "expected a string or an array of strings."}
	}
	out := StopList{}
	for _, m := range many {
		if m != "" {
			out = append(out, m)
		}
	}
	*s = out
	return nil
}

// SamplingOptions are the request fields that completions and chat share:
// OpenAI's sampling fields and the vLLM / TensorRT-LLM extensions that
// serving benchmarks send. Pointers are nil when the field is absent.
type SamplingOptions struct {
	// Temperature in [0, 2]; default 1. 0 is greedy.
	Temperature *float64 `json:"temperature,omitempty"`
	// TopP in (0, 1]; default 1.
	TopP *float64 `json:"top_p,omitempty"`
	// N is the number of choices per prompt; default 1.
	N *int `json:"n,omitempty"`
	// Stream answers with server-sent events.
	Stream bool `json:"stream,omitempty"`
	// StreamOptions apply when Stream is set.
	StreamOptions *StreamOptions `json:"stream_options,omitempty"`
	// Stop strings end the text (they are not included in it).
	Stop StopList `json:"stop,omitempty"`
	// Seed makes sampling reproducible; choice i uses Seed+i.
	Seed *int64 `json:"seed,omitempty"`
	// PresencePenalty in [-2, 2]; default 0.
	PresencePenalty *float64 `json:"presence_penalty,omitempty"`
	// FrequencyPenalty in [-2, 2]; default 0.
	FrequencyPenalty *float64 `json:"frequency_penalty,omitempty"`
	// User is an end-user id, accepted and ignored.
	User string `json:"user,omitempty"`

	// TopK (vLLM): > 0 keeps the k most likely tokens; 0 or -1 disables.
	TopK *int `json:"top_k,omitempty"`
	// MinP (vLLM) in [0, 1]; 0 disables.
	MinP *float64 `json:"min_p,omitempty"`
	// RepetitionPenalty (vLLM) > 0; 1 disables.
	RepetitionPenalty *float64 `json:"repetition_penalty,omitempty"`
	// MinTokens (vLLM): EOS and stop tokens are ignored until this many
	// tokens exist.
	MinTokens *int `json:"min_tokens,omitempty"`
	// IgnoreEOS (vLLM, trtllm): do not stop at the model's EOS token.
	IgnoreEOS bool `json:"ignore_eos,omitempty"`
	// StopTokenIDs (vLLM) stop generation when sampled.
	StopTokenIDs []int32 `json:"stop_token_ids,omitempty"`
	// SkipSpecialTokens (vLLM): leave special tokens out of the text;
	// default true.
	SkipSpecialTokens *bool `json:"skip_special_tokens,omitempty"`
	// AddSpecialTokens (vLLM): add BOS etc. when tokenizing the prompt;
	// default true for completions, false for chat (the template has them).
	AddSpecialTokens *bool `json:"add_special_tokens,omitempty"`
	// DisaggregatedParams (trtllm) drive disaggregated serving.
	DisaggregatedParams *DisaggregatedParams `json:"disaggregated_params,omitempty"`
}

// IncludeUsage reports whether a stream ends with a usage chunk.
func (o *SamplingOptions) IncludeUsage() bool {
	return o.Stream && o.StreamOptions != nil && o.StreamOptions.IncludeUsage
}

// Choices is n, defaulted to 1.
func (o *SamplingOptions) Choices() int {
	if o.N == nil {
		return 1
	}
	return *o.N
}

// Validate checks the ranges of the shared fields. maxN is the server's
// limit for n (<= 0: no limit).
func (o *SamplingOptions) Validate(maxN int) *Error {
	if o.Temperature != nil && !inRange(*o.Temperature, 0, 2) {
		return InvalidRequest("temperature", "temperature must be in [0, 2]; got %v.", *o.Temperature)
	}
	if o.TopP != nil && (!(*o.TopP > 0) || *o.TopP > 1) {
		return InvalidRequest("top_p", "top_p must be in (0, 1]; got %v.", *o.TopP)
	}
	if o.N != nil && *o.N < 1 {
		return InvalidRequest("n", "n must be at least 1; got %d.", *o.N)
	}
	if o.N != nil && maxN > 0 && *o.N > maxN {
		return InvalidRequest("n", "n must be at most %d; got %d.", maxN, *o.N)
	}
	if o.PresencePenalty != nil && !inRange(*o.PresencePenalty, -2, 2) {
		return InvalidRequest("presence_penalty", "presence_penalty must be in [-2, 2]; got %v.", *o.PresencePenalty)
	}
	if o.FrequencyPenalty != nil && !inRange(*o.FrequencyPenalty, -2, 2) {
		return InvalidRequest("frequency_penalty", "frequency_penalty must be in [-2, 2]; got %v.", *o.FrequencyPenalty)
	}
	if len(o.Stop) > MaxStopStrings {
		return InvalidRequest("stop", "stop may hold at most %d strings; got %d.", MaxStopStrings, len(o.Stop))
	}
	if o.TopK != nil && *o.TopK < -1 {
		return InvalidRequest("top_k", "top_k must be -1 (disabled), 0 (disabled) or positive; got %d.", *o.TopK)
	}
	if o.MinP != nil && !inRange(*o.MinP, 0, 1) {
		return InvalidRequest("min_p", "min_p must be in [0, 1]; got %v.", *o.MinP)
	}
	if o.RepetitionPenalty != nil && (!(*o.RepetitionPenalty > 0) || *o.RepetitionPenalty > 2) {
		return InvalidRequest("repetition_penalty", "repetition_penalty must be in (0, 2]; got %v.", *o.RepetitionPenalty)
	}
	if o.MinTokens != nil && *o.MinTokens < 0 {
		return InvalidRequest("min_tokens", "min_tokens must be at least 0; got %d.", *o.MinTokens)
	}
	for _, id := range o.StopTokenIDs {
		if id < 0 {
			return InvalidRequest("stop_token_ids", "stop_token_ids must not be negative; got %d.", id)
		}
	}
	if p := o.DisaggregatedParams; p != nil {
		switch p.RequestType {
		case "", RequestContextOnly, RequestGenerationOnly, RequestContextAndGeneration:
		default:
			return InvalidRequest("disaggregated_params.request_type",
				"request_type must be %q, %q or %q; got %q.",
				RequestContextOnly, RequestGenerationOnly, RequestContextAndGeneration, p.RequestType)
		}
	}
	return nil
}

func inRange(v, lo, hi float64) bool { return !math.IsNaN(v) && v >= lo && v <= hi }

// Prompt is the completions "prompt": a string, a list of strings, a list of
// token ids, or a list of lists of token ids. Exactly one of Texts and
// Tokens is set after decoding.
type Prompt struct {
	// Texts holds the text prompts.
	Texts []string
	// Tokens holds the token-id prompts.
	Tokens [][]int32
}

// Len is the number of prompts.
func (p Prompt) Len() int { return len(p.Texts) + len(p.Tokens) }

// MarshalJSON writes the most compact of the four shapes.
func (p Prompt) MarshalJSON() ([]byte, error) {
	switch {
	case len(p.Texts) == 1:
		return json.Marshal(p.Texts[0])
	case len(p.Texts) > 1:
		return json.Marshal(p.Texts)
	case len(p.Tokens) == 1:
		return json.Marshal(p.Tokens[0])
	case len(p.Tokens) > 1:
		return json.Marshal(p.Tokens)
	}
	return []byte("null"), nil
}

var errPromptShape = &FieldError{Param: "prompt",
	Message: "expected a string, an array of strings, an array of token ids (integers) or an array of arrays of token ids."}

// UnmarshalJSON accepts the four shapes and nothing else; token ids must be
// integers that fit in 32 bits. Emptiness is checked by Validate.
func (p *Prompt) UnmarshalJSON(data []byte) error {
	*p = Prompt{}
	data = bytes.TrimSpace(data)
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		return nil
	}
	switch data[0] {
	case '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return errPromptShape
		}
		p.Texts = []string{s}
		return nil
	case '[':
	default:
		return errPromptShape
	}
	var items []json.RawMessage
	if err := json.Unmarshal(data, &items); err != nil {
		return errPromptShape
	}
	if len(items) == 0 {
		p.Texts = []string{}
		return nil
	}
	switch items[0][0] {
	case '"':
		texts := make([]string, len(items))
		for i, it := range items {
			if err := json.Unmarshal(it, &texts[i]); err != nil {
				return errPromptShape
			}
		}
		p.Texts = texts
	case '[':
		lists := make([][]int32, len(items))
		for i, it := range items {
			var inner []json.RawMessage
			if err := json.Unmarshal(it, &inner); err != nil {
				return errPromptShape
			}
			ids, err := tokenIDs(inner)
			if err != nil {
				return err
			}
			lists[i] = ids
		}
		p.Tokens = lists
	default:
		ids, err := tokenIDs(items)
		if err != nil {
			return err
		}
		p.Tokens = [][]int32{ids}
	}
	return nil
}

// tokenIDs decodes JSON integers that fit in an int32.
func tokenIDs(items []json.RawMessage) ([]int32, error) {
	ids := make([]int32, len(items))
	for i, it := range items {
		var n json.Number
		if err := json.Unmarshal(it, &n); err != nil {
			return nil, errPromptShape
		}
		v, err := n.Int64()
		if err != nil || v < math.MinInt32 || v > math.MaxInt32 {
			return nil, &FieldError{Param: "prompt", Message: fmt.Sprintf("token id %s is not a 32-bit integer.", it)}
		}
		ids[i] = int32(v)
	}
	return ids, nil
}

// CompletionRequest is the body of POST /v1/completions.
type CompletionRequest struct {
	// Model is the served model name; empty means the one model served.
	Model string `json:"model"`
	// Prompt is the text or token ids to complete; one choice set per prompt.
	Prompt Prompt `json:"prompt"`
	// MaxTokens is the most tokens to generate; default 16.
	MaxTokens *int `json:"max_tokens,omitempty"`
	// Logprobs: include the log probabilities of the sampled tokens and of
	// the Logprobs most likely ones (0..MaxLogprobs).
	Logprobs *int `json:"logprobs,omitempty"`
	// Echo the prompt in the text: not supported (400 when true).
	Echo bool `json:"echo,omitempty"`
	// Suffix after the completion: not supported (400 when set).
	Suffix string `json:"suffix,omitempty"`
	// LogitBias: not supported (400 when not empty).
	LogitBias map[string]float64 `json:"logit_bias,omitempty"`

	SamplingOptions
}

// Validate checks the fields that do not need the model: shapes, ranges,
// unsupported features. maxN is the server's limit for n.
func (r *CompletionRequest) Validate(maxN int) *Error {
	if r.Prompt.Len() == 0 {
		return InvalidRequest("prompt", "prompt must not be empty.")
	}
	for _, t := range r.Prompt.Texts {
		if t == "" {
			return InvalidRequest("prompt", "prompt must not be an empty string.")
		}
	}
	for _, t := range r.Prompt.Tokens {
		if len(t) == 0 {
			return InvalidRequest("prompt", "prompt must not be an empty list of token ids.")
		}
	}
	if r.MaxTokens != nil && *r.MaxTokens < 1 {
		return InvalidRequest("max_tokens", "max_tokens must be at least 1; got %d.", *r.MaxTokens)
	}
	if r.Logprobs != nil && (*r.Logprobs < 0 || *r.Logprobs > MaxLogprobs) {
		return InvalidRequest("logprobs", "logprobs must be in [0, %d]; got %d.", MaxLogprobs, *r.Logprobs)
	}
	if r.Echo {
		return InvalidRequest("echo", "echo is not supported.").WithCode(CodeUnsupported)
	}
	if r.Suffix != "" {
		return InvalidRequest("suffix", "suffix is not supported.").WithCode(CodeUnsupported)
	}
	if len(r.LogitBias) > 0 {
		return InvalidRequest("logit_bias", "logit_bias is not supported.").WithCode(CodeUnsupported)
	}
	if e := r.SamplingOptions.Validate(maxN); e != nil {
		return e
	}
	if r.MinTokens != nil && *r.MinTokens > r.MaxTokensOrDefault() {
		return InvalidRequest("min_tokens", "min_tokens (%d) must not exceed max_tokens (%d).", *r.MinTokens, r.MaxTokensOrDefault())
	}
	return nil
}

// MaxTokensOrDefault is max_tokens, or DefaultCompletionMaxTokens.
func (r *CompletionRequest) MaxTokensOrDefault() int {
	if r.MaxTokens == nil {
		return DefaultCompletionMaxTokens
	}
	return *r.MaxTokens
}
