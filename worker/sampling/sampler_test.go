package sampling

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	negInf = float32(math.Inf(-1))
	nan    = float32(math.NaN())
)

func seeded(p Params, seed int64) Params {
	p.Seed, p.HasSeed = seed, true
	return p
}

func randomLogits(r *rand.Rand, n int) []float32 {
	l := make([]float32, n)
	for i := range l {
		l[i] = float32(r.NormFloat64() * 3)
	}
	return l
}

// refArgmax is the greedy answer computed independently: largest value,
// lowest index among equals.
func refArgmax(l []float32) int32 {
	best := 0
	for i := range l {
		if l[i] > l[best] {
			best = i
		}
	}
	return int32(best)
}

// refLogSoftmax is log-softmax in float64.
func refLogSoftmax(l []float32) []float64 {
	m := math.Inf(-1)
	for _, v := range l {
		m = math.Max(m, float64(v))
	}
	var s float64
	for _, v := range l {
		s += math.Exp(float64(v) - m)
	}
	out := make([]float64, len(l))
	for i, v := range l {
		out[i] = float64(v) - m - math.Log(s)
	}
	return out
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Params)
		field string // "" when valid
	}{
		{"default", func(*Params) {}, ""},
		{"greedy", func(p *Params) { p.Temperature = 0 }, ""},
		{"all set", func(p *Params) {
			*p = Params{Temperature: 2, TopP: 0.5, TopK: 40, MinP: 1, RepetitionPenalty: 2,
				PresencePenalty: -2, FrequencyPenalty: 2, Logprobs: MaxLogprobs}
		}, ""},
		{"top_k -1", func(p *Params) { p.TopK = -1 }, ""},
		{"temperature high", func(p *Params) { p.Temperature = 2.5 }, "temperature"},
		{"temperature negative", func(p *Params) { p.Temperature = -0.1 }, "temperature"},
		{"temperature NaN", func(p *Params) { p.Temperature = nan }, "temperature"},
		{"top_p zero", func(p *Params) { p.TopP = 0 }, "top_p"},
		{"top_p high", func(p *Params) { p.TopP = 1.01 }, "top_p"},
		{"top_k", func(p *Params) { p.TopK = -2 }, "top_k"},
		{"min_p", func(p *Params) { p.MinP = 1.5 }, "min_p"},
		{"repetition zero", func(p *Params) { p.RepetitionPenalty = 0 }, "repetition_penalty"},
		{"repetition high", func(p *Params) { p.RepetitionPenalty = 3 }, "repetition_penalty"},
		{"presence", func(p *Params) { p.PresencePenalty = -2.5 }, "presence_penalty"},
		{"frequency", func(p *Params) { p.FrequencyPenalty = 2.5 }, "frequency_penalty"},
		{"logprobs", func(p *Params) { p.Logprobs = MaxLogprobs + 1 }, "logprobs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := DefaultParams()
			tt.edit(&p)
			err := p.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidParams) {
				t.Fatalf("Validate = %v, want ErrInvalidParams", err)
			}
			if !strings.Contains(err.Error(), tt.field+" is") || !strings.Contains(err.Error(), "must be in") {
				t.Errorf("Validate = %q, want it to name %s and its range", err, tt.field)
			}
		})
	}
}

func TestGreedy(t *testing.T) {
	tests := []struct {
		name   string
		logits []float32
		want   int32
	}{
		{"single max", []float32{0, 3, 1, -2}, 1},
		{"tie takes lowest id", []float32{1, 5, 5, 5}, 1},
		{"negatives", []float32{-3, -1, -2}, 1},
		{"-inf skipped", []float32{negInf, -100, negInf}, 1},
		{"NaN is -inf", []float32{nan, 0.5, nan, 0.25}, 1},
		{"+inf wins", []float32{1, float32(math.Inf(1)), 2}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSampler(GreedyParams(), len(tt.logits))
			got, _, err := s.Sample(slices.Clone(tt.logits), nil, nil)
			if err != nil || got != tt.want {
				t.Errorf("Sample = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	s := NewSampler(GreedyParams(), 4)
	if _, _, err := s.Sample(make([]float32, 3), nil, nil); !errors.Is(err, ErrBadLogits) {
		t.Errorf("short row: err = %v, want ErrBadLogits", err)
	}
	for _, p := range []Params{GreedyParams(), DefaultParams()} {
		s := NewSampler(p, 3)
		if _, _, err := s.Sample([]float32{negInf, nan, negInf}, nil, nil); !errors.Is(err, ErrNoCandidates) {
			t.Errorf("temperature %v, all -inf: err = %v, want ErrNoCandidates", p.Temperature, err)
		}
		s.SetMask([]int32{0, 1, 2})
		if _, _, err := s.Sample([]float32{1, 2, 3}, nil, nil); !errors.Is(err, ErrNoCandidates) {
			t.Errorf("temperature %v, all masked: err = %v, want ErrNoCandidates", p.Temperature, err)
		}
	}
}

// TestGreedyLimits: near-zero temperature, top-k 1 and a tiny top-p all
// give the argmax, on many random rows.
func TestGreedyLimits(t *testing.T) {
	variants := map[string]func(*Params){
		"temperature 1e-6": func(p *Params) { p.Temperature = 1e-6 },
		"temperature 1e-3": func(p *Params) { p.Temperature = 1e-3 },
		"top_k 1":          func(p *Params) { p.TopK = 1 },
		"top_p 1e-6":       func(p *Params) { p.TopP = 1e-6 },
		"min_p 1":          func(p *Params) { p.MinP = 1 },
	}
	for name, edit := range variants {
		t.Run(name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			p := DefaultParams()
			edit(&p)
			s := NewSampler(seeded(p, 7), 100)
			for i := 0; i < 300; i++ {
				l := randomLogits(r, 100)
				want := refArgmax(l)
				got, _, err := s.Sample(l, nil, nil)
				if err != nil || got != want {
					t.Fatalf("row %d: Sample = %d, %v; want argmax %d", i, got, err, want)
				}
			}
		})
	}
}

// TestDistribution draws 20k tokens at temperature 1 from fixed logits
// (fixed seed, so the test is deterministic) and checks every token's count
// against the expected probability within 3 sigma.
func TestDistribution(t *testing.T) {
	logits := []float32{1.0, 0.5, -0.25, 0.0}
	probs := func(keep []bool, temp float64) []float64 {
		out := make([]float64, len(logits))
		var s float64
		for i, l := range logits {
			if keep[i] {
				out[i] = math.Exp(float64(l) / temp)
				s += out[i]
			}
		}
		for i := range out {
			out[i] /= s
		}
		return out
	}
	all := []bool{true, true, true, true}
	// Softmax at T=1: 0.4423 0.2683 0.1267 0.1627 (ids 0..3; order 0,1,3,2).
	tests := []struct {
		name string
		p    Params
		want []float64
	}{
		{"temperature 1", DefaultParams(), probs(all, 1)},
		{"temperature 0.5", func() Params { p := DefaultParams(); p.Temperature = 0.5; return p }(), probs(all, 0.5)},
		{"top_k 2", func() Params { p := DefaultParams(); p.TopK = 2; return p }(), probs([]bool{true, true, false, false}, 1)},
		// Cumulative 0.442, 0.711, 0.873: top_p 0.75 keeps ids 0, 1, 3 and
		// top_p 0.7 ids 0, 1.
		{"top_p 0.75", func() Params { p := DefaultParams(); p.TopP = 0.75; return p }(), probs([]bool{true, true, false, true}, 1)},
		{"top_p 0.7", func() Params { p := DefaultParams(); p.TopP = 0.7; return p }(), probs([]bool{true, true, false, false}, 1)},
		// Ratios to the max: 1, 0.607, 0.287, 0.368: min_p 0.3 drops id 2.
		{"min_p 0.3", func() Params { p := DefaultParams(); p.MinP = 0.3; return p }(), probs([]bool{true, true, false, true}, 1)},
	}
	const n = 20000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSampler(seeded(tt.p, 42), len(logits))
			counts := make([]int, len(logits))
			for i := 0; i < n; i++ {
				tok, _, err := s.Sample(slices.Clone(logits), nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				counts[tok]++
			}
			for i, p := range tt.want {
				mean := n * p
				sigma := math.Sqrt(n * p * (1 - p))
				if math.Abs(float64(counts[i])-mean) > 3*sigma || (p == 0 && counts[i] != 0) {
					t.Errorf("token %d: %d draws, want %.0f ± %.0f (3 sigma)", i, counts[i], mean, 3*sigma)
				}
			}
		})
	}
}

func TestSeed(t *testing.T) {
	run := func(p Params, extra bool) []int32 {
		r := rand.New(rand.NewPCG(3, 4))
		s := NewSampler(p, 50)
		other := NewSampler(seeded(DefaultParams(), 99), 50)
		var out []int32
		for i := 0; i < 100; i++ {
			l := randomLogits(r, 50)
			if extra { // another sequence sampling in between must not matter
				if _, _, err := other.Sample(slices.Clone(l), nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			tok, _, err := s.Sample(l, nil, out)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, tok)
		}
		return out
	}
	a := run(seeded(DefaultParams(), 1234), false)
	b := run(seeded(DefaultParams(), 1234), true)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("same seed gave different tokens (-first +second):\n%s", diff)
	}
	if c := run(seeded(DefaultParams(), 1235), false); cmp.Equal(a, c) {
		t.Errorf("seeds 1234 and 1235 gave the same 100 tokens")
	}
	if c, d := run(DefaultParams(), false), run(DefaultParams(), false); cmp.Equal(c, d) {
		t.Errorf("two unseeded samplers gave the same 100 tokens")
	}
}

// TestPenalties checks the logits after penalties and masks against values
// computed by hand. Temperature 0 leaves them as the penalties left them.
func TestPenalties(t *testing.T) {
	base := []float32{2, -1, 0.5, 3, -2}
	prompt := []int32{0, 1, 99 /* out of vocabulary: ignored */}
	generated := []int32{2, 2, 1, -1 /* ignored */}
	tests := []struct {
		name string
		edit func(*Params)
		mask []int32
		want []float32
		tok  int32
	}{
		{"none", func(*Params) {}, nil, []float32{2, -1, 0.5, 3, -2}, 3},
		// Seen ids {0, 1, 2}: positive / 2, negative * 2.
		{"repetition 2", func(p *Params) { p.RepetitionPenalty = 2 }, nil, []float32{1, -2, 0.25, 3, -2}, 3},
		{"repetition 0.5", func(p *Params) { p.RepetitionPenalty = 0.5 }, nil, []float32{4, -0.5, 1, 3, -2}, 0},
		// Generated counts {2: 2, 1: 1}; the prompt does not count.
		{"presence 0.5", func(p *Params) { p.PresencePenalty = 0.5 }, nil, []float32{2, -1.5, 0, 3, -2}, 3},
		{"frequency 0.25", func(p *Params) { p.FrequencyPenalty = 0.25 }, nil, []float32{2, -1.25, 0, 3, -2}, 3},
		{"negative presence", func(p *Params) { p.PresencePenalty = -2 }, nil, []float32{2, 1, 2.5, 3, -2}, 3},
		// 0.25 - 0.5 - 2*0.25 = -0.75; -2 - 0.5 - 0.25 = -2.75.
		{"all three", func(p *Params) {
			p.RepetitionPenalty, p.PresencePenalty, p.FrequencyPenalty = 2, 0.5, 0.25
		}, nil, []float32{1, -2.75, -0.75, 3, -2}, 3},
		{"mask", func(*Params) {}, []int32{3, 7, -1}, []float32{2, -1, 0.5, negInf, -2}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := GreedyParams()
			p.Logprobs = 0
			tt.edit(&p)
			s := NewSampler(p, len(base))
			s.SetMask(tt.mask)
			l := slices.Clone(base)
			tok, lp, err := s.Sample(l, prompt, generated)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, l, cmpopts.EquateApprox(0, 1e-6)); diff != "" {
				t.Errorf("logits after penalties (-want +got):\n%s", diff)
			}
			if tok != tt.tok {
				t.Errorf("token = %d, want %d", tok, tt.tok)
			}
			// Logprobs stay raw: the log-softmax of base, not of the penalised row.
			if want := refLogSoftmax(base)[tok]; math.Abs(float64(lp.Logprob)-want) > 1e-5 {
				t.Errorf("logprob = %v, want raw %v", lp.Logprob, want)
			}
		})
	}
}

func TestLogprobs(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, k := range []int{-1, 0, 1, 5, MaxLogprobs} {
		for _, temp := range []float32{0, 1} {
			p := seeded(DefaultParams(), 11)
			p.Temperature, p.Logprobs = temp, k
			p.RepetitionPenalty, p.PresencePenalty = 1.3, 0.4
			s := NewSampler(p, 64)
			s.SetMask([]int32{5})
			for row := 0; row < 20; row++ {
				raw := randomLogits(r, 64)
				raw[9] = raw[12] // a tie, to check the order of equals
				ref := refLogSoftmax(raw)
				tok, lp, err := s.Sample(slices.Clone(raw), []int32{1, 2, 3}, []int32{int32(row)})
				if err != nil {
					t.Fatal(err)
				}
				if k < 0 {
					if diff := cmp.Diff(Logprobs{}, lp); diff != "" {
						t.Fatalf("logprobs %d: want none (-want +got):\n%s", k, diff)
					}
					continue
				}
				if math.Abs(float64(lp.Logprob)-ref[tok]) > 1e-5 {
					t.Errorf("k=%d T=%v row %d: logprob(%d) = %v, want %v", k, temp, row, tok, lp.Logprob, ref[tok])
				}
				ids := make([]int32, len(raw))
				for i := range ids {
					ids[i] = int32(i)
				}
				slices.SortStableFunc(ids, func(a, b int32) int {
					switch {
					case ref[a] > ref[b]:
						return -1
					case ref[a] < ref[b]:
						return 1
					}
					return 0
				})
				var want []TokenLogprob
				for _, id := range ids[:k] {
					want = append(want, TokenLogprob{Token: id, Logprob: float32(ref[id])})
				}
				if diff := cmp.Diff(want, lp.Top, cmpopts.EquateApprox(0, 1e-5), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("k=%d T=%v row %d: top (-want +got):\n%s", k, temp, row, diff)
				}
			}
		}
	}
}

// FuzzSample feeds arbitrary float bit patterns (NaN, ±inf, huge, tiny)
// and parameters: Sample must never panic, and a token it returns must be in
// the vocabulary and not excluded.
func FuzzSample(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0x40}, float32(1), float32(1), int8(0), float32(0), int8(2), uint8(1))
	f.Add([]byte{0, 0, 0xc0, 0x7f, 0, 0, 0x80, 0xff, 0, 0, 0x80, 0x7f}, float32(0.7), float32(0.5), int8(1), float32(0.1), int8(-1), uint8(0))
	f.Add([]byte{0xff, 0xff, 0x7f, 0x7f, 0xff, 0xff, 0x7f, 0xff}, float32(2), float32(0.01), int8(-1), float32(1), int8(20), uint8(3))
	f.Fuzz(func(t *testing.T, raw []byte, temp, topP float32, topK int8, minP float32, logprobs int8, maskID uint8) {
		n := len(raw) / 4
		if n == 0 || n > 512 {
			return
		}
		logits := make([]float32, n)
		for i := range logits {
			logits[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		p := Params{Temperature: temp, TopP: topP, TopK: int(topK), MinP: minP, RepetitionPenalty: 1.5,
			PresencePenalty: 0.5, FrequencyPenalty: -0.5, Logprobs: int(logprobs), Seed: 1, HasSeed: true}
		s := NewSampler(p, n)
		s.SetMask([]int32{int32(maskID)})
		tok, lp, err := s.Sample(logits, []int32{0, int32(n) - 1}, []int32{int32(maskID), 0})
		if err != nil {
			if !errors.Is(err, ErrNoCandidates) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if tok < 0 || int(tok) >= n {
			t.Fatalf("token %d outside vocabulary %d", tok, n)
		}
		if tok == int32(maskID) || math.IsInf(float64(logits[tok]), -1) {
			t.Fatalf("token %d was excluded (logit %v, mask %d)", tok, logits[tok], maskID)
		}
		if int(logprobs) > 0 && len(lp.Top) != min(int(logprobs), n) {
			t.Fatalf("%d top logprobs, want %d", len(lp.Top), min(int(logprobs), n))
		}
	})
}

func BenchmarkSample(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	base := randomLogits(r, 32000)
	row := make([]float32, len(base))
	for name, p := range map[string]Params{
		"greedy":      GreedyParams(),
		"temperature": DefaultParams(),
		"top_p 0.9":   func() Params { p := DefaultParams(); p.TopP = 0.9; return p }(),
		"logprobs 5":  func() Params { p := GreedyParams(); p.Logprobs = 5; return p }(),
	} {
		b.Run(name, func(b *testing.B) {
			s := NewSampler(seeded(p, 1), len(base))
			for b.Loop() {
				copy(row, base)
				if _, _, err := s.Sample(row, nil, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSkip: Skip(n) leaves a seeded sampler where n random samples would,
// so a sequence resumed after n tokens continues the same stream.
func TestSkip(t *testing.T) {
	p := Params{Temperature: 0.9, TopP: 0.95, RepetitionPenalty: 1, Seed: 99, HasSeed: true, Logprobs: -1}
	row := func(i int) []float32 {
		r := make([]float32, 50)
		for j := range r {
			r[j] = float32((i*31+j*17)%23) / 7
		}
		return r
	}
	a, b := NewSampler(p, 50), NewSampler(p, 50)
	for i := 0; i < 3; i++ {
		if _, _, err := a.Sample(row(i), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	b.Skip(3)
	for i := 3; i < 10; i++ {
		ta, _, err := a.Sample(row(i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		tb, _, err := b.Sample(row(i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ta != tb {
			t.Fatalf("step %d: %d after sampling, %d after Skip", i, ta, tb)
		}
	}
}
