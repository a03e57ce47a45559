package transceivertest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"disagg/transceiver"
	"disagg/worker/kvcache"
)

// BenchLatency measures a backend's fixed costs between two agents of one
// process, each on its own progress loop, with one 4 KB block:
//
//   - write: Peer.Write, from the call to the caller having the
//     completion (post, flush, hand-back), while the target expects a
//     notification, as a generation worker does while its KV arrives;
//   - pull: a Read of one block from the other agent, as a generation
//     worker pulls its KV (the alternative to push below);
//   - notify: a notification's round trip, echoed back by the other agent;
//   - push: a push on request's round trip, as a generation worker asks a
//     context worker for its KV: a Notify carrying a PushRequest, the other
//     agent's answer (a write and a notification with checksums, the
//     context worker's path) and the asker's WaitNotification.
//
// All three are latencies: each call waits for the previous one.
func (s Suite) BenchLatency(b *testing.B) {
	s.Require(b)
	const bb = 4096
	newAgent := func(name string, r transceiver.Region) transceiver.Transceiver {
		a, err := s.New(transceiver.Config{Name: name, KVTransferTimeoutMs: 5000})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = a.Close() })
		if err := a.Register(r); err != nil {
			b.Fatal(err)
		}
		return a
	}
	ctx := context.Background()
	src, dst := NewHostRegion(b, bb, 4), NewHostRegion(b, bb, 4)
	FillRandom(src, 5)
	asker, holder := newAgent("bench-asker", dst), newAgent("bench-holder", src)
	holderInfo, err := holder.LocalInfo()
	if err != nil {
		b.Fatal(err)
	}
	askerInfo, err := asker.LocalInfo()
	if err != nil {
		b.Fatal(err)
	}
	toHolder, err := asker.Connect(ctx, holderInfo)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = toHolder.Close() })

	b.Run("write", func(b *testing.B) {
		defer expecting(holder)()
		tr := transceiver.Transfer{Pairs: []transceiver.BlockPair{{Local: 0, Remote: 1}}}
		if err := toHolder.Write(ctx, tr); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := toHolder.Write(ctx, tr); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("pull", func(b *testing.B) {
		rd, ok := toHolder.(transceiver.Reader)
		if !ok {
			b.Skipf("%s peers cannot read", asker.Backend())
		}
		defer expecting(holder)()
		tr := transceiver.Transfer{Pairs: []transceiver.BlockPair{{Local: 2, Remote: 3}}}
		if err := rd.Read(ctx, tr); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := rd.Read(ctx, tr); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("notify", func(b *testing.B) {
		nt, ok := toHolder.(transceiver.Notifier)
		if !ok {
			b.Skipf("%s peers cannot notify", asker.Backend())
		}
		toAsker, err := holder.Connect(ctx, askerInfo)
		if err != nil {
			b.Fatal(err)
		}
		defer toAsker.Close()
		back := toAsker.(transceiver.Notifier)
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		const first = 1 << 40
		echoed := make(chan error, 1)
		go func() {
			for id := uint64(first); ; id++ {
				n, err := holder.(transceiver.Waiter).WaitNotification(sctx, id)
				if err == nil && n.Err != "" {
					echoed <- nil
					return
				}
				if err == nil {
					err = back.Notify(sctx, n)
				}
				if err != nil {
					echoed <- err
					return
				}
			}
		}()
		id := uint64(first)
		ping := func() error {
			n := transceiver.Notification{RequestID: id, Blocks: []int32{1}}
			id++
			if err := nt.Notify(ctx, n); err != nil {
				return err
			}
			_, err := asker.(transceiver.Waiter).WaitNotification(ctx, n.RequestID)
			return err
		}
		for b.Loop() {
			if err := ping(); err != nil {
				b.Fatal(err)
			}
		}
		if err := nt.Notify(ctx, transceiver.Notification{RequestID: id, Err: "end of run"}); err != nil {
			b.Fatal(err)
		}
		if err := <-echoed; err != nil {
			b.Fatalf("echo: %v", err)
		}
	})

	b.Run("push", func(b *testing.B) {
		nt, ok := toHolder.(transceiver.Notifier)
		if !ok {
			b.Skipf("%s peers cannot notify", asker.Backend())
		}
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		const first = 1 << 30
		served := make(chan error, 1)
		go func() {
			peers := map[string]transceiver.Peer{}
			defer func() {
				for _, p := range peers {
					_ = p.Close()
				}
			}()
			var err error
			for id := uint64(first); err == nil; id++ {
				err = servePush(sctx, holder, src, id, peers)
			}
			served <- err
		}()
		id := uint64(first)
		ask := func() error {
			req := transceiver.Notification{RequestID: id, Blocks: []int32{2},
				Push: &transceiver.PushRequest{Src: []int32{3}, Info: askerInfo, Budget: 5 * time.Second}}
			id++
			if err := nt.Notify(ctx, req); err != nil {
				return err
			}
			n, err := asker.(transceiver.Waiter).WaitNotification(ctx, req.RequestID)
			if err == nil && n.Err != "" {
				err = errors.New(n.Err)
			}
			return err
		}
		if err := ask(); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := ask(); err != nil {
				b.Fatal(err)
			}
		}
		// A notification that is not a push request ends the server.
		if err := nt.Notify(ctx, transceiver.Notification{RequestID: id, Err: "end of run"}); err != nil {
			b.Fatal(err)
		}
		if err := <-served; !errors.Is(err, errNotPush) {
			b.Fatalf("push server: %v", err)
		}
	})
}

// BenchBandwidth measures write bandwidth to a peer process, as
// ucx_perftest's put bandwidth runs between two processes, against block
// size (4 KB, 64 KB, 1 MB) and block count (1, 16, 128): one op is one
// Peer.Write of count blocks, each its own descriptor (every other block
// on both sides, so none coalesce), and b.SetBytes makes the result MB/s.
// The peer waits for a notification throughout, as a generation worker
// waits for its KV's (a backend that progresses by polling then polls at
// its fast rate, which transports that need the target's progress, TCP,
// rely on). `make bench-transfer` sets it beside ucx_perftest on the same
// transport (scripts/bench_transfer.sh).
func (s Suite) BenchBandwidth(b *testing.B) { s.benchBandwidth(b, "write") }

// BenchReadBandwidth is BenchBandwidth with Peer.Read (pull) in place of
// Write (push), for backends whose peers read: which of the two a
// generation worker should ask for over a given transport.
func (s Suite) BenchReadBandwidth(b *testing.B) { s.benchBandwidth(b, "read") }

// BenchPushBandwidth is BenchBandwidth with the blocks pushed on request,
// as a generation worker asks a context worker for a request's KV: one op
// is a Land of count blocks, i.e. a push request notification, the child's
// write and its answer with checksums, verified. Staged agents
// (DISAGG_KV_STAGING=force in the environment, which the child inherits)
// gather the blocks into their staging buffers, so that each chunk of
// max_tokens_in_buffer tokens travels as one descriptor.
func (s Suite) BenchPushBandwidth(b *testing.B) { s.benchBandwidth(b, "push") }

func (s Suite) benchBandwidth(b *testing.B, mode string) {
	s.Require(b)
	const maxBlocks = 128
	ctx := context.Background()
	// one layer, one KV head of 64 bf16: 4 KB per block at 16 tokens
	for _, tpb := range []int{16, 256, 4096} {
		layout := kvcache.Layout{Layers: 1, KVHeads: 1, HeadDim: 64, TokensPerBlock: tpb, DType: kvcache.BFloat16}
		size := layout.BlockBytes()
		p := s.setup(b, layout, 2*maxBlocks, 2*maxBlocks, 0)
		const waitID = 1 << 50
		nt, notifies := p.peer.(transceiver.Notifier)
		if notifies && mode != "push" {
			p.c.send("WAIT %d %d -", uint64(waitID), 600000)
		}
		pushID := uint64(1 << 20)
		for _, count := range []int{1, 16, maxBlocks} {
			pairs := make([]transceiver.BlockPair, count)
			for i := range pairs {
				pairs[i] = transceiver.BlockPair{Local: int32(2 * i), Remote: int32(2 * i)}
			}
			tr := transceiver.Transfer{Pairs: pairs}
			b.Run(fmt.Sprintf("size=%dKB/blocks=%d", size>>10, count), func(b *testing.B) {
				var move func(context.Context, transceiver.Transfer) error
				switch mode {
				case "write":
					move = p.peer.Write
				case "read":
					rd, ok := p.peer.(transceiver.Reader)
					if !ok {
						b.Skipf("%s peers cannot read", p.agent.Backend())
					}
					move = rd.Read
				case "push":
					if !notifies {
						b.Skipf("%s peers cannot notify", p.agent.Backend())
					}
					local, remote := sides(pairs)
					// the child answers push requests pushID+1, +2, ... until a
					// plain notification ends the run
					p.c.send("SERVEN %d 600000", pushID+1)
					defer func() {
						pushID++
						if err := nt.Notify(ctx, transceiver.Notification{RequestID: pushID, Err: "end of run"}); err != nil {
							b.Fatal(err)
						}
						if _, err := p.c.reply(); err != nil {
							b.Fatalf("child SERVEN: %v", err)
						}
					}()
					move = func(ctx context.Context, _ transceiver.Transfer) error {
						return p.stg.Land(ctx, local, func(ctx context.Context, dst []int32, from, to int) ([]uint32, error) {
							pushID++
							return askServed(ctx, p, pushID, dst, remote[from:to])
						})
					}
				}
				b.SetBytes(int64(size * count))
				if err := move(ctx, tr); err != nil {
					b.Fatal(err)
				}
				for b.Loop() {
					if err := move(ctx, tr); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		if notifies && mode != "push" {
			// an error notification ends the peer's wait (with that error)
			if err := nt.Notify(ctx, transceiver.Notification{RequestID: waitID, Err: "end of benchmark"}); err != nil {
				b.Fatal(err)
			}
			if _, err := p.c.reply(); err == nil || !strings.Contains(err.Error(), "end of benchmark") {
				b.Fatalf("peer WAIT: %v, want the end-of-benchmark error", err)
			}
		}
		p.c.exit()
	}
}

// expecting keeps a notification wait open on a until the returned func is
// called, as a generation worker waits for its KV's notification while the
// blocks arrive: a backend that progresses by polling (NIXL without its
// progress thread) then polls at its fast rate, which transports that need
// the target's progress (TCP) rely on.
func expecting(a transceiver.Transceiver) (stop func()) {
	w, ok := a.(transceiver.Waiter)
	if !ok {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = w.WaitNotification(ctx, 1<<50)
	}()
	return func() {
		cancel()
		<-done
	}
}
