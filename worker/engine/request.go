package engine

import (
	"disagg/worker/sampling"
)

// FinishReason says why a sequence stopped, in OpenAI's words.
type FinishReason string

const (
	// FinishNone: not finished yet.
	FinishNone FinishReason = ""
	// FinishStop: an EOS or stop token id was sampled (or the caller saw a stop string).
	FinishStop FinishReason = "stop"
	// FinishLength: max_tokens reached, or the context is full.
	FinishLength FinishReason = "length"
	// FinishAbort: cancelled by the caller or failed; Output.Err says which.
	FinishAbort FinishReason = "abort"
)

// Request is one sequence to generate. The server turns an OpenAI request
// with n > 1 into n Requests (seeds seed, seed+1, ...).
type Request struct {
	// ID names the request in logs and metrics.
	ID string
	// Prompt is the tokenized prompt; never empty.
	Prompt []int32
	// Sampling holds the sampling parameters.
	Sampling sampling.Params
	// MaxTokens is the most tokens to generate (> 0).
	MaxTokens int
	// MinTokens: EOS and stop token ids are masked until this many tokens exist.
	MinTokens int
	// IgnoreEOS: do not stop at the model's EOS ids (stop token ids still stop).
	IgnoreEOS bool
	// StopTokenIDs stop generation when sampled (the token is reported).
	StopTokenIDs []int32
}

// Output is one generated token, or the end of the sequence. The channel
// returned by Submit carries one Output per generated token; the last one has
// Finish set (and, for FinishAbort, Err), and then the channel is closed.
type Output struct {
	// Token is the sampled token id; valid when HasToken.
	Token    int32
	HasToken bool
	// Logprob of Token, and the top alternatives when requested.
	Logprob float32
	Top     []sampling.TokenLogprob
	// Finish is set on the last Output.
	Finish FinishReason
	// Err explains FinishAbort.
	Err error
	// PromptTokens is the prompt length (set on the last Output), for usage.
	PromptTokens int
}
