package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"disagg/worker/compute/cpu"
	"disagg/worker/kvcache"
	"disagg/worker/model"
	"disagg/worker/sampling"
)

// These tests run the real CPU backend, which samples on its side
// (compute.Sampler) on a goroutine of its own, with the overlap scheduler
// on and off. Greedy tokens are compared with Hugging Face's reference.

// cpuEngine is an engine over a real CPU backend, through a recorder.
type cpuEngine struct {
	e    *Engine
	rec  *recorder
	pool *kvcache.Pool
}

func newCPUEngine(t *testing.T, m *model.Model, cfg Config, tpb, blocks int) *cpuEngine {
	t.Helper()
	pool, err := kvcache.NewHostPool(cpu.LayoutFor(m.Config, tpb), blocks)
	if err != nil {
		t.Fatal(err)
	}
	be, err := cpu.New(m, pool, cpu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(be)
	cfg.MaxSeqLen, cfg.EOSTokenIDs, cfg.VocabSize = m.Config.MaxPositionEmbeddings, m.Config.EOSTokenIDs, m.Config.VocabSize
	e, err := New(rec, pool, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if free := pool.FreeBlocks(); free != blocks {
			t.Errorf("after Close: %d free blocks, want %d", free, blocks)
		}
		if err := be.Close(); err != nil {
			t.Errorf("backend Close: %v", err)
		}
		if err := pool.Close(); err != nil {
			t.Errorf("pool Close: %v", err)
		}
	})
	return &cpuEngine{e: e, rec: rec, pool: pool}
}

// finishCase is one request of TestCPUOverlapReference and what it must
// produce, derived from the HF greedy tokens.
type finishCase struct {
	req    *Request
	want   []int32
	finish FinishReason
	cancel int // > 0: cancel the request after this many tokens
}

// finishCases varies how each reference prompt ends: max_tokens cut
// early, a stop token id (the model's own token at some position, so it
// ends mid-batch), EOS ignored, and a cancellation after a few tokens.
func finishCases(cases []greedyCase) []finishCase {
	var out []finishCase
	for i, c := range cases {
		r := &Request{ID: fmt.Sprint(i), Prompt: c.PromptIDs, MaxTokens: len(c.OutputIDs),
			Sampling: sampling.GreedyParams(), IgnoreEOS: true}
		fc := finishCase{req: r, want: c.OutputIDs, finish: FinishLength}
		switch i % 4 {
		case 1: // max_tokens reached mid-batch
			r.MaxTokens = 3 + 5*(i%5)
			fc.want = c.OutputIDs[:r.MaxTokens]
		case 2: // a stop token id
			stop := c.OutputIDs[4+i%9]
			r.StopTokenIDs = []int32{stop}
			fc.want = c.OutputIDs[:slices.Index(c.OutputIDs, stop)+1]
			fc.finish = FinishStop
		case 3: // the caller goes away (as the server does on a stop string)
			fc.cancel = 2 + i%5
			fc.finish = FinishAbort
		}
		out = append(out, fc)
	}
	return out
}

// runCases submits every case, starts the engine, and checks each
// sequence's tokens and end; it returns the tokens.
func runCases(t *testing.T, ce *cpuEngine, fcs []finishCase) [][]int32 {
	t.Helper()
	type sub struct {
		ch     <-chan Output
		cancel context.CancelFunc
	}
	subs := make([]sub, len(fcs))
	for i, fc := range fcs {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		subs[i] = sub{ch: submit(t, ce.e, ctx, fc.req), cancel: cancel}
	}
	ce.e.Start() // all queued first: the same schedule every run
	got := make([][]int32, len(fcs))
	for i, fc := range fcs {
		ch := subs[i].ch
		if fc.cancel > 0 {
			// Read the first tokens, cancel, then read to the end.
			var first []int32
			for len(first) < fc.cancel {
				o, ok := <-ch
				if !ok || o.Finish != FinishNone {
					t.Fatalf("request %s ended before %d tokens: %+v", fc.req.ID, fc.cancel, o)
				}
				first = append(first, o.Token)
			}
			subs[i].cancel()
			rest, last := collect(t, ch)
			toks := append(first, rest...)
			got[i] = toks
			if len(toks) > len(fc.want) || !slices.Equal(toks, fc.want[:len(toks)]) {
				t.Errorf("cancelled request %s: tokens %v are not a prefix of %v", fc.req.ID, toks, fc.want)
			}
			if last.Finish != FinishAbort || last.HasToken || !errors.Is(last.Err, context.Canceled) {
				// A request can finish before the engine sees the cancel.
				if !(last.Finish == FinishLength && len(toks) == len(fc.want)) {
					t.Errorf("cancelled request %s: last Output %+v", fc.req.ID, last)
				}
			}
			continue
		}
		toks, last := collect(t, ch)
		got[i] = toks
		if diff := cmp.Diff(fc.want, toks); diff != "" {
			t.Errorf("request %s (-hf +engine):\n%s", fc.req.ID, diff)
		}
		if last.Finish != fc.finish || !last.HasToken {
			t.Errorf("request %s: last Output %+v, want %q with a token", fc.req.ID, last, fc.finish)
		}
	}
	return got
}

// TestCPUOverlapReference: greedy generation with device sampling on the
// CPU backend, the overlap scheduler on and off, gives Hugging Face's
// tokens under batching, chunked prefill and preemption, with sequences
// ending mid-batch by max_tokens, stop token ids and cancellation; and both
// schedulers give the same tokens.
func TestCPUOverlapReference(t *testing.T) {
	if testing.Short() {
		t.Skip("real model: skipped in -short mode")
	}
	scenarios := []struct {
		name          string
		batch, tokens int
		tpb, blocks   int
		preempt       bool
	}{
		{name: "batched", batch: 8, tokens: 512, tpb: 16, blocks: 640},
		{name: "chunked prefill", batch: 8, tokens: 16, tpb: 4, blocks: 2560},
		{name: "tiny pool", batch: 8, tokens: 64, tpb: 4, blocks: 48, preempt: true},
	}
	for _, name := range []string{"tiny-llama2", "tiny-llama3"} {
		t.Run(name, func(t *testing.T) {
			m, cases := loadGreedy(t, name)
			fcs := finishCases(cases)
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					byMode := map[bool][][]int32{}
					for _, disable := range []bool{false, true} {
						ce := newCPUEngine(t, m, Config{MaxBatchSize: sc.batch, MaxNumTokens: sc.tokens, DisableOverlap: disable}, sc.tpb, sc.blocks)
						byMode[disable] = runCases(t, ce, fcs)
						waitFree(t, ce.pool, sc.blocks)
						st := ce.e.Stats()
						if sc.preempt && st.Preemptions == 0 {
							t.Errorf("overlap off=%v: no preemption in a pool of %d blocks: %+v", disable, sc.blocks, st)
						}
						mode := schedMode{name: fmt.Sprintf("overlap off=%v", disable), disable: disable}
						checkMode(t, ce.e, mode)
						if f := ce.rec.forwards.Load(); f != 0 {
							t.Errorf("%s: %d steps ran with host sampling; every request was greedy", mode.name, f)
						}
					}
					// Cancelled requests may stop at different points.
					for i, fc := range fcs {
						if fc.cancel == 0 && !slices.Equal(byMode[false][i], byMode[true][i]) {
							t.Errorf("request %d: overlap on %v, off %v", i, byMode[false][i], byMode[true][i])
						}
					}
				})
			}
		})
	}
}

// TestCPUSeededDevice: seeded random sampling (temperature, top-k, top-p,
// min-p) on the backend is reproducible: the same tokens with the overlap
// scheduler on and off, in a batch or alone, and the same as the host
// sampler gives them (a logprobs request, which falls back to Forward and
// host sampling, draws the same counter-based numbers).
func TestCPUSeededDevice(t *testing.T) {
	if testing.Short() {
		t.Skip("real model: skipped in -short mode")
	}
	m, cases := loadGreedy(t, "tiny-llama2")
	cases = cases[:min(len(cases), 6)]
	params := []sampling.Params{
		{Temperature: 0.8, TopP: 0.9, TopK: 40, MinP: 0.05, RepetitionPenalty: 1, Logprobs: -1},
		{Temperature: 1.2, TopP: 1, RepetitionPenalty: 1, Logprobs: -1},
		{Temperature: 0.6, TopP: 0.5, RepetitionPenalty: 1, Logprobs: -1},
	}
	reqs := func(logprobs int) []*Request {
		var out []*Request
		for i, c := range cases {
			p := params[i%len(params)]
			p.Seed, p.HasSeed, p.Logprobs = int64(1000+i), true, logprobs
			out = append(out, &Request{ID: fmt.Sprint(i), Prompt: c.PromptIDs, MaxTokens: 16, Sampling: p, IgnoreEOS: true})
		}
		return out
	}
	run := func(disable, alone bool, logprobs int) ([][]int32, *recorder) {
		ce := newCPUEngine(t, m, Config{MaxBatchSize: 8, MaxNumTokens: 256, DisableOverlap: disable}, 16, 512)
		rs := reqs(logprobs)
		out := make([][]int32, len(rs))
		if alone {
			ce.e.Start()
		}
		chans := make([]<-chan Output, len(rs))
		for i, r := range rs {
			chans[i] = submit(t, ce.e, context.Background(), r)
			if alone {
				out[i], _ = collectLogprobs(t, chans[i], logprobs >= 0)
			}
		}
		if !alone {
			ce.e.Start()
			for i := range rs {
				out[i], _ = collectLogprobs(t, chans[i], logprobs >= 0)
			}
		}
		return out, ce.rec
	}
	want, rec := run(false, false, -1)
	if rec.forwards.Load() != 0 || rec.overlapped.Load() == 0 {
		t.Errorf("overlap, batched: %d Forward calls, %d overlapped launches; want 0 and some", rec.forwards.Load(), rec.overlapped.Load())
	}
	for _, v := range []struct {
		name     string
		disable  bool
		alone    bool
		logprobs int
	}{
		{"again", false, false, -1},
		{"overlap off", true, false, -1},
		{"alone", false, true, -1},
		{"host sampling (logprobs)", false, true, 2},
	} {
		got, rec := run(v.disable, v.alone, v.logprobs)
		if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s (-batched +%s):\n%s", v.name, v.name, diff)
		}
		if v.logprobs >= 0 && (rec.forwards.Load() == 0 || rec.launches.Load() != 0) {
			t.Errorf("%s: %d Forward calls and %d launches; logprobs need the host sampler", v.name, rec.forwards.Load(), rec.launches.Load())
		}
	}
	for i := 1; i < len(want); i++ {
		if slices.Equal(want[0], want[i]) && len(want[0]) > 4 {
			t.Errorf("requests 0 and %d gave the same tokens %v", i, want[0])
		}
	}
}

// collectLogprobs is collect, also checking that every token carries its
// log probability and alternatives (when withLogprobs) or none.
func collectLogprobs(t *testing.T, ch <-chan Output, withLogprobs bool) ([]int32, Output) {
	t.Helper()
	var toks []int32
	var last Output
	for o := range ch {
		if o.HasToken {
			toks = append(toks, o.Token)
			if has := o.Logprob != 0 || len(o.Top) > 0; has != withLogprobs {
				t.Errorf("token %d: logprob %v top %v, want logprobs %v", o.Token, o.Logprob, o.Top, withLogprobs)
			}
		}
		last = o
	}
	if last.Finish != FinishLength {
		t.Errorf("last Output %+v, want FinishLength", last)
	}
	return toks, last
}
