//go:build cuda

package cuda

/*
#include "dcu.h"
#include "sample.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"disagg/worker/compute"
	"disagg/worker/kvcache"
	"disagg/worker/model"
	"disagg/worker/safetensors"
)

// Backend runs model steps on one GPU: weights uploaded once as bf16, KV in
// a device pool, one C call (dcu_forward) per step that enqueues every
// kernel and GEMM of the step on the device's stream. With a float32 pool it
// runs in the fp32 mode instead: weights, GEMM inputs and KV in fp32 and the
// plain kernels, whose results follow an fp32 reference to rounding (small
// models and checks; much slower).
type Backend struct {
	dev    *Device
	cfg    *model.Config
	pool   *kvcache.Pool
	layout kvcache.Layout
	m      *C.dcu_model
	f32    bool // the fp32 mode (a float32 pool)

	ints   []int32
	logits []float32
	argmax []int32
	closed bool

	// smp samples launched steps on the device (sample.go), made by the
	// first Launch. launchedRows is the row count of the last step, when
	// Launch ran it (the rows the next batch's negative token ids may
	// name), else -1.
	smp          *C.dcu_sampler
	launchedRows int
}

var _ compute.Backend = (*Backend)(nil)

// NewDevicePool allocates a KV pool of numBlocks blocks in device memory.
func NewDevicePool(dev *Device, layout kvcache.Layout, numBlocks int) (*kvcache.Pool, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	mem, err := dev.Alloc(numBlocks * layout.BlockBytes())
	if err != nil {
		return nil, err
	}
	p, err := kvcache.NewPool(layout, numBlocks, mem)
	if err != nil {
		_ = mem.Close()
		return nil, err
	}
	return p, nil
}

// New uploads m's weights to the GPU that holds pool's memory (a *Memory of
// this package, in LayoutFor's layout with bf16 or float32 elements) and
// returns the backend. m may be closed once New returns.
func New(m *model.Model, pool *kvcache.Pool, opts Options) (*Backend, error) {
	cfg := m.Config
	mem, ok := pool.Memory().(*Memory)
	if !ok || !pool.Memory().Device() {
		return nil, fmt.Errorf("cuda: the KV pool must be in device memory from cuda.Device.Alloc, got %T", pool.Memory())
	}
	dt := pool.Layout().DType
	if dt != kvcache.BFloat16 && dt != kvcache.Float32 {
		return nil, fmt.Errorf("cuda: KV pool of %v elements: the CUDA backend takes bfloat16 or float32", dt)
	}
	want := LayoutFor(cfg, pool.Layout().TokensPerBlock, dt)
	if pool.Layout() != want {
		return nil, fmt.Errorf("cuda: pool layout %+v, want %+v", pool.Layout(), want)
	}
	b := &Backend{cfg: cfg, pool: pool, layout: want, dev: opts.Device, launchedRows: -1, f32: dt == kvcache.Float32}
	if b.dev == nil {
		b.dev = mem.dev
	}
	if b.dev != mem.dev {
		return nil, errors.New("cuda: the KV pool's memory is on another Device")
	}
	invf := cfg.InvFreq()
	inv := make([]float32, len(invf))
	for i, f := range invf {
		inv[i] = float32(f)
	}
	c := C.dcu_config{
		vocab: C.int(cfg.VocabSize), hidden: C.int(cfg.HiddenSize), inter: C.int(cfg.IntermediateSize),
		layers: C.int(cfg.NumLayers), heads: C.int(cfg.NumHeads), kv_heads: C.int(cfg.NumKVHeads),
		head_dim: C.int(cfg.HeadDim), tokens_per_block: C.int(want.TokensPerBlock),
		num_blocks: C.int(pool.NumBlocks()), eps: C.float(cfg.RMSNormEps),
	}
	if cfg.TieWordEmbeddings {
		c.tied = 1
	}
	if !opts.NoGraphs {
		c.graphs = 1
	}
	if b.f32 {
		c.fp32 = 1
	}
	ctx := context.Background()
	err := b.dev.Do(ctx, func() error {
		return call(func(st *C.dcu_status) C.int {
			return C.dcu_model_create(&c, mem.ptr, C.size_t(mem.size), (*C.float)(unsafe.Pointer(&inv[0])), &b.m, st)
		})
	})
	if err == nil {
		err = b.upload(ctx, m.Weights)
	}
	if err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

// bf16Bytes returns t's data as bf16 bytes (converted when stored otherwise).
func bf16Bytes(t safetensors.Tensor) ([]byte, error) {
	if t.DType == safetensors.BF16 {
		return t.Data, nil
	}
	f, err := t.Float32()
	if err != nil {
		return nil, err
	}
	u := make([]uint16, len(f))
	bf16(u, f)
	return unsafe.Slice((*byte)(unsafe.Pointer(&u[0])), 2*len(u)), nil
}

// f32Bytes returns t's data as float32 bytes (the fp32 mode).
func f32Bytes(t safetensors.Tensor) ([]byte, error) {
	f, err := t.Float32()
	if err != nil {
		return nil, err
	}
	if len(f) == 0 {
		return nil, nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f)), nil
}

func (b *Backend) upload(ctx context.Context, w *model.Weights) error {
	type item struct {
		kind  C.int
		layer int
		t     safetensors.Tensor
	}
	items := []item{{C.DCU_W_EMBED, -1, w.Embed}, {C.DCU_W_NORM, -1, w.Norm}}
	if !b.cfg.TieWordEmbeddings {
		items = append(items, item{C.DCU_W_LMHEAD, -1, w.LMHead})
	}
	for l, L := range w.Layers {
		items = append(items,
			item{C.DCU_W_ATTN_NORM, l, L.AttnNorm}, item{C.DCU_W_Q, l, L.Q}, item{C.DCU_W_K, l, L.K},
			item{C.DCU_W_V, l, L.V}, item{C.DCU_W_O, l, L.O}, item{C.DCU_W_MLP_NORM, l, L.MLPNorm},
			item{C.DCU_W_GATE, l, L.Gate}, item{C.DCU_W_UP, l, L.Up}, item{C.DCU_W_DOWN, l, L.Down})
	}
	for _, it := range items {
		weightBytes := bf16Bytes
		if b.f32 {
			weightBytes = f32Bytes
		}
		data, err := weightBytes(it.t)
		if err != nil {
			return fmt.Errorf("cuda: weight %s: %w", it.t.Name, err)
		}
		if len(data) == 0 {
			return fmt.Errorf("cuda: weight %s is empty", it.t.Name)
		}
		err = b.dev.Do(ctx, func() error {
			return call(func(st *C.dcu_status) C.int {
				return C.dcu_model_set_weight(b.m, it.kind, C.int(it.layer), unsafe.Pointer(&data[0]), C.size_t(len(data)), st)
			})
		})
		if err != nil {
			return fmt.Errorf("cuda: upload of %s: %w", it.t.Name, err)
		}
	}
	return nil
}

// WeightBytes is the size of the weights on the device.
func (b *Backend) WeightBytes() int64 {
	var n C.size_t
	C.dcu_model_weight_bytes(b.m, &n)
	return int64(n)
}

// Device returns the device the backend runs on.
func (b *Backend) Device() *Device { return b.dev }

// pack validates the batch and writes the step's ints (see dcu_batch).
// Token ids < 0 name rows of the previous step (dcu_forward_async) and are
// allowed when that step had prevRows rows (Launch); prevRows < 0 allows
// none.
func (b *Backend) pack(batch *compute.Batch, prevRows int) (cb C.dcu_batch, err error) {
	cfg, lay := b.cfg, b.layout
	T := batch.NumTokens()
	if T == 0 {
		return cb, fmt.Errorf("%w: no tokens", compute.ErrBadBatch)
	}
	R, nt := 0, 0
	for i := range batch.Seqs {
		s := &batch.Seqs[i]
		switch s.Logits {
		case compute.LogitsLast:
			if len(s.Tokens) > 0 {
				R++
			}
		case compute.LogitsAll:
			R += len(s.Tokens)
		}
		nt += len(s.Blocks)
	}
	need := 4*T + R + nt
	if cap(b.ints) < need {
		b.ints = make([]int32, need)
	}
	ints := b.ints[:need]
	tokens, pos, slot, btoff := ints[:T], ints[T:2*T], ints[2*T:3*T], ints[3*T:4*T]
	rows, tables := ints[4*T:4*T+R], ints[4*T+R:]
	t, r, toff, maxCtx := 0, 0, 0, 0
	for i := range batch.Seqs {
		s := &batch.Seqs[i]
		end := s.Start + len(s.Tokens)
		if s.Start < 0 || end > cfg.MaxPositionEmbeddings {
			return cb, fmt.Errorf("%w: seq %d: positions [%d,%d) outside [0,%d)", compute.ErrBadBatch, i, s.Start, end, cfg.MaxPositionEmbeddings)
		}
		if len(s.Blocks) < lay.BlocksFor(end) {
			return cb, fmt.Errorf("%w: seq %d: %d blocks for %d positions", compute.ErrBadBatch, i, len(s.Blocks), end)
		}
		for _, blk := range s.Blocks {
			if blk < 0 || int(blk) >= b.pool.NumBlocks() {
				return cb, fmt.Errorf("%w: seq %d: block %d outside the pool of %d", compute.ErrBadBatch, i, blk, b.pool.NumBlocks())
			}
		}
		copy(tables[toff:], s.Blocks)
		for j, tok := range s.Tokens {
			if int(tok) >= cfg.VocabSize || (tok < 0 && int(-tok-1) >= prevRows) {
				if tok < 0 {
					return cb, fmt.Errorf("%w: seq %d: token %d names no row of the previous launched step (%d rows)", compute.ErrBadBatch, i, tok, max(prevRows, 0))
				}
				return cb, fmt.Errorf("%w: seq %d: token %d outside the vocabulary of %d", compute.ErrBadBatch, i, tok, cfg.VocabSize)
			}
			p := s.Start + j
			tokens[t], pos[t], btoff[t] = tok, int32(p), int32(toff)
			slot[t] = s.Blocks[p/lay.TokensPerBlock]*int32(lay.TokensPerBlock) + int32(p%lay.TokensPerBlock)
			if s.Logits == compute.LogitsAll || (s.Logits == compute.LogitsLast && j == len(s.Tokens)-1) {
				rows[r] = int32(t)
				r++
			}
			t++
		}
		toff += len(s.Blocks)
		maxCtx = max(maxCtx, end)
	}
	cb.num_tokens, cb.num_rows, cb.n_tables, cb.max_ctx = C.int(T), C.int(R), C.int(nt), C.int(maxCtx)
	return cb, nil
}

func (b *Backend) run(ctx context.Context, batch *compute.Batch, wantLogits, wantArgmax bool) (int, error) {
	if b.closed {
		return 0, ErrClosed
	}
	cb, err := b.pack(batch, -1)
	if err != nil {
		return 0, err
	}
	b.launchedRows = -1 // negative token ids are invalid after this step
	R := int(cb.num_rows)
	V := b.cfg.VocabSize
	if wantLogits && cap(b.logits) < R*V {
		b.logits = make([]float32, R*V)
	}
	if wantArgmax && cap(b.argmax) < R {
		b.argmax = make([]int32, R)
	}
	err = b.dev.Do(ctx, func() error {
		// cb holds Go pointers: pin them for the call (C keeps none).
		var pin runtime.Pinner
		defer pin.Unpin()
		pin.Pin(&b.ints[0])
		cb.ints = (*C.int32_t)(unsafe.Pointer(&b.ints[0]))
		if wantLogits && R > 0 {
			pin.Pin(&b.logits[0])
			cb.logits = (*C.float)(unsafe.Pointer(&b.logits[0]))
		}
		if wantArgmax && R > 0 {
			pin.Pin(&b.argmax[0])
			cb.argmax = (*C.int32_t)(unsafe.Pointer(&b.argmax[0]))
		}
		return call(func(st *C.dcu_status) C.int { return C.dcu_forward(b.m, &cb, st) })
	})
	return R, err
}

// Forward runs one step and returns the logits rows the batch asked for.
func (b *Backend) Forward(ctx context.Context, batch *compute.Batch) (*compute.Logits, error) {
	R, err := b.run(ctx, batch, true, false)
	if err != nil {
		return nil, err
	}
	return &compute.Logits{Vocab: b.cfg.VocabSize, Data: b.logits[:R*b.cfg.VocabSize]}, nil
}

// Greedy runs one step and returns the argmax token of each logits row,
// computed on the device (no logits copied back). The slice is valid until
// the next call.
func (b *Backend) Greedy(ctx context.Context, batch *compute.Batch) ([]int32, error) {
	R, err := b.run(ctx, batch, false, true)
	if err != nil {
		return nil, err
	}
	return b.argmax[:R], nil
}

// TimeStep replays the same step n times on the device and returns the
// device time per step (events; the KV writes are idempotent). graph says
// whether a decode step may replay a CUDA graph. For benchmarks.
func (b *Backend) TimeStep(ctx context.Context, batch *compute.Batch, n int, graph bool) (time.Duration, error) {
	cb, err := b.pack(batch, -1)
	if err != nil {
		return 0, err
	}
	b.launchedRows = -1
	var ms C.float
	err = b.dev.Do(ctx, func() error {
		var pin runtime.Pinner
		defer pin.Unpin()
		pin.Pin(&b.ints[0])
		cb.ints = (*C.int32_t)(unsafe.Pointer(&b.ints[0]))
		g := C.int(0)
		if graph {
			g = 1
		}
		return call(func(st *C.dcu_status) C.int { return C.dcu_forward_timed(b.m, &cb, C.int(n), g, &ms, st) })
	})
	if err != nil {
		return 0, err
	}
	return time.Duration(float64(ms) * 1e6 / float64(n)), nil
}

func (b *Backend) Name() string { return "cuda" }

// Close frees the weights and buffers (not the pool, which the caller owns).
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	var err error
	if b.m != nil {
		m := b.m
		b.m = nil
		err = b.dev.Do(context.Background(), func() error {
			return errors.Join(b.closeSampler(),
				call(func(st *C.dcu_status) C.int { return C.dcu_model_destroy(m, st) }))
		})
	}
	return err
}

// Profile runs the step once with a device event after every operation and
// returns the device time per operation kind ("gemm_qkv", "attention", ...).
// For benchmarks; the events serialize nothing but add a little time.
func (b *Backend) Profile(ctx context.Context, batch *compute.Batch) (map[string]time.Duration, error) {
	cb, err := b.pack(batch, -1)
	if err != nil {
		return nil, err
	}
	b.launchedRows = -1
	var ms [C.DCU_PROF_KINDS]C.float
	err = b.dev.Do(ctx, func() error {
		var pin runtime.Pinner
		defer pin.Unpin()
		pin.Pin(&b.ints[0])
		cb.ints = (*C.int32_t)(unsafe.Pointer(&b.ints[0]))
		return call(func(st *C.dcu_status) C.int { return C.dcu_profile_step(b.m, &cb, &ms[0], st) })
	})
	if err != nil {
		return nil, err
	}
	out := map[string]time.Duration{}
	for k, v := range ms {
		if v > 0 {
			out[C.GoString(C.dcu_prof_name(C.int(k)))] = time.Duration(float64(v) * 1e6)
		}
	}
	return out, nil
}
