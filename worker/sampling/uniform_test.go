package sampling

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestUniform: draws lie in [0, 1), depend on (seed, step) alone, and are
// spread evenly (mean and a 10-bin histogram over 100k draws).
func TestUniform(t *testing.T) {
	const n = 100000
	var sum float64
	var bins [10]int
	for i := uint64(0); i < n; i++ {
		u := Uniform(42, i)
		if u < 0 || u >= 1 {
			t.Fatalf("Uniform(42, %d) = %v, outside [0, 1)", i, u)
		}
		if u != Uniform(42, i) {
			t.Fatalf("Uniform(42, %d) changed between calls", i)
		}
		sum += u
		bins[int(u*10)]++
	}
	if mean := sum / n; math.Abs(mean-0.5) > 0.005 {
		t.Errorf("mean %v, want 0.5", mean)
	}
	for b, c := range bins {
		if math.Abs(float64(c)-n/10) > 5*math.Sqrt(n/10) {
			t.Errorf("bin %d: %d draws, want about %d", b, c, n/10)
		}
	}
	if Uniform(1, 0) == Uniform(2, 0) || Uniform(1, 0) == Uniform(1, 1) {
		t.Errorf("neighbouring seeds or steps gave the same draw")
	}
}

// TestSampleRowIsSample: a seeded Sampler with nothing to penalise picks,
// for its i-th token, what SampleRow picks with Uniform(seed, i): the
// contract that lets a backend sample a sequence's tokens instead.
func TestSampleRowIsSample(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, p := range []Params{
		{Temperature: 0.8, TopP: 0.9, TopK: 20, MinP: 0.02, RepetitionPenalty: 1, Logprobs: -1},
		{Temperature: 1.3, TopP: 1, RepetitionPenalty: 1, Logprobs: -1},
		{Temperature: 0, TopP: 1, RepetitionPenalty: 1, Logprobs: -1},
	} {
		p.Seed, p.HasSeed = 1234, true
		if !p.DeviceCapable() {
			t.Fatalf("%+v: not DeviceCapable", p)
		}
		s := NewSampler(p, 200)
		s.Skip(3) // as after three first tokens sampled elsewhere
		for i := uint64(3); i < 200; i++ {
			row := randomLogits(r, 200)
			want, err := SampleRow(slices.Clone(row), p, Uniform(uint64(p.Seed), i))
			if err != nil {
				t.Fatal(err)
			}
			if s.Step() != i {
				t.Fatalf("Step() = %d before token %d", s.Step(), i)
			}
			got, _, err := s.Sample(row, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("%+v token %d: Sample %d, SampleRow %d", p, i, got, want)
			}
		}
	}
}

func TestDeviceCapable(t *testing.T) {
	for _, tc := range []struct {
		edit func(*Params)
		want bool
	}{
		{func(*Params) {}, true},
		{func(p *Params) { p.Temperature, p.TopK, p.TopP, p.MinP = 0.5, 5, 0.5, 0.1 }, true},
		{func(p *Params) { p.Logprobs = 0 }, false},
		{func(p *Params) { p.RepetitionPenalty = 1.1 }, false},
		{func(p *Params) { p.PresencePenalty = 0.5 }, false},
		{func(p *Params) { p.FrequencyPenalty = -0.5 }, false},
	} {
		p := DefaultParams()
		tc.edit(&p)
		if got := p.DeviceCapable(); got != tc.want {
			t.Errorf("%+v: DeviceCapable %v, want %v", p, got, tc.want)
		}
	}
}
