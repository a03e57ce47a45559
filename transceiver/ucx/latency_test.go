//go:build cgo

package ucx

import (
	"context"
	"testing"

	"disagg/transceiver"
)

// BenchmarkWriteOneBlock is the fixed cost of a write between two agents of
// one process: one 4 KB block, put + flush + completion back to the caller.
func BenchmarkWriteOneBlock(b *testing.B) {
	requireUCX(b)
	src := newRegion(b, 4096, 4)
	dst := newRegion(b, 4096, 4)
	a := newAgentTB(b, "lat-a", src)
	c := newAgentTB(b, "lat-b", dst)
	info, err := c.LocalInfo()
	if err != nil {
		b.Fatal(err)
	}
	p, err := a.Connect(context.Background(), info)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	tr := transceiver.Transfer{Pairs: []transceiver.BlockPair{{Local: 0, Remote: 1}}}
	ctx := context.Background()
	if err := p.Write(ctx, tr); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := p.Write(ctx, tr); err != nil {
			b.Fatal(err)
		}
	}
}

func newAgentTB(tb testing.TB, name string, r transceiver.Region) *Agent {
	tb.Helper()
	a, err := New(transceiver.Config{Name: name, KVTransferTimeoutMs: 5000})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = a.Close() })
	if err := a.Register(r); err != nil {
		tb.Fatal(err)
	}
	return a
}
