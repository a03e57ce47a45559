package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"disagg/worker/compute"
	"disagg/worker/compute/cpu"
	"disagg/worker/kvcache"
	"disagg/worker/model"
	"disagg/worker/sampling"
)

// These tests run the real CPU backend on the tiny fixtures and compare
// greedy generation through the engine with Hugging Face's reference
// (testdata/reference/<model>/greedy.json: 32 greedy tokens, EOS not
// stopping), under batching, chunked prefill and preemption.

const testdataDir = "../../testdata"

// greedyCase is one entry of greedy.json.
type greedyCase struct {
	Prompt    string  `json:"prompt"`
	PromptIDs []int32 `json:"prompt_ids"`
	OutputIDs []int32 `json:"output_ids"`
	MinMargin float64 `json:"min_margin"`
}

func loadGreedy(t *testing.T, name string) (*model.Model, []greedyCase) {
	t.Helper()
	dir := filepath.Join(testdataDir, "models", name)
	ref := filepath.Join(testdataDir, "reference", name, "greedy.json")
	data, err := os.ReadFile(ref)
	if err != nil {
		t.Skipf("fixture missing: %v", err)
	}
	var cases []greedyCase
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatalf("%s: %v", ref, err)
	}
	m, err := model.LoadDir(dir, model.Options{})
	if err != nil {
		t.Fatalf("load %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("model Close: %v", err)
		}
	})
	return m, cases
}

// limitChecker wraps a backend and records batches over the engine's limits.
type limitChecker struct {
	compute.Backend
	cfg Config

	mu        sync.Mutex
	maxTokens int
	bad       []string
}

func (l *limitChecker) Forward(ctx context.Context, b *compute.Batch) (*compute.Logits, error) {
	l.mu.Lock()
	n := b.NumTokens()
	l.maxTokens = max(l.maxTokens, n)
	if n > l.cfg.MaxNumTokens || len(b.Seqs) > l.cfg.MaxBatchSize {
		l.bad = append(l.bad, fmt.Sprintf("%d sequences, %d tokens", len(b.Seqs), n))
	}
	l.mu.Unlock()
	return l.Backend.Forward(ctx, b)
}

func TestCPUGreedyReference(t *testing.T) {
	if testing.Short() {
		t.Skip("real model: skipped in -short mode")
	}
	scenarios := []struct {
		name       string
		batch      int
		tokens     int
		tpb        int
		blocks     int // 0: enough for everything
		oneAtATime bool
		preempt    bool // expect preemptions
	}{
		{name: "batched", batch: 8, tokens: 512, tpb: 16},
		{name: "one at a time", batch: 8, tokens: 512, tpb: 16, oneAtATime: true},
		{name: "chunked prefill", batch: 8, tokens: 16, tpb: 4},
		{name: "tiny pool", batch: 8, tokens: 64, tpb: 4, blocks: 48, preempt: true},
	}
	for _, name := range []string{"tiny-llama2", "tiny-llama3"} {
		t.Run(name, func(t *testing.T) {
			m, cases := loadGreedy(t, name)
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					blocks := sc.blocks
					if blocks == 0 {
						blocks = 64 * 160 / sc.tpb
					}
					pool, err := kvcache.NewHostPool(cpu.LayoutFor(m.Config, sc.tpb), blocks)
					if err != nil {
						t.Fatal(err)
					}
					defer pool.Close()
					be, err := cpu.New(m, pool, cpu.Options{})
					if err != nil {
						t.Fatal(err)
					}
					defer be.Close()
					cfg := Config{MaxBatchSize: sc.batch, MaxNumTokens: sc.tokens, MaxSeqLen: m.Config.MaxPositionEmbeddings,
						EOSTokenIDs: m.Config.EOSTokenIDs, VocabSize: m.Config.VocabSize}
					lc := &limitChecker{Backend: be, cfg: cfg}
					e, err := New(lc, pool, cfg, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer e.Close()
					if sc.oneAtATime {
						e.Start()
					}

					chans := make([]<-chan Output, len(cases))
					run := func(i int) {
						c := cases[i]
						toks, last := collect(t, chans[i])
						if diff := cmp.Diff(c.OutputIDs, toks); diff != "" {
							t.Errorf("prompt %d %q (min margin %.4f) (-hf +engine):\n%s", i, c.Prompt, c.MinMargin, diff)
						}
						if last.Finish != FinishLength {
							t.Errorf("prompt %d: last Output %+v, want FinishLength", i, last)
						}
					}
					for i, c := range cases {
						r := &Request{ID: fmt.Sprint(i), Prompt: c.PromptIDs, MaxTokens: len(c.OutputIDs),
							Sampling: sampling.GreedyParams(), IgnoreEOS: true}
						chans[i] = submit(t, e, context.Background(), r)
						if sc.oneAtATime {
							run(i)
						}
					}
					if !sc.oneAtATime {
						e.Start() // all queued first: the same schedule every run
						for i := range cases {
							run(i)
						}
					}
					st := e.Stats()
					if st.FreeBlocks != blocks {
						t.Errorf("%d free blocks at the end, want %d", st.FreeBlocks, blocks)
					}
					if sc.preempt && st.Preemptions == 0 {
						t.Errorf("no preemption in a pool of %d blocks: %+v", blocks, st)
					}
					for _, b := range lc.bad {
						t.Errorf("step over the limits: %s", b)
					}
					t.Logf("stats %+v, largest step %d tokens", st, lc.maxTokens)
				})
			}
		})
	}
}
