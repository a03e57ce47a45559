package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"disagg/worker/compute"
	"disagg/worker/sampling"
)

// schedMode is one of the engine's ways to run steps on the fake.
type schedMode struct {
	name    string
	disable bool                                  // Config.DisableOverlap
	wrap    func(compute.Backend) compute.Backend // nil: the fake alone
}

// config is cfg with the mode's DisableOverlap.
func (m schedMode) config(cfg Config) Config {
	cfg.DisableOverlap = m.disable
	return cfg
}

// schedModes: Forward and host sampling (the fake alone, which has no
// compute.Sampler); launched steps waited for at once; the overlap
// scheduler.
var schedModes = []schedMode{
	{name: "host"},
	{name: "launch", disable: true, wrap: asLauncher},
	{name: "overlap", wrap: asLauncher},
}

func asLauncher(b compute.Backend) compute.Backend { return newRecorder(&launcher{Backend: b}) }

// launcher gives a backend that has only Forward the compute.Sampler
// ability the way the CPU backend has it: each launched step runs Forward
// on a goroutine of its own once the step before it has run, reading
// negative token ids from that step's ids, then samples every row with
// sampling.SampleRow.
type launcher struct {
	compute.Backend
	mu   sync.Mutex
	last *launcherStep
	n    int // steps launched
	// mangle, when set, may change step n's ids (from 1) before the
	// engine and the next step see them.
	mangle func(n int, ids []int32)
}

type launcherStep struct {
	done chan struct{}
	ids  []int32
	err  error
}

func (s *launcherStep) Wait() ([]int32, error) {
	<-s.done
	return s.ids, s.err
}

func (l *launcher) wait() {
	l.mu.Lock()
	last := l.last
	l.mu.Unlock()
	if last != nil {
		<-last.done
	}
}

func (l *launcher) Forward(ctx context.Context, b *compute.Batch) (*compute.Logits, error) {
	l.wait()
	return l.Backend.Forward(ctx, b)
}

func (l *launcher) Launch(ctx context.Context, b *compute.Batch, params []compute.SampleParams) (compute.Pending, error) {
	own := &compute.Batch{Seqs: make([]compute.Seq, len(b.Seqs))}
	for i, s := range b.Seqs {
		own.Seqs[i] = compute.Seq{Tokens: append([]int32(nil), s.Tokens...), Start: s.Start,
			Blocks: append([]int32(nil), s.Blocks...), Logits: s.Logits}
	}
	ps := append([]compute.SampleParams(nil), params...)
	l.mu.Lock()
	prev := l.last
	st := &launcherStep{done: make(chan struct{})}
	l.last = st
	l.n++
	n, mangle := l.n, l.mangle
	l.mu.Unlock()
	go func() {
		defer close(st.done)
		if prev != nil {
			<-prev.done
		}
		for i := range own.Seqs {
			for j, tok := range own.Seqs[i].Tokens {
				if tok < 0 {
					if prev == nil || prev.err != nil || int(-tok-1) >= len(prev.ids) {
						st.err = fmt.Errorf("%w: token %d names no row of the previous step", compute.ErrBadBatch, tok)
						return
					}
					own.Seqs[i].Tokens[j] = max(prev.ids[-tok-1], 0)
				}
			}
		}
		logits, err := l.Backend.Forward(ctx, own)
		if err != nil {
			st.err = err
			return
		}
		if logits.Rows() != len(ps) {
			st.err = fmt.Errorf("%d rows for %d sampling parameters", logits.Rows(), len(ps))
			return
		}
		ids := make([]int32, len(ps))
		for r, p := range ps {
			u := sampling.Uniform(p.Seed, p.Step)
			tok, err := sampling.SampleRow(logits.Row(r), sampling.Params{Temperature: p.Temperature, TopK: int(p.TopK), TopP: p.TopP, MinP: p.MinP}, u)
			if err != nil {
				tok = -1
			}
			ids[r] = tok
		}
		if mangle != nil {
			mangle(n, ids)
		}
		st.ids = ids
	}()
	return st, nil
}

// recorder passes a backend through and counts what the engine asked of
// it: Forward calls, Launch calls, and Launch calls made while an earlier
// launched step had not been waited for (overlap).
type recorder struct {
	compute.Backend
	s compute.Sampler

	forwards, launches, overlapped atomic.Int64
	outstanding                    atomic.Int64
}

func newRecorder(b compute.Backend) *recorder {
	s, _ := b.(compute.Sampler)
	return &recorder{Backend: b, s: s}
}

func (r *recorder) Forward(ctx context.Context, b *compute.Batch) (*compute.Logits, error) {
	r.forwards.Add(1)
	return r.Backend.Forward(ctx, b)
}

func (r *recorder) Launch(ctx context.Context, b *compute.Batch, params []compute.SampleParams) (compute.Pending, error) {
	r.launches.Add(1)
	if r.outstanding.Add(1) > 1 {
		r.overlapped.Add(1)
	}
	p, err := r.s.Launch(ctx, b, params)
	if err != nil {
		r.outstanding.Add(-1)
		return nil, err
	}
	return &recordedPending{p: p, r: r}, nil
}

type recordedPending struct {
	p compute.Pending
	r *recorder
}

func (p *recordedPending) Wait() ([]int32, error) {
	ids, err := p.p.Wait()
	p.r.outstanding.Add(-1)
	return ids, err
}

// checkMode checks that e ran steps the way mode says: launched steps when
// the backend can sample, overlapping only with the overlap scheduler.
func checkMode(t *testing.T, e *Engine, mode schedMode) {
	t.Helper()
	rec, ok := e.backend.(*recorder)
	if !ok {
		return
	}
	l, o, f := rec.launches.Load(), rec.overlapped.Load(), rec.forwards.Load()
	t.Logf("%s: %d launches (%d while another ran), %d Forward calls", mode.name, l, o, f)
	switch {
	case l == 0:
		t.Errorf("%s: no step was launched", mode.name)
	case mode.disable && o != 0:
		t.Errorf("%s: %d steps launched while another was in flight, with the overlap scheduler off", mode.name, o)
	case !mode.disable && o == 0:
		t.Errorf("%s: no step was launched while another was in flight", mode.name)
	}
}

// TestDeviceNoCandidates: a row the backend could not sample (id -1) ends
// its sequence with sampling.ErrNoCandidates; the others carry on, with the
// overlap scheduler too (whose next step read token 0 for that row).
func TestDeviceNoCandidates(t *testing.T) {
	for _, mode := range schedModes[1:] {
		t.Run(mode.name, func(t *testing.T) {
			h := newHarnessWith(t, mode.config(baseConfig()), 16, false, func(b compute.Backend) compute.Backend {
				return newRecorder(&launcher{Backend: b, mangle: func(n int, ids []int32) {
					if n == 3 {
						ids[0] = -1 // a's third token
					}
				}})
			})
			a, b := greedyReq("a", []int32{1, 2, 3}, 8), greedyReq("b", []int32{4, 5}, 8)
			chA, chB := submit(t, h.e, context.Background(), a), submit(t, h.e, context.Background(), b)
			h.e.Start()
			toks, last := collect(t, chA)
			if diff := cmp.Diff(refGenerate(t, a, 2), toks); diff != "" || last.Finish != FinishAbort || !errors.Is(last.Err, sampling.ErrNoCandidates) {
				t.Errorf("a: last %+v, want FinishAbort wrapping ErrNoCandidates after 2 tokens (-want +got):\n%s", last, diff)
			}
			h.check(t, b, chB)
			waitFree(t, h.pool, 16)
		})
	}
}
