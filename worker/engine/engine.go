// Package engine is the continuous-batching scheduler: one goroutine runs
// model steps over a changing set of sequences, admitting waiting requests
// as batch slots, token budget and KV blocks allow, chunking long prompts,
// preempting (and later recomputing) the newest sequence when the KV pool
// runs dry, and streaming each sampled token to its request's channel.
//
// For disaggregated serving a request can stop after its context phase
// and hand its KV blocks to the caller (Request.ContextOnly), or start from
// KV blocks and first tokens the caller brings (Request.Resume).
//
// With a backend that samples on its side (compute.Sampler), steps whose
// sequences need nothing but temperature, top-k, top-p, min-p and a seed
// are launched there and only token ids come back; the overlap scheduler
// (on unless Config.DisableOverlap) then plans and launches step n+1 while
// step n runs, feeding continuing decodes the ids step n is still
// sampling. A sequence that ends at step n has its step n+1 work dropped,
// and its blocks return to the pool once step n+1 has run, just after its
// last Output. Other steps (logprobs, penalties, min_tokens masking) run
// synchronously with Forward and host sampling.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"disagg/worker/compute"
	"disagg/worker/kvcache"
)

var (
	// ErrInvalidRequest is wrapped by Submit's errors for a request that can
	// never run: empty prompt, ids outside the vocabulary, bad limits or
	// sampling parameters.
	ErrInvalidRequest = errors.New("engine: invalid request")
	// ErrTooLong is wrapped by the errors for a request longer than the
	// engine's limits (MaxSeqLen, or the whole KV pool). It wraps
	// ErrInvalidRequest, so errors.Is(err, ErrInvalidRequest) holds too.
	ErrTooLong = fmt.Errorf("%w: too long", ErrInvalidRequest)
	// ErrClosed is returned by Submit after Close, and ends the sequences
	// still in flight when Close is called.
	ErrClosed = errors.New("engine: closed")
	// ErrInvalidConfig is wrapped by New's errors for a bad Config.
	ErrInvalidConfig = errors.New("engine: invalid config")
)

// Config sets the engine's limits, with TensorRT-LLM's meanings.
type Config struct {
	// MaxBatchSize is the most sequences in one step (max_batch_size).
	MaxBatchSize int
	// MaxNumTokens is the most tokens in one step, prefill chunks included
	// (max_num_tokens). At least MaxBatchSize, so every running decode fits
	// into each step.
	MaxNumTokens int
	// MaxSeqLen is the limit on prompt plus generated tokens (max_seq_len).
	MaxSeqLen int
	// EOSTokenIDs end a sequence when sampled (unless Request.IgnoreEOS).
	EOSTokenIDs []int32
	// VocabSize is the model's vocabulary size: the logits row length and
	// the bound on token ids.
	VocabSize int
	// DisableOverlap turns the overlap scheduler off
	// (disable_overlap_scheduler). It matters for a backend that samples on
	// its side (compute.Sampler): by default the engine plans and launches
	// step n+1 while step n runs there; with DisableOverlap it waits for
	// step n's tokens first. Either way, steps with a sequence that needs
	// the host sampler (logprobs, penalties, min_tokens masking) run
	// synchronously with host sampling.
	DisableOverlap bool
}

// Validate checks the limits; the error names the bad field.
func (c Config) Validate() error {
	switch {
	case c.MaxBatchSize < 1:
		return fmt.Errorf("%w: MaxBatchSize is %d, must be >= 1", ErrInvalidConfig, c.MaxBatchSize)
	case c.MaxNumTokens < c.MaxBatchSize:
		return fmt.Errorf("%w: MaxNumTokens is %d, must be >= MaxBatchSize (%d)", ErrInvalidConfig, c.MaxNumTokens, c.MaxBatchSize)
	case c.MaxSeqLen < 2:
		return fmt.Errorf("%w: MaxSeqLen is %d, must be >= 2", ErrInvalidConfig, c.MaxSeqLen)
	case c.VocabSize < 1:
		return fmt.Errorf("%w: VocabSize is %d, must be >= 1", ErrInvalidConfig, c.VocabSize)
	}
	for _, id := range c.EOSTokenIDs {
		if id < 0 || int(id) >= c.VocabSize {
			return fmt.Errorf("%w: EOS token id %d is outside the vocabulary [0, %d)", ErrInvalidConfig, id, c.VocabSize)
		}
	}
	return nil
}

// Stats is a snapshot of the engine's state and counters.
type Stats struct {
	// Running and Waiting are the sequence counts now.
	Running, Waiting int
	// FreeBlocks and TotalBlocks describe the KV pool.
	FreeBlocks, TotalBlocks int
	// Preemptions counts sequences preempted (blocks freed, to be
	// recomputed) since start.
	Preemptions uint64
	// StepCount counts model steps run.
	StepCount uint64
	// PrefillTokens counts tokens fed in prefill chunks (recomputation after
	// preemption included); DecodeTokens those fed one per sequence.
	PrefillTokens, DecodeTokens uint64
	// GeneratedTokens counts tokens sampled.
	GeneratedTokens uint64
}

// Engine schedules and runs sequences on one backend and KV pool. Its
// methods are safe for concurrent use. The engine borrows the backend and
// the pool: Close stops the engine but closes neither.
type Engine struct {
	backend compute.Backend
	sampler compute.Sampler // the backend's, or nil
	overlap bool            // launch step n+1 before waiting for step n
	pool    *kvcache.Pool
	cfg     Config
	log     *slog.Logger
	tpb     int // tokens per block

	ctx    context.Context // cancelled by Close; passed to Forward
	cancel context.CancelFunc
	wake   chan struct{} // capacity 1: "something changed"
	quit   chan struct{} // closed by Close
	done   chan struct{} // closed when the loop has ended

	mu       sync.Mutex
	waiting  []*sequence // FIFO; preempted sequences go back to the front
	running  []*sequence // in admission order, oldest first
	started  bool
	closed   bool
	admitted uint64 // admission counter
	stats    Stats
	// Launched steps are numbered from 1: launched is the last id given,
	// completed the last whose Wait returned. Blocks released while a
	// launched step that uses them may still run wait in deferred.
	launched, completed uint64
	deferred            []deferredFree
}

// deferredFree is blocks to free once step has completed.
type deferredFree struct {
	blocks []int32
	step   uint64
}

// New makes an engine over backend b and pool. log may be nil (no logs).
// Call Start to run it.
func New(b compute.Backend, pool *kvcache.Pool, cfg Config, log *slog.Logger) (*Engine, error) {
	if b == nil || pool == nil {
		return nil, fmt.Errorf("%w: nil backend or pool", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.EOSTokenIDs = slices.Clone(cfg.EOSTokenIDs)
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		backend: b, pool: pool, cfg: cfg, log: log,
		tpb: pool.Layout().TokensPerBlock,
		ctx: ctx, cancel: cancel,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
	}
	if s, ok := b.(compute.Sampler); ok {
		e.sampler = s
		e.overlap = !cfg.DisableOverlap
	}
	e.stats.TotalBlocks = pool.NumBlocks()
	return e, nil
}

// Start starts the step loop goroutine. Calling it again, or after Close,
// does nothing.
func (e *Engine) Start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started || e.closed {
		return
	}
	e.started = true
	e.log.Info("engine started", "backend", e.backend.Name(),
		"max_batch_size", e.cfg.MaxBatchSize, "max_num_tokens", e.cfg.MaxNumTokens,
		"max_seq_len", e.cfg.MaxSeqLen, "kv_blocks", e.pool.NumBlocks(),
		"tokens_per_block", e.tpb, "eos_token_ids", e.cfg.EOSTokenIDs,
		"device_sampling", e.sampler != nil, "overlap_scheduler", e.overlap)
	go e.loop()
}

// Close stops the step loop and waits for it. Sequences still running or
// waiting end with FinishAbort and ErrClosed, and their blocks are freed.
// Close is idempotent and always returns nil; it does not close the backend
// or the pool.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		<-e.done // another Close is (or was) stopping the loop
		return nil
	}
	e.closed = true
	started := e.started
	e.mu.Unlock()

	e.cancel()
	close(e.quit)
	if started {
		<-e.done
	} else {
		e.abortAll(ErrClosed)
		close(e.done)
	}
	e.log.Info("engine closed")
	return nil
}

// Stats returns a snapshot of the engine's state and counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.stats
	st.Running, st.Waiting = len(e.running), len(e.waiting)
	st.FreeBlocks = e.pool.FreeBlocks()
	return st
}

// Submit validates r and queues it. The returned channel carries the
// sequence's Outputs (see Output) and is buffered so that the engine never
// waits on a slow reader. When ctx is done before the sequence ends, the
// sequence is dropped (at once if waiting, else at the next step boundary),
// its blocks are freed, and its last Output is a FinishAbort whose Err wraps
// ctx.Err(). Submit's errors wrap ErrInvalidRequest (ErrTooLong for length
// limits), ErrClosed, or ctx.Err().
func (e *Engine) Submit(ctx context.Context, r *Request) (<-chan Output, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: nil request", ErrInvalidRequest)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("engine: request %s: %w", r.ID, err)
	}
	maxTokens, err := e.check(r)
	if err != nil {
		return nil, err
	}
	s := newSequence(ctx, r, maxTokens, e.cfg)
	if r.Resume != nil {
		if err := e.resume(s, r.Resume); err != nil {
			return nil, err
		}
	}

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	if r.Resume != nil {
		// From here on the engine owns the blocks; the first tokens are
		// reported before anything else.
		s.blocks = slices.Clone(r.Resume.Blocks)
		for _, tok := range r.Resume.FirstTokens {
			s.out <- Output{Token: tok, HasToken: true}
		}
	}
	e.waiting = append(e.waiting, s)
	// Runs in its own goroutine once ctx is done, even if it already is.
	s.stopWatch = context.AfterFunc(ctx, func() { e.onCancel(s) })
	e.mu.Unlock()
	e.signal()
	return s.out, nil
}

// check validates r against the config and the pool and returns the
// effective max_tokens.
func (e *Engine) check(r *Request) (int, error) {
	bad := func(format string, args ...any) (int, error) {
		return 0, fmt.Errorf("%w: request %s: %s", ErrInvalidRequest, r.ID, fmt.Sprintf(format, args...))
	}
	tooLong := func(format string, args ...any) (int, error) {
		return 0, fmt.Errorf("%w: request %s: %s", ErrTooLong, r.ID, fmt.Sprintf(format, args...))
	}
	n := len(r.Prompt)
	if n == 0 {
		return bad("prompt is empty")
	}
	for i, id := range r.Prompt {
		if id < 0 || int(id) >= e.cfg.VocabSize {
			return bad("prompt token %d is id %d, outside the vocabulary [0, %d)", i, id, e.cfg.VocabSize)
		}
	}
	for _, id := range r.StopTokenIDs {
		if id < 0 || int(id) >= e.cfg.VocabSize {
			return bad("stop token id %d is outside the vocabulary [0, %d)", id, e.cfg.VocabSize)
		}
	}
	if err := r.Sampling.Validate(); err != nil {
		return 0, fmt.Errorf("%w: request %s: %w", ErrInvalidRequest, r.ID, err)
	}
	maxTokens := r.MaxTokens
	switch {
	case maxTokens < 0:
		return bad("max_tokens is %d, must be >= 1 (or 0 for up to max_seq_len)", maxTokens)
	case n >= e.cfg.MaxSeqLen:
		return tooLong("prompt of %d tokens leaves no room to generate within max_seq_len %d", n, e.cfg.MaxSeqLen)
	case maxTokens == 0:
		maxTokens = e.cfg.MaxSeqLen - n
	case n+maxTokens > e.cfg.MaxSeqLen:
		return tooLong("prompt of %d tokens + max_tokens %d = %d exceeds max_seq_len %d", n, maxTokens, n+maxTokens, e.cfg.MaxSeqLen)
	}
	if r.MinTokens < 0 || r.MinTokens > maxTokens {
		return bad("min_tokens is %d, must be in [0, max_tokens %d]", r.MinTokens, maxTokens)
	}
	if need := e.pool.Layout().BlocksFor(n); need > e.pool.NumBlocks() {
		return tooLong("prompt of %d tokens needs %d KV blocks of %d tokens, the pool holds %d", n, need, e.tpb, e.pool.NumBlocks())
	}
	return maxTokens, nil
}

// resume checks a Resume against s and the pool and sets s up to continue
// after the first tokens: the prompt's KV counts as computed, the first
// tokens as generated. It does not take the blocks yet (Submit does, once
// nothing can fail).
func (e *Engine) resume(s *sequence, rs *Resume) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: request %s: %s", ErrInvalidRequest, s.id, fmt.Sprintf(format, args...))
	}
	if s.contextOnly {
		return bad("a request cannot be both context-only and resumed")
	}
	if len(rs.FirstTokens) == 0 {
		return bad("a resumed request needs at least one first generated token")
	}
	if need := e.pool.Layout().BlocksFor(s.promptLen); len(rs.Blocks) < need || len(rs.Blocks) > e.pool.NumBlocks() {
		return bad("the prompt of %d tokens needs %d KV blocks, %d were given", s.promptLen, need, len(rs.Blocks))
	}
	seen := make(map[int32]struct{}, len(rs.Blocks))
	for _, b := range rs.Blocks {
		if !e.pool.InUse(b) {
			return bad("KV block %d is not an allocated block of the pool", b)
		}
		if _, dup := seen[b]; dup {
			return bad("KV block %d appears twice", b)
		}
		seen[b] = struct{}{}
	}
	for i, tok := range rs.FirstTokens {
		if tok < 0 || int(tok) >= e.cfg.VocabSize {
			return bad("first generated token %d is id %d, outside the vocabulary [0, %d)", i, tok, e.cfg.VocabSize)
		}
		s.tokens = append(s.tokens, tok)
		if f := s.finishFor(tok, e.cfg.MaxSeqLen); f != FinishNone {
			return bad("the first generated tokens already finish the request (%s)", f)
		}
	}
	s.computed = s.promptLen
	s.sampler.Skip(len(rs.FirstTokens))
	return nil
}

// Wake makes an idle engine look again at its waiting sequences. Call it
// after freeing blocks of the engine's pool outside the engine (FreeKV
// does), so that a sequence waiting for blocks is admitted.
func (e *Engine) Wake() { e.signal() }

// FreeKV returns blocks the caller owns (a KVHandoff's, or blocks it
// allocated itself) to the engine's pool and wakes the engine.
func (e *Engine) FreeKV(blocks []int32) {
	if len(blocks) == 0 {
		return
	}
	e.pool.Free(blocks)
	e.signal()
}

// Pool is the KV pool the engine schedules over.
func (e *Engine) Pool() *kvcache.Pool { return e.pool }

// signal wakes the loop if it is idle.
func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// onCancel runs when a sequence's context is done: a waiting sequence ends
// at once; a running one is reaped by the loop at the next step boundary.
func (e *Engine) onCancel(s *sequence) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.state == stateWaiting {
		e.finishLocked(s, abortOutput(s.cancelErr()))
		return
	}
	e.signal()
}

// finishLocked ends s: frees its blocks, removes it from its queue, sends
// its last Output and closes its channel. e.mu must be held. It does
// nothing for a sequence that has already ended.
func (e *Engine) finishLocked(s *sequence, o Output) {
	switch s.state {
	case stateDone:
		return
	case stateWaiting:
		e.waiting = remove(e.waiting, s)
	case stateRunning:
		e.running = remove(e.running, s)
	}
	e.releaseBlocks(s)
	s.state = stateDone
	if s.stopWatch != nil {
		s.stopWatch()
	}
	o.PromptTokens = s.promptLen
	// The channel holds max_tokens+2 Outputs and a sequence sends at most
	// max_tokens+1, so this never blocks.
	s.out <- o
	close(s.out)
	e.log.Debug("sequence finished", "id", s.id, "finish", o.Finish, "generated", s.generated(),
		"prompt_tokens", s.promptLen, "err", o.Err)
}

// releaseBlocks returns s's blocks to the pool and forgets its KV. While a
// launched step with work of s may still run, the blocks go back only when
// it has completed (freeCompletedLocked). e.mu must be held.
func (e *Engine) releaseBlocks(s *sequence) {
	if len(s.blocks) > 0 {
		if s.lastStep > e.completed {
			e.deferred = append(e.deferred, deferredFree{blocks: s.blocks, step: s.lastStep})
		} else {
			e.pool.Free(s.blocks)
		}
	}
	s.blocks = nil
	s.computed = 0
}

// freeCompletedLocked frees the deferred blocks whose step has completed.
func (e *Engine) freeCompletedLocked() {
	kept := e.deferred[:0]
	for _, d := range e.deferred {
		if d.step <= e.completed {
			e.pool.Free(d.blocks)
		} else {
			kept = append(kept, d)
		}
	}
	clear(e.deferred[len(kept):])
	e.deferred = kept
}

// abortAll ends every sequence with FinishAbort and err.
func (e *Engine) abortAll(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for len(e.running) > 0 {
		e.finishLocked(e.running[0], abortOutput(err))
	}
	for len(e.waiting) > 0 {
		e.finishLocked(e.waiting[0], abortOutput(err))
	}
}

func abortOutput(err error) Output { return Output{Finish: FinishAbort, Err: err} }

// remove deletes s from list, keeping the order.
func remove(list []*sequence, s *sequence) []*sequence {
	if i := slices.Index(list, s); i >= 0 {
		return slices.Delete(list, i, i+1)
	}
	return list
}
