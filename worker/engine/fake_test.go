package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"disagg/worker/compute"
	"disagg/worker/kvcache"
	"disagg/worker/sampling"
)

// The fake backend is a deterministic model whose next-token logits depend
// on the whole history, carried through the KV pool: each position's slot
// stores [token, position, hash lo, hash hi], where the hash chains the
// previous position's stored hash with the new token. A block-table bug
// (wrong block, block shared or freed too early, lost KV after preemption)
// changes the hash, and so the tokens, or trips the position check.

const (
	fakeVocab = 64
	fakeTPB   = 4
)

// fakeLayout is the pool layout the fake needs (one layer, 4 floats a token).
func fakeLayout() kvcache.Layout {
	return kvcache.Layout{Layers: 1, KVHeads: 1, HeadDim: 4, TokensPerBlock: fakeTPB, DType: kvcache.Float32}
}

func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// chain is the hash of a history after token tok at position pos.
func chain(prev uint32, tok int32, pos int) uint32 {
	return uint32(mix(uint64(prev)<<32 ^ uint64(uint32(tok))<<8 ^ uint64(pos)))
}

// fakeLogitsFor fills row with the logits after a history of hash h.
func fakeLogitsFor(h uint32, row []float32) {
	for i := range row {
		row[i] = float32(mix(uint64(h)*1000003+uint64(i))%4096) / 512
	}
}

// refHash is the hash of a whole history, computed without the pool.
func refHash(tokens []int32) uint32 {
	var h uint32
	for p, t := range tokens {
		h = chain(h, t, p)
	}
	return h
}

// refGenerate is what a correct engine produces for r on the fake model
// without EOS and stop handling: sampling with r.Sampling over n steps.
func refGenerate(t testing.TB, r *Request, n int) []int32 {
	t.Helper()
	s := sampling.NewSampler(r.Sampling, fakeVocab)
	toks := append([]int32(nil), r.Prompt...)
	row := make([]float32, fakeVocab)
	for i := 0; i < n; i++ {
		fakeLogitsFor(refHash(toks), row)
		tok, _, err := s.Sample(row, r.Prompt, toks[len(r.Prompt):])
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	return toks[len(r.Prompt):]
}

// fakeBackend implements compute.Backend over a float32 host pool and checks
// every batch against the engine's limits and the block-table contract.
type fakeBackend struct {
	pool     *kvcache.Pool
	data     []float32
	maxSeqs  int
	maxToks  int
	tpb      int
	slotSize int

	// before, when set, runs at the start of every Forward (to gate steps
	// or inject failures); its error fails the step.
	before func(ctx context.Context, step int, b *compute.Batch) error

	mu         sync.Mutex
	steps      int
	batches    []batchRecord
	violations []string
	logits     compute.Logits
}

// batchRecord summarises one batch for assertions.
type batchRecord struct {
	seqs   int
	tokens int
	starts []int
	lens   []int
}

func newFake(t testing.TB, pool *kvcache.Pool, cfg Config) *fakeBackend {
	t.Helper()
	data, err := pool.HostFloat32()
	if err != nil {
		t.Fatal(err)
	}
	return &fakeBackend{pool: pool, data: data, maxSeqs: cfg.MaxBatchSize, maxToks: cfg.MaxNumTokens,
		tpb: pool.Layout().TokensPerBlock, slotSize: pool.Layout().TokenElems()}
}

var _ compute.Backend = (*fakeBackend)(nil)

func (f *fakeBackend) Name() string { return "fake" }
func (f *fakeBackend) Close() error { return nil }

func (f *fakeBackend) violate(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	f.mu.Lock()
	f.violations = append(f.violations, msg)
	f.mu.Unlock()
	return fmt.Errorf("%w: %s", compute.ErrBadBatch, msg)
}

// slot returns the 4 floats of position pos of a sequence with blocks.
func (f *fakeBackend) slot(blocks []int32, pos int) []float32 {
	b := int(blocks[pos/f.tpb])
	off := b*f.pool.Layout().BlockElems() + (pos%f.tpb)*f.slotSize
	return f.data[off : off+4]
}

func (f *fakeBackend) Forward(ctx context.Context, b *compute.Batch) (*compute.Logits, error) {
	f.mu.Lock()
	f.steps++
	step := f.steps
	rec := batchRecord{seqs: len(b.Seqs), tokens: b.NumTokens()}
	for _, s := range b.Seqs {
		rec.starts = append(rec.starts, s.Start)
		rec.lens = append(rec.lens, len(s.Tokens))
	}
	f.batches = append(f.batches, rec)
	before := f.before
	f.mu.Unlock()
	if before != nil {
		if err := before(ctx, step, b); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	if len(b.Seqs) == 0 || len(b.Seqs) > f.maxSeqs {
		return nil, f.violate("step %d: %d sequences, limit %d", step, len(b.Seqs), f.maxSeqs)
	}
	if n := b.NumTokens(); n > f.maxToks {
		return nil, f.violate("step %d: %d tokens, limit %d", step, n, f.maxToks)
	}
	owner := map[int32]int{}
	rows := 0
	for i, s := range b.Seqs {
		if len(s.Tokens) == 0 || s.Start < 0 || len(s.Blocks)*f.tpb < s.Start+len(s.Tokens) {
			return nil, f.violate("step %d seq %d: %d tokens at %d with %d blocks", step, i, len(s.Tokens), s.Start, len(s.Blocks))
		}
		for _, blk := range s.Blocks {
			if !f.pool.InUse(blk) {
				return nil, f.violate("step %d seq %d: block %d is not allocated", step, i, blk)
			}
			if j, ok := owner[blk]; ok {
				return nil, f.violate("step %d: block %d shared by seqs %d and %d", step, blk, j, i)
			}
			owner[blk] = i
		}
		if s.Logits != compute.LogitsNone {
			rows++
		}
	}

	f.logits = compute.Logits{Vocab: fakeVocab, Data: make([]float32, rows*fakeVocab)}
	r := 0
	for i, s := range b.Seqs {
		var h uint32
		if s.Start > 0 {
			prev := f.slot(s.Blocks, s.Start-1)
			if int(prev[1]) != s.Start-1 {
				return nil, f.violate("step %d seq %d: slot of position %d holds position %v", step, i, s.Start-1, prev[1])
			}
			h = uint32(prev[2]) | uint32(prev[3])<<16
		}
		for j, tok := range s.Tokens {
			if tok < 0 || tok >= fakeVocab {
				return nil, f.violate("step %d seq %d: token %d", step, i, tok)
			}
			pos := s.Start + j
			h = chain(h, tok, pos)
			sl := f.slot(s.Blocks, pos)
			sl[0], sl[1], sl[2], sl[3] = float32(tok), float32(pos), float32(h&0xffff), float32(h>>16)
		}
		if s.Logits == compute.LogitsLast {
			fakeLogitsFor(h, f.logits.Row(r))
			r++
		}
	}
	return &f.logits, nil
}

// check reports the violations the fake saw.
func (f *fakeBackend) check(t testing.TB) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.violations {
		t.Errorf("backend saw: %s", v)
	}
}

func (f *fakeBackend) records() []batchRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]batchRecord(nil), f.batches...)
}

// errInjected is the error tests make the fake return.
var errInjected = errors.New("injected failure")
