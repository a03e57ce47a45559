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
	// Prompt is the tokenized prompt; never empty. Submit copies it.
	Prompt []int32
	// Sampling holds the sampling parameters (see sampling.DefaultParams).
	Sampling sampling.Params
	// MaxTokens is the most tokens to generate. 0 means as many as the
	// engine's MaxSeqLen leaves after the prompt; then the sequence may end
	// with FinishLength when the context is full.
	MaxTokens int
	// MinTokens: EOS and stop token ids are masked until this many tokens
	// were generated (vLLM's min_tokens). In [0, MaxTokens].
	MinTokens int
	// IgnoreEOS: do not stop at the model's EOS ids, and do not mask them
	// either (vLLM's ignore_eos); stop token ids still stop.
	IgnoreEOS bool
	// StopTokenIDs stop generation when sampled (the token is reported).
	StopTokenIDs []int32
}

// Output is one generated token, or the end of the sequence. The channel
// returned by Submit carries one Output per generated token; the last one has
// Finish set (and, for FinishAbort, Err), and then the channel is closed. A
// FinishStop or FinishLength Output carries the last token; a FinishAbort
// Output carries none.
type Output struct {
	// Token is the sampled token id; valid when HasToken.
	Token    int32
	HasToken bool
	// Logprob of Token, and the top alternatives when requested
	// (Sampling.Logprobs >= 0): raw log-softmax values, see sampling.Sampler.
	Logprob float32
	Top     []sampling.TokenLogprob
	// Finish is set on the last Output.
	Finish FinishReason
	// Err explains FinishAbort: it wraps the request context's error when
	// the caller went away, ErrClosed when the engine stopped, ErrTooLong
	// when the sequence outgrew the KV pool, or the backend's error.
	Err error
	// PromptTokens is the prompt length (set on the last Output), for usage.
	PromptTokens int
}
