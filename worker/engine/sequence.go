package engine

import (
	"context"
	"fmt"
	"slices"
	"time"

	"disagg/worker/sampling"
)

// seqState is where a sequence is in its life.
type seqState uint8

const (
	stateWaiting seqState = iota // in e.waiting; holds no blocks, unless resumed with KV it brought
	stateRunning                 // in e.running; may hold blocks
	stateDone                    // ended; its channel is closed
)

// sequence is one request's state in the engine. Its KV state is explicit:
// blocks is its block table and computed counts the leading tokens whose KV
// is in those blocks, so a sequence can also start with KV that arrived from
// elsewhere (computed > 0 before its first step) or end keeping its blocks.
type sequence struct {
	id  string
	ctx context.Context
	// stopWatch unregisters the context.AfterFunc watching ctx.
	stopWatch func() bool
	out       chan Output
	sampler   *sampling.Sampler

	// tokens are prompt then generated tokens; the last one is fed to the
	// model next once the prompt is done.
	tokens    []int32
	promptLen int
	maxTokens int // effective max_tokens
	minTokens int
	ignoreEOS bool
	stopIDs   []int32
	eosIDs    []int32
	// minMask is what the sampler bans while fewer than minTokens exist:
	// stop ids, and EOS ids unless ignoreEOS.
	minMask []int32
	// contextOnly: hand the blocks over after the first sampled token.
	contextOnly bool

	blocks   []int32 // block table
	computed int     // tokens whose KV is in blocks
	// lastStep is the id of the last launched step with work of s; its
	// blocks are freed only once that step has completed (overlap).
	lastStep uint64
	admitSeq uint64 // admission order (larger is newer)
	// submitted is when Submit queued the sequence; queued is how long it
	// then waited for its first admission (0 until admitted).
	submitted time.Time
	queued    time.Duration
	state     seqState
}

// newSequence makes the state of a validated request.
func newSequence(ctx context.Context, r *Request, maxTokens int, cfg Config) *sequence {
	s := &sequence{
		id:          r.ID,
		ctx:         ctx,
		out:         make(chan Output, maxTokens+2),
		sampler:     sampling.NewSampler(r.Sampling, cfg.VocabSize),
		tokens:      make([]int32, len(r.Prompt), len(r.Prompt)+maxTokens),
		promptLen:   len(r.Prompt),
		maxTokens:   maxTokens,
		minTokens:   r.MinTokens,
		ignoreEOS:   r.IgnoreEOS,
		stopIDs:     slices.Clone(r.StopTokenIDs),
		eosIDs:      cfg.EOSTokenIDs,
		state:       stateWaiting,
		contextOnly: r.ContextOnly,
		submitted:   time.Now(),
	}
	copy(s.tokens, r.Prompt)
	if s.minTokens > 0 {
		s.minMask = slices.Clone(s.stopIDs)
		if !s.ignoreEOS {
			s.minMask = append(s.minMask, s.eosIDs...)
		}
	}
	return s
}

// generated is the count of generated tokens.
func (s *sequence) generated() int { return len(s.tokens) - s.promptLen }

// pending is the count of tokens not yet fed to the model: the rest of the
// prompt while prefilling, 1 while decoding.
func (s *sequence) pending() int { return len(s.tokens) - s.computed }

// decoding reports whether only the last sampled token is pending.
func (s *sequence) decoding() bool { return s.pending() == 1 && s.generated() > 0 }

// cancelErr is the error of a sequence whose context is done.
func (s *sequence) cancelErr() error {
	return fmt.Errorf("engine: request %s cancelled: %w", s.id, context.Cause(s.ctx))
}

// finishFor says whether tok, just appended, ends the sequence.
func (s *sequence) finishFor(tok int32, maxSeqLen int) FinishReason {
	return s.finishAt(tok, len(s.tokens), maxSeqLen)
}

// finishAt says whether tok ends the sequence when it is token n-1 (with n
// tokens, prompt included, up to and with it).
func (s *sequence) finishAt(tok int32, n, maxSeqLen int) FinishReason {
	if slices.Contains(s.stopIDs, tok) {
		return FinishStop
	}
	if !s.ignoreEOS && slices.Contains(s.eosIDs, tok) {
		return FinishStop
	}
	if n-s.promptLen >= s.maxTokens || n >= maxSeqLen {
		return FinishLength
	}
	return FinishNone
}
