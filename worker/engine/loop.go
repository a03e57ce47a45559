package engine

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"disagg/worker/compute"
)

// work is one sequence's share of a step.
type work struct {
	s      *sequence
	n      int  // tokens fed this step
	logits bool // the chunk ends at the last token: sample after it
	decode bool // a decode (one generated token) rather than a prefill chunk
}

// loop runs steps until Close. With nothing to run it blocks on e.wake.
//
// A step whose every row the backend can sample (compute.Sampler) is
// launched rather than run: with the overlap scheduler, while it runs the
// loop plans and launches the next step (continuing decodes feed the
// tokens the running step is still sampling), and only then waits for the
// running step's tokens and processes them. Any other step runs
// synchronously, with host sampling, once nothing is in flight.
func (e *Engine) loop() {
	defer close(e.done)
	var fl *flight // launched, not yet processed
	for {
		select {
		case <-e.quit:
			if fl != nil {
				e.complete(fl)
			}
			e.abortAll(ErrClosed)
			return
		default:
		}
		if fl != nil {
			var next *flight
			if e.overlap {
				next = e.launchAhead()
			}
			e.complete(fl)
			fl = next
			continue
		}
		plan := e.schedule()
		if len(plan) == 0 {
			select {
			case <-e.wake:
			case <-e.quit:
			}
			continue
		}
		if f := e.launchPlan(plan); f != nil {
			if e.overlap {
				fl = f
			} else {
				e.complete(f)
			}
			continue
		}
		e.step(plan)
	}
}

// schedule reaps cancelled sequences and plans the next step.
func (e *Engine) schedule() []work {
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		e.reapCancelledLocked()
		plan, _ := e.planLocked(false)
		if len(plan) > 0 || len(e.running) == 0 {
			return plan
		}
		// Every running sequence is a prefill with no room to grow: make
		// room from waiting sequences' blocks, else by preempting the
		// newest, or fail the last one standing.
		if e.reclaimLocked() {
			continue
		}
		if len(e.running) > 1 {
			e.preemptLocked(e.running[len(e.running)-1])
		} else {
			e.failTooLongLocked(e.running[0])
		}
	}
}

// planLocked picks the step's work, in this order, within MaxNumTokens and
// MaxBatchSize: every running decode (one token each; a decode that needs a
// block and finds none preempts the newest running sequence, possibly
// itself); then running prefills, oldest first, in chunks that fit the
// remaining token budget and the free blocks; then waiting sequences in FIFO
// order, unless this step preempted (admitting then would only thrash).
// Blocks are allocated here, per chunk, as the work needs them;
// admissions leave one free block per running sequence.
//
// ahead plans while a launched step is in flight (overlap scheduler):
// decodes of its sampled tokens are planned without knowing them, except
// where the token is sure to end the sequence (its length, a context-only
// sequence's first token); and the plan never preempts nor fails a
// sequence, since blocks freed now come back only when the step in flight
// has run: where a decode cannot get a block, planLocked gives up (false)
// and the caller waits for the step in flight first.
func (e *Engine) planLocked(ahead bool) ([]work, bool) {
	budget := e.cfg.MaxNumTokens
	var plan []work
	preempted := false

	// Decodes. Victims come from the end of e.running (the newest), which
	// this oldest-first pass has not reached yet, or are s itself.
	for i := 0; i < len(e.running) && budget > 0; i++ {
		s := e.running[i]
		if !s.decoding() || e.ending(s) {
			continue
		}
		for e.reserveLocked(s, 1, 0) == 0 {
			if ahead {
				return nil, false
			}
			if e.reclaimLocked() {
				continue
			}
			victim := e.running[len(e.running)-1]
			if victim == s && len(e.running) == 1 {
				e.failTooLongLocked(s)
				break
			}
			e.preemptLocked(victim)
			preempted = true
			if victim == s {
				break
			}
		}
		if s.state == stateRunning {
			plan = append(plan, e.workFor(s, 1, true))
			budget--
		}
	}

	// Running prefills (chunked prompts, recomputation after preemption).
	for _, s := range e.running {
		if budget == 0 {
			break
		}
		if s.decoding() {
			continue
		}
		if n := e.reserveLocked(s, min(s.pending(), budget), 0); n > 0 {
			plan = append(plan, e.workFor(s, n, false))
			budget -= n
		}
	}

	// Admissions.
	for !preempted && len(e.waiting) > 0 && len(e.running) < e.cfg.MaxBatchSize && budget > 0 {
		s := e.waiting[0]
		// Keep a block back for each running sequence, so that admitting
		// does not force a preemption at the running ones' next block
		// boundary (and then thrash).
		n := e.reserveLocked(s, min(s.pending(), budget), len(e.running))
		if n == 0 {
			if len(e.running) == 0 && e.reclaimLocked() {
				continue
			}
			break // FIFO: nobody overtakes the head
		}
		e.waiting = slices.Delete(e.waiting, 0, 1)
		e.admitted++
		s.admitSeq = e.admitted
		if s.queued == 0 { // the first admission, not a readmission after preemption
			s.queued = max(time.Since(s.submitted), time.Nanosecond)
		}
		s.state = stateRunning
		e.running = append(e.running, s)
		plan = append(plan, e.workFor(s, n, s.decoding()))
		budget -= n
	}
	return plan, true
}

// ending reports whether s's last token, sampled by a step still in flight,
// is sure to end it: it reaches max_tokens or max_seq_len, or it is a
// context-only sequence's first. Such a sequence gets no more work.
func (e *Engine) ending(s *sequence) bool {
	return (s.contextOnly && s.generated() > 0) || s.generated() >= s.maxTokens || len(s.tokens) >= e.cfg.MaxSeqLen
}

func (e *Engine) workFor(s *sequence, n int, decode bool) work {
	return work{s: s, n: n, logits: s.computed+n == len(s.tokens), decode: decode}
}

// reserveLocked makes room in s's block table for up to n more tokens,
// allocating blocks as far as the pool allows while leaving keep blocks
// free, and returns how many tokens now fit (0..n).
func (e *Engine) reserveLocked(s *sequence, n, keep int) int {
	room := func() int { return len(s.blocks)*e.tpb - s.computed }
	if room() >= n {
		return n
	}
	need := e.pool.Layout().BlocksFor(s.computed+n) - len(s.blocks)
	if take := min(need, e.pool.FreeBlocks()-keep); take > 0 {
		// Alloc can only fail if another user of the pool took blocks since
		// FreeBlocks; then the sequence gets what it already has.
		if ids, err := e.pool.Alloc(take); err == nil {
			s.blocks = append(s.blocks, ids...)
		}
	}
	return min(n, room())
}

// preemptLocked frees a running sequence's blocks and puts it at the front
// of the waiting queue; it will recompute its prompt and generated tokens
// when readmitted, keeping its sampler (and so its random stream).
func (e *Engine) preemptLocked(s *sequence) {
	e.running = remove(e.running, s)
	e.releaseBlocks(s)
	s.state = stateWaiting
	e.waiting = slices.Insert(e.waiting, 0, s)
	e.stats.Preemptions++
	e.log.Debug("sequence preempted", "id", s.id, "tokens", len(s.tokens), "free_blocks", e.pool.FreeBlocks())
}

// reclaimLocked frees the blocks of the newest waiting sequence that holds
// some (a resumed sequence not admitted yet, which brought its KV): it
// will recompute them when admitted. Without this, blocks held by waiting
// sequences could starve the head of the queue, or fail a running
// sequence as too long, with nothing running to free blocks. It reports
// whether it freed any.
func (e *Engine) reclaimLocked() bool {
	for i := len(e.waiting) - 1; i >= 0; i-- {
		if s := e.waiting[i]; len(s.blocks) > 0 {
			e.releaseBlocks(s)
			e.stats.Preemptions++
			e.log.Debug("waiting sequence gave up its KV blocks", "id", s.id, "tokens", len(s.tokens), "free_blocks", e.pool.FreeBlocks())
			return true
		}
	}
	return false
}

// failTooLongLocked ends a sequence that cannot grow even with the whole pool.
func (e *Engine) failTooLongLocked(s *sequence) {
	err := fmt.Errorf("%w: request %s: %d tokens need more than the %d KV blocks of %d tokens the pool holds",
		ErrTooLong, s.id, len(s.tokens), e.pool.NumBlocks(), e.tpb)
	e.log.Warn("sequence outgrew the KV pool", "id", s.id, "tokens", len(s.tokens), "err", err)
	e.finishLocked(s, abortOutput(err))
}

// reapCancelledLocked ends the sequences whose context is done.
func (e *Engine) reapCancelledLocked() {
	for _, list := range [][]*sequence{slices.Clone(e.running), slices.Clone(e.waiting)} {
		for _, s := range list {
			if s.ctx.Err() != nil {
				e.finishLocked(s, abortOutput(s.cancelErr()))
			}
		}
	}
}

// sampleJob is one sequence to sample after a step, with its logits row.
type sampleJob struct {
	s   *sequence
	row []float32
}

// sampled is one sequence's result of a step.
type sampled struct {
	s   *sequence
	out Output
	err error
}

// minSamplesPerWorker is the fewest sequences worth a goroutine of their own.
const minSamplesPerWorker = 8

// sampleAll samples every job, spread over GOMAXPROCS goroutines for large
// batches. Sampling touches only the loop's own per-sequence state and
// disjoint logits rows, so it needs no lock.
func (e *Engine) sampleAll(jobs []sampleJob) []sampled {
	results := make([]sampled, len(jobs))
	par := min(runtime.GOMAXPROCS(0), len(jobs)/minSamplesPerWorker)
	if par <= 1 {
		for i, j := range jobs {
			results[i] = e.sampleOne(j)
		}
		return results
	}
	var wg sync.WaitGroup
	for p := 0; p < par; p++ {
		lo, hi := p*len(jobs)/par, (p+1)*len(jobs)/par
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				results[i] = e.sampleOne(jobs[i])
			}
		})
	}
	wg.Wait()
	return results
}

// sampleOne samples the next token of one sequence and appends it.
func (e *Engine) sampleOne(j sampleJob) sampled {
	s := j.s
	if s.generated() < s.minTokens {
		s.sampler.SetMask(s.minMask)
	} else {
		s.sampler.SetMask(nil)
	}
	tok, lp, err := s.sampler.Sample(j.row, s.tokens[:s.promptLen], s.tokens[s.promptLen:])
	if err != nil {
		return sampled{s: s, err: fmt.Errorf("engine: request %s: %w", s.id, err)}
	}
	s.tokens = append(s.tokens, tok)
	out := Output{Token: tok, HasToken: true, Logprob: lp.Logprob, Top: lp.Top}
	if len(s.tokens) == s.promptLen+1 {
		out.QueueTime = s.queued
	}
	out.Finish = s.finishFor(tok, e.cfg.MaxSeqLen)
	return sampled{s: s, out: out}
}

// step runs one model step for plan, samples, and emits the Outputs.
func (e *Engine) step(plan []work) {
	batch := &compute.Batch{Seqs: make([]compute.Seq, len(plan))}
	rows := 0
	for i, w := range plan {
		s := w.s
		mode := compute.LogitsNone
		if w.logits {
			mode = compute.LogitsLast
			rows++
		}
		batch.Seqs[i] = compute.Seq{Tokens: s.tokens[s.computed : s.computed+w.n], Start: s.computed, Blocks: s.blocks, Logits: mode}
	}

	logits, err := e.backend.Forward(e.ctx, batch)
	if err == nil {
		err = e.checkLogits(logits, rows)
	}
	if err != nil {
		if e.ctx.Err() != nil {
			return // closing: the loop ends every sequence with ErrClosed
		}
		e.failStep(plan, err)
		return
	}

	var jobs []sampleJob
	r := 0
	for _, w := range plan {
		w.s.computed += w.n
		if w.logits {
			jobs = append(jobs, sampleJob{s: w.s, row: logits.Row(r)})
			r++
		}
	}
	results := e.sampleAll(jobs)

	e.mu.Lock()
	defer e.mu.Unlock()
	e.stats.StepCount++
	for _, w := range plan {
		if w.decode {
			e.stats.DecodeTokens += uint64(w.n)
		} else {
			e.stats.PrefillTokens += uint64(w.n)
		}
	}
	for _, res := range results {
		if res.err != nil {
			e.log.Error("sampling failed", "id", res.s.id, "err", res.err)
			e.finishLocked(res.s, abortOutput(res.err))
			continue
		}
		e.emitLocked(res.s, res.out)
	}
}

// checkLogits verifies the backend returned one row per LogitsLast sequence.
func (e *Engine) checkLogits(l *compute.Logits, rows int) error {
	if rows == 0 {
		return nil
	}
	if l == nil || l.Vocab != e.cfg.VocabSize || l.Rows() != rows || len(l.Data) != rows*l.Vocab {
		got := "nil"
		if l != nil {
			got = fmt.Sprintf("%d values with vocab %d", len(l.Data), l.Vocab)
		}
		return fmt.Errorf("engine: backend %s returned %s logits, want %d rows of vocab %d", e.backend.Name(), got, rows, e.cfg.VocabSize)
	}
	return nil
}

// failStep ends every sequence of a failed step with the error; the engine
// carries on with the others.
func (e *Engine) failStep(plan []work, err error) {
	e.log.Error("model step failed", "backend", e.backend.Name(), "sequences", len(plan), "err", err)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stats.StepCount++
	for _, w := range plan {
		e.finishLocked(w.s, abortOutput(fmt.Errorf("engine: model step: %w", err)))
	}
}
