// Package cpu is the pure-Go reference compute backend: a Llama forward
// step over a paged float32 KV pool in host memory, with the matrix
// products split by output rows and attention split by (sequence, head)
// across a small persistent pool of goroutines.
package cpu

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"

	"disagg/worker/compute"
	"disagg/worker/kvcache"
	"disagg/worker/model"
	"disagg/worker/safetensors"
)

var _ compute.Backend = (*Backend)(nil)

// ErrClosed is returned by Forward after Close.
var ErrClosed = errors.New("cpu: backend closed")

// Options tune the backend.
type Options struct {
	// Threads is the number of goroutines a step uses; 0 means GOMAXPROCS.
	Threads int
}

// LayoutFor is the float32 KV block layout the CPU backend needs for a
// model with config c.
func LayoutFor(c *model.Config, tokensPerBlock int) kvcache.Layout {
	return kvcache.Layout{
		Layers:         c.NumLayers,
		KVHeads:        c.NumKVHeads,
		HeadDim:        c.HeadDim,
		TokensPerBlock: tokensPerBlock,
		DType:          kvcache.Float32,
	}
}

// layer holds one decoder layer's weights as float32.
type layer struct {
	attnNorm []float32
	qkv      []float32 // [q rows; k rows; v rows] x hidden
	o        []float32 // hidden x (heads*headDim)
	mlpNorm  []float32
	gateUp   []float32 // [gate rows; up rows] x hidden
	down     []float32 // hidden x intermediate
}

// Backend is the CPU compute backend. Forward must be called from one
// goroutine at a time, as compute.Backend requires.
type Backend struct {
	cfg    *model.Config
	pool   *kvcache.Pool
	kv     []float32
	layout kvcache.Layout

	embed  []float32
	layers []layer
	norm   []float32
	lmHead []float32

	invFreq []float32
	work    *workers

	// mu is held for reading by Forward and for writing by Close, so that
	// Close waits for a step in flight.
	mu     sync.RWMutex
	closed bool

	// launchMu guards last, the step Launch started most recently.
	launchMu sync.Mutex
	last     *launched

	buf buffers
}

// buffers are per-step scratch space, grown as needed and reused.
type buffers struct {
	x, xn, qkv, attn, proj, gateUp, act, normed, logits []float32
	cos, sin                                            []float32
	pos                                                 []int
	scores                                              [][]float32 // per worker part
}

// New converts m's weights to float32 and makes a backend that keeps its
// KV cache in pool, which must be a host float32 pool with LayoutFor(m's
// config) for some block size. The backend does not own m or pool.
func New(m *model.Model, pool *kvcache.Pool, opts Options) (*Backend, error) {
	if m == nil || m.Config == nil || m.Weights == nil {
		return nil, errors.New("cpu: nil model")
	}
	if pool == nil {
		return nil, errors.New("cpu: nil KV pool")
	}
	c := m.Config
	layout := pool.Layout()
	if want := LayoutFor(c, layout.TokensPerBlock); layout != want {
		return nil, fmt.Errorf("cpu: KV pool layout %+v does not match the model's %+v", layout, want)
	}
	kv, err := pool.HostFloat32()
	if err != nil {
		return nil, fmt.Errorf("cpu: %w", err)
	}
	threads := opts.Threads
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	b := &Backend{cfg: c, pool: pool, kv: kv, layout: layout}
	w := m.Weights
	if b.embed, err = f32(w.Embed); err != nil {
		return nil, err
	}
	if w.LMHead.Name == w.Embed.Name {
		b.lmHead = b.embed
	} else if b.lmHead, err = f32(w.LMHead); err != nil {
		return nil, err
	}
	if b.norm, err = f32(w.Norm); err != nil {
		return nil, err
	}
	b.layers = make([]layer, len(w.Layers))
	for i, lw := range w.Layers {
		l := &b.layers[i]
		if l.attnNorm, err = f32(lw.AttnNorm); err != nil {
			return nil, err
		}
		if l.qkv, err = f32(lw.Q, lw.K, lw.V); err != nil {
			return nil, err
		}
		if l.o, err = f32(lw.O); err != nil {
			return nil, err
		}
		if l.mlpNorm, err = f32(lw.MLPNorm); err != nil {
			return nil, err
		}
		if l.gateUp, err = f32(lw.Gate, lw.Up); err != nil {
			return nil, err
		}
		if l.down, err = f32(lw.Down); err != nil {
			return nil, err
		}
	}
	for _, f := range c.InvFreq() {
		b.invFreq = append(b.invFreq, float32(f))
	}
	b.work = newWorkers(threads)
	b.buf.scores = make([][]float32, threads)
	return b, nil
}

// f32 converts tensors to float32 and concatenates them.
func f32(ts ...safetensors.Tensor) ([]float32, error) {
	n := 0
	for _, t := range ts {
		n += t.NumElements()
	}
	out := make([]float32, n)
	off := 0
	for _, t := range ts {
		k := t.NumElements()
		if err := t.Float32Into(out[off : off+k]); err != nil {
			return nil, fmt.Errorf("cpu: converting %s: %w", t.Name, err)
		}
		off += k
	}
	return out, nil
}

// Name is "cpu".
func (b *Backend) Name() string { return "cpu" }

// Close stops the worker goroutines and drops the weights. It does not
// close the model or the pool.
func (b *Backend) Close() error {
	b.waitLaunched()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	b.work.close()
	b.embed, b.lmHead, b.norm, b.layers = nil, nil, nil, nil
	return nil
}

// validate checks b against the contract of compute.Batch.
func (b *Backend) validate(batch *compute.Batch) error {
	if batch == nil || len(batch.Seqs) == 0 {
		return fmt.Errorf("%w: empty batch", compute.ErrBadBatch)
	}
	nblocks := int32(b.pool.NumBlocks())
	for i := range batch.Seqs {
		s := &batch.Seqs[i]
		if len(s.Tokens) == 0 {
			return fmt.Errorf("%w: sequence %d has no tokens", compute.ErrBadBatch, i)
		}
		if s.Start < 0 {
			return fmt.Errorf("%w: sequence %d starts at negative position %d", compute.ErrBadBatch, i, s.Start)
		}
		end := s.Start + len(s.Tokens)
		if end > b.cfg.MaxPositionEmbeddings || end < s.Start {
			return fmt.Errorf("%w: sequence %d reaches position %d, past max_position_embeddings %d", compute.ErrBadBatch, i, end, b.cfg.MaxPositionEmbeddings)
		}
		for j, tok := range s.Tokens {
			if tok < 0 || int(tok) >= b.cfg.VocabSize {
				return fmt.Errorf("%w: sequence %d token %d is id %d, outside the vocabulary of %d", compute.ErrBadBatch, i, j, tok, b.cfg.VocabSize)
			}
		}
		need := b.layout.BlocksFor(end)
		if len(s.Blocks) < need {
			return fmt.Errorf("%w: sequence %d needs %d blocks for %d positions, block table has %d", compute.ErrBadBatch, i, need, end, len(s.Blocks))
		}
		for j, blk := range s.Blocks[:need] {
			if blk < 0 || blk >= nblocks {
				return fmt.Errorf("%w: sequence %d block table entry %d is block %d, outside the pool of %d", compute.ErrBadBatch, i, j, blk, nblocks)
			}
		}
		if s.Logits > compute.LogitsAll {
			return fmt.Errorf("%w: sequence %d has unknown logits mode %d", compute.ErrBadBatch, i, s.Logits)
		}
	}
	return nil
}

func grow(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	return s[:n]
}

// Forward runs one model step for the batch, after every step Launch
// started; see compute.Backend.
func (b *Backend) Forward(ctx context.Context, batch *compute.Batch) (*compute.Logits, error) {
	b.waitLaunched()
	return b.forward(ctx, batch)
}

// forward is Forward without waiting for launched steps.
func (b *Backend) forward(ctx context.Context, batch *compute.Batch) (*compute.Logits, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return nil, ErrClosed
	}
	if err := b.validate(batch); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := b.cfg
	H, hd, nh, nkv, ff := c.HiddenSize, c.HeadDim, c.NumHeads, c.NumKVHeads, c.IntermediateSize
	qDim, kvDim := nh*hd, nkv*hd
	qkvDim := qDim + 2*kvDim
	T := batch.NumTokens()

	buf := &b.buf
	buf.x = grow(buf.x, T*H)
	buf.xn = grow(buf.xn, T*H)
	buf.qkv = grow(buf.qkv, T*qkvDim)
	buf.attn = grow(buf.attn, T*qDim)
	buf.proj = grow(buf.proj, T*H)
	buf.gateUp = grow(buf.gateUp, T*2*ff)
	buf.act = grow(buf.act, T*ff)
	if cap(buf.pos) < T {
		buf.pos = make([]int, T)
	}
	buf.pos = buf.pos[:T]

	// Embeddings and positions.
	t := 0
	for _, s := range batch.Seqs {
		for j, tok := range s.Tokens {
			copy(buf.x[t*H:(t+1)*H], b.embed[int(tok)*H:(int(tok)+1)*H])
			buf.pos[t] = s.Start + j
			t++
		}
	}
	b.ropeTables(buf.pos)

	for li := range b.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l := &b.layers[li]
		rmsNorm(buf.xn, buf.x, l.attnNorm, T, H, float32(c.RMSNormEps))
		matmul(b.work, buf.qkv, buf.xn, l.qkv, T, qkvDim, H)
		b.rope(buf.qkv, T, qkvDim)
		b.storeKV(batch, li, buf.qkv, qkvDim)
		b.attention(batch, li, buf.qkv, buf.attn, qkvDim)
		matmul(b.work, buf.proj, buf.attn, l.o, T, H, qDim)
		addInto(buf.x, buf.proj)
		rmsNorm(buf.xn, buf.x, l.mlpNorm, T, H, float32(c.RMSNormEps))
		matmul(b.work, buf.gateUp, buf.xn, l.gateUp, T, 2*ff, H)
		swiglu(buf.act, buf.gateUp, T, ff)
		matmul(b.work, buf.proj, buf.act, l.down, T, H, ff)
		addInto(buf.x, buf.proj)
	}

	// Gather the rows that want logits, normalise them, project.
	rows := 0
	for _, s := range batch.Seqs {
		switch s.Logits {
		case compute.LogitsLast:
			rows++
		case compute.LogitsAll:
			rows += len(s.Tokens)
		}
	}
	buf.normed = grow(buf.normed, rows*H)
	buf.logits = grow(buf.logits, rows*c.VocabSize)
	r, t := 0, 0
	for _, s := range batch.Seqs {
		n := len(s.Tokens)
		first := t + n // no rows
		switch s.Logits {
		case compute.LogitsLast:
			first = t + n - 1
		case compute.LogitsAll:
			first = t
		}
		for i := first; i < t+n; i++ {
			rmsNorm(buf.normed[r*H:(r+1)*H], buf.x[i*H:(i+1)*H], b.norm, 1, H, float32(c.RMSNormEps))
			r++
		}
		t += n
	}
	matmul(b.work, buf.logits, buf.normed, b.lmHead, rows, c.VocabSize, H)
	return &compute.Logits{Vocab: c.VocabSize, Data: buf.logits}, nil
}

// ropeTables fills cos and sin for each token's position: angle
// inv_freq[i] * position in float32, as Hugging Face computes it.
func (b *Backend) ropeTables(pos []int) {
	half := len(b.invFreq)
	b.buf.cos = grow(b.buf.cos, len(pos)*half)
	b.buf.sin = grow(b.buf.sin, len(pos)*half)
	for t, p := range pos {
		for i, f := range b.invFreq {
			a := float64(f * float32(p))
			b.buf.cos[t*half+i] = float32(math.Cos(a))
			b.buf.sin[t*half+i] = float32(math.Sin(a))
		}
	}
}

// rope rotates every query and key head in place with the rotate-half
// convention: dimension i pairs with i+headDim/2.
func (b *Backend) rope(qkv []float32, T, qkvDim int) {
	hd := b.cfg.HeadDim
	half := hd / 2
	heads := b.cfg.NumHeads + b.cfg.NumKVHeads // q heads then k heads, adjacent
	for t := 0; t < T; t++ {
		cos := b.buf.cos[t*half : (t+1)*half]
		sin := b.buf.sin[t*half : (t+1)*half]
		row := qkv[t*qkvDim:]
		for h := 0; h < heads; h++ {
			v := row[h*hd : (h+1)*hd]
			x1, x2 := v[:half], v[half:hd]
			for i := range x1 {
				a, c := x1[i], x2[i]
				x1[i] = a*cos[i] - c*sin[i]
				x2[i] = c*cos[i] + a*sin[i]
			}
		}
	}
}

// kvOffset is the element offset in the pool of layer li's K (kv=0) or V
// (kv=1) for position pos of a sequence with block table blocks.
func (b *Backend) kvOffset(blocks []int32, li, kv, pos int) int {
	tpb := b.layout.TokensPerBlock
	blk := int(blocks[pos/tpb])
	return blk*b.layout.BlockElems() + b.layout.PlaneOffset(li, kv) + (pos%tpb)*b.layout.TokenElems()
}

// storeKV writes the step's keys and values of layer li into the pool.
func (b *Backend) storeKV(batch *compute.Batch, li int, qkv []float32, qkvDim int) {
	qDim := b.cfg.NumHeads * b.cfg.HeadDim
	kvDim := b.layout.TokenElems()
	t := 0
	for _, s := range batch.Seqs {
		for j := range s.Tokens {
			p := s.Start + j
			row := qkv[t*qkvDim:]
			copy(b.kv[b.kvOffset(s.Blocks, li, 0, p):][:kvDim], row[qDim:qDim+kvDim])
			copy(b.kv[b.kvOffset(s.Blocks, li, 1, p):][:kvDim], row[qDim+kvDim:qDim+2*kvDim])
			t++
		}
	}
}

// eachCached calls fn with the cached K (kv=0) or V (kv=1) vector of KV
// head kvh in layer li for positions 0..n-1, walking the block table one
// block at a time.
func (b *Backend) eachCached(blocks []int32, li, kv, kvh, n int, fn func(p int, vec []float32)) {
	tpb, hd := b.layout.TokensPerBlock, b.layout.HeadDim
	stride := b.layout.TokenElems()
	plane := b.layout.PlaneOffset(li, kv) + kvh*hd
	blockElems := b.layout.BlockElems()
	for p0 := 0; p0 < n; p0 += tpb {
		base := int(blocks[p0/tpb])*blockElems + plane
		cnt := min(tpb, n-p0)
		for j := 0; j < cnt; j++ {
			off := base + j*stride
			fn(p0+j, b.kv[off:off+hd])
		}
	}
}

// attention computes causal grouped-query attention of the step's queries
// over each sequence's cached keys and values, split by (sequence, head).
func (b *Backend) attention(batch *compute.Batch, li int, qkv, out []float32, qkvDim int) {
	c := b.cfg
	hd, nh := c.HeadDim, c.NumHeads
	group := nh / c.NumKVHeads
	qDim := nh * hd
	scale := float32(1 / math.Sqrt(float64(hd)))
	offsets := make([]int, len(batch.Seqs)+1)
	for i, s := range batch.Seqs {
		offsets[i+1] = offsets[i] + len(s.Tokens)
	}
	b.work.run(len(batch.Seqs)*nh, func(part, lo, hi int) {
		scores := b.buf.scores[part]
		for item := lo; item < hi; item++ {
			si, h := item/nh, item%nh
			s := &batch.Seqs[si]
			kvh := h / group
			end := s.Start + len(s.Tokens)
			if cap(scores) < end {
				scores = make([]float32, end)
				b.buf.scores[part] = scores
			}
			for j := range s.Tokens {
				t := offsets[si] + j
				q := qkv[t*qkvDim+h*hd : t*qkvDim+(h+1)*hd]
				n := s.Start + j + 1 // positions 0..p inclusive
				sc := scores[:n]
				maxv := float32(math.Inf(-1))
				b.eachCached(s.Blocks, li, 0, kvh, n, func(p int, k []float32) {
					v := dot(q, k) * scale
					sc[p] = v
					maxv = max(maxv, v)
				})
				var sum float32
				for p, v := range sc {
					e := float32(math.Exp(float64(v - maxv)))
					sc[p] = e
					sum += e
				}
				o := out[t*qDim+h*hd : t*qDim+(h+1)*hd]
				clear(o)
				inv := 1 / sum
				b.eachCached(s.Blocks, li, 1, kvh, n, func(p int, v []float32) {
					w := sc[p] * inv
					v = v[:len(o)]
					for i := range o {
						o[i] += w * v[i]
					}
				})
			}
		}
	})
}

// rmsNorm writes weight * x / sqrt(mean(x^2) + eps) for T rows of H values.
func rmsNorm(dst, x, weight []float32, T, H int, eps float32) {
	for t := 0; t < T; t++ {
		row := x[t*H : (t+1)*H]
		var ss float64
		for _, v := range row {
			ss += float64(v) * float64(v)
		}
		inv := float32(1 / math.Sqrt(float64(float32(ss/float64(H))+eps)))
		d := dst[t*H : (t+1)*H]
		for i, v := range row {
			d[i] = weight[i] * (v * inv)
		}
	}
}

// swiglu writes silu(gate) * up, reading T rows of [gate | up].
func swiglu(dst, gateUp []float32, T, ff int) {
	for t := 0; t < T; t++ {
		g := gateUp[t*2*ff : t*2*ff+ff]
		u := gateUp[t*2*ff+ff : (t+1)*2*ff]
		d := dst[t*ff : (t+1)*ff]
		for i, gv := range g {
			d[i] = gv / (1 + float32(math.Exp(float64(-gv)))) * u[i]
		}
	}
}

func addInto(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}
