//go:build cgo

package ucx

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"disagg/transceiver"
	"disagg/transceiver/internal/cudamem"
)

// TestDeviceMemory moves blocks between two regions of CUDA device memory
// (two agents in one process) and checks them byte for byte through host
// copies. It runs only where a GPU and a CUDA-enabled UCX are present.
func TestDeviceMemory(t *testing.T) {
	requireUCX(t)
	if err := cudamem.Available(); err != nil {
		t.Skipf("no CUDA device: %v", err)
	}
	const bb, n = 352 << 10, 128 // TinyLlama blocks of 16 tokens: 46 MB
	alloc := func() (*cudamem.Memory, transceiver.Region) {
		m, err := cudamem.Alloc(bb * n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		return m, transceiver.Region{Mem: m, BlockBytes: bb, NumBlocks: n}
	}
	srcMem, src := alloc()
	dstMem, dst := alloc()
	host := make([]byte, bb*n)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range host {
		host[i] = byte(rng.Uint32())
	}
	if err := srcMem.CopyIn(0, host); err != nil {
		t.Fatal(err)
	}
	a, err := New(transceiver.Config{Name: "dev-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	if !a.SupportsDevice() {
		t.Skipf("UCX %v lacks CUDA memory support: set DISAGG_UCX_LIB to a CUDA-enabled libucp", memTypeList(a.memTypes))
	}
	b, err := New(transceiver.Config{Name: "dev-b"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close() }()
	if err := a.Register(src); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(dst); err != nil {
		t.Fatal(err)
	}
	info, err := b.LocalInfo()
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Connect(context.Background(), info)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Close() }()
	scattered := make([]transceiver.BlockPair, n)
	contiguous := make([]transceiver.BlockPair, n)
	for i := range scattered {
		scattered[i] = transceiver.BlockPair{Local: int32(i), Remote: int32((i * 37) % n)}
		contiguous[i] = transceiver.BlockPair{Local: int32(i), Remote: int32(i)}
	}
	got := make([]byte, bb)
	verify := func(pairs []transceiver.BlockPair, what string) {
		t.Helper()
		for _, pr := range pairs[:16] {
			if err := dstMem.CopyOut(int(pr.Remote)*bb, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, host[int(pr.Local)*bb:int(pr.Local+1)*bb]) {
				t.Fatalf("%s: block %d -> %d differs", what, pr.Local, pr.Remote)
			}
		}
	}
	for _, c := range []struct {
		name  string
		pairs []transceiver.BlockPair
	}{{"1 descriptor", contiguous}, {"128 descriptors", scattered}} {
		for _, write := range []bool{true, false} {
			mode := "read"
			if write {
				mode = "write"
			}
			move := func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if write {
					return p.Write(ctx, transceiver.Transfer{Pairs: c.pairs})
				}
				// Pull the same bytes back: dst -> src, then check src.
				return p.(transceiver.Reader).Read(ctx, transceiver.Transfer{Pairs: c.pairs})
			}
			if err := move(); err != nil {
				t.Fatalf("%s %s: %v", mode, c.name, err)
			}
			if write {
				verify(c.pairs, mode+" "+c.name)
			}
			const reps = 10
			start := time.Now()
			for i := 0; i < reps; i++ {
				if err := move(); err != nil {
					t.Fatal(err)
				}
			}
			el := time.Since(start) / reps
			t.Logf("device %s %s of %.1f MB: %v, %.1f GB/s", mode, c.name, float64(bb*n)/1e6, el, float64(bb*n)/el.Seconds()/1e9)
		}
	}
}
