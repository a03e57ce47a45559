package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"

	"disagg/worker/compute/cpu"
	"disagg/worker/kvcache"
	"disagg/worker/sampling"
)

// These tests split a request in two as disaggregated serving does: a
// ContextOnly sequence on engine A, its KV blocks copied byte for byte into
// fresh blocks of engine B's pool, and a resumed sequence on B. The tokens
// must equal one aggregated run's, and every block must return to both
// pools.

// copyBlocks copies blocks of src into freshly allocated blocks of dst and
// returns their ids.
func copyBlocks(t testing.TB, src, dst *kvcache.Pool, blocks []int32) []int32 {
	t.Helper()
	ids, err := dst.Alloc(len(blocks))
	if err != nil {
		t.Fatal(err)
	}
	bb := src.Layout().BlockBytes()
	if dst.Layout() != src.Layout() {
		t.Fatalf("layouts differ: %+v and %+v", src.Layout(), dst.Layout())
	}
	sb := unsafe.Slice((*byte)(src.Memory().Ptr()), src.Memory().Size())
	db := unsafe.Slice((*byte)(dst.Memory().Ptr()), dst.Memory().Size())
	for i, b := range blocks {
		copy(db[int(ids[i])*bb:int(ids[i]+1)*bb], sb[int(b)*bb:int(b+1)*bb])
	}
	return ids
}

// splitRun runs r context-only on a and resumed on b, and returns all the
// tokens (the first one from a, then b's).
func splitRun(t testing.TB, a, b *Engine, r *Request) []int32 {
	t.Helper()
	ctxReq := *r
	ctxReq.ContextOnly = true
	toks, last := collect(t, submit(t, a, context.Background(), &ctxReq))
	if last.Finish != FinishContextDone || last.KV == nil || len(toks) != 1 {
		t.Fatalf("context phase: %d tokens, last %+v", len(toks), last)
	}
	if last.KV.Tokens != len(r.Prompt) || last.PromptTokens != len(r.Prompt) {
		t.Fatalf("handoff of %d tokens (prompt %d), want %d", last.KV.Tokens, last.PromptTokens, len(r.Prompt))
	}
	moved := copyBlocks(t, a.Pool(), b.Pool(), last.KV.Blocks)
	a.FreeKV(last.KV.Blocks)

	genReq := *r
	genReq.Resume = &Resume{Blocks: moved, FirstTokens: toks}
	out, fin := collect(t, submit(t, b, context.Background(), &genReq))
	if fin.Finish != FinishLength {
		t.Fatalf("generation phase ended with %+v", fin)
	}
	if len(out) == 0 || out[0] != toks[0] {
		t.Fatalf("generation phase reported %v, want the first token %d first", out, toks[0])
	}
	return out
}

func TestContextThenGeneration(t *testing.T) {
	cfg := baseConfig()
	a := newHarness(t, cfg, 64, true)
	b := newHarness(t, cfg, 64, true)
	agg := newHarness(t, cfg, 64, true)
	rng := rand.New(rand.NewPCG(7, 8))
	for i, sp := range []sampling.Params{
		sampling.GreedyParams(),
		{Temperature: 0.9, TopP: 0.95, RepetitionPenalty: 1.1, FrequencyPenalty: 0.3, Seed: 42, HasSeed: true, Logprobs: -1},
		{Temperature: 1.3, TopK: 20, TopP: 1, RepetitionPenalty: 1, Seed: 7, HasSeed: true, Logprobs: -1},
	} {
		for _, plen := range []int{1, 3, 4, 9, 17} {
			r := &Request{ID: fmt.Sprintf("r%d-%d", i, plen), Prompt: randPrompt(rng, plen), MaxTokens: 12, Sampling: sp, IgnoreEOS: true}
			want, _ := collect(t, submit(t, agg.e, context.Background(), r))
			got := splitRun(t, a.e, b.e, r)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s: split run differs from aggregated (-agg +split):\n%s", r.ID, diff)
			}
		}
	}
	for name, h := range map[string]*harness{"context": a, "generation": b} {
		if free := h.pool.FreeBlocks(); free != 64 {
			t.Errorf("%s pool: %d free blocks, want 64", name, free)
		}
	}
}

// TestContextOnlyFinishes: a first token that finishes the request (max
// tokens 1, or a stop id) ends it as usual and frees its blocks.
func TestContextOnlyFinishes(t *testing.T) {
	h := newHarness(t, baseConfig(), 16, true)
	prompt := []int32{1, 2, 3, 4, 5}
	r := &Request{ID: "one", Prompt: prompt, MaxTokens: 1, Sampling: sampling.GreedyParams(), IgnoreEOS: true, ContextOnly: true}
	toks, last := collect(t, submit(t, h.e, context.Background(), r))
	if last.Finish != FinishLength || last.KV != nil || len(toks) != 1 {
		t.Fatalf("max_tokens 1: %v, %+v", toks, last)
	}
	first := toks[0]
	r = &Request{ID: "stop", Prompt: prompt, MaxTokens: 5, Sampling: sampling.GreedyParams(), StopTokenIDs: []int32{first}, ContextOnly: true}
	_, last = collect(t, submit(t, h.e, context.Background(), r))
	if last.Finish != FinishStop || last.KV != nil {
		t.Fatalf("stop id: %+v", last)
	}
	waitFree(t, h.pool, 16)
}

func waitFree(t *testing.T, p *kvcache.Pool, want int) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for p.FreeBlocks() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d free blocks, want %d", p.FreeBlocks(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestResumeValidation(t *testing.T) {
	h := newHarness(t, baseConfig(), 16, true)
	owned, err := h.pool.Alloc(2)
	if err != nil {
		t.Fatal(err)
	}
	defer h.e.FreeKV(owned)
	prompt := []int32{1, 2, 3, 4, 5} // 2 blocks of 4
	for name, r := range map[string]*Request{
		"no first token": {Resume: &Resume{Blocks: owned}},
		"too few blocks": {Resume: &Resume{Blocks: owned[:1], FirstTokens: []int32{3}}},
		"free block":     {Resume: &Resume{Blocks: []int32{owned[0], 15}, FirstTokens: []int32{3}}},
		"duplicate":      {Resume: &Resume{Blocks: []int32{owned[0], owned[0]}, FirstTokens: []int32{3}}},
		"bad token":      {Resume: &Resume{Blocks: owned, FirstTokens: []int32{fakeVocab}}},
		"finished":       {MaxTokens: 1, Resume: &Resume{Blocks: owned, FirstTokens: []int32{3}}},
		"stop token":     {StopTokenIDs: []int32{3}, Resume: &Resume{Blocks: owned, FirstTokens: []int32{3}}},
		"both phases":    {ContextOnly: true, Resume: &Resume{Blocks: owned, FirstTokens: []int32{3}}},
	} {
		r.ID, r.Prompt, r.Sampling = name, prompt, sampling.GreedyParams()
		if r.MaxTokens == 0 {
			r.MaxTokens = 8
		}
		if _, err := h.e.Submit(context.Background(), r); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: Submit error %v, want ErrInvalidRequest", name, err)
		}
	}
	// A rejected Submit leaves the blocks with the caller.
	for _, b := range owned {
		if !h.pool.InUse(b) {
			t.Errorf("block %d was freed by a rejected Submit", b)
		}
	}
}

// TestResumeCancelWaiting: a resumed sequence cancelled before admission
// frees the blocks it brought.
func TestResumeCancelWaiting(t *testing.T) {
	h := newHarness(t, baseConfig(), 16, false) // not started: stays waiting
	owned, err := h.pool.Alloc(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Request{ID: "w", Prompt: []int32{1, 2, 3, 4, 5}, MaxTokens: 4, Sampling: sampling.GreedyParams(),
		Resume: &Resume{Blocks: owned, FirstTokens: []int32{9}}}
	ch := submit(t, h.e, ctx, r)
	cancel()
	toks, last := collect(t, ch)
	if last.Finish != FinishAbort || len(toks) != 1 || toks[0] != 9 {
		t.Fatalf("got %v, %+v", toks, last)
	}
	waitFree(t, h.pool, 16)
}

// TestWakeAfterOutsideFree: a sequence waiting for blocks held outside the
// engine is admitted once FreeKV returns them, with no other traffic.
func TestWakeAfterOutsideFree(t *testing.T) {
	h := newHarness(t, baseConfig(), 4, true)
	held, err := h.pool.Alloc(4)
	if err != nil {
		t.Fatal(err)
	}
	ch := submit(t, h.e, context.Background(), greedyReq("w", []int32{1, 2, 3}, 2))
	time.Sleep(20 * time.Millisecond)
	if st := h.e.Stats(); st.Waiting != 1 {
		t.Fatalf("stats %+v, want the request waiting", st)
	}
	h.e.FreeKV(held)
	if toks, last := collect(t, ch); len(toks) != 2 || last.Finish != FinishLength {
		t.Fatalf("got %v, %+v", toks, last)
	}
}

// TestCPUContextThenGeneration splits the reference prompts over two real
// CPU engines and compares with Hugging Face's greedy tokens and with
// seeded sampling on one engine.
func TestCPUContextThenGeneration(t *testing.T) {
	if testing.Short() {
		t.Skip("real model: skipped in -short mode")
	}
	m, cases := loadGreedy(t, "tiny-llama2")
	newEngine := func() *Engine {
		pool, err := kvcache.NewHostPool(cpu.LayoutFor(m.Config, 8), 256)
		if err != nil {
			t.Fatal(err)
		}
		be, err := cpu.New(m, pool, cpu.Options{})
		if err != nil {
			t.Fatal(err)
		}
		e, err := New(be, pool, Config{MaxBatchSize: 8, MaxNumTokens: 256, MaxSeqLen: m.Config.MaxPositionEmbeddings,
			EOSTokenIDs: m.Config.EOSTokenIDs, VocabSize: m.Config.VocabSize}, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.Start()
		t.Cleanup(func() {
			_ = e.Close()
			if free := pool.FreeBlocks(); free != 256 {
				t.Errorf("%d free blocks at the end, want 256", free)
			}
			_ = be.Close()
			_ = pool.Close()
		})
		return e
	}
	a, b := newEngine(), newEngine()
	for i, c := range cases {
		r := &Request{ID: fmt.Sprint(i), Prompt: c.PromptIDs, MaxTokens: len(c.OutputIDs), Sampling: sampling.GreedyParams(), IgnoreEOS: true}
		if diff := cmp.Diff(c.OutputIDs, splitRun(t, a, b, r)); diff != "" {
			t.Errorf("greedy prompt %d (-hf +split):\n%s", i, diff)
		}
		sr := &Request{ID: fmt.Sprint("s", i), Prompt: c.PromptIDs, MaxTokens: 12, IgnoreEOS: true,
			Sampling: sampling.Params{Temperature: 0.8, TopP: 0.9, RepetitionPenalty: 1, Seed: int64(100 + i), HasSeed: true, Logprobs: -1}}
		want, _ := collect(t, submit(t, a, context.Background(), sr))
		if diff := cmp.Diff(want, splitRun(t, a, b, sr)); diff != "" {
			t.Errorf("seeded prompt %d (-aggregated +split):\n%s", i, diff)
		}
	}
}

// TestResumedBlocksDoNotStarve: a waiting resumed sequence's blocks are
// reclaimed (to be recomputed) when the sequence ahead of it cannot
// otherwise get blocks; both then finish with the right tokens.
func TestResumedBlocksDoNotStarve(t *testing.T) {
	cfg := baseConfig()
	src := newHarness(t, cfg, 16, true)
	dst := newHarness(t, cfg, 4, false) // 4 blocks of 4 tokens
	rPrompt := []int32{5, 6, 7, 8, 9, 10, 11, 12}
	r := greedyReq("r", rPrompt, 4)
	want := refGenerate(t, r, 4)
	ctxReq := *r
	ctxReq.ContextOnly = true
	toks, last := collect(t, submit(t, src.e, context.Background(), &ctxReq))
	if last.KV == nil {
		t.Fatalf("no handoff: %+v", last)
	}
	moved := copyBlocks(t, src.pool, dst.pool, last.KV.Blocks) // 2 of dst's 4 blocks
	src.e.FreeKV(last.KV.Blocks)

	a := greedyReq("a", []int32{1, 2, 3, 4, 5, 6, 7, 8}, 4) // needs 3 blocks
	chA := submit(t, dst.e, context.Background(), a)
	rr := *r
	rr.Resume = &Resume{Blocks: moved, FirstTokens: toks}
	chR := submit(t, dst.e, context.Background(), &rr)
	dst.e.Start()
	gotA, lastA := collect(t, chA)
	if diff := cmp.Diff(refGenerate(t, a, 4), gotA); diff != "" || lastA.Finish != FinishLength {
		t.Errorf("a: %+v (-want +got):\n%s", lastA, diff)
	}
	gotR, lastR := collect(t, chR)
	if diff := cmp.Diff(want, gotR); diff != "" || lastR.Finish != FinishLength {
		t.Errorf("r: %+v (-want +got):\n%s", lastR, diff)
	}
	if st := dst.e.Stats(); st.Preemptions == 0 {
		t.Errorf("stats %+v: the resumed sequence kept its blocks", st)
	}
}
