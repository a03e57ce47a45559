//go:build cgo

package ucx

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"disagg/transceiver"
	"disagg/transceiver/transceivertest"
)

func newAgent(t testing.TB, name string, r transceiver.Region, faultEvery int) *Agent {
	t.Helper()
	a, err := New(transceiver.Config{Name: name, KVTransferTimeoutMs: 5000, FaultEvery: faultEvery})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := a.Register(r); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestInProcess moves blocks between two agents of one process.
func TestInProcess(t *testing.T) {
	requireUCX(t)
	const bb = 4096
	src := newRegion(t, bb, 64)
	dst := newRegion(t, bb, 48)
	fillRandom(src, 1)
	fillRandom(dst, 2)
	a := newAgent(t, "a", src, 0)
	b := newAgent(t, "b", dst, 0)
	p := transceivertest.Connect(t, a, b)
	rng := rand.New(rand.NewPCG(3, 4))
	ctx := context.Background()
	for iter := 0; iter < 20; iter++ {
		pairs := randomPairs(rng, 1+rng.IntN(30), 64, 48)
		tr := transceiver.Transfer{RequestID: uint64(iter), Pairs: pairs}
		if err := transceiver.Push(ctx, p, src, tr, true); err != nil {
			t.Fatal(err)
		}
		if _, err := transceiver.Await(ctx, b, dst, uint64(iter), nil, true); err != nil {
			t.Fatal(err)
		}
		for _, pr := range pairs {
			if !bytes.Equal(block(src, pr.Local), block(dst, pr.Remote)) {
				t.Fatalf("iter %d: block %d -> %d differs", iter, pr.Local, pr.Remote)
			}
		}
	}
	// Pull: a reads b's blocks into its own.
	fillRandom(dst, 9)
	pairs := randomPairs(rng, 20, 64, 48)
	if err := p.(transceiver.Reader).Read(ctx, transceiver.Transfer{RequestID: 99, Pairs: pairs}); err != nil {
		t.Fatal(err)
	}
	for _, pr := range pairs {
		if !bytes.Equal(block(src, pr.Local), block(dst, pr.Remote)) {
			t.Fatalf("read: block %d <- %d differs", pr.Local, pr.Remote)
		}
	}
	// Forged descriptors are rejected before anything is posted.
	for _, bad := range []transceiver.Transfer{
		{Pairs: []transceiver.BlockPair{{Local: 0, Remote: 48}}},
		{Pairs: []transceiver.BlockPair{{Local: 64, Remote: 0}}},
		{Pairs: []transceiver.BlockPair{{Local: 0, Remote: 5}}, RemoteBlocks: []int32{1, 2}},
	} {
		if err := p.Write(ctx, bad); !errors.Is(err, transceiver.ErrBadDescriptor) {
			t.Errorf("forged %+v: %v", bad, err)
		}
	}
	// Nobody notifies request 12345: the wait times out.
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := b.WaitNotification(wctx, 12345); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait without notification: %v", err)
	}
}
