package cpu

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"disagg/worker/compute"
	"disagg/worker/kvcache"
	"disagg/worker/model"
)

var models = []string{"tiny-llama2", "tiny-llama3"}

const testdata = "../../../testdata"

// env is a loaded model, a pool and a backend over them.
type env struct {
	m    *model.Model
	pool *kvcache.Pool
	b    *Backend
}

func newEnv(t testing.TB, name string, tokensPerBlock, blocks, threads int) *env {
	t.Helper()
	dir := filepath.Join(testdata, "models", name)
	if _, err := os.Stat(filepath.Join(dir, model.ConfigFile)); err != nil {
		t.Skipf("fixture %s not generated: %v", name, err)
	}
	m, err := model.LoadDir(dir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := kvcache.NewHostPool(LayoutFor(m.Config, tokensPerBlock), blocks)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(m, pool, Options{Threads: threads})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
		if err := pool.Close(); err != nil {
			t.Error(err)
		}
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return &env{m: m, pool: pool, b: b}
}

// alloc takes blocks for n positions and frees them at cleanup.
func (e *env) alloc(t testing.TB, n int) []int32 {
	t.Helper()
	blocks, err := e.pool.Alloc(e.pool.Layout().BlocksFor(n))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.pool.Free(blocks) })
	return blocks
}

// forward runs one step and copies the logits rows out.
func (e *env) forward(t testing.TB, seqs ...compute.Seq) [][]float32 {
	t.Helper()
	l, err := e.b.Forward(context.Background(), &compute.Batch{Seqs: seqs})
	if err != nil {
		t.Fatal(err)
	}
	rows := make([][]float32, l.Rows())
	for r := range rows {
		rows[r] = append([]float32(nil), l.Row(r)...)
	}
	return rows
}

type logitsCase struct {
	IDs        []int32     `json:"ids"`
	LastLogits []float32   `json:"last_logits"`
	AllLogits  [][]float32 `json:"all_logits"`
}

func readJSON(t testing.TB, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("reference not generated: %v", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func logitsCases(t testing.TB, name string) []logitsCase {
	var f struct {
		Cases []logitsCase `json:"cases"`
	}
	readJSON(t, filepath.Join(testdata, "reference", name, "logits.json"), &f)
	if len(f.Cases) == 0 {
		t.Fatalf("%s: no logits cases", name)
	}
	return f.Cases
}

// maxDiff is the largest absolute difference; it fails on a length mismatch.
func maxDiff(t testing.TB, got, want []float32) float64 {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d logits, want %d", len(got), len(want))
	}
	m := 0.0
	for i := range got {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = max(m, d)
	}
	return m
}

// roundingExcess is how far got is from want beyond the half unit of the
// sixth significant digit to which the reference was rounded.
func roundingExcess(got, want []float32) float64 {
	m := 0.0
	for i := range got {
		w := float64(want[i])
		half := 0.0
		if w != 0 {
			half = 0.5 * math.Pow(10, math.Floor(math.Log10(math.Abs(w)))-5)
		}
		m = max(m, math.Abs(float64(got[i])-w)-half)
	}
	return m
}

// TestLogitsMatchReference compares one-step prefill logits with Hugging
// Face's float32 eager logits.
func TestLogitsMatchReference(t *testing.T) {
	const tol = 1e-4
	for _, name := range models {
		t.Run(name, func(t *testing.T) {
			for _, threads := range []int{1, 3} {
				e := newEnv(t, name, 4, 128, threads)
				worst, excess := 0.0, 0.0
				for ci, c := range logitsCases(t, name) {
					blocks := e.alloc(t, len(c.IDs))
					got := e.forward(t, compute.Seq{Tokens: c.IDs, Blocks: blocks, Logits: compute.LogitsLast})
					d := maxDiff(t, got[0], c.LastLogits)
					worst = max(worst, d)
					excess = max(excess, roundingExcess(got[0], c.LastLogits))
					if d > tol {
						t.Errorf("case %d (%d tokens): last logits differ by %g > %g", ci, len(c.IDs), d, tol)
					}
					if c.AllLogits == nil {
						continue
					}
					got = e.forward(t, compute.Seq{Tokens: c.IDs, Blocks: blocks, Logits: compute.LogitsAll})
					if len(got) != len(c.AllLogits) {
						t.Fatalf("case %d: %d rows, want %d", ci, len(got), len(c.AllLogits))
					}
					for r := range got {
						d := maxDiff(t, got[r], c.AllLogits[r])
						worst = max(worst, d)
						excess = max(excess, roundingExcess(got[r], c.AllLogits[r]))
						if d > tol {
							t.Errorf("case %d row %d: logits differ by %g > %g", ci, r, d, tol)
						}
					}
				}
				t.Logf("threads %d: max abs difference from HF %.3g (%.3g beyond the reference's 6-digit rounding)", threads, worst, excess)
			}
		})
	}
}

// TestChunkedPrefill feeds the prompt in chunks over successive steps.
func TestChunkedPrefill(t *testing.T) {
	const tol = 1e-5
	for _, name := range models {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, name, 4, 128, 2)
			cases := logitsCases(t, name)
			c := cases[len(cases)-1]
			blocks := e.alloc(t, len(c.IDs))
			want := e.forward(t, compute.Seq{Tokens: c.IDs, Blocks: blocks, Logits: compute.LogitsLast})[0]
			for _, chunk := range []int{1, 3, 7} {
				blocks := e.alloc(t, len(c.IDs))
				var got []float32
				for start := 0; start < len(c.IDs); start += chunk {
					end := min(start+chunk, len(c.IDs))
					mode := compute.LogitsNone
					if end == len(c.IDs) {
						mode = compute.LogitsLast
					}
					rows := e.forward(t, compute.Seq{Tokens: c.IDs[start:end], Start: start, Blocks: blocks, Logits: mode})
					if mode == compute.LogitsNone && len(rows) != 0 {
						t.Fatalf("LogitsNone returned %d rows", len(rows))
					}
					if mode == compute.LogitsLast {
						got = rows[0]
					}
				}
				if d := maxDiff(t, got, want); d > tol {
					t.Errorf("chunks of %d: last logits differ from one-shot by %g > %g", chunk, d, tol)
				}
				if d := maxDiff(t, got, c.LastLogits); d > 1e-4 {
					t.Errorf("chunks of %d: last logits differ from HF by %g", chunk, d)
				}
			}
		})
	}
}

// TestBatching runs sequences of different lengths in one step.
func TestBatching(t *testing.T) {
	const tol = 1e-5
	for _, name := range models {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, name, 4, 256, 3)
			cases := logitsCases(t, name)
			modes := []compute.LogitsMode{compute.LogitsLast, compute.LogitsAll, compute.LogitsNone}
			var seqs []compute.Seq
			var alone [][][]float32
			for i, c := range cases {
				s := compute.Seq{Tokens: c.IDs, Blocks: e.alloc(t, len(c.IDs)), Logits: modes[i%len(modes)]}
				alone = append(alone, e.forward(t, s))
				s.Blocks = e.alloc(t, len(c.IDs))
				seqs = append(seqs, s)
			}
			// A sequence resuming a half-cached prompt in the same batch.
			c := cases[len(cases)-1]
			half := len(c.IDs) / 2
			resume := compute.Seq{Tokens: c.IDs[:half], Blocks: e.alloc(t, len(c.IDs))}
			e.forward(t, resume)
			resume.Tokens, resume.Start, resume.Logits = c.IDs[half:], half, compute.LogitsLast
			seqs = append(seqs, resume)
			alone = append(alone, [][]float32{cases[len(cases)-1].LastLogits})

			got := e.forward(t, seqs...)
			r := 0
			for i, want := range alone {
				for _, row := range want {
					if r >= len(got) {
						t.Fatalf("batch returned %d rows, too few", len(got))
					}
					tl := tol
					if i == len(alone)-1 {
						tl = 1e-4 // compared with HF, not with our own single run
					}
					if d := maxDiff(t, got[r], row); d > tl {
						t.Errorf("sequence %d: batched logits differ by %g > %g", i, d, tl)
					}
					r++
				}
			}
			if r != len(got) {
				t.Errorf("batch returned %d rows, want %d", len(got), r)
			}
		})
	}
}

// TestShuffledBlocks uses non-contiguous, shuffled block tables.
func TestShuffledBlocks(t *testing.T) {
	for _, name := range models {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, name, 4, 256, 2)
			rng := rand.New(rand.NewPCG(1, 2))
			for ci, c := range logitsCases(t, name) {
				// Take every other block of a larger allocation, shuffled.
				all := e.alloc(t, 2*len(c.IDs)+8)
				var blocks []int32
				for i := 1; i < len(all); i += 2 {
					blocks = append(blocks, all[i])
				}
				rng.Shuffle(len(blocks), func(i, j int) { blocks[i], blocks[j] = blocks[j], blocks[i] })
				got := e.forward(t, compute.Seq{Tokens: c.IDs, Blocks: blocks, Logits: compute.LogitsLast})
				if d := maxDiff(t, got[0], c.LastLogits); d > 1e-4 {
					t.Errorf("case %d: shuffled blocks %v: logits differ from HF by %g", ci, blocks, d)
				}
			}
		})
	}
}

type greedyCase struct {
	Prompt    string  `json:"prompt"`
	PromptIDs []int32 `json:"prompt_ids"`
	OutputIDs []int32 `json:"output_ids"`
	MinMargin float64 `json:"min_margin"`
}

func argmax(row []float32) (best int32, margin float32) {
	b1, b2 := float32(math.Inf(-1)), float32(math.Inf(-1))
	for i, v := range row {
		if v > b1 {
			b1, b2, best = v, b1, int32(i)
		} else if v > b2 {
			b2 = v
		}
	}
	return best, b1 - b2
}

// TestGreedy reproduces Hugging Face's greedy continuations token by token.
func TestGreedy(t *testing.T) {
	for _, name := range models {
		t.Run(name, func(t *testing.T) {
			var cases []greedyCase
			readJSON(t, filepath.Join(testdata, "reference", name, "greedy.json"), &cases)
			e := newEnv(t, name, 16, 128, 2)
			exact, minMargin := 0, math.Inf(1)
			for ci, c := range cases {
				blocks := e.alloc(t, len(c.PromptIDs)+len(c.OutputIDs))
				rows := e.forward(t, compute.Seq{Tokens: c.PromptIDs, Blocks: blocks, Logits: compute.LogitsLast})
				var out []int32
				pos := len(c.PromptIDs)
				for {
					tok, margin := argmax(rows[0])
					minMargin = min(minMargin, float64(margin))
					out = append(out, tok)
					if len(out) == len(c.OutputIDs) {
						break
					}
					rows = e.forward(t, compute.Seq{Tokens: []int32{tok}, Start: pos, Blocks: blocks, Logits: compute.LogitsLast})
					pos++
				}
				if !slicesEqual(out, c.OutputIDs) {
					t.Errorf("case %d %q: output %v, want %v", ci, c.Prompt, out, c.OutputIDs)
					continue
				}
				exact++
			}
			t.Logf("%d/%d greedy cases token-exact (32 tokens each); min top1-top2 margin %.4g", exact, len(cases), minMargin)
		})
	}
}

func slicesEqual(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestBadBatches checks that invalid batches fail with ErrBadBatch.
func TestBadBatches(t *testing.T) {
	e := newEnv(t, "tiny-llama2", 4, 8, 2)
	c := e.m.Config
	ok := []int32{0, 1, 2, 3, 4, 5, 6, 7}
	tests := []struct {
		name  string
		batch *compute.Batch
		want  string
	}{
		{"nil", nil, "empty batch"},
		{"empty", &compute.Batch{}, "empty batch"},
		{"no tokens", &compute.Batch{Seqs: []compute.Seq{{Blocks: ok}}}, "no tokens"},
		{"token past vocab", &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{1, int32(c.VocabSize)}, Blocks: ok}}}, "outside the vocabulary"},
		{"negative token", &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{-1}, Blocks: ok}}}, "outside the vocabulary"},
		{"negative start", &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{1}, Start: -1, Blocks: ok}}}, "negative position"},
		{"past max positions", &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{1}, Start: c.MaxPositionEmbeddings, Blocks: ok}}}, "max_position_embeddings"},
		{"short block table", &compute.Batch{Seqs: []compute.Seq{{Tokens: make([]int32, 5), Blocks: ok[:1]}}}, "needs 2 blocks"},
		{"block out of range", &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{1}, Blocks: []int32{8}}}}, "outside the pool"},
		{"negative block", &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{1}, Blocks: []int32{-3}}}}, "outside the pool"},
		{"bad logits mode", &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{1}, Blocks: ok, Logits: 9}}}, "logits mode"},
		{"second sequence bad", &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{1}, Blocks: ok}, {Tokens: []int32{1}, Start: 4}}}, "sequence 1 needs 2 blocks"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.b.Forward(context.Background(), tc.batch)
			if !errors.Is(err, compute.ErrBadBatch) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want ErrBadBatch containing %q", err, tc.want)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.b.Forward(ctx, &compute.Batch{Seqs: []compute.Seq{{Tokens: []int32{1}, Blocks: ok}}}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: err %v", err)
	}
}

func TestNewRejectsWrongPool(t *testing.T) {
	e := newEnv(t, "tiny-llama2", 4, 8, 1)
	l := LayoutFor(e.m.Config, 4)
	l.HeadDim++
	pool, err := kvcache.NewHostPool(l, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := New(e.m, pool, Options{}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("err %v, want a layout mismatch", err)
	}
	if err := e.b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Forward(context.Background(), &compute.Batch{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Forward after Close: err %v, want ErrClosed", err)
	}
}

// TestMatmul checks the blocked kernel against a float64 triple loop over
// shapes that exercise every tail, and that each token's row is bitwise the
// same whether computed alone or in a batch.
func TestMatmul(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	p := newWorkers(3)
	defer p.close()
	for _, sh := range [][3]int{{1, 1, 1}, {1, 7, 5}, {2, 4, 8}, {3, 9, 13}, {5, 17, 3}, {8, 64, 64}, {3, 12, 100}} {
		T, N, K := sh[0], sh[1], sh[2]
		x, w := make([]float32, T*K), make([]float32, N*K)
		for i := range x {
			x[i] = rng.Float32()*2 - 1
		}
		for i := range w {
			w[i] = rng.Float32()*2 - 1
		}
		y := make([]float32, T*N)
		matmul(p, y, x, w, T, N, K)
		for tt := 0; tt < T; tt++ {
			one := make([]float32, N)
			matmul(p, one, x[tt*K:(tt+1)*K], w, 1, N, K)
			for o := 0; o < N; o++ {
				var s float64
				for i := 0; i < K; i++ {
					s += float64(x[tt*K+i]) * float64(w[o*K+i])
				}
				if d := math.Abs(s - float64(y[tt*N+o])); d > 1e-5 {
					t.Errorf("shape %v: y[%d][%d] = %g, want %g", sh, tt, o, y[tt*N+o], s)
				}
				if one[o] != y[tt*N+o] {
					t.Errorf("shape %v: y[%d][%d] = %g in a batch, %g alone", sh, tt, o, y[tt*N+o], one[o])
				}
			}
		}
	}
}

func BenchmarkForwardDecode(b *testing.B) {
	const batch, ctxLen = 8, 32
	e := newEnv(b, "tiny-llama2", 16, 64, 0)
	seqs := make([]compute.Seq, batch)
	for i := range seqs {
		prompt := make([]int32, ctxLen)
		for j := range prompt {
			prompt[j] = int32((i*31 + j*7) % e.m.Config.VocabSize)
		}
		seqs[i] = compute.Seq{Tokens: prompt, Blocks: e.alloc(b, ctxLen+1)}
	}
	e.forward(b, seqs...)
	for i := range seqs {
		seqs[i] = compute.Seq{Tokens: []int32{int32(i + 1)}, Start: ctxLen, Blocks: seqs[i].Blocks, Logits: compute.LogitsLast}
	}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.b.Forward(ctx, &compute.Batch{Seqs: seqs}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(batch*b.N)/b.Elapsed().Seconds(), "tokens/s")
}
