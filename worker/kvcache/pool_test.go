package kvcache

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

func tinyLayout() Layout {
	return Layout{Layers: 3, KVHeads: 2, HeadDim: 16, TokensPerBlock: 32, DType: Float32}
}

func TestLayout(t *testing.T) {
	l := tinyLayout()
	if got, want := l.BlockBytes(), 3*2*32*2*16*4; got != want {
		t.Errorf("BlockBytes = %d, want %d", got, want)
	}
	if got, want := l.BytesPerToken(), 3*2*2*16*4; got != want {
		t.Errorf("BytesPerToken = %d, want %d", got, want)
	}
	// TinyLlama in bf16: 22,528 bytes of KV per token (DESIGN.md).
	tl := Layout{Layers: 22, KVHeads: 4, HeadDim: 64, TokensPerBlock: 32, DType: BFloat16}
	if got := tl.BytesPerToken(); got != 22528 {
		t.Errorf("TinyLlama bf16 BytesPerToken = %d, want 22528", got)
	}
	if l.PlaneOffset(2, 1) != 5*l.PlaneElems() {
		t.Errorf("PlaneOffset(2,1) = %d", l.PlaneOffset(2, 1))
	}
	for n, want := range map[int]int{0: 0, 1: 1, 32: 1, 33: 2, 64: 2} {
		if got := l.BlocksFor(n); got != want {
			t.Errorf("BlocksFor(%d) = %d, want %d", n, got, want)
		}
	}
	if err := (Layout{}).Validate(); err == nil {
		t.Error("zero layout validated")
	}
}

func TestPoolAllocFree(t *testing.T) {
	p, err := NewHostPool(tinyLayout(), 8)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a, err := p.Alloc(3)
	if err != nil {
		t.Fatal(err)
	}
	if a[0] != 0 || a[1] != 1 || a[2] != 2 {
		t.Errorf("fresh allocation %v, want adjacent ids 0 1 2", a)
	}
	if p.FreeBlocks() != 5 || !p.InUse(1) || p.InUse(5) {
		t.Errorf("free %d, InUse(1) %v, InUse(5) %v", p.FreeBlocks(), p.InUse(1), p.InUse(5))
	}
	if _, err := p.Alloc(6); !errors.Is(err, ErrNoBlocks) {
		t.Errorf("over-allocation: err = %v, want ErrNoBlocks", err)
	}
	if p.FreeBlocks() != 5 {
		t.Errorf("a failed Alloc changed the free count to %d", p.FreeBlocks())
	}
	p.Free(a)
	if p.FreeBlocks() != 8 {
		t.Errorf("free after Free = %d, want 8", p.FreeBlocks())
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("double free did not panic")
			}
		}()
		p.Free(a[:1])
	}()
	f, err := p.HostFloat32()
	if err != nil || len(f) != 8*tinyLayout().BlockElems() {
		t.Fatalf("HostFloat32: %d elems, %v", len(f), err)
	}
	f[len(f)-1] = 1 // the whole mapping is writable
	if uintptr(p.Memory().Ptr())%4096 != 0 {
		t.Error("host pool memory is not page aligned")
	}
}

func TestPoolConcurrent(t *testing.T) {
	p, err := NewHostPool(tinyLayout(), 64)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 1))
			for i := 0; i < 500; i++ {
				b, err := p.Alloc(1 + r.IntN(6))
				if err != nil {
					continue
				}
				p.Free(b)
			}
		}(uint64(g))
	}
	wg.Wait()
	if p.FreeBlocks() != 64 {
		t.Fatalf("free = %d after balanced alloc/free, want 64", p.FreeBlocks())
	}
}

func TestNewPoolErrors(t *testing.T) {
	if _, err := NewHostPool(tinyLayout(), 0); err == nil {
		t.Error("pool of 0 blocks accepted")
	}
	mem, err := AllocHost(100)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if _, err := NewPool(tinyLayout(), 1, mem); err == nil {
		t.Error("pool larger than its memory accepted")
	}
}

// After random churn, every multi-block Alloc returns the lowest run of
// adjacent free ids whenever one exists (checked against a scan of a shadow
// copy of the pool's state kept by the test), so a request's KV transfers as
// one descriptor; single blocks and fragmented pools still get distinct free
// ids, and the free count stays exact.
func TestPoolAllocRuns(t *testing.T) {
	// 97 blocks and runs of up to 9: runs within and across the index's
	// 64-block words, and its partial last word; 1000 and up to 150: runs
	// over whole words.
	for _, c := range []struct{ n, maxRun int }{{97, 9}, {1000, 150}} {
		t.Run(fmt.Sprintf("%d-blocks", c.n), func(t *testing.T) { testPoolAllocRuns(t, c.n, c.maxRun) })
	}
}

func testPoolAllocRuns(t *testing.T, n, maxRun int) {
	p, err := NewHostPool(tinyLayout(), n)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	used := make([]bool, n) // the test's own record
	lowestRun := func(k int) int {
		run := 0
		for i := 0; i < n; i++ {
			if used[i] {
				run = 0
				continue
			}
			if run++; run == k {
				return i - k + 1
			}
		}
		return -1
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var held [][]int32
	runs, frees := 0, 0
	for step := 0; step < 5000; step++ {
		if len(held) > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(len(held))
			for _, b := range held[i] {
				used[b] = false
			}
			p.Free(held[i])
			held = append(held[:i], held[i+1:]...)
			frees++
			continue
		}
		k := 1 + rng.IntN(maxRun)
		want := lowestRun(k)
		nfree := 0
		for _, u := range used {
			if !u {
				nfree++
			}
		}
		got, err := p.Alloc(k)
		if k > nfree {
			if !errors.Is(err, ErrNoBlocks) {
				t.Fatalf("step %d: Alloc(%d) with %d free: err %v, want ErrNoBlocks", step, k, nfree, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: Alloc(%d) with %d free: %v", step, k, nfree, err)
		}
		if k > 1 && want >= 0 {
			runs++
			for j, b := range got {
				if int(b) != want+j {
					t.Fatalf("step %d: Alloc(%d) = %v, want the run starting at %d", step, k, got, want)
				}
			}
		}
		for _, b := range got {
			if used[b] {
				t.Fatalf("step %d: Alloc(%d) returned block %d, which is in use", step, k, b)
			}
			used[b] = true
		}
		held = append(held, got)
		if p.FreeBlocks() != nfree-k {
			t.Fatalf("step %d: FreeBlocks %d, want %d", step, p.FreeBlocks(), nfree-k)
		}
	}
	if runs < 100 || frees < 100 {
		t.Fatalf("the churn exercised too little: %d run allocations, %d frees", runs, frees)
	}
}
