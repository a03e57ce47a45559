// Package kvcache holds the paged KV pool: fixed-size blocks of
// TokensPerBlock tokens, each holding every layer's K and V contiguously, so
// that one transfer descriptor can move a whole block and runs of adjacent
// blocks coalesce. The pool's memory is allocated once, outside the Go heap.
package kvcache

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"unsafe"
)

// ErrNoBlocks is returned when the pool has fewer free blocks than asked.
var ErrNoBlocks = errors.New("kvcache: not enough free blocks")

// DType is the element type stored in the pool.
type DType uint8

const (
	Float32 DType = iota
	BFloat16
	Float16
)

// Size is the element size in bytes.
func (d DType) Size() int {
	if d == Float32 {
		return 4
	}
	return 2
}

func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case BFloat16:
		return "bfloat16"
	case Float16:
		return "float16"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Layout describes one block. A block is laid out as
// [layer][k=0,v=1][token in block][kv head][head dim]: all of a block's
// layers are contiguous, and so is one layer's K (or V) for the block.
type Layout struct {
	Layers         int
	KVHeads        int
	HeadDim        int
	TokensPerBlock int
	DType          DType
}

// Validate checks that every dimension is positive.
func (l Layout) Validate() error {
	if l.Layers <= 0 || l.KVHeads <= 0 || l.HeadDim <= 0 || l.TokensPerBlock <= 0 {
		return fmt.Errorf("kvcache: bad layout %+v: every dimension must be positive", l)
	}
	return nil
}

// TokenElems is the element count of one token's K (or V) in one layer.
func (l Layout) TokenElems() int { return l.KVHeads * l.HeadDim }

// PlaneElems is the element count of one layer's K (or V) for a whole block.
func (l Layout) PlaneElems() int { return l.TokensPerBlock * l.TokenElems() }

// BlockElems is the element count of one block.
func (l Layout) BlockElems() int { return l.Layers * 2 * l.PlaneElems() }

// BlockBytes is the size of one block in bytes.
func (l Layout) BlockBytes() int { return l.BlockElems() * l.DType.Size() }

// BytesPerToken is the KV size of one token across all layers.
func (l Layout) BytesPerToken() int { return l.Layers * 2 * l.TokenElems() * l.DType.Size() }

// PlaneOffset is the element offset, from the start of block b, of layer
// layer's K (kv=0) or V (kv=1) plane.
func (l Layout) PlaneOffset(layer, kv int) int { return (layer*2 + kv) * l.PlaneElems() }

// BlocksFor is the number of blocks that hold n tokens.
func (l Layout) BlocksFor(n int) int { return (n + l.TokensPerBlock - 1) / l.TokensPerBlock }

// Memory is the pool's backing store. Host pools use anonymous mmap; a GPU
// backend supplies device memory. Ptr is the base address; Size the length.
type Memory interface {
	Ptr() unsafe.Pointer
	Size() int
	// Device is false for host memory, true for GPU memory.
	Device() bool
	Close() error
}

// Pool is a fixed set of blocks and their free list. It is safe for
// concurrent use.
type Pool struct {
	layout Layout
	mem    Memory
	n      int

	mu    sync.Mutex
	free  []int32 // stack of free block ids; may hold stale ids (taken as part of a run), skipped on pop
	nfree int     // exact count of free blocks
	inUse []bool
	// freeBits has bit b%64 of word b/64 set while block b is free: the
	// run search skips 64 used (or free) blocks at a time.
	freeBits []uint64
}

// NewPool makes a pool of numBlocks blocks over mem, which must hold at least
// numBlocks*layout.BlockBytes() bytes.
func NewPool(layout Layout, numBlocks int, mem Memory) (*Pool, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	if numBlocks <= 0 {
		return nil, fmt.Errorf("kvcache: pool needs at least one block, got %d", numBlocks)
	}
	if need := numBlocks * layout.BlockBytes(); mem.Size() < need {
		return nil, fmt.Errorf("kvcache: memory of %d bytes is smaller than %d blocks of %d bytes", mem.Size(), numBlocks, layout.BlockBytes())
	}
	p := &Pool{layout: layout, mem: mem, n: numBlocks, free: make([]int32, numBlocks), nfree: numBlocks, inUse: make([]bool, numBlocks),
		freeBits: make([]uint64, (numBlocks+63)/64)}
	for b := range numBlocks {
		p.freeBits[b/64] |= 1 << (b % 64)
	}
	// Pop order gives ascending ids, so fresh allocations are adjacent.
	for i := range p.free {
		p.free[i] = int32(numBlocks - 1 - i)
	}
	return p, nil
}

// NewHostPool allocates host memory outside the Go heap and makes a pool.
func NewHostPool(layout Layout, numBlocks int) (*Pool, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	mem, err := AllocHost(numBlocks * layout.BlockBytes())
	if err != nil {
		return nil, err
	}
	p, err := NewPool(layout, numBlocks, mem)
	if err != nil {
		_ = mem.Close()
		return nil, err
	}
	return p, nil
}

// Layout returns the block layout.
func (p *Pool) Layout() Layout { return p.layout }

// Memory returns the backing store (for backends and transceivers).
func (p *Pool) Memory() Memory { return p.mem }

// NumBlocks is the pool's total block count.
func (p *Pool) NumBlocks() int { return p.n }

// FreeBlocks is the exact number of free blocks now.
func (p *Pool) FreeBlocks() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nfree
}

// Alloc takes n blocks, or none and ErrNoBlocks. Several blocks come as
// the lowest run of n adjacent free ids when there is one (first fit), so
// that a request's KV moves as one transfer descriptor; otherwise as free
// ids in ascending order.
func (p *Pool) Alloc(n int) ([]int32, error) {
	if n < 0 {
		return nil, fmt.Errorf("kvcache: alloc of %d blocks", n)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n > p.nfree {
		return nil, fmt.Errorf("%w: want %d, %d free of %d", ErrNoBlocks, n, p.nfree, p.n)
	}
	out := make([]int32, n)
	if n > 1 {
		if start := p.firstRunLocked(n); start >= 0 {
			for i := range out {
				out[i] = int32(start + i)
				p.take(start + i)
			}
			p.nfree -= n
			return out, nil
		}
	}
	for i := 0; i < n; {
		b := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		if p.inUse[b] {
			continue // stale: taken as part of a run
		}
		p.take(int(b))
		out[i] = b
		i++
	}
	p.nfree -= n
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// take marks block b in use; p.mu held.
func (p *Pool) take(b int) {
	p.inUse[b] = true
	p.freeBits[b/64] &^= 1 << (b % 64)
}

// firstRunLocked returns the lowest start of n adjacent free blocks, or -1.
// Bits past the last block are never set, so runs end there.
func (p *Pool) firstRunLocked(n int) int {
	run := 0
	for w, word := range p.freeBits {
		switch word {
		case 0:
			run = 0
			continue
		case ^uint64(0):
			if run+64 >= n {
				return w*64 - run
			}
			run += 64
			continue
		}
		for bit := 0; bit < 64; bit++ {
			if word&(1<<bit) == 0 {
				run = 0
				continue
			}
			if run++; run == n {
				return w*64 + bit - n + 1
			}
		}
	}
	return -1
}

// Free returns blocks to the pool. Freeing a block that is not in use is a
// bug in the caller and panics rather than corrupting the free list.
func (p *Pool) Free(blocks []int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range blocks {
		if b < 0 || int(b) >= p.n || !p.inUse[b] {
			panic(fmt.Sprintf("kvcache: free of block %d that is not in use", b))
		}
		p.inUse[b] = false
		p.freeBits[b/64] |= 1 << (b % 64)
		p.free = append(p.free, b)
		p.nfree++
	}
	if len(p.free) > 2*p.n {
		// too many stale ids: rebuild, descending so that pops ascend
		p.free = p.free[:0]
		for b := p.n - 1; b >= 0; b-- {
			if !p.inUse[b] {
				p.free = append(p.free, int32(b))
			}
		}
	}
}

// InUse reports whether block b is allocated (for bounds checks of
// transfer descriptors).
func (p *Pool) InUse(b int32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return b >= 0 && int(b) < p.n && p.inUse[b]
}

// Close releases the pool's memory. Blocks must not be used afterwards.
func (p *Pool) Close() error { return p.mem.Close() }

// HostFloat32 returns the whole pool as a []float32 view, for CPU backends
// of a Float32 host pool.
func (p *Pool) HostFloat32() ([]float32, error) {
	if p.mem.Device() || p.layout.DType != Float32 {
		return nil, fmt.Errorf("kvcache: pool is %s on device=%v, not host float32", p.layout.DType, p.mem.Device())
	}
	return unsafe.Slice((*float32)(p.mem.Ptr()), p.n*p.layout.BlockElems()), nil
}
