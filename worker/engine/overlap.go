package engine

import (
	"fmt"

	"disagg/worker/compute"
	"disagg/worker/sampling"
)

// flight is a step launched on a backend that samples on its side
// (compute.Sampler) and not yet processed.
type flight struct {
	id      uint64
	plan    []work
	rows    []rowRef // one per sampled row, in row order
	pending compute.Pending
}

// rowRef says where a row's token goes: s.tokens[pos] holds a placeholder
// (the negative id naming the row, as compute.Sampler reads it) until the
// step's ids are back.
type rowRef struct {
	s   *sequence
	pos int
}

// failed is the Pending of a step whose Launch failed.
type failed struct{ err error }

func (f failed) Wait() ([]int32, error) { return nil, f.err }

// deviceSampleable reports whether the token s samples next can be sampled
// by the backend: nothing beyond temperature, top-k, top-p and min-p, and
// no min_tokens mask in force.
func deviceSampleable(s *sequence) bool {
	return s.sampler.Params().DeviceCapable() && s.generated() >= s.minTokens
}

// launchPlan launches plan when the backend can sample every row of it,
// and returns the flight; nil (nothing done) when the step needs the host.
func (e *Engine) launchPlan(plan []work) *flight {
	if e.sampler == nil {
		return nil
	}
	e.mu.Lock()
	fl, b, params := e.prepareLocked(plan)
	e.mu.Unlock()
	if fl != nil {
		e.launch(fl, b, params)
	}
	return fl
}

// launchAhead plans the next step while a launched one is in flight, and
// launches it if it needs neither the host sampler nor anything the step
// in flight is still holding (see planLocked). It returns nil when it
// launched nothing.
func (e *Engine) launchAhead() *flight {
	e.mu.Lock()
	e.reapCancelledLocked()
	plan, ok := e.planLocked(true)
	var fl *flight
	var b *compute.Batch
	var params []compute.SampleParams
	if ok && len(plan) > 0 {
		fl, b, params = e.prepareLocked(plan)
	}
	e.mu.Unlock()
	if fl != nil {
		e.launch(fl, b, params)
	}
	return fl
}

// prepareLocked builds the batch and sampling parameters of plan and
// commits the step: ids it, advances each sequence's computed tokens and
// appends a placeholder for each token to sample. It returns nil flight
// (and changes nothing) when a row needs the host sampler.
func (e *Engine) prepareLocked(plan []work) (*flight, *compute.Batch, []compute.SampleParams) {
	for _, w := range plan {
		if w.logits && !deviceSampleable(w.s) {
			return nil, nil, nil
		}
	}
	e.launched++
	fl := &flight{id: e.launched, plan: plan}
	b := &compute.Batch{Seqs: make([]compute.Seq, len(plan))}
	var params []compute.SampleParams
	for i, w := range plan {
		s := w.s
		mode := compute.LogitsNone
		if w.logits {
			mode = compute.LogitsLast
		}
		// Launch copies the batch, so these views may change afterwards.
		b.Seqs[i] = compute.Seq{Tokens: s.tokens[s.computed : s.computed+w.n], Start: s.computed, Blocks: s.blocks, Logits: mode}
		s.computed += w.n
		s.lastStep = fl.id
		if w.logits {
			p := s.sampler.Params()
			params = append(params, compute.SampleParams{
				Temperature: p.Temperature, TopK: int32(p.TopK), TopP: p.TopP, MinP: p.MinP,
				Seed: s.sampler.Seed(), Step: uint64(s.generated()),
			})
			fl.rows = append(fl.rows, rowRef{s: s, pos: len(s.tokens)})
			s.tokens = append(s.tokens, -int32(len(fl.rows)))
		}
	}
	return fl, b, params
}

// launch hands the step to the backend; a failure to launch shows when
// the flight completes.
func (e *Engine) launch(fl *flight, b *compute.Batch, params []compute.SampleParams) {
	p, err := e.sampler.Launch(e.ctx, b, params)
	if err != nil {
		p = failed{err: err}
	}
	fl.pending = p
}

// complete waits for a launched step and processes its tokens: each
// replaces its placeholder and is streamed, or ends its sequence. A
// sequence that ended before (at the previous step, or cancelled) has its
// token dropped. The blocks waiting for this step go back to the pool.
func (e *Engine) complete(fl *flight) {
	ids, err := fl.pending.Wait()
	if err == nil && len(ids) != len(fl.rows) {
		err = fmt.Errorf("engine: backend %s returned %d ids for %d rows", e.backend.Name(), len(ids), len(fl.rows))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.completed = max(e.completed, fl.id)
	e.freeCompletedLocked()
	e.stats.StepCount++
	for _, w := range fl.plan {
		if w.decode {
			e.stats.DecodeTokens += uint64(w.n)
		} else {
			e.stats.PrefillTokens += uint64(w.n)
		}
	}
	if err != nil {
		if e.ctx.Err() != nil {
			return // closing: the loop ends every sequence with ErrClosed
		}
		e.log.Error("model step failed", "backend", e.backend.Name(), "sequences", len(fl.plan), "err", err)
		for _, w := range fl.plan {
			e.finishLocked(w.s, abortOutput(fmt.Errorf("engine: model step: %w", err)))
		}
		return
	}
	for r, ref := range fl.rows {
		s, tok := ref.s, ids[r]
		if s.state == stateDone {
			continue
		}
		if tok < 0 || int(tok) >= e.cfg.VocabSize {
			err := fmt.Errorf("engine: request %s: %w", s.id, sampling.ErrNoCandidates)
			if tok >= 0 {
				err = fmt.Errorf("engine: request %s: backend %s sampled id %d, outside the vocabulary [0, %d)", s.id, e.backend.Name(), tok, e.cfg.VocabSize)
			}
			e.log.Error("sampling failed", "id", s.id, "err", err)
			e.finishLocked(s, abortOutput(err))
			continue
		}
		s.tokens[ref.pos] = tok
		s.sampler.Skip(1)
		out := Output{Token: tok, HasToken: true}
		if ref.pos == s.promptLen {
			out.QueueTime = s.queued
		}
		out.Finish = s.finishAt(tok, ref.pos+1, e.cfg.MaxSeqLen)
		e.emitLocked(s, out)
	}
}

// emitLocked delivers a sampled token's Output: the sequence ends when
// the token finishes it, hands its KV over when it is context-only, else
// streams on.
func (e *Engine) emitLocked(s *sequence, out Output) {
	e.stats.GeneratedTokens++
	switch {
	case out.Finish != FinishNone:
		e.finishLocked(s, out)
	case s.contextOnly:
		// The context phase is done: hand the prompt's KV over.
		out.Finish = FinishContextDone
		out.KV = &KVHandoff{Blocks: s.blocks, Tokens: s.computed}
		s.blocks = nil
		e.finishLocked(s, out)
	default:
		s.out <- out // buffered for every Output: never blocks
	}
}
