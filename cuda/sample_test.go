//go:build cuda

package cuda

// Device sampling (sample.go, kernels/sample.cu) and the overlap scheduler
// on the GPU. Like the other device tests they run on the GPU machine and
// skip without a visible GPU.

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"disagg/worker/compute"
	"disagg/worker/engine"
	"disagg/worker/sampling"
)

// TestSampleUniform: the device's draw is Go's sampling.Uniform, bit for
// bit (the same (seed, step) gives the same number on both sides).
func TestSampleUniform(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 2000; i++ {
		seed, step := r.Uint64(), uint64(r.Intn(1<<20))
		if i < 10 {
			seed, step = uint64(i), uint64(i)
		}
		if got, want := sampleUniform(seed, step), sampling.Uniform(seed, step); got != want {
			t.Fatalf("uniform(%d, %d): device %v, Go %v", seed, step, got, want)
		}
	}
}

// refArgmax is the greedy answer: NaN is -inf, largest value, lowest index
// among equals; -1 when every value is -inf or NaN.
func refArgmax(row []float32) int32 {
	best, bi := float32(math.Inf(-1)), int32(-1)
	for i, v := range row {
		if v != v {
			continue
		}
		if v > best {
			best, bi = v, int32(i)
		}
	}
	return bi
}

// TestSampleGreedy: greedy rows give the argmax with the lowest index on
// ties, skip NaN, take +inf, and report -1 for a row with nothing to sample.
func TestSampleGreedy(t *testing.T) {
	dev := device(t)
	const V = 32000
	r := rand.New(rand.NewSource(2))
	var rows [][]float32
	for k := 0; k < 12; k++ {
		row := make([]float32, V)
		for i := range row {
			row[i] = float32(r.NormFloat64() * 4)
		}
		switch k {
		case 0: // ties: the first of three equal maxima wins
			row[31999], row[17], row[20000] = 100, 100, 100
		case 1:
			row[5], row[6] = float32(math.NaN()), 50
		case 2:
			row[30000], row[12] = float32(math.Inf(1)), float32(math.Inf(1))
		case 3:
			for i := range row {
				row[i] = float32(math.Inf(-1))
			}
		case 4:
			for i := range row {
				row[i] = float32(math.NaN())
			}
		case 5:
			for i := range row {
				row[i] = -3 // all equal: id 0
			}
		}
		rows = append(rows, row)
	}
	flat := slices.Concat(rows...)
	params := make([]compute.SampleParams, len(rows))
	for i := range params {
		params[i] = compute.SampleParams{Temperature: 0, TopP: 1, Seed: uint64(i)}
	}
	ids, err := sampleLogits(dev, flat, V, params)
	if err != nil {
		t.Fatal(err)
	}
	for k, row := range rows {
		if want := refArgmax(row); ids[k] != want {
			t.Errorf("row %d: device %d, want %d", k, ids[k], want)
		}
	}
}

// refDistribution is the distribution sampling with p draws from, computed
// in float64 from its definition: p_i = exp((l_i - max) / T); top-k keeps
// the k largest (lowest ids among equals); top-p the shortest prefix of the
// most likely first (lowest ids first) whose mass reaches top_p of what
// top-k kept; min-p the tokens with p_i >= min_p (the most likely has 1).
func refDistribution(logits []float32, p compute.SampleParams) []float64 {
	m := math.Inf(-1)
	for _, l := range logits {
		m = math.Max(m, float64(l))
	}
	type cand struct {
		id int
		p  float64
	}
	var cs []cand
	for i, l := range logits {
		if q := math.Exp((float64(l) - m) / float64(p.Temperature)); q > 0 {
			cs = append(cs, cand{i, q})
		}
	}
	sort.SliceStable(cs, func(a, b int) bool { return cs[a].p > cs[b].p })
	if k := int(p.TopK); k > 0 && k < len(cs) {
		cs = cs[:k]
	}
	if p.TopP < 1 {
		var tot float64
		for _, c := range cs {
			tot += c.p
		}
		var cum float64
		for i, c := range cs {
			cum += c.p
			if cum >= float64(p.TopP)*tot {
				cs = cs[:i+1]
				break
			}
		}
	}
	out := make([]float64, len(logits))
	var tot float64
	for _, c := range cs {
		if c.p >= float64(p.MinP) {
			out[c.id] = c.p
			tot += c.p
		}
	}
	for i := range out {
		out[i] /= tot
	}
	return out
}

// chiSquare compares counts with n draws from probs: the statistic over
// the tokens expected at least 5 times (the rest pooled), its degrees of
// freedom, and the draws of tokens with probability 0.
func chiSquare(counts []int, probs []float64, n int) (stat float64, dof int, impossible int) {
	var restObs, restExp float64
	bins := 0
	for i, q := range probs {
		e := q * float64(n)
		switch {
		case q == 0:
			impossible += counts[i]
		case e >= 5:
			d := float64(counts[i]) - e
			stat += d * d / e
			bins++
		default:
			restObs += float64(counts[i])
			restExp += e
		}
	}
	if restExp >= 5 {
		d := restObs - restExp
		stat += d * d / restExp
		bins++
	}
	return stat, bins - 1, impossible
}

// TestSampleDistribution draws many tokens from fixed logits with
// temperature, top-k, top-p and min-p, and checks the counts against the
// distribution computed on the host (chi-square, and no draw outside the
// kept set). The large row puts most of the vocabulary in a thin tail, so
// that the kept set spans the row's chunks.
func TestSampleDistribution(t *testing.T) {
	dev := device(t)
	r := rand.New(rand.NewSource(3))
	small := make([]float32, 12)
	for i := range small {
		small[i] = float32(r.NormFloat64() * 1.5)
	}
	large := make([]float32, 32000)
	for i := range large {
		large[i] = -25 + float32(r.NormFloat64())
	}
	for _, i := range r.Perm(len(large))[:40] {
		large[i] = float32(r.NormFloat64() * 1.5)
	}
	rows := map[string][]float32{"small": small, "large": large}
	params := []compute.SampleParams{
		{Temperature: 1, TopP: 1},
		{Temperature: 0.7, TopK: 4, TopP: 1},
		{Temperature: 1, TopP: 0.8},
		{Temperature: 1.5, TopP: 1, MinP: 0.2},
		{Temperature: 0.9, TopK: 6, TopP: 0.9, MinP: 0.05},
		{Temperature: 2, TopK: 30, TopP: 0.95},
	}
	const n = 60000
	for _, name := range []string{"small", "large"} {
		row := rows[name]
		for pi, p := range params {
			t.Run(fmt.Sprintf("%s/%d", name, pi), func(t *testing.T) {
				ps := make([]compute.SampleParams, n)
				for i := range ps {
					ps[i] = p
					ps[i].Seed, ps[i].Step = uint64(77+pi), uint64(i)
				}
				ids, err := sampleLogits(dev, row, len(row), ps)
				if err != nil {
					t.Fatal(err)
				}
				counts := make([]int, len(row))
				for _, id := range ids {
					if id < 0 || int(id) >= len(row) {
						t.Fatalf("id %d outside [0, %d)", id, len(row))
					}
					counts[id]++
				}
				probs := refDistribution(row, p)
				stat, dof, impossible := chiSquare(counts, probs, n)
				limit := float64(dof) + 6*math.Sqrt(2*float64(dof)) + 10 // far in the tail (p < 1e-6)
				t.Logf("%+v: chi2 %.1f with %d dof (limit %.1f), %d draws outside the kept set", p, stat, dof, limit, impossible)
				if impossible > 0 {
					t.Errorf("%d draws of tokens that top-k/top-p/min-p exclude", impossible)
				}
				if !(stat < limit) {
					t.Errorf("chi2 %.1f with %d dof: the draws do not follow the distribution", stat, dof)
				}
			})
		}
	}
}

// TestSampleMatchesHostDraw: with temperature and min-p only, the device
// and the host (sampling.SampleRow) walk the candidates in id order, so the
// same draw picks the same token but where rounding puts it on a boundary.
func TestSampleMatchesHostDraw(t *testing.T) {
	dev := device(t)
	r := rand.New(rand.NewSource(4))
	const V, n = 32000, 4000
	row := make([]float32, V)
	for i := range row {
		row[i] = float32(r.NormFloat64() * 3)
	}
	for _, p := range []compute.SampleParams{{Temperature: 1, TopP: 1}, {Temperature: 0.5, TopP: 1, MinP: 0.01}} {
		ps := make([]compute.SampleParams, n)
		for i := range ps {
			ps[i] = p
			ps[i].Seed, ps[i].Step = 5, uint64(i)
		}
		ids, err := sampleLogits(dev, row, V, ps)
		if err != nil {
			t.Fatal(err)
		}
		same := 0
		for i, q := range ps {
			want, err := sampling.SampleRow(slices.Clone(row), sampling.Params{Temperature: q.Temperature, TopP: q.TopP, MinP: q.MinP}, sampling.Uniform(q.Seed, q.Step))
			if err != nil {
				t.Fatal(err)
			}
			if ids[i] == want {
				same++
			}
		}
		t.Logf("%+v: %d/%d draws pick the host's token", p, same, n)
		if same < n*99/100 {
			t.Errorf("%+v: only %d/%d draws pick the host's token", p, same, n)
		}
	}
}

// TestLaunchGreedy runs the greedy fixtures free-running through Launch:
// every step's device ids equal the argmax of the host-copied logits of
// the same step (Forward again, the KV writes being idempotent); and a
// second run that enqueues step n+1 (its tokens naming step n's rows)
// before waiting for step n gives the same ids.
func TestLaunchGreedy(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx, func(t *testing.T) {
			r := newRig(t, filepath.Join("..", "testdata", "models", fx), 512)
			var cases []greedyCase
			readJSON(t, filepath.Join("..", "testdata", "reference", fx, "greedy.json"), &cases)
			ctx := context.Background()
			steps := len(cases[0].OutputIDs)
			greedy := make([]compute.SampleParams, len(cases))
			for i := range greedy {
				greedy[i] = compute.SampleParams{TopP: 1}
			}
			run := func(overlap bool) [][]int32 {
				seqs := make([]compute.Seq, len(cases))
				for i, c := range cases {
					seqs[i] = compute.Seq{Tokens: c.PromptIDs, Blocks: r.alloc(t, len(c.PromptIDs)+steps), Logits: compute.LogitsLast}
				}
				defer func() {
					for _, s := range seqs {
						r.pool.Free(s.Blocks)
					}
				}()
				out := make([][]int32, len(cases))
				advance := func(tok func(i int) int32) {
					for i := range seqs {
						seqs[i] = compute.Seq{Tokens: []int32{tok(i)}, Start: seqs[i].Start + len(seqs[i].Tokens), Blocks: seqs[i].Blocks, Logits: compute.LogitsLast}
					}
				}
				var inflight compute.Pending
				mismatch := 0
				for s := 0; s < steps; s++ {
					p, err := r.be.Launch(ctx, &compute.Batch{Seqs: seqs}, greedy)
					if err != nil {
						t.Fatal(err)
					}
					if overlap {
						// This step reads the last one's ids on the device;
						// only now are they waited for.
						if inflight != nil {
							ids, err := inflight.Wait()
							if err != nil {
								t.Fatal(err)
							}
							for i := range out {
								out[i] = append(out[i], ids[i])
							}
						}
						inflight = p
						advance(func(i int) int32 { return -int32(i) - 1 })
						continue
					}
					ids, err := p.Wait()
					if err != nil {
						t.Fatal(err)
					}
					logits, err := r.be.Forward(ctx, &compute.Batch{Seqs: seqs})
					if err != nil {
						t.Fatal(err)
					}
					for i := range cases {
						if want := refArgmax(logits.Row(i)); ids[i] != want {
							mismatch++
						}
						out[i] = append(out[i], ids[i])
					}
					advance(func(i int) int32 { return ids[i] })
				}
				if inflight != nil {
					ids, err := inflight.Wait()
					if err != nil {
						t.Fatal(err)
					}
					for i := range out {
						out[i] = append(out[i], ids[i])
					}
				}
				if mismatch > 0 {
					t.Errorf("device ids differ from the host argmax of the same step %d times", mismatch)
				}
				return out
			}
			sync := run(false)
			over := run(true)
			if diff := cmp.Diff(sync, over); diff != "" {
				t.Errorf("ids with step n+1 enqueued before step n was waited for (-waited +overlapped):\n%s", diff)
			}
			exact := 0
			for i, c := range cases {
				if slices.Equal(sync[i], c.OutputIDs) {
					exact++
				}
			}
			fmt.Printf("LAUNCH %s: %d/%d cases token-exact with Hugging Face's greedy tokens (bf16)\n", fx, exact, len(cases))
		})
	}
}

// hostOnly hides the backend's compute.Sampler: the engine then runs
// Forward and samples on the host.
type hostOnly struct{ compute.Backend }

// TestEngineOverlap runs the fixtures' prompts through the engine on the
// GPU, greedy and seeded, with the overlap scheduler on, off, and with host
// sampling: the tokens are the same in the three, and every block returns.
// CUDA graphs are off: see TestEngineGraphReplay.
func TestEngineOverlap(t *testing.T) { testEngineOverlap(t, Options{NoGraphs: true}) }

// TestEngineGraphReplay is TestEngineOverlap with decode steps replayed as
// CUDA graphs. The engine grows block tables a block at a time, so the
// count of block-table entries changes between decode steps of one shape;
// a graph must not bake in anything that depends on it (the offset of the
// tile data after the tables, in dcu.cu) or runs stop being reproducible,
// whichever way tokens are sampled.
func TestEngineGraphReplay(t *testing.T) { testEngineOverlap(t, Options{}) }

func testEngineOverlap(t *testing.T, opts Options) {
	for _, fx := range fixtures {
		t.Run(fx, func(t *testing.T) {
			r := newRigOpts(t, filepath.Join("..", "testdata", "models", fx), 512, opts)
			var cases []greedyCase
			readJSON(t, filepath.Join("..", "testdata", "reference", fx, "greedy.json"), &cases)
			mc := r.m.Config
			run := func(name string, be compute.Backend, disable bool, seeded bool) [][]int32 {
				e, err := engine.New(be, r.pool, engine.Config{MaxBatchSize: 16, MaxNumTokens: 2048, MaxSeqLen: mc.MaxPositionEmbeddings,
					EOSTokenIDs: mc.EOSTokenIDs, VocabSize: mc.VocabSize, DisableOverlap: disable}, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer e.Close()
				chans := make([]<-chan engine.Output, len(cases))
				for i, c := range cases {
					p := sampling.GreedyParams()
					if seeded {
						p = sampling.Params{Temperature: 0.8, TopK: 50, TopP: 0.9, MinP: 0.02, RepetitionPenalty: 1, Logprobs: -1, Seed: int64(i), HasSeed: true}
					}
					ch, err := e.Submit(context.Background(), &engine.Request{ID: fmt.Sprint(i), Prompt: c.PromptIDs,
						MaxTokens: len(c.OutputIDs), Sampling: p, IgnoreEOS: true})
					if err != nil {
						t.Fatal(err)
					}
					chans[i] = ch
				}
				e.Start() // all queued first: the same schedule every run
				out := make([][]int32, len(cases))
				for i, ch := range chans {
					var last engine.Output
					for o := range ch {
						if o.HasToken {
							out[i] = append(out[i], o.Token)
						}
						last = o
					}
					if last.Finish != engine.FinishLength {
						t.Errorf("%s: request %d ended with %+v", name, i, last)
					}
				}
				if err := e.Close(); err != nil {
					t.Fatal(err)
				}
				if free := r.pool.FreeBlocks(); free != r.pool.NumBlocks() {
					t.Errorf("%s: %d of %d blocks free after Close", name, free, r.pool.NumBlocks())
				}
				return out
			}
			for _, seeded := range []bool{false, true} {
				on := run("overlap", r.be, false, seeded)
				off := run("no overlap", r.be, true, seeded)
				if diff := cmp.Diff(on, off); diff != "" {
					t.Errorf("seeded=%v: overlap on vs off (-on +off):\n%s", seeded, diff)
				}
				if !seeded {
					host := run("host sampling", hostOnly{r.be}, false, false)
					if diff := cmp.Diff(host, on); diff != "" {
						t.Errorf("device sampling vs host sampling (-host +device):\n%s", diff)
					}
					exact := 0
					for i, c := range cases {
						if slices.Equal(on[i], c.OutputIDs) {
							exact++
						}
					}
					fmt.Printf("ENGINE %s graphs=%v: %d/%d cases token-exact with Hugging Face's greedy tokens (bf16)\n", fx, !opts.NoGraphs, exact, len(cases))
				}
			}
		})
	}
}

// TestBenchOverlap (DCU_BENCH=1) times greedy decoding through the engine
// on the tiny fixture, whose steps are short enough for the host's share
// to show: host sampling (logits copied back), device sampling with the
// overlap scheduler off, and on. It prints tokens/s and asserts nothing.
func TestBenchOverlap(t *testing.T) {
	if os.Getenv("DCU_BENCH") == "" {
		t.Skip("DCU_BENCH not set")
	}
	// Graphs last: a fault there (see TestEngineGraphReplay) ends the
	// process's CUDA context.
	for _, graphs := range []bool{false, true} {
		t.Run(fmt.Sprintf("graphs=%v", graphs), func(t *testing.T) {
			benchOverlap(t, Options{NoGraphs: !graphs})
		})
	}
}

func benchOverlap(t *testing.T, opts Options) {
	r := newRigOpts(t, filepath.Join("..", "testdata", "models", "tiny-llama2"), 4096, opts)
	mc := r.m.Config
	const gen = 400
	for _, batch := range []int{1, 32} {
		for _, mode := range []string{"host", "device", "overlap"} {
			var be compute.Backend = r.be
			if mode == "host" {
				be = hostOnly{r.be}
			}
			e, err := engine.New(be, r.pool, engine.Config{MaxBatchSize: 64, MaxNumTokens: 2048, MaxSeqLen: mc.MaxPositionEmbeddings,
				EOSTokenIDs: mc.EOSTokenIDs, VocabSize: mc.VocabSize, DisableOverlap: mode != "overlap"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			e.Start()
			best := time.Duration(math.MaxInt64)
			for rep := 0; rep < 3; rep++ {
				chans := make([]<-chan engine.Output, batch)
				start := time.Now()
				for i := range chans {
					ch, err := e.Submit(context.Background(), &engine.Request{ID: fmt.Sprint(i), Prompt: []int32{1, int32(10 + i), 20, 30},
						MaxTokens: gen, Sampling: sampling.GreedyParams(), IgnoreEOS: true})
					if err != nil {
						t.Fatal(err)
					}
					chans[i] = ch
				}
				for i, ch := range chans {
					var last engine.Output
					for o := range ch {
						last = o
					}
					if last.Finish != engine.FinishLength {
						_ = e.Close()
						t.Fatalf("batch %d %s: request %d ended with %+v", batch, mode, i, last)
					}
				}
				best = min(best, time.Since(start))
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			fmt.Printf("BENCH overlap graphs=%v batch=%d mode=%s: %.0f tokens/s (%d x %d tokens in %v, best of 3)\n",
				!opts.NoGraphs, batch, mode, float64(batch*gen)/best.Seconds(), batch, gen, best)
		}
	}
}
