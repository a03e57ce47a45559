package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"disagg/worker/compute"
	"disagg/worker/kvcache"
	"disagg/worker/sampling"
)

const waitLimit = 20 * time.Second

// harness is an engine over the fake backend and a host pool.
type harness struct {
	e    *Engine
	fake *fakeBackend
	pool *kvcache.Pool
	cfg  Config
}

func baseConfig() Config {
	return Config{MaxBatchSize: 8, MaxNumTokens: 64, MaxSeqLen: 256, VocabSize: fakeVocab}
}

// newHarness builds and (when start) starts an engine with a pool of blocks
// blocks. Cleanup closes it and checks that the fake saw no bad batch and
// that every block came back.
func newHarness(t *testing.T, cfg Config, blocks int, start bool) *harness {
	t.Helper()
	return newHarnessWith(t, cfg, blocks, start, nil)
}

// newHarnessWith is newHarness with the engine's backend wrap(fake) when
// wrap is not nil.
func newHarnessWith(t *testing.T, cfg Config, blocks int, start bool, wrap func(compute.Backend) compute.Backend) *harness {
	t.Helper()
	pool, err := kvcache.NewHostPool(fakeLayout(), blocks)
	if err != nil {
		t.Fatal(err)
	}
	fake := newFake(t, pool, cfg)
	var be compute.Backend = fake
	if wrap != nil {
		be = wrap(fake)
	}
	e, err := New(be, pool, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		fake.check(t)
		if free := pool.FreeBlocks(); free != blocks {
			t.Errorf("after Close: %d free blocks, want all %d", free, blocks)
		}
		if err := pool.Close(); err != nil {
			t.Errorf("pool Close: %v", err)
		}
	})
	if start {
		e.Start()
	}
	return &harness{e: e, fake: fake, pool: pool, cfg: cfg}
}

func greedyReq(id string, prompt []int32, maxTokens int) *Request {
	return &Request{ID: id, Prompt: prompt, MaxTokens: maxTokens, Sampling: sampling.GreedyParams(), IgnoreEOS: true}
}

func randPrompt(r *rand.Rand, n int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32(r.IntN(fakeVocab))
	}
	return p
}

// collect reads a channel to its end and returns the tokens and the last
// Output.
func collect(t testing.TB, ch <-chan Output) ([]int32, Output) {
	t.Helper()
	var toks []int32
	timeout := time.After(waitLimit)
	for {
		select {
		case o, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed without a final Output")
			}
			if o.HasToken {
				toks = append(toks, o.Token)
			}
			if o.Finish != FinishNone {
				if _, more := <-ch; more {
					t.Fatalf("Output after the final one")
				}
				return toks, o
			}
		case <-timeout:
			t.Fatalf("no final Output after %v", waitLimit)
		}
	}
}

func submit(t testing.TB, e *Engine, ctx context.Context, r *Request) <-chan Output {
	t.Helper()
	ch, err := e.Submit(ctx, r)
	if err != nil {
		t.Fatalf("Submit %s: %v", r.ID, err)
	}
	return ch
}

// gate holds the fake's steps: each Forward announces itself on entered and
// waits for release, until the gate opens for good or the step's context
// ends.
type gate struct {
	entered chan int
	release chan struct{}
	opened  chan struct{}
	once    sync.Once
}

func newGate(t *testing.T, f *fakeBackend) *gate {
	g := &gate{entered: make(chan int), release: make(chan struct{}), opened: make(chan struct{})}
	f.before = func(ctx context.Context, step int, _ *compute.Batch) error {
		select {
		case g.entered <- step:
		case <-g.opened:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case <-g.release:
		case <-g.opened:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	t.Cleanup(g.open) // runs before the harness's Close
	return g
}

// next waits for the next step to enter Forward and returns its number.
func (g *gate) next(t *testing.T) int {
	t.Helper()
	select {
	case s := <-g.entered:
		return s
	case <-time.After(waitLimit):
		t.Fatalf("no step entered Forward in %v", waitLimit)
		return 0
	}
}

func (g *gate) step() { g.release <- struct{}{} }
func (g *gate) open() { g.once.Do(func() { close(g.opened) }) }

func TestNewValidation(t *testing.T) {
	pool, err := kvcache.NewHostPool(fakeLayout(), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	fake := newFake(t, pool, baseConfig())
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"batch", func(c *Config) { c.MaxBatchSize = 0 }, "MaxBatchSize is 0"},
		{"tokens", func(c *Config) { c.MaxNumTokens = 4 }, "MaxNumTokens is 4, must be >= MaxBatchSize (8)"},
		{"seq len", func(c *Config) { c.MaxSeqLen = 1 }, "MaxSeqLen is 1"},
		{"vocab", func(c *Config) { c.VocabSize = 0 }, "VocabSize is 0"},
		{"eos", func(c *Config) { c.EOSTokenIDs = []int32{2, fakeVocab} }, "EOS token id 64 is outside the vocabulary [0, 64)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			tt.edit(&cfg)
			_, err := New(fake, pool, cfg, nil)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want ErrInvalidConfig saying %q", err, tt.want)
			}
		})
	}
	if _, err := New(nil, pool, baseConfig(), nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New(nil backend) = %v, want ErrInvalidConfig", err)
	}
}

func TestSubmitValidation(t *testing.T) {
	cfg := baseConfig()
	cfg.MaxSeqLen = 32
	h := newHarness(t, cfg, 4, true) // 16 tokens of KV
	seq := func(n int) []int32 { return make([]int32, n) }
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		r       *Request
		is      error
		message string
	}{
		{"nil", context.Background(), nil, ErrInvalidRequest, "nil request"},
		{"empty prompt", context.Background(), greedyReq("a", nil, 4), ErrInvalidRequest, "prompt is empty"},
		{"id too large", context.Background(), greedyReq("a", []int32{1, 64}, 4), ErrInvalidRequest, "prompt token 1 is id 64, outside the vocabulary [0, 64)"},
		{"negative id", context.Background(), greedyReq("a", []int32{-1}, 4), ErrInvalidRequest, "prompt token 0 is id -1"},
		{"max_tokens", context.Background(), greedyReq("a", seq(3), -1), ErrInvalidRequest, "max_tokens is -1"},
		{"over max_seq_len", context.Background(), greedyReq("a", seq(10), 30), ErrTooLong, "prompt of 10 tokens + max_tokens 30 = 40 exceeds max_seq_len 32"},
		{"prompt fills max_seq_len", context.Background(), greedyReq("a", seq(32), 0), ErrTooLong, "leaves no room to generate within max_seq_len 32"},
		{"prompt over pool", context.Background(), greedyReq("a", seq(17), 2), ErrTooLong, "needs 5 KV blocks of 4 tokens, the pool holds 4"},
		{"min_tokens", context.Background(), &Request{ID: "a", Prompt: seq(2), MaxTokens: 3, MinTokens: 4, Sampling: sampling.GreedyParams()}, ErrInvalidRequest, "min_tokens is 4, must be in [0, max_tokens 3]"},
		{"stop id", context.Background(), &Request{ID: "a", Prompt: seq(2), MaxTokens: 3, StopTokenIDs: []int32{99}, Sampling: sampling.GreedyParams()}, ErrInvalidRequest, "stop token id 99"},
		{"sampling", context.Background(), &Request{ID: "a", Prompt: seq(2), MaxTokens: 3, Sampling: sampling.Params{}}, sampling.ErrInvalidParams, "top_p is 0"},
		{"cancelled", cancelled, greedyReq("a", seq(2), 2), context.Canceled, "canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, err := h.e.Submit(tt.ctx, tt.r)
			if ch != nil || !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.message) {
				t.Errorf("Submit = %v, %v; want no channel and an error wrapping %v saying %q", ch, err, tt.is, tt.message)
			}
			if errors.Is(tt.is, ErrTooLong) && !errors.Is(err, ErrInvalidRequest) {
				t.Errorf("ErrTooLong error %v does not wrap ErrInvalidRequest", err)
			}
		})
	}
	if st := h.e.Stats(); st.Waiting != 0 || st.Running != 0 || st.FreeBlocks != 4 {
		t.Errorf("Stats after rejections = %+v", st)
	}
}

// TestGreedyBatch runs prompts of many lengths together and one at a time.
func TestGreedyBatch(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	var reqs []*Request
	for i := 0; i < 12; i++ {
		reqs = append(reqs, greedyReq(fmt.Sprint(i), randPrompt(r, 1+i*3), 5+i))
	}
	for _, together := range []bool{true, false} {
		t.Run(fmt.Sprintf("together=%v", together), func(t *testing.T) {
			h := newHarness(t, baseConfig(), 64, true)
			chans := make([]<-chan Output, len(reqs))
			for i, rq := range reqs {
				chans[i] = submit(t, h.e, context.Background(), rq)
				if !together {
					h.check(t, rq, chans[i])
				}
			}
			if together {
				for i, rq := range reqs {
					h.check(t, rq, chans[i])
				}
			}
			if st := h.e.Stats(); st.FreeBlocks != 64 || st.Running != 0 || st.Waiting != 0 || st.GeneratedTokens == 0 {
				t.Errorf("Stats at the end = %+v", st)
			}
		})
	}
}

// check reads rq's channel and compares it with the reference run.
func (h *harness) check(t *testing.T, rq *Request, ch <-chan Output) {
	t.Helper()
	toks, last := collect(t, ch)
	want := refGenerate(t, rq, rq.MaxTokens)
	if diff := cmp.Diff(want, toks); diff != "" {
		t.Errorf("request %s tokens (-want +got):\n%s", rq.ID, diff)
	}
	if last.Finish != FinishLength || last.Err != nil || last.PromptTokens != len(rq.Prompt) {
		t.Errorf("request %s last Output = %+v, want FinishLength with PromptTokens %d", rq.ID, last, len(rq.Prompt))
	}
}

func TestContinuousBatching(t *testing.T) {
	cfg := baseConfig()
	cfg.MaxBatchSize, cfg.MaxNumTokens = 4, 16
	h := newHarness(t, cfg, 32, true)
	g := newGate(t, h.fake)
	a := greedyReq("a", []int32{1, 2, 3, 4, 5}, 10)
	b := greedyReq("b", []int32{7, 8, 9}, 6)
	chA := submit(t, h.e, context.Background(), a)
	if s := g.next(t); s != 1 {
		t.Fatalf("first step is %d", s)
	}
	g.step()
	g.next(t) // step 2: a's first decode, held in Forward
	chB := submit(t, h.e, context.Background(), b)
	g.step()
	g.next(t) // step 3 must carry b
	g.open()
	h.check(t, a, chA)
	h.check(t, b, chB)

	recs := h.fake.records()
	want := []batchRecord{
		{seqs: 1, tokens: 5, starts: []int{0}, lens: []int{5}},
		{seqs: 1, tokens: 1, starts: []int{5}, lens: []int{1}},
		{seqs: 2, tokens: 4, starts: []int{6, 0}, lens: []int{1, 3}},
	}
	if diff := cmp.Diff(want, recs[:3], cmp.AllowUnexported(batchRecord{})); diff != "" {
		t.Errorf("first steps (-want +got):\n%s", diff)
	}
}

func TestChunkedPrefill(t *testing.T) {
	cfg := baseConfig()
	cfg.MaxBatchSize, cfg.MaxNumTokens = 4, 8
	h := newHarness(t, cfg, 64, true)
	g := newGate(t, h.fake)
	a := greedyReq("a", []int32{3, 1, 4}, 40)
	b := greedyReq("b", randPrompt(rand.New(rand.NewPCG(2, 2)), 30), 5)
	chA := submit(t, h.e, context.Background(), a)
	g.next(t)
	g.step()
	g.next(t) // a decoding
	chB := submit(t, h.e, context.Background(), b)
	g.open()
	h.check(t, a, chA)
	h.check(t, b, chB)

	// b's 30 prompt tokens go in chunks of 7 beside a's decode: 7, 7, 7, 7, 2.
	recs := h.fake.records()
	var chunks []int
	for _, r := range recs[2:] {
		if r.tokens > cfg.MaxNumTokens || r.seqs > cfg.MaxBatchSize {
			t.Errorf("step over the limits: %+v", r)
		}
		if r.seqs == 2 && r.starts[1] < len(b.Prompt) { // b still prefilling
			if r.lens[0] != 1 {
				t.Errorf("a fed %d tokens beside b's chunk, want its 1 decode token", r.lens[0])
			}
			chunks = append(chunks, r.lens[1])
		}
	}
	if diff := cmp.Diff([]int{7, 7, 7, 7, 2}, chunks); diff != "" {
		t.Errorf("prefill chunks beside the decode (-want +got):\n%s", diff)
	}
}

// TestPreemption runs more work than a tiny pool holds: sequences are
// preempted and recomputed, and still produce exactly the tokens of a run
// without preemption, for greedy and for seeded random sampling.
func TestPreemption(t *testing.T) {
	for _, mode := range schedModes {
		t.Run(mode.name, func(t *testing.T) { testPreemption(t, mode) })
	}
}

func testPreemption(t *testing.T, mode schedMode) {
	for _, kind := range []string{"greedy", "seeded"} {
		t.Run(kind, func(t *testing.T) {
			cfg := baseConfig()
			cfg.MaxBatchSize, cfg.MaxNumTokens = 4, 16
			h := newHarnessWith(t, mode.config(cfg), 10, false, mode.wrap) // 40 tokens of KV
			r := rand.New(rand.NewPCG(3, 3))
			var reqs []*Request
			var chans []<-chan Output
			for i := 0; i < 6; i++ {
				rq := greedyReq(fmt.Sprint(i), randPrompt(r, 5+i%4), 12)
				if kind == "seeded" {
					rq.Sampling = sampling.DefaultParams()
					rq.Sampling.Seed, rq.Sampling.HasSeed = int64(100+i), true
				}
				reqs = append(reqs, rq)
				chans = append(chans, submit(t, h.e, context.Background(), rq))
			}
			h.e.Start() // all queued first: the same schedule every run
			for i, rq := range reqs {
				h.check(t, rq, chans[i])
			}
			if st := h.e.Stats(); st.Preemptions == 0 {
				t.Errorf("no preemption happened: %+v", st)
			}
			checkMode(t, h.e, mode)
		})
	}
}

// TestOutgrowsPool: a request whose prompt fits the pool but whose
// generation does not fails with ErrTooLong when it runs alone.
func TestOutgrowsPool(t *testing.T) {
	h := newHarness(t, baseConfig(), 4, true) // 16 tokens of KV
	rq := greedyReq("big", randPrompt(rand.New(rand.NewPCG(4, 4)), 10), 20)
	toks, last := collect(t, submit(t, h.e, context.Background(), rq))
	// Positions 0..15 fit; the 7th generated token would sit at position 16.
	if diff := cmp.Diff(refGenerate(t, rq, 7), toks); diff != "" {
		t.Errorf("tokens before the failure (-want +got):\n%s", diff)
	}
	if last.Finish != FinishAbort || !errors.Is(last.Err, ErrTooLong) || !strings.Contains(last.Err.Error(), "the 4 KV blocks") {
		t.Errorf("last Output = %+v, want FinishAbort with ErrTooLong", last)
	}
	if free := h.pool.FreeBlocks(); free != 4 {
		t.Errorf("%d free blocks after the failure, want 4", free)
	}
}

func TestFinishReasons(t *testing.T) {
	for _, mode := range schedModes {
		t.Run(mode.name, func(t *testing.T) { testFinishReasons(t, mode) })
	}
}

func testFinishReasons(t *testing.T, mode schedMode) {
	prompt := []int32{5, 9, 2, 33, 17, 8, 40, 1}
	ref := refGenerate(t, greedyReq("ref", prompt, 40), 40)
	first := func(tok int32) int { return slices.Index(ref, tok) }
	stopTok := ref[5]
	eosTok := ref[2]

	// The reference with EOS banned while fewer than minTokens exist.
	const minTokens = 6
	var wantMin []int32
	{
		s := sampling.NewSampler(sampling.GreedyParams(), fakeVocab)
		toks := slices.Clone(prompt)
		row := make([]float32, fakeVocab)
		for i := 0; i < 40; i++ {
			s.SetMask(nil)
			if i < minTokens {
				s.SetMask([]int32{eosTok})
			}
			fakeLogitsFor(refHash(toks), row)
			tok, _, err := s.Sample(row, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			toks = append(toks, tok)
			wantMin = append(wantMin, tok)
			if tok == eosTok && i >= minTokens {
				break
			}
		}
	}
	finishMin := FinishStop
	if wantMin[len(wantMin)-1] != eosTok {
		finishMin = FinishLength
	}

	tests := []struct {
		name      string
		eos       []int32
		maxSeqLen int
		edit      func(*Request)
		want      []int32
		finish    FinishReason
	}{
		{"max_tokens", nil, 0, func(r *Request) { r.MaxTokens = 7 }, ref[:7], FinishLength},
		{"stop token id", nil, 0, func(r *Request) { r.StopTokenIDs = []int32{60, stopTok} }, ref[:first(stopTok)+1], FinishStop},
		{"eos", []int32{eosTok}, 0, func(r *Request) { r.IgnoreEOS = false }, ref[:first(eosTok)+1], FinishStop},
		{"ignore_eos", []int32{eosTok}, 0, func(r *Request) { r.IgnoreEOS = true }, ref, FinishLength},
		{"min_tokens", []int32{eosTok}, 0, func(r *Request) { r.IgnoreEOS, r.MinTokens = false, minTokens }, wantMin, finishMin},
		{"max_seq_len", nil, 20, func(r *Request) { r.MaxTokens = 0 }, ref[:12], FinishLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.EOSTokenIDs = tt.eos
			if tt.maxSeqLen > 0 {
				cfg.MaxSeqLen = tt.maxSeqLen
			}
			h := newHarnessWith(t, mode.config(cfg), 32, true, mode.wrap)
			rq := greedyReq("r", prompt, 40)
			tt.edit(rq)
			toks, last := collect(t, submit(t, h.e, context.Background(), rq))
			if diff := cmp.Diff(tt.want, toks); diff != "" {
				t.Errorf("tokens (-want +got):\n%s", diff)
			}
			if last.Finish != tt.finish || !last.HasToken || last.Err != nil {
				t.Errorf("last Output = %+v, want %q carrying the last token", last, tt.finish)
			}
		})
	}
}

func TestLogprobsThroughEngine(t *testing.T) {
	h := newHarness(t, baseConfig(), 16, true)
	rq := greedyReq("lp", []int32{1, 2, 3}, 5)
	rq.Sampling.Logprobs = 3
	ch := submit(t, h.e, context.Background(), rq)
	n := 0
	for o := range ch {
		if !o.HasToken {
			continue
		}
		n++
		if len(o.Top) != 3 || o.Top[0].Token != o.Token || o.Top[0].Logprob != o.Logprob || o.Logprob > 0 {
			t.Errorf("Output %+v: want 3 alternatives led by the greedy token", o)
		}
	}
	if n != 5 {
		t.Errorf("%d tokens, want 5", n)
	}
}

func TestCancelWaiting(t *testing.T) {
	cfg := baseConfig()
	cfg.MaxBatchSize = 1
	h := newHarness(t, cfg, 16, true)
	g := newGate(t, h.fake)
	a := greedyReq("a", []int32{1, 2}, 3)
	chA := submit(t, h.e, context.Background(), a)
	g.next(t) // a's prefill, held: the loop is busy
	ctx, cancel := context.WithCancel(context.Background())
	chB := submit(t, h.e, ctx, greedyReq("b", []int32{3, 4}, 3))
	if st := h.e.Stats(); st.Waiting != 1 {
		t.Fatalf("b is not waiting: %+v", st)
	}
	cancel()
	toks, last := collect(t, chB) // while the loop is still held in Forward
	if len(toks) != 0 || last.Finish != FinishAbort || !errors.Is(last.Err, context.Canceled) {
		t.Errorf("b: tokens %v, last %+v; want none and FinishAbort wrapping context.Canceled", toks, last)
	}
	if st := h.e.Stats(); st.Waiting != 0 {
		t.Errorf("b still counted: %+v", st)
	}
	g.open()
	h.check(t, a, chA)
}

func TestCancelPrefilling(t *testing.T) {
	cfg := baseConfig()
	cfg.MaxBatchSize, cfg.MaxNumTokens = 4, 4
	h := newHarness(t, cfg, 16, true)
	g := newGate(t, h.fake)
	ctx, cancel := context.WithCancel(context.Background())
	ch := submit(t, h.e, ctx, greedyReq("a", randPrompt(rand.New(rand.NewPCG(5, 5)), 20), 4))
	g.next(t) // first chunk of 4 held in Forward
	if free := h.pool.FreeBlocks(); free != 15 {
		t.Errorf("%d free blocks during the first chunk, want 15 (blocks come per chunk)", free)
	}
	cancel()
	g.step()
	toks, last := collect(t, ch)
	free := h.pool.FreeBlocks() // read at once: freed before the last Output
	if len(toks) != 0 || last.Finish != FinishAbort || !errors.Is(last.Err, context.Canceled) {
		t.Errorf("tokens %v, last %+v; want none and FinishAbort wrapping context.Canceled", toks, last)
	}
	if free != 16 {
		t.Errorf("%d free blocks after the abort, want 16", free)
	}
}

func TestCancelDecoding(t *testing.T) {
	h := newHarness(t, baseConfig(), 16, true)
	g := newGate(t, h.fake)
	ctx, cancel := context.WithCancel(context.Background())
	rq := greedyReq("a", []int32{1, 2, 3, 4, 5}, 40)
	ch := submit(t, h.e, ctx, rq)
	for i := 0; i < 4; i++ {
		g.next(t)
		g.step()
	}
	g.next(t)
	cancel()
	g.step()
	toks, last := collect(t, ch)
	free := h.pool.FreeBlocks()
	if diff := cmp.Diff(refGenerate(t, rq, 5), toks); diff != "" {
		t.Errorf("tokens before the cancel (-want +got):\n%s", diff)
	}
	if last.Finish != FinishAbort || last.HasToken || !errors.Is(last.Err, context.Canceled) {
		t.Errorf("last %+v, want FinishAbort wrapping context.Canceled", last)
	}
	if free != 16 {
		t.Errorf("%d free blocks after the abort, want 16", free)
	}
}

// TestMix submits 200 requests from several goroutines into a small pool,
// cancelling about a third at random moments. Every request ends; those not
// cancelled give the reference tokens, the cancelled ones a prefix of them;
// and every block comes back.
func TestMix(t *testing.T) {
	for _, mode := range schedModes {
		t.Run(mode.name, func(t *testing.T) { testMix(t, mode) })
	}
}

func testMix(t *testing.T, mode schedMode) {
	cfg := baseConfig()
	cfg.MaxBatchSize, cfg.MaxNumTokens, cfg.MaxSeqLen = 8, 32, 128
	const blocks = 40
	h := newHarnessWith(t, mode.config(cfg), blocks, true, mode.wrap)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		r := rand.New(rand.NewPCG(uint64(w), 9))
		for i := 0; i < 50; i++ {
			rq := greedyReq(fmt.Sprintf("%d-%d", w, i), randPrompt(r, 1+r.IntN(40)), 1+r.IntN(30))
			if r.IntN(2) == 0 {
				rq.Sampling = sampling.DefaultParams()
				rq.Sampling.TopK = 8
				rq.Sampling.Seed, rq.Sampling.HasSeed = int64(w*1000+i), true
			}
			cancelled := r.IntN(3) == 0
			delay := time.Duration(r.IntN(100_000)) * time.Microsecond
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				if cancelled {
					time.AfterFunc(delay, cancel)
				}
				ch, err := h.e.Submit(ctx, rq)
				if err != nil {
					if !cancelled || !errors.Is(err, context.Canceled) {
						t.Errorf("Submit %s: %v", rq.ID, err)
					}
					return
				}
				toks, last := collect(t, ch)
				want := refGenerate(t, rq, rq.MaxTokens)
				switch {
				case last.Finish == FinishAbort && cancelled && errors.Is(last.Err, context.Canceled):
					want = want[:min(len(toks), len(want))]
				case last.Finish != FinishLength:
					t.Errorf("request %s: last Output %+v", rq.ID, last)
				}
				if diff := cmp.Diff(want, toks, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("request %s tokens (-want +got):\n%s", rq.ID, diff)
				}
			}()
		}
	}
	wg.Wait()
	waitFree(t, h.pool, blocks)
	st := h.e.Stats()
	if st.FreeBlocks != blocks || st.Running != 0 || st.Waiting != 0 {
		t.Errorf("Stats after the mix = %+v, want %d free blocks and nothing in flight", st, blocks)
	}
	t.Logf("stats: %+v", st)
	checkMode(t, h.e, mode)
}

func TestForwardError(t *testing.T) {
	for _, mode := range schedModes {
		t.Run(mode.name, func(t *testing.T) { testForwardError(t, mode) })
	}
}

func testForwardError(t *testing.T, mode schedMode) {
	h := newHarnessWith(t, mode.config(baseConfig()), 16, false, mode.wrap)
	h.fake.before = func(_ context.Context, step int, _ *compute.Batch) error {
		if step == 3 {
			return errInjected
		}
		return nil
	}
	chA := submit(t, h.e, context.Background(), greedyReq("a", []int32{1, 2}, 10))
	chB := submit(t, h.e, context.Background(), greedyReq("b", []int32{3}, 10))
	h.e.Start()
	for _, ch := range []<-chan Output{chA, chB} {
		toks, last := collect(t, ch)
		if len(toks) != 2 || last.Finish != FinishAbort || !errors.Is(last.Err, errInjected) {
			t.Errorf("tokens %v, last %+v; want 2 tokens then FinishAbort wrapping the backend's error", toks, last)
		}
	}
	waitFree(t, h.pool, 16)
	c := greedyReq("c", []int32{4, 5, 6}, 4) // the engine carries on
	h.check(t, c, submit(t, h.e, context.Background(), c))
}

func TestClose(t *testing.T) {
	cfg := baseConfig()
	cfg.MaxBatchSize = 2
	h := newHarness(t, cfg, 32, true)
	g := newGate(t, h.fake)
	var chans []<-chan Output
	for i := 0; i < 4; i++ {
		chans = append(chans, submit(t, h.e, context.Background(), greedyReq(fmt.Sprint(i), []int32{1, 2, 3}, 50)))
	}
	g.next(t)
	g.step()
	g.next(t) // two running (decoding, held in Forward), two waiting
	if err := h.e.Close(); err != nil {
		t.Fatal(err)
	}
	for i, ch := range chans {
		_, last := collect(t, ch)
		if last.Finish != FinishAbort || !errors.Is(last.Err, ErrClosed) {
			t.Errorf("request %d: last %+v, want FinishAbort with ErrClosed", i, last)
		}
	}
	if free := h.pool.FreeBlocks(); free != 32 {
		t.Errorf("%d free blocks after Close, want 32", free)
	}
	if _, err := h.e.Submit(context.Background(), greedyReq("late", []int32{1}, 1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Submit after Close = %v, want ErrClosed", err)
	}
	if err := h.e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestCloseWithoutStart(t *testing.T) {
	h := newHarness(t, baseConfig(), 8, false)
	ch := submit(t, h.e, context.Background(), greedyReq("a", []int32{1}, 3))
	if err := h.e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, last := collect(t, ch); !errors.Is(last.Err, ErrClosed) {
		t.Errorf("last %+v, want ErrClosed", last)
	}
	h.e.Start() // after Close: does nothing
}

// TestIdle checks that an idle engine runs no steps.
func TestIdle(t *testing.T) {
	h := newHarness(t, baseConfig(), 8, true)
	rq := greedyReq("a", []int32{1}, 3)
	h.check(t, rq, submit(t, h.e, context.Background(), rq))
	before := h.e.Stats().StepCount
	time.Sleep(50 * time.Millisecond)
	if after := h.e.Stats().StepCount; after != before {
		t.Errorf("idle engine ran %d steps", after-before)
	}
}

// TestLargeBatch runs enough sequences at once for the engine to sample
// them on several goroutines.
func TestLargeBatch(t *testing.T) {
	cfg := baseConfig()
	cfg.MaxBatchSize, cfg.MaxNumTokens = 32, 512
	h := newHarness(t, cfg, 512, false)
	r := rand.New(rand.NewPCG(8, 8))
	var reqs []*Request
	var chans []<-chan Output
	for i := 0; i < 40; i++ {
		rq := greedyReq(fmt.Sprint(i), randPrompt(r, 1+r.IntN(20)), 10+r.IntN(20))
		if i%2 == 1 {
			rq.Sampling = sampling.DefaultParams()
			rq.Sampling.TopP, rq.Sampling.Logprobs = 0.8, 2
			rq.Sampling.Seed, rq.Sampling.HasSeed = int64(i), true
		}
		reqs = append(reqs, rq)
		chans = append(chans, submit(t, h.e, context.Background(), rq))
	}
	h.e.Start()
	for i, rq := range reqs {
		h.check(t, rq, chans[i])
	}
	biggest := 0
	for _, rec := range h.fake.records() {
		biggest = max(biggest, rec.seqs)
	}
	if biggest != 32 {
		t.Errorf("largest step had %d sequences, want 32", biggest)
	}
}

// TestQueueTime: the first sampled token reports how long its sequence
// waited before its first step; no other Output does.
func TestQueueTime(t *testing.T) {
	h := newHarness(t, baseConfig(), 64, true)
	rq := greedyReq("q", []int32{1, 2, 3, 4, 5}, 4)
	ch := submit(t, h.e, context.Background(), rq)
	n := 0
	for o := range ch {
		if !o.HasToken {
			continue
		}
		if n == 0 && o.QueueTime <= 0 {
			t.Errorf("first token's QueueTime = %v, want > 0", o.QueueTime)
		}
		if n > 0 && o.QueueTime != 0 {
			t.Errorf("token %d has QueueTime %v, want 0", n, o.QueueTime)
		}
		n++
	}
	if n != 4 {
		t.Fatalf("%d tokens, want 4", n)
	}
}
