package cpu

import (
	"context"
	"fmt"
	"sync"

	"disagg/worker/compute"
	"disagg/worker/sampling"
)

var _ compute.Sampler = (*Backend)(nil)

// launched is a step run by Launch on its own goroutine; done is closed
// when ids and err are set.
type launched struct {
	done chan struct{}
	rows int
	ids  []int32
	err  error
}

// Wait implements compute.Pending.
func (l *launched) Wait() ([]int32, error) {
	<-l.done
	return l.ids, l.err
}

// Launch runs the step on a goroutine of its own, after the step launched
// before it, and samples each row with sampling.SampleRow: the CPU's
// "device" is another goroutine, so an engine overlapping its host work
// with the step really runs concurrently with it. See compute.Sampler.
func (b *Backend) Launch(ctx context.Context, batch *compute.Batch, params []compute.SampleParams) (compute.Pending, error) {
	if batch == nil {
		return nil, fmt.Errorf("%w: nil batch", compute.ErrBadBatch)
	}
	b.launchMu.Lock()
	defer b.launchMu.Unlock()
	prev := b.last
	prevRows := 0
	if prev != nil {
		prevRows = prev.rows
	}
	// Copy the batch: the caller may change its slices once Launch returns.
	own := &compute.Batch{Seqs: make([]compute.Seq, len(batch.Seqs))}
	rows, refs := 0, false
	for i, s := range batch.Seqs {
		switch s.Logits {
		case compute.LogitsLast:
			rows++
		case compute.LogitsAll:
			return nil, fmt.Errorf("%w: sequence %d: Launch samples the last token only (LogitsAll)", compute.ErrBadBatch, i)
		}
		for j, tok := range s.Tokens {
			if tok < 0 {
				if int(-tok-1) >= prevRows {
					return nil, fmt.Errorf("%w: sequence %d token %d is id %d, not a row of the previous step's %d", compute.ErrBadBatch, i, j, tok, prevRows)
				}
				refs = true
			}
		}
		own.Seqs[i] = compute.Seq{Tokens: append([]int32(nil), s.Tokens...), Start: s.Start,
			Blocks: append([]int32(nil), s.Blocks...), Logits: s.Logits}
	}
	if len(params) != rows {
		return nil, fmt.Errorf("%w: %d sampling parameters for %d rows", compute.ErrBadBatch, len(params), rows)
	}
	ps := append([]compute.SampleParams(nil), params...)
	l := &launched{done: make(chan struct{}), rows: rows}
	b.last = l
	go func() {
		defer close(l.done)
		if prev != nil {
			<-prev.done
		}
		if refs {
			if prev.err != nil {
				l.err = fmt.Errorf("cpu: the previous step, whose ids this one reads, failed: %w", prev.err)
				return
			}
			for i := range own.Seqs {
				for j, tok := range own.Seqs[i].Tokens {
					if tok < 0 {
						own.Seqs[i].Tokens[j] = max(prev.ids[-tok-1], 0)
					}
				}
			}
		}
		l.ids, l.err = b.forwardSample(ctx, own, ps)
	}()
	return l, nil
}

// waitLaunched waits for the last launched step, so that Forward runs after
// it.
func (b *Backend) waitLaunched() {
	b.launchMu.Lock()
	last := b.last
	b.launchMu.Unlock()
	if last != nil {
		<-last.done
	}
}

// forwardSample runs the step and samples each row.
func (b *Backend) forwardSample(ctx context.Context, batch *compute.Batch, params []compute.SampleParams) ([]int32, error) {
	logits, err := b.forward(ctx, batch)
	if err != nil {
		return nil, err
	}
	ids := make([]int32, len(params))
	sampleRows(logits, params, ids)
	return ids, nil
}

// sampleRows samples row r of logits into ids[r], rows spread over a few
// goroutines for large batches; -1 where no token can be sampled.
func sampleRows(logits *compute.Logits, params []compute.SampleParams, ids []int32) {
	one := func(r int) {
		p := params[r]
		sp := sampling.Params{Temperature: p.Temperature, TopK: int(p.TopK), TopP: p.TopP, MinP: p.MinP}
		u := 0.0
		if p.Temperature >= sampling.GreedyBelow {
			u = sampling.Uniform(p.Seed, p.Step)
		}
		tok, err := sampling.SampleRow(logits.Row(r), sp, u)
		if err != nil {
			tok = -1
		}
		ids[r] = tok
	}
	const perWorker = 8
	par := len(ids) / perWorker
	if par <= 1 {
		for r := range ids {
			one(r)
		}
		return
	}
	var wg sync.WaitGroup
	for p := 0; p < par; p++ {
		lo, hi := p*len(ids)/par, (p+1)*len(ids)/par
		wg.Go(func() {
			for r := lo; r < hi; r++ {
				one(r)
			}
		})
	}
	wg.Wait()
}
