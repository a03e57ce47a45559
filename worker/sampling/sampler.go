package sampling

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
)

// greedyEps: temperatures below it are greedy (vLLM's _SAMPLING_EPS).
const greedyEps = 1e-5

// GreedyBelow: temperatures below it are greedy, in Sample, SampleRow and
// in every backend that samples on its side (compute.SampleParams).
const GreedyBelow = greedyEps

var (
	// ErrBadLogits is returned when the logits row does not have the
	// sampler's vocabulary size.
	ErrBadLogits = errors.New("sampling: bad logits row")
	// ErrNoCandidates is returned when every token is excluded: all logits
	// are -inf or NaN, or masked.
	ErrNoCandidates = errors.New("sampling: no token can be sampled")
)

// candidate is a token still in the running, with its (scaled) logit.
type candidate struct {
	id   int32
	prob float64 // unnormalised: exp((logit - max) / temperature)
}

// Sampler samples one sequence's tokens. Its randomness is counter-based:
// the draw for the sequence's i-th generated token (from 0) is
// Uniform(seed, i), with seed Params.Seed when HasSeed (so the same seed
// gives the same tokens whatever other sequences share the batch, and
// whether the host or a backend sampled them) and a random seed otherwise.
// A Sampler is not safe for concurrent use.
type Sampler struct {
	p     Params
	vocab int
	seed  uint64
	next  uint64 // index of the next token: the counter of its draw
	mask  []int32

	seen map[int32]int32 // scratch for the penalties
}

// Vocabulary-sized scratch is shared by all samplers rather than kept by
// each (a sampler per running sequence would otherwise hold megabytes).
var (
	candPool = sync.Pool{New: func() any { return new([]candidate) }}
	rawPool  = sync.Pool{New: func() any { return new([]float32) }}
)

// NewSampler makes a Sampler for one sequence over a vocabulary of vocab
// tokens. p should have passed Validate: out-of-range values never make
// Sample panic, but what they sample is unspecified.
func NewSampler(p Params, vocab int) *Sampler {
	seed := uint64(p.Seed)
	if !p.HasSeed {
		seed = rand.Uint64()
	}
	return &Sampler{p: p, vocab: vocab, seed: seed}
}

// Skip advances the draw counter as n calls of Sample would, so that a
// sequence resumed elsewhere after n sampled tokens, or whose tokens a
// backend sampled with Seed and Step, continues the same stream.
func (s *Sampler) Skip(n int) { s.next += uint64(n) }

// Seed is the seed of the sampler's draws: Params.Seed when HasSeed, else
// the random one it picked.
func (s *Sampler) Seed() uint64 { return s.seed }

// Step is the counter of the next draw: the number of Sample calls and
// skipped tokens so far.
func (s *Sampler) Step() uint64 { return s.next }

// Uniform is the counter-based random number behind every draw: a uniform
// float64 in [0, 1), a function of (seed, step) alone, so that the i-th
// token of a seeded sequence depends on nothing else. It hashes with the
// splitmix64 finalizer: x = fmix(fmix(seed ^ uniformKey) + (step+1) *
// golden), u = (x >> 11) * 2^-53. Backends that sample on their side
// compute the same function (cuda/kernels/sample.cu).
func Uniform(seed, step uint64) float64 {
	x := fmix64(fmix64(seed^uniformKey) + (step+1)*golden64)
	return float64(x>>11) * 0x1p-53
}

const (
	uniformKey = 0x5851f42d4c957f2d
	golden64   = 0x9e3779b97f4a7c15
)

// fmix64 is splitmix64's output function, a bijection of uint64 with full
// avalanche.
func fmix64(x uint64) uint64 {
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// DeviceCapable reports whether p needs nothing but temperature, top-k,
// top-p, min-p and a seed: what SampleRow does, and what a backend that
// samples on its side supports. Logprobs and the penalties need the host
// sampler (Sample).
func (p Params) DeviceCapable() bool {
	return p.Logprobs < 0 && (p.RepetitionPenalty == 1 || p.RepetitionPenalty <= 0) &&
		p.PresencePenalty == 0 && p.FrequencyPenalty == 0
}

// Params returns the sampler's parameters.
func (s *Sampler) Params() Params { return s.p }

// SetMask bans the given token ids from the following Sample calls, until
// the next SetMask (nil clears it). The engine bans EOS and stop token ids
// while fewer than min_tokens tokens exist. Masks act after the logprobs are
// taken, so reported logprobs do not show them. Ids outside the vocabulary
// are ignored. The slice is kept, not copied.
func (s *Sampler) SetMask(ids []int32) { s.mask = ids }

// Sample picks the next token from one row of logits (len vocab), which it
// modifies in place. prompt and generated are the sequence's tokens so far,
// for the penalties. The order is vLLM's and Hugging Face's:
//
//  1. NaN logits become -inf, +inf become the largest float32;
//  2. logprobs, when Params.Logprobs >= 0, are the log-softmax of these RAW
//     logits, before penalties, masks and temperature (vLLM's default
//     "raw_logprobs" mode);
//  3. repetition penalty over prompt and generated tokens (positive logits
//     divided by it, negative ones multiplied);
//  4. presence and frequency penalties over generated tokens
//     (logit -= presence*[count>0] + frequency*count);
//  5. the mask (SetMask) sets banned ids to -inf;
//  6. temperature 0: argmax, lowest id on ties; no randomness is drawn;
//  7. otherwise logits / temperature, then top-k, top-p (the smallest set
//     of most likely tokens whose probability sums to at least top_p, never
//     empty), min-p (relative to the most likely token), and one uniform
//     draw, Uniform(Seed(), Step()), over what is left.
//
// It returns ErrBadLogits for a row of the wrong length and ErrNoCandidates
// when no token is left to sample; it never panics on any float values.
func (s *Sampler) Sample(logits []float32, prompt, generated []int32) (int32, Logprobs, error) {
	if len(logits) != s.vocab || s.vocab == 0 {
		return 0, Logprobs{}, fmt.Errorf("%w: %d logits for a vocabulary of %d", ErrBadLogits, len(logits), s.vocab)
	}
	step := s.next
	s.next++
	sanitize(logits)

	var (
		lse float64
		top []TokenLogprob
		raw = logits // the raw row, for the sampled token's logprob
	)
	if s.p.Logprobs >= 0 {
		lse = logSumExp(logits)
		top = topLogprobs(logits, s.p.Logprobs, lse)
		if s.modifies() {
			buf := rawPool.Get().(*[]float32)
			*buf = append((*buf)[:0], logits...)
			defer rawPool.Put(buf)
			raw = *buf
		}
	}

	s.applyPenalties(logits, prompt, generated)
	for _, id := range s.mask {
		if id >= 0 && int(id) < len(logits) {
			logits[id] = float32(math.Inf(-1))
		}
	}

	tok, err := pick(logits, s.p, func() float64 { return Uniform(s.seed, step) })
	if err != nil {
		return 0, Logprobs{}, err
	}
	if s.p.Logprobs < 0 {
		return tok, Logprobs{}, nil
	}
	return tok, Logprobs{Logprob: float32(float64(raw[tok]) - lse), Top: top}, nil
}

// modifies reports whether penalties or the mask will change logits in place.
func (s *Sampler) modifies() bool {
	return len(s.mask) > 0 || s.repetitionActive() || s.p.PresencePenalty != 0 || s.p.FrequencyPenalty != 0
}

func (s *Sampler) repetitionActive() bool {
	return s.p.RepetitionPenalty > 0 && s.p.RepetitionPenalty != 1
}

// applyPenalties applies the repetition, presence and frequency penalties.
// Token ids outside the vocabulary are ignored.
func (s *Sampler) applyPenalties(logits []float32, prompt, generated []int32) {
	inVocab := func(id int32) bool { return id >= 0 && int(id) < len(logits) }
	if s.repetitionActive() {
		if s.seen == nil {
			s.seen = make(map[int32]int32)
		}
		clear(s.seen)
		for _, ids := range [][]int32{prompt, generated} {
			for _, id := range ids {
				if inVocab(id) {
					s.seen[id] = 1
				}
			}
		}
		r := s.p.RepetitionPenalty
		for id := range s.seen {
			if logits[id] > 0 {
				logits[id] /= r
			} else {
				logits[id] *= r
			}
		}
	}
	if s.p.PresencePenalty == 0 && s.p.FrequencyPenalty == 0 {
		return
	}
	if s.seen == nil {
		s.seen = make(map[int32]int32)
	}
	clear(s.seen)
	for _, id := range generated {
		if inVocab(id) {
			s.seen[id]++
		}
	}
	for id, n := range s.seen {
		logits[id] -= s.p.PresencePenalty + s.p.FrequencyPenalty*float32(n)
	}
}

// sanitize makes NaN logits -inf and +inf ones the largest float32.
func sanitize(logits []float32) {
	for i, l := range logits {
		if l != l {
			logits[i] = float32(math.Inf(-1))
		} else if l > math.MaxFloat32 {
			logits[i] = math.MaxFloat32
		}
	}
}

// SampleRow samples one token from a row of logits, which it modifies in
// place, with p's temperature, top-k, top-p and min-p and the uniform draw
// u in [0, 1): steps 1, 6 and 7 of Sampler.Sample, with no penalties, mask
// or logprobs (the rest of p is ignored). With u = Uniform(seed, step) it
// returns what a Sampler with that seed and nothing to penalise returns
// for its step-th token. It is the reference of backends that sample on
// their side (compute.Sampler); ErrNoCandidates when no token is left.
func SampleRow(logits []float32, p Params, u float64) (int32, error) {
	sanitize(logits)
	return pick(logits, p, func() float64 { return u })
}

// pick is greedy or random sampling of a sanitized row; draw is called
// once, and only for a random draw.
func pick(logits []float32, p Params, draw func() float64) (int32, error) {
	if p.Temperature < greedyEps {
		return argmax(logits)
	}
	return sampleRandom(logits, p, draw)
}

// sampleRandom runs temperature, top-k, top-p and min-p, then draws.
// Candidates carry unnormalised probabilities exp((l - max) / T), so the
// most likely has probability 1; tokens whose probability underflows to 0
// are out. The candidate order is deterministic, so a seed fixes the token.
func sampleRandom(logits []float32, p Params, draw func() float64) (int32, error) {
	maxL := float32(math.Inf(-1))
	for _, l := range logits {
		if l > maxL {
			maxL = l
		}
	}
	if math.IsInf(float64(maxL), -1) {
		return 0, ErrNoCandidates
	}
	invT, m := 1/float64(p.Temperature), float64(maxL)
	buf := candPool.Get().(*[]candidate)
	cands := (*buf)[:0]
	var total float64
	for i, l := range logits {
		if p := math.Exp((float64(l) - m) * invT); p > 0 {
			cands = append(cands, candidate{id: int32(i), prob: p})
			total += p
		}
	}
	defer func(all []candidate) {
		*buf = all[:0]
		candPool.Put(buf)
	}(cands)

	if k := p.TopK; k > 0 && k < len(cands) {
		selectTop(cands, k)
		cands = cands[:k]
		total = sum(cands)
	}
	if p.TopP < 1 {
		target := float64(p.TopP) * total
		cands = prefixFor(cands, target)
		slices.SortFunc(cands, order)
		var cum float64
		for i, c := range cands {
			cum += c.prob
			if cum >= target {
				cands = cands[:i+1]
				break
			}
		}
		total = sum(cands)
	}
	if minP := float64(p.MinP); minP > 0 {
		// Relative to the most likely token, whose probability is 1.
		kept := cands[:0]
		for _, c := range cands {
			if c.prob >= minP {
				kept = append(kept, c)
			}
		}
		cands = kept
		total = sum(cands)
	}
	if len(cands) == 0 || !(total > 0) {
		return 0, ErrNoCandidates
	}
	u := draw() * total
	var cum float64
	for _, c := range cands {
		cum += c.prob
		if u < cum {
			return c.id, nil
		}
	}
	return cands[len(cands)-1].id, nil
}

// order sorts candidates most likely first, lowest id first among equals.
func order(a, b candidate) int {
	if c := cmp.Compare(b.prob, a.prob); c != 0 {
		return c
	}
	return cmp.Compare(a.id, b.id)
}

func sum(cands []candidate) float64 {
	var t float64
	for _, c := range cands {
		t += c.prob
	}
	return t
}

// prefixFor returns the candidates above a threshold whose probabilities
// sum to at least target, compacted in place: a superset of the top-p set
// (which is a prefix of the sorted order, as is every such threshold set)
// that is cheap to sort. The threshold drops 16-fold until it is enough.
func prefixFor(cands []candidate, target float64) []candidate {
	for t := 1.0 / 16; t > 1e-300; t /= 16 {
		var s float64
		for _, c := range cands {
			if c.prob >= t {
				s += c.prob
			}
		}
		if s >= target {
			kept := cands[:0]
			for _, c := range cands {
				if c.prob >= t {
					kept = append(kept, c)
				}
			}
			return kept
		}
	}
	return cands
}

// selectTop moves the k best candidates (by order) into cands[:k], in
// linear expected time (quickselect with a deterministic pivot).
func selectTop(cands []candidate, k int) {
	lo, hi := 0, len(cands)-1
	for lo < hi {
		// Median of three as pivot, moved to hi.
		mid := lo + (hi-lo)/2
		if order(cands[mid], cands[lo]) < 0 {
			cands[mid], cands[lo] = cands[lo], cands[mid]
		}
		if order(cands[hi], cands[lo]) < 0 {
			cands[hi], cands[lo] = cands[lo], cands[hi]
		}
		if order(cands[mid], cands[hi]) < 0 {
			cands[mid], cands[hi] = cands[hi], cands[mid]
		}
		pivot := cands[hi]
		p := lo
		for i := lo; i < hi; i++ {
			if order(cands[i], pivot) < 0 {
				cands[i], cands[p] = cands[p], cands[i]
				p++
			}
		}
		cands[p], cands[hi] = cands[hi], cands[p]
		switch {
		case p == k-1 || p == k:
			return
		case p < k:
			lo = p + 1
		default:
			hi = p - 1
		}
	}
}

// argmax returns the id of the largest logit, the lowest id among equals;
// -inf logits are never chosen.
func argmax(logits []float32) (int32, error) {
	best, bestL := -1, float32(math.Inf(-1))
	for i, l := range logits {
		if l > bestL {
			best, bestL = i, l
		}
	}
	if best < 0 {
		return 0, ErrNoCandidates
	}
	return int32(best), nil
}

// logSumExp is log(sum(exp(l))) in float64; -inf for an all -inf row.
func logSumExp(logits []float32) float64 {
	m := math.Inf(-1)
	for _, l := range logits {
		m = max(m, float64(l))
	}
	if math.IsInf(m, -1) {
		return m
	}
	var sum float64
	for _, l := range logits {
		sum += math.Exp(float64(l) - m)
	}
	return m + math.Log(sum)
}

// topLogprobs returns the k largest logits as log probabilities, most
// likely first, lowest id first among equals.
func topLogprobs(logits []float32, k int, lse float64) []TokenLogprob {
	if k <= 0 {
		return nil
	}
	k = min(k, len(logits))
	top := make([]TokenLogprob, 0, k)
	// better reports whether (id a, logit la) ranks before (id b, logit lb).
	better := func(la float32, a int32, lb float32, b int32) bool {
		return la > lb || (la == lb && a < b)
	}
	for i, l := range logits {
		id := int32(i)
		if len(top) == k && !better(l, id, top[k-1].Logprob, top[k-1].Token) {
			continue
		}
		if len(top) < k {
			top = append(top, TokenLogprob{})
		}
		j := len(top) - 1
		for j > 0 && better(l, id, top[j-1].Logprob, top[j-1].Token) {
			top[j] = top[j-1]
			j--
		}
		top[j] = TokenLogprob{Token: id, Logprob: l}
	}
	for i := range top {
		top[i].Logprob = float32(float64(top[i].Logprob) - lse)
	}
	return top
}
