package transceivertest

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"unsafe"

	"disagg/transceiver"
	"disagg/worker/kvcache"
)

// Connect connects from to to's connection info; the peer closes when the
// test ends.
func Connect(t testing.TB, from, to transceiver.Transceiver) transceiver.Peer {
	t.Helper()
	info, err := to.LocalInfo()
	if err != nil {
		t.Fatal(err)
	}
	p, err := from.Connect(context.Background(), info)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// NewHostRegion allocates a host region of n blocks, freed at test end.
func NewHostRegion(t testing.TB, blockBytes, n int) transceiver.Region {
	t.Helper()
	mem, err := kvcache.AllocHost(blockBytes * n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mem.Close() })
	return transceiver.Region{Mem: mem, BlockBytes: blockBytes, NumBlocks: n}
}

// BytesOf is the whole region as bytes (host memory only).
func BytesOf(r transceiver.Region) []byte {
	return unsafe.Slice((*byte)(r.Mem.Ptr()), r.Mem.Size())
}

// deviceCopier is device memory the tests can read and write through host
// copies (internal/cudamem.Memory).
type deviceCopier interface {
	CopyIn(off int, src []byte) error
	CopyOut(off int, dst []byte) error
}

// Block returns a copy of block b (host memory: a view) of a region; for
// device memory the bytes are copied out (nil if that fails).
func Block(r transceiver.Region, b int32) []byte {
	if r.Mem.Device() {
		d, ok := r.Mem.(deviceCopier)
		if !ok {
			return nil
		}
		out := make([]byte, r.BlockBytes)
		if err := d.CopyOut(int(b)*r.BlockBytes, out); err != nil {
			return nil
		}
		return out
	}
	return BytesOf(r)[int(b)*r.BlockBytes : int(b+1)*r.BlockBytes]
}

// FillRandom fills a region with bytes from seed (device memory through
// a host copy).
func FillRandom(r transceiver.Region, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var buf []byte
	if r.Mem.Device() {
		buf = make([]byte, r.Mem.Size())
	} else {
		buf = BytesOf(r)
	}
	for i := 0; i+8 <= len(buf); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			buf[i+j] = byte(v >> (8 * j))
		}
	}
	if d, ok := r.Mem.(deviceCopier); ok && r.Mem.Device() {
		if err := d.CopyIn(0, buf); err != nil {
			panic(fmt.Sprintf("transceivertest: fill device memory: %v", err))
		}
	}
}

// RandomPairs maps n distinct random local blocks to n distinct random
// remote blocks, with some adjacent runs so that coalescing is exercised.
func RandomPairs(rng *rand.Rand, n, localN, remoteN int) []transceiver.BlockPair {
	lp := rng.Perm(localN)
	rp := rng.Perm(remoteN)
	pairs := make([]transceiver.BlockPair, 0, n)
	usedL := map[int32]bool{}
	usedR := map[int32]bool{}
	for i := 0; len(pairs) < n && i < len(lp); i++ {
		l, r := int32(lp[i]), int32(rp[i%len(rp)])
		run := 1 + rng.IntN(4)
		for k := 0; k < run && len(pairs) < n; k++ {
			ll, rr := l+int32(k), r+int32(k)
			if int(ll) >= localN || int(rr) >= remoteN || usedL[ll] || usedR[rr] {
				break
			}
			usedL[ll], usedR[rr] = true, true
			pairs = append(pairs, transceiver.BlockPair{Local: ll, Remote: rr})
		}
	}
	return pairs
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func strconvF(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }
