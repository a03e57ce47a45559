package engine

import (
	"disagg/worker/sampling"
	"time"
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
	// FinishContextDone: a Request.ContextOnly sequence has run its prefill
	// and sampled its first token, which did not finish it; the Output
	// hands the prompt's KV blocks to the caller (Output.KV). Not an OpenAI
	// finish reason: the request goes on on a generation worker.
	FinishContextDone FinishReason = "context_done"
)

// Resume starts a sequence from KV computed elsewhere (the generation
// phase of disaggregated serving): the prompt's KV is already in Blocks and
// the first generated tokens are known.
type Resume struct {
	// Blocks hold the KV of the whole prompt, in block-table order; at
	// least BlocksFor(len(Prompt)) blocks of the engine's pool, allocated
	// by the caller. When Submit succeeds the engine owns them (and frees
	// them when the sequence ends); when it fails the caller still does.
	Blocks []int32
	// FirstTokens are the tokens already generated (the context worker's
	// first_gen_tokens); at least one. They count towards MaxTokens and the
	// sampler's penalties, advance a seeded sampler's random stream as if
	// they had been sampled here, and are reported as the sequence's first
	// Outputs (with Logprob 0 and no alternatives: their sampling happened
	// elsewhere). They must not finish the sequence (EOS, stop id, or
	// reaching MaxTokens): that request needs no generation phase.
	FirstTokens []int32
}

// KVHandoff is the KV a ContextOnly sequence hands to the caller.
type KVHandoff struct {
	// Blocks is the block table holding the prompt's KV. The caller owns
	// these blocks and must free them with Engine.FreeKV (or the pool's
	// Free followed by Engine.Wake).
	Blocks []int32
	// Tokens is how many leading tokens' KV the blocks hold: the prompt's
	// length.
	Tokens int
}

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
	// ContextOnly runs the context phase only: the prompt's prefill and the
	// first sampled token. If that token does not finish the sequence, its
	// Output is the last one, with Finish FinishContextDone and KV set; the
	// engine keeps no blocks of it. If it does finish (EOS, stop id,
	// MaxTokens 1), the sequence ends as usual and its blocks are freed.
	ContextOnly bool
	// Resume, when set, starts the sequence from KV brought by the caller
	// (see Resume) instead of running the prompt's prefill.
	Resume *Resume
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
	// QueueTime is set on the first sampled token's Output: how long the
	// sequence waited in the queue before its first model step. The time
	// from then to that Output is its prefill.
	QueueTime time.Duration
	// PromptTokens is the prompt length (set on the last Output), for usage.
	PromptTokens int
	// KV is set on the FinishContextDone Output of a ContextOnly sequence:
	// the blocks now owned by the caller.
	KV *KVHandoff
}
