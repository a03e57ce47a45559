package cpu

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"disagg/worker/compute"
)

// TestLaunchGreedyOverlapped decodes every greedy reference case in one
// batch through Launch, each step enqueued before the previous one is
// waited for, its tokens naming the previous step's rows: the ids are
// Hugging Face's greedy tokens.
func TestLaunchGreedyOverlapped(t *testing.T) {
	for _, name := range models {
		t.Run(name, func(t *testing.T) {
			var cases []greedyCase
			readJSON(t, filepath.Join(testdata, "reference", name, "greedy.json"), &cases)
			e := newEnv(t, name, 16, 256, 2)
			steps := len(cases[0].OutputIDs)
			seqs := make([]compute.Seq, len(cases))
			params := make([]compute.SampleParams, len(cases))
			for i, c := range cases {
				seqs[i] = compute.Seq{Tokens: c.PromptIDs, Blocks: e.alloc(t, len(c.PromptIDs)+steps), Logits: compute.LogitsLast}
				params[i] = compute.SampleParams{TopP: 1} // greedy
			}
			got := make([][]int32, len(cases))
			var prev compute.Pending
			collect := func(p compute.Pending) {
				ids, err := p.Wait()
				if err != nil {
					t.Fatal(err)
				}
				for i := range got {
					got[i] = append(got[i], ids[i])
				}
			}
			for s := 0; s < steps; s++ {
				p, err := e.b.Launch(context.Background(), &compute.Batch{Seqs: seqs}, params)
				if err != nil {
					t.Fatal(err)
				}
				if prev != nil {
					collect(prev)
				}
				prev = p
				for i := range seqs {
					seqs[i] = compute.Seq{Tokens: []int32{-int32(i) - 1}, Start: seqs[i].Start + len(seqs[i].Tokens), Blocks: seqs[i].Blocks, Logits: compute.LogitsLast}
				}
			}
			collect(prev)
			for i, c := range cases {
				if diff := cmp.Diff(c.OutputIDs, got[i]); diff != "" {
					t.Errorf("case %d %q (-hf +launched):\n%s", i, c.Prompt, diff)
				}
			}
		})
	}
}

// TestLaunchBadBatches: Launch refuses LogitsAll, a parameter count that
// is not the row count, and negative ids that name no row of the previous
// step.
func TestLaunchBadBatches(t *testing.T) {
	e := newEnv(t, models[0], 16, 8, 1)
	blocks := e.alloc(t, 4)
	one := []compute.SampleParams{{TopP: 1}}
	for _, tc := range []struct {
		name   string
		seq    compute.Seq
		params []compute.SampleParams
	}{
		{"logits all", compute.Seq{Tokens: []int32{1, 2}, Blocks: blocks, Logits: compute.LogitsAll}, one},
		{"params", compute.Seq{Tokens: []int32{1}, Blocks: blocks, Logits: compute.LogitsLast}, nil},
		{"no previous step", compute.Seq{Tokens: []int32{-1}, Blocks: blocks, Logits: compute.LogitsLast}, one},
	} {
		if _, err := e.b.Launch(context.Background(), &compute.Batch{Seqs: []compute.Seq{tc.seq}}, tc.params); !errors.Is(err, compute.ErrBadBatch) {
			t.Errorf("%s: %v, want ErrBadBatch", tc.name, err)
		}
	}
}
