package transceivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"disagg/transceiver"
	"disagg/worker/kvcache"
)

// ask has the child push its blocks src into the parent's blocks dst
// (which are staging slots when the parent lands through Staging): a push
// request notification, answered by the child's SERVE (a write, then a
// notification with checksums). It returns the child's checksums.
func ask(ctx context.Context, p *pair, id uint64, dst, src []int32) ([]uint32, error) {
	p.c.send("SERVE %d 20000", id)
	sums, err := askServed(ctx, p, id, dst, src)
	if _, cerr := p.c.reply(); cerr != nil {
		return nil, fmt.Errorf("child serve: %w", cerr)
	}
	return sums, err
}

// askServed is ask for a child already told to serve id (SERVEN).
func askServed(ctx context.Context, p *pair, id uint64, dst, src []int32) ([]uint32, error) {
	info, err := p.agent.LocalInfo()
	if err != nil {
		return nil, err
	}
	req := transceiver.Notification{RequestID: id, Blocks: slices.Clone(dst),
		Push: &transceiver.PushRequest{Src: slices.Clone(src), Info: info, Budget: 10 * time.Second}}
	if err := p.peer.(transceiver.Notifier).Notify(ctx, req); err != nil {
		return nil, err
	}
	n, err := p.agent.(transceiver.Waiter).WaitNotification(ctx, id)
	if err != nil {
		return nil, err
	}
	if n.Err != "" {
		return nil, errors.New(n.Err)
	}
	if !slices.Equal(n.Blocks, dst) {
		return nil, fmt.Errorf("answer names blocks %v, asked for %v", n.Blocks, dst)
	}
	return n.Sums, nil
}

func (c *child) stats() int64 {
	c.t.Helper()
	n, err := strconv.ParseInt(c.mustCall("STATS"), 10, 64)
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}

func chunksFor(blocks, perChunk int) int64 { return int64((blocks + perChunk - 1) / perChunk) }

// PushRequests has the child push on the parent's request (the message
// a generation worker sends a context worker), with each side direct or
// staged (DISAGG_KV_STAGING=force on host memory: plain copies through the
// staging buffer). Random bytes, random non-contiguous mappings, byte for
// byte checks; a staged side moves ceil(blocks / chunk) chunks.
func (s Suite) PushRequests(t *testing.T) {
	layout := kvcache.Layout{Layers: 2, KVHeads: 2, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16} // 16 KiB
	const parentN, childN, maxTokens = 40, 48, 48                                                             // 3 blocks per chunk
	for _, c := range []struct{ parent, child string }{
		{"", ""}, {transceiver.StagingForce, ""}, {"", transceiver.StagingForce}, {transceiver.StagingForce, transceiver.StagingForce},
	} {
		name := fmt.Sprintf("parent-%s-child-%s", or(c.parent, "direct"), or(c.child, "direct"))
		t.Run(name, func(t *testing.T) {
			p := s.setupOpts(t, layout, parentN, childN, opts{parentStaging: c.parent, childStaging: c.child, maxTokens: maxTokens})
			per := transceiver.StagingBlocks(maxTokens, layout.TokensPerBlock)
			rng := rand.New(rand.NewPCG(3, uint64(len(name))))
			ctx := context.Background()
			for iter := 0; iter < 3; iter++ {
				p.c.mustCall("FILL %d", 200+iter)
				pairs := RandomPairs(rng, 1+rng.IntN(20), parentN, childN)
				local, remote := sides(pairs)
				id := uint64(7000 + iter)
				before, childBefore := p.stg.Stats().Chunks, p.c.stats()
				asked := 0
				err := p.stg.Land(ctx, local, func(ctx context.Context, dst []int32, from, to int) ([]uint32, error) {
					asked++
					return ask(ctx, p, id+uint64(1000*asked), dst, remote[from:to])
				})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(localBytes(p.region, local), p.c.dump(remote)) {
					t.Fatalf("push of %d blocks on request: bytes differ", len(pairs))
				}
				wantAsks, parentChunks := 1, int64(0)
				if c.parent != "" {
					wantAsks, parentChunks = int(chunksFor(len(pairs), per)), chunksFor(len(pairs), per)
				}
				if asked != wantAsks {
					t.Errorf("%d push requests for %d blocks, want %d", asked, len(pairs), wantAsks)
				}
				if got := p.stg.Stats().Chunks - before; got != parentChunks {
					t.Errorf("parent staged %d chunks for %d blocks, want %d", got, len(pairs), parentChunks)
				}
				if c.child != "" {
					// The child stages each request's blocks in chunks.
					want := int64(0)
					if c.parent != "" {
						for from := 0; from < len(pairs); from += per {
							want += chunksFor(min(per, len(pairs)-from), per)
						}
					} else {
						want = chunksFor(len(pairs), per)
					}
					if got := p.c.stats() - childBefore; got != want {
						t.Errorf("child staged %d chunks for %d blocks, want %d", got, len(pairs), want)
					}
				}
			}
			p.c.exit()
		})
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Staged moves blocks from and into a staged parent (max_tokens_in_buffer
// of 2 blocks): a write with checksums computed in the staging buffer,
// verified by the child, and a read; bytes checked byte for byte and
// chunks counted.
func (s Suite) Staged(t *testing.T) {
	layout := kvcache.Layout{Layers: 3, KVHeads: 1, HeadDim: 5, TokensPerBlock: 3, DType: kvcache.Float16} // 180 B, odd
	const parentN, childN, maxTokens = 40, 56, 5                                                           // 2 blocks per chunk
	p := s.setupOpts(t, layout, parentN, childN, opts{parentStaging: transceiver.StagingForce, maxTokens: maxTokens})
	if !p.stg.Staged() || p.stg.ChunkBlocks() != 2 {
		t.Fatalf("staged %v with %d blocks per chunk, want 2", p.stg.Staged(), p.stg.ChunkBlocks())
	}
	rng := rand.New(rand.NewPCG(9, 9))
	ctx := context.Background()
	for iter := 0; iter < 3; iter++ {
		pairs := RandomPairs(rng, 1+rng.IntN(30), parentN, childN)
		id := uint64(9000 + iter)
		before := p.stg.Stats().Chunks
		p.c.send("WAIT %d 20000 -", id)
		if err := transceiver.Push(ctx, p.peer, p.region, transceiver.Transfer{RequestID: id, Pairs: pairs}, true); err != nil {
			t.Fatal(err)
		}
		if _, err := p.c.reply(); err != nil {
			t.Fatalf("child verify: %v", err)
		}
		l, r := sides(pairs)
		if !bytes.Equal(localBytes(p.region, l), p.c.dump(r)) {
			t.Fatal("staged write: bytes differ")
		}
		if got, want := p.stg.Stats().Chunks-before, chunksFor(len(pairs), 2); got != want {
			t.Errorf("staged write of %d blocks in %d chunks, want %d", len(pairs), got, want)
		}
		p.c.mustCall("FILL %d", 300+iter)
		pairs = RandomPairs(rng, 1+rng.IntN(30), parentN, childN)
		before = p.stg.Stats().Chunks
		if err := p.peer.(transceiver.Reader).Read(ctx, transceiver.Transfer{RequestID: id, Pairs: pairs}); err != nil {
			t.Fatal(err)
		}
		l, r = sides(pairs)
		if !bytes.Equal(localBytes(p.region, l), p.c.dump(r)) {
			t.Fatal("staged read: bytes differ")
		}
		if got, want := p.stg.Stats().Chunks-before, chunksFor(len(pairs), 2); got != want {
			t.Errorf("staged read of %d blocks in %d chunks, want %d", len(pairs), got, want)
		}
	}
	// Forged pairs are rejected before anything is staged or posted.
	before := p.stg.Stats().Chunks
	bad := transceiver.Transfer{RequestID: 1, Pairs: []transceiver.BlockPair{{Local: 0, Remote: 1}, {Local: 1, Remote: childN}}}
	if err := p.peer.Write(ctx, bad); !errors.Is(err, transceiver.ErrBadDescriptor) {
		t.Errorf("staged write of a forged pair: %v", err)
	}
	if p.stg.Stats().Chunks != before {
		t.Error("a rejected staged write staged a chunk")
	}
	p.c.exit()
}

// PushTimeout: the child never answers a push request (or is killed
// after it arrives); the parent's wait ends at its deadline with an error,
// never a hang, the staging buffer and the parent's blocks are free again,
// and the child's pool is whole.
func (s Suite) PushTimeout(t *testing.T) {
	layout := kvcache.Layout{Layers: 2, KVHeads: 2, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16}
	for _, kill := range []bool{false, true} {
		t.Run(map[bool]string{false: "mute", true: "killed"}[kill], func(t *testing.T) {
			p := s.setupOpts(t, layout, 16, 16, opts{parentStaging: transceiver.StagingForce, maxTokens: 64})
			childStart := p.c.freeCount()
			start := p.pool.FreeBlocks()
			local, err := p.pool.Alloc(6)
			if err != nil {
				t.Fatal(err)
			}
			info, err := p.agent.LocalInfo()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err = p.stg.Land(ctx, local, func(ctx context.Context, dst []int32, from, to int) ([]uint32, error) {
				req := transceiver.Notification{RequestID: 55, Blocks: dst,
					Push: &transceiver.PushRequest{Src: []int32{0, 1, 2, 3, 4, 5}[from:to], Info: info, Budget: time.Second}}
				if err := p.peer.(transceiver.Notifier).Notify(ctx, req); err != nil {
					return nil, err
				}
				if kill {
					if err := p.c.cmd.Process.Kill(); err != nil {
						t.Fatal(err)
					}
				}
				_, err := p.agent.(transceiver.Waiter).WaitNotification(ctx, 55)
				return nil, err
			})
			p.pool.Free(local)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("unanswered push request: %v, want deadline exceeded", err)
			}
			if n := p.pool.FreeBlocks(); n != start {
				t.Errorf("parent free blocks %d, want %d", n, start)
			}
			// The staging buffer is free again: a second landing gets it.
			ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel2()
			if err := p.stg.Land(ctx2, []int32{0}, func(context.Context, []int32, int, int) ([]uint32, error) { return nil, nil }); err != nil {
				t.Errorf("staging buffer after a timeout: %v", err)
			}
			if kill {
				return
			}
			if n := p.c.freeCount(); n != childStart {
				t.Errorf("child free blocks %d, want %d", n, childStart)
			}
			p.c.exit()
		})
	}
}
