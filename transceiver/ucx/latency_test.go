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
	a := newAgent(b, "lat-a", src, 0)
	c := newAgent(b, "lat-b", dst, 0)
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
