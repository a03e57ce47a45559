// Package sampling turns a row of logits into the next token: penalties,
// temperature, top-k, top-p, min-p, seeded randomness, and logprobs.
package sampling

import (
	"errors"
	"fmt"
	"math"
)

// MaxLogprobs is the most top alternatives a request may ask for (OpenAI's
// and vLLM's limit for chat completions).
const MaxLogprobs = 20

// ErrInvalidParams is wrapped by every error Validate returns.
var ErrInvalidParams = errors.New("sampling: invalid parameters")

// Params are one sequence's sampling parameters, with OpenAI/vLLM meanings.
// The zero value is not valid (TopP and RepetitionPenalty 0 are out of
// range): start from DefaultParams.
type Params struct {
	// Temperature 0 means greedy (argmax, lowest id on ties). Range [0, 2].
	// Values below 1e-5 are treated as 0, as vLLM does.
	Temperature float32
	// TopP in (0, 1]; 1 disables.
	TopP float32
	// TopK > 0 keeps the k most likely tokens; 0 or -1 disables.
	TopK int
	// MinP in [0, 1]: drop tokens whose probability is below MinP times the
	// most likely token's; 0 disables.
	MinP float32
	// Seed makes sampling reproducible for the request when HasSeed.
	Seed    int64
	HasSeed bool
	// RepetitionPenalty in (0, 2]; 1 disables (vLLM/HF meaning: divides
	// positive logits and multiplies negative ones of tokens seen in prompt
	// or output).
	RepetitionPenalty float32
	// PresencePenalty and FrequencyPenalty in [-2, 2] (OpenAI meaning, over
	// the generated tokens).
	PresencePenalty  float32
	FrequencyPenalty float32
	// Logprobs: < 0 none; 0 the sampled token's logprob only; k in
	// [1, MaxLogprobs] also the top k alternatives.
	Logprobs int
}

// DefaultParams are OpenAI's defaults: temperature 1, no truncation, no
// penalties, no logprobs, unseeded.
func DefaultParams() Params {
	return Params{Temperature: 1, TopP: 1, RepetitionPenalty: 1, Logprobs: -1}
}

// GreedyParams are DefaultParams with temperature 0.
func GreedyParams() Params {
	p := DefaultParams()
	p.Temperature = 0
	return p
}

// Validate checks every field's range. The error wraps ErrInvalidParams and
// names the field (in its OpenAI/vLLM spelling) and the range allowed.
func (p Params) Validate() error {
	bad := func(field string, v any, allowed string) error {
		return fmt.Errorf("%w: %s is %v, must be in %s", ErrInvalidParams, field, v, allowed)
	}
	isNaN := func(f float32) bool { return math.IsNaN(float64(f)) }
	switch {
	case isNaN(p.Temperature) || p.Temperature < 0 || p.Temperature > 2:
		return bad("temperature", p.Temperature, "[0, 2]")
	case isNaN(p.TopP) || p.TopP <= 0 || p.TopP > 1:
		return bad("top_p", p.TopP, "(0, 1]")
	case p.TopK < -1:
		return bad("top_k", p.TopK, "{-1, 0} (disabled) or >= 1")
	case isNaN(p.MinP) || p.MinP < 0 || p.MinP > 1:
		return bad("min_p", p.MinP, "[0, 1]")
	case isNaN(p.RepetitionPenalty) || p.RepetitionPenalty <= 0 || p.RepetitionPenalty > 2:
		return bad("repetition_penalty", p.RepetitionPenalty, "(0, 2]")
	case isNaN(p.PresencePenalty) || p.PresencePenalty < -2 || p.PresencePenalty > 2:
		return bad("presence_penalty", p.PresencePenalty, "[-2, 2]")
	case isNaN(p.FrequencyPenalty) || p.FrequencyPenalty < -2 || p.FrequencyPenalty > 2:
		return bad("frequency_penalty", p.FrequencyPenalty, "[-2, 2]")
	case p.Logprobs > MaxLogprobs:
		return bad("logprobs", p.Logprobs, fmt.Sprintf("[0, %d] (or negative for none)", MaxLogprobs))
	}
	return nil
}

// TokenLogprob is one token with its log probability.
type TokenLogprob struct {
	Token   int32
	Logprob float32
}

// Logprobs are the log probabilities Sample reports when Params.Logprobs >= 0.
type Logprobs struct {
	// Logprob is the sampled token's log probability.
	Logprob float32
	// Top are the Params.Logprobs most likely tokens, most likely first (ties:
	// lowest id first). Empty when Params.Logprobs is 0.
	Top []TokenLogprob
}
