package transceivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"disagg/transceiver"
	"disagg/transceiver/internal/cudamem"
	"disagg/worker/kvcache"
)

// pair sets up the parent's pool and agent and a connected child.
type pair struct {
	pool   *kvcache.Pool
	region transceiver.Region
	agent  transceiver.Transceiver
	stg    *transceiver.Staging // agent, as the Staging wrapper it is
	peer   transceiver.Peer
	c      *child
}

// opts are setup's knobs beyond the block counts.
type opts struct {
	faultEvery int
	// parentStaging and childStaging set DISAGG_KV_STAGING on each side
	// ("" or "force"), maxTokens their max_tokens_in_buffer.
	parentStaging, childStaging string
	maxTokens                   int
}

func (s Suite) setup(t testing.TB, layout kvcache.Layout, parentBlocks, childBlocks, faultEvery int) *pair {
	t.Helper()
	return s.setupOpts(t, layout, parentBlocks, childBlocks, opts{faultEvery: faultEvery})
}

func (s Suite) setupOpts(t testing.TB, layout kvcache.Layout, parentBlocks, childBlocks int, o opts) *pair {
	t.Helper()
	s.Require(t)
	pool, err := kvcache.NewHostPool(layout, parentBlocks)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Close() })
	region := transceiver.RegionOf(pool)
	FillRandom(region, 11)
	c := startChild(t, peerSpec{Layout: layout, NumBlocks: childBlocks, Seed: 22, Staging: o.childStaging, MaxTokens: o.maxTokens})
	cfg := transceiver.Config{Name: "parent", KVTransferTimeoutMs: 5000, FaultEvery: o.faultEvery, Staging: o.parentStaging, MaxTokensInBuffer: o.maxTokens}
	inner, err := s.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := transceiver.Stage(inner, cfg)
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := a.Register(region); err != nil {
		t.Fatal(err)
	}
	peer, err := a.Connect(context.Background(), c.info)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = peer.Close() })
	info, err := a.LocalInfo()
	if err != nil {
		t.Fatal(err)
	}
	c.mustCall("CONNECT %s", b64(info))
	return &pair{pool: pool, region: region, agent: a, stg: a, peer: peer, c: c}
}

func localBytes(r transceiver.Region, ids []int32) []byte {
	var b []byte
	for _, id := range ids {
		b = append(b, Block(r, id)...)
	}
	return b
}

func sides(pairs []transceiver.BlockPair) (local, remote []int32) {
	for _, p := range pairs {
		local = append(local, p.Local)
		remote = append(remote, p.Remote)
	}
	return local, remote
}

// Transfers moves random bytes between random, non-contiguous
// block mappings of several block sizes, in both directions and both
// modes (push and pull), and checks them byte for byte.
func (s Suite) Transfers(t *testing.T) {
	layouts := []kvcache.Layout{
		{Layers: 3, KVHeads: 1, HeadDim: 5, TokensPerBlock: 3, DType: kvcache.Float16},     // 180 B, odd
		{Layers: 1, KVHeads: 1, HeadDim: 8, TokensPerBlock: 4, DType: kvcache.Float32},     // 256 B
		{Layers: 2, KVHeads: 2, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16},  // 16 KiB
		{Layers: 22, KVHeads: 4, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16}, // 352 KiB, TinyLlama
	}
	for _, layout := range layouts {
		t.Run(strings.ReplaceAll(strings.TrimSpace(byteSize(layout.BlockBytes())), " ", ""), func(t *testing.T) {
			const parentN, childN = 40, 56
			p := s.setup(t, layout, parentN, childN, 0)
			rng := rand.New(rand.NewPCG(uint64(layout.BlockBytes()), 7))
			ctx := context.Background()
			maxPairs := 30
			if layout.BlockBytes() > 64<<10 {
				maxPairs = 16
			}
			for iter := 0; iter < 3; iter++ {
				// Push parent -> child, notification with checksums.
				pairs := RandomPairs(rng, 1+rng.IntN(maxPairs), parentN, childN)
				id := uint64(1000*iter + 1)
				p.c.send("WAIT %d 20000 -", id)
				start := time.Now()
				if err := transceiver.Push(ctx, p.peer, p.region, transceiver.Transfer{RequestID: id, Pairs: pairs}, true); err != nil {
					t.Fatal(err)
				}
				if _, err := p.c.reply(); err != nil {
					t.Fatalf("child verify: %v", err)
				}
				el := time.Since(start)
				l, r := sides(pairs)
				if !bytes.Equal(localBytes(p.region, l), p.c.dump(r)) {
					t.Fatalf("push of %d pairs: bytes differ", len(pairs))
				}
				t.Logf("push %d blocks (%d descriptors, %s) in %v", len(pairs), len(transceiver.Coalesce(pairs)), byteSize(len(pairs)*layout.BlockBytes()), el)

				// Push child -> parent.
				pairs = RandomPairs(rng, 1+rng.IntN(maxPairs), childN, parentN)
				id++
				got := make(chan error, 1)
				go func() {
					wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
					defer cancel()
					_, err := transceiver.Await(wctx, p.agent.(transceiver.Waiter), p.region, id, nil, true)
					got <- err
				}()
				if _, err := p.c.call("PUSH %d %s", id, encPairs(pairs)); err != nil {
					t.Fatalf("child push: %v", err)
				}
				if err := <-got; err != nil {
					t.Fatalf("parent verify: %v", err)
				}
				l, r = sides(pairs)
				if !bytes.Equal(p.c.dump(l), localBytes(p.region, r)) {
					t.Fatal("child push: bytes differ")
				}

				// Pull child -> parent.
				p.c.mustCall("FILL %d", 100+iter)
				pairs = RandomPairs(rng, 1+rng.IntN(maxPairs), parentN, childN)
				if err := p.peer.(transceiver.Reader).Read(ctx, transceiver.Transfer{RequestID: id + 1, Pairs: pairs}); err != nil {
					t.Fatal(err)
				}
				l, r = sides(pairs)
				if !bytes.Equal(localBytes(p.region, l), p.c.dump(r)) {
					t.Fatal("pull: bytes differ")
				}
			}
			p.c.exit()
		})
	}
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20:
		return strings.TrimRight(strings.TrimRight(strconvF(float64(n)/(1<<20)), "0"), ".") + " MiB"
	case n >= 1<<10:
		return strings.TrimRight(strings.TrimRight(strconvF(float64(n)/(1<<10)), "0"), ".") + " KiB"
	}
	return strconvF(float64(n)) + " B"
}

// Forged checks that out-of-range and ungranted descriptors
// and tampered connection info are rejected before anything moves.
func (s Suite) Forged(t *testing.T) {
	layout := kvcache.Layout{Layers: 1, KVHeads: 1, HeadDim: 8, TokensPerBlock: 4, DType: kvcache.Float32}
	p := s.setup(t, layout, 8, 8, 0)
	all := []int32{0, 1, 2, 3, 4, 5, 6, 7}
	before := p.c.dump(all)
	ctx := context.Background()
	for _, tr := range []transceiver.Transfer{
		{RequestID: 1, Pairs: []transceiver.BlockPair{{Local: 0, Remote: 8}}},
		{RequestID: 2, Pairs: []transceiver.BlockPair{{Local: 0, Remote: -1}}},
		{RequestID: 3, Pairs: []transceiver.BlockPair{{Local: 0, Remote: 1 << 30}}},
		{RequestID: 4, Pairs: []transceiver.BlockPair{{Local: 0, Remote: 1}, {Local: 1, Remote: 6}}, RemoteBlocks: []int32{1, 2}},
		{RequestID: 5, Pairs: []transceiver.BlockPair{{Local: 0, Remote: 1}, {Local: 1, Remote: 1}}},
		{RequestID: 6, Pairs: []transceiver.BlockPair{{Local: 7, Remote: 1}}, LocalBlocks: []int32{0}},
	} {
		if err := p.peer.Write(ctx, tr); !errors.Is(err, transceiver.ErrBadDescriptor) {
			t.Errorf("write %d: %v, want ErrBadDescriptor", tr.RequestID, err)
		}
		if err := p.peer.(transceiver.Reader).Read(ctx, tr); !errors.Is(err, transceiver.ErrBadDescriptor) {
			t.Errorf("read %d: %v, want ErrBadDescriptor", tr.RequestID, err)
		}
	}
	if !bytes.Equal(before, p.c.dump(all)) {
		t.Fatal("a rejected transfer changed the peer's memory")
	}
	// Tampered connection info.
	bad := append([]byte(nil), p.c.info...)
	bad[4]++ // version
	if _, err := p.agent.Connect(ctx, bad); !errors.Is(err, transceiver.ErrBadInfo) {
		t.Errorf("tampered version: %v", err)
	}
	if _, err := p.agent.Connect(ctx, p.c.info[:len(p.c.info)-3]); !errors.Is(err, transceiver.ErrBadInfo) {
		t.Errorf("truncated info: %v", err)
	}
	in, err := transceiver.DecodeInfo(p.c.info)
	if err != nil {
		t.Fatal(err)
	}
	if in.Backend == transceiver.BackendNIXL {
		in.Backend = transceiver.BackendUCX
	} else {
		in.Backend = transceiver.BackendNIXL
	}
	blob, err := transceiver.EncodeInfo(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.agent.Connect(ctx, blob); !errors.Is(err, transceiver.ErrBadInfo) {
		t.Errorf("other backend: %v", err)
	}
	p.c.exit()
}

// ReceiverTimeout: the sender never completes; both sides'
// waits time out and their blocks return to the pools.
func (s Suite) ReceiverTimeout(t *testing.T) {
	layout := kvcache.Layout{Layers: 2, KVHeads: 2, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16}
	p := s.setup(t, layout, 16, 16, 0)
	childStart := p.c.freeCount()
	ids := p.c.alloc(5)
	start := time.Now()
	if _, err := p.c.call("WAIT 77 300 %s", encInts(ids)); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("child wait: %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("child timeout took %v", d)
	}
	if n := p.c.freeCount(); n != childStart {
		t.Errorf("child free blocks %d, want %d", n, childStart)
	}
	parentStart := p.pool.FreeBlocks()
	mine, err := p.pool.Alloc(5)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = transceiver.Await(ctx, p.agent.(transceiver.Waiter), p.region, 78, mine, true)
	p.pool.Free(mine)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("parent wait: %v", err)
	}
	if n := p.pool.FreeBlocks(); n != parentStart {
		t.Errorf("parent free blocks %d, want %d", n, parentStart)
	}
	p.c.exit()
}

// SenderTimeout stops the receiving process (SIGSTOP) so that nothing
// completes (with StallEnv); the write times out, the backend releases
// every request before Write returns, the blocks go back, and the peer is
// reported failed afterwards.
func (s Suite) SenderTimeout(t *testing.T) {
	if !s.StopStallsTransfers {
		t.Skip("a stopped peer does not stall this backend's transfers")
	}
	for k, v := range s.StallEnv {
		t.Setenv(k, v)
	}
	layout := kvcache.Layout{Layers: 22, KVHeads: 4, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16}
	p := s.setup(t, layout, 64, 64, 0)
	// One good transfer first, so the endpoint is wired up.
	p.c.send("WAIT 1 20000 -")
	if err := transceiver.Push(context.Background(), p.peer, p.region, transceiver.Transfer{RequestID: 1, Pairs: []transceiver.BlockPair{{Local: 0, Remote: 0}}}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.c.reply(); err != nil {
		t.Fatal(err)
	}
	if err := p.c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.c.cmd.Process.Signal(syscall.SIGCONT) }()
	start := p.pool.FreeBlocks()
	ids, err := p.pool.Alloc(64)
	if err != nil {
		t.Fatal(err)
	}
	pairs := make([]transceiver.BlockPair, len(ids))
	for i, id := range ids {
		pairs[i] = transceiver.BlockPair{Local: id, Remote: int32(63 - i)} // no coalescing: 64 puts
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err = p.peer.Write(ctx, transceiver.Transfer{RequestID: 2, Pairs: pairs, LocalBlocks: ids})
	el := time.Since(t0)
	p.pool.Free(ids)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write to a stopped peer: %v (after %v), want deadline exceeded", err, el)
	}
	if el > 5*time.Second {
		t.Errorf("write took %v to give up", el)
	}
	if n := p.pool.FreeBlocks(); n != start {
		t.Errorf("free blocks %d, want %d", n, start)
	}
	if err := p.peer.Write(context.Background(), transceiver.Transfer{Pairs: pairs[:1]}); !errors.Is(err, transceiver.ErrPeerFailed) {
		t.Errorf("write after abort: %v, want ErrPeerFailed", err)
	}
	t.Logf("write to a stopped peer gave up after %v: %v", el, err)
	if s.KillStalledPeer != nil && s.KillStalledPeer() {
		t.Log("killing the stopped peer instead of resuming it (known backend bug, see KillStalledPeer)")
		if err := p.c.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		return
	}
	// The peer resumes and talks to an endpoint we force-closed; we must
	// survive that, and the peer must still answer.
	if err := p.c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	p.c.mustCall("FREECOUNT")
	p.c.exit()
}

// PeerKilled: the peer is killed while transfers run; the
// writer gets an error, never a hang.
func (s Suite) PeerKilled(t *testing.T) {
	for _, stallEnv := range []bool{true, false} {
		name := "default-env"
		if stallEnv {
			name = "stall-env"
		}
		t.Run(name, func(t *testing.T) {
			if stallEnv {
				if len(s.StallEnv) == 0 {
					t.Skip("no stall environment")
				}
				for k, v := range s.StallEnv {
					t.Setenv(k, v)
				}
			}
			layout := kvcache.Layout{Layers: 22, KVHeads: 4, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16}
			p := s.setup(t, layout, 32, 32, 0)
			pairs := make([]transceiver.BlockPair, 32)
			for i := range pairs {
				pairs[i] = transceiver.BlockPair{Local: int32(i), Remote: int32((i * 7) % 32)}
			}
			errc := make(chan error, 1)
			okCount := make(chan int, 1)
			go func() {
				n := 0
				for {
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					err := transceiver.Push(ctx, p.peer, p.region, transceiver.Transfer{RequestID: uint64(n), Pairs: pairs}, false)
					cancel()
					if err != nil {
						okCount <- n
						errc <- err
						return
					}
					n++
				}
			}()
			time.Sleep(100 * time.Millisecond)
			if err := p.c.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-errc:
				t.Logf("after %d good transfers: %v", <-okCount, err)
			case <-time.After(30 * time.Second):
				t.Fatal("transfers to a killed peer did not fail within 30s")
			}
		})
	}
}

// FaultInjection fails every 5th posted descriptor: those
// transfers return ErrInjected and the receiver is told to abort; every
// other transfer arrives intact.
func (s Suite) FaultInjection(t *testing.T) {
	layout := kvcache.Layout{Layers: 2, KVHeads: 2, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16}
	const n = 48
	p := s.setup(t, layout, n, n, 5)
	rng := rand.New(rand.NewPCG(5, 5))
	failed, ok := 0, 0
	for i := 0; i < 30; i++ {
		FillRandom(p.region, uint64(i))
		pairs := RandomPairs(rng, 2+rng.IntN(12), n, n)
		id := uint64(500 + i)
		p.c.send("WAIT %d 20000 -", id)
		err := transceiver.Push(context.Background(), p.peer, p.region, transceiver.Transfer{RequestID: id, Pairs: pairs}, true)
		_, werr := p.c.reply()
		switch {
		case errors.Is(err, transceiver.ErrInjected):
			failed++
			if werr == nil || !strings.Contains(werr.Error(), "aborted") {
				t.Fatalf("receiver of an injected failure: %v, want aborted", werr)
			}
		case err != nil:
			t.Fatalf("transfer %d: %v", i, err)
		default:
			ok++
			if werr != nil {
				t.Fatalf("receiver %d: %v", i, werr)
			}
			l, r := sides(pairs)
			if !bytes.Equal(localBytes(p.region, l), p.c.dump(r)) {
				t.Fatalf("transfer %d: bytes differ", i)
			}
		}
	}
	if failed == 0 || ok == 0 {
		t.Fatalf("%d injected failures and %d good transfers; want some of each", failed, ok)
	}
	t.Logf("%d injected failures, %d good transfers", failed, ok)
	p.c.exit()
}

// Throughput logs the bandwidth of moving a 2048-token TinyLlama request
// (128 blocks of 352 KiB, 46 MB) to the peer and back: one coalesced
// descriptor, and 128 scattered ones. It asserts correctness only; the
// figures are for docs/PERFORMANCE.md.
func (s Suite) Throughput(t *testing.T) {
	layout := kvcache.Layout{Layers: 22, KVHeads: 4, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16}
	const n = 128
	p := s.setup(t, layout, n, n, 0)
	ctx := context.Background()
	contiguous := make([]transceiver.BlockPair, n)
	scattered := make([]transceiver.BlockPair, n)
	for i := range contiguous {
		contiguous[i] = transceiver.BlockPair{Local: int32(i), Remote: int32(i)}
		scattered[i] = transceiver.BlockPair{Local: int32(i), Remote: int32((i * 37) % n)} // 37 is coprime with 128
	}
	bytesPer := float64(n * layout.BlockBytes())
	for _, c := range []struct {
		name  string
		pairs []transceiver.BlockPair
	}{{"1 descriptor", contiguous}, {"128 descriptors", scattered}} {
		for _, write := range []bool{true, false} {
			mode := "read"
			if write {
				mode = "write"
			}
			const reps = 10
			tr := transceiver.Transfer{Pairs: c.pairs}
			if err := s.move(ctx, p, tr, write); err != nil { // warm-up
				t.Fatal(err)
			}
			start := time.Now()
			for i := 0; i < reps; i++ {
				if err := s.move(ctx, p, tr, write); err != nil {
					t.Fatal(err)
				}
			}
			el := time.Since(start) / reps
			t.Logf("%s %s of %.1f MB: %v per transfer, %.2f GB/s", mode, c.name, bytesPer/1e6, el, bytesPer/el.Seconds()/1e9)
		}
	}
	for _, c := range []struct {
		name  string
		pairs []transceiver.BlockPair
	}{{"1 descriptor", contiguous}, {"128 descriptors", scattered}} {
		el := s.timePush(t, p, c.pairs, 10)
		t.Logf("push on request %s of %.1f MB: %v per transfer, %.2f GB/s", c.name, bytesPer/1e6, el, bytesPer/el.Seconds()/1e9)
	}
	l, r := sides(scattered[:8])
	if !bytes.Equal(localBytes(p.region, l), p.c.dump(r)) {
		t.Fatal("bytes differ after the throughput runs")
	}
	p.c.exit()
}

func (s Suite) move(ctx context.Context, p *pair, tr transceiver.Transfer, write bool) error {
	if write {
		return p.peer.Write(ctx, tr)
	}
	return p.peer.(transceiver.Reader).Read(ctx, tr)
}

// DeviceTransfers is the GPU benchmark of a 2048-token TinyLlama request
// (128 blocks of 352 KiB, 46 MB) between the CUDA device pools of two
// processes, beside a device-to-device copy of the same size measured in
// the same run (the target is at least half of it): direct WRITE and READ
// (one coalesced descriptor, and 128 scattered ones) and direct push on
// request, where the backend registers device memory; and the staged
// path (both sides DISAGG_KV_STAGING=force: device -> pinned host ->
// network -> pinned host -> device, max_tokens_in_buffer 2048 and 512),
// which also runs with a UCX that lacks CUDA. Every mode is checked byte
// for byte. It skips without a GPU.
func (s Suite) DeviceTransfers(t *testing.T) {
	s.Require(t)
	if err := cudamem.Available(); err != nil {
		t.Skipf("no CUDA device: %v", err)
	}
	layout := kvcache.Layout{Layers: 22, KVHeads: 4, HeadDim: 64, TokensPerBlock: 16, DType: kvcache.BFloat16}
	const n = 128
	size := n * layout.BlockBytes()
	bytesPer := float64(size)
	copyGBs := deviceCopyGBs(t, size)
	if g := os.Getenv(EnvPeerGPU); g != "" {
		t.Logf("peer-to-peer copy GPU 0 -> GPU %s of %.1f MB: %.1f GB/s (the reference; the peer process runs on GPU %s)", g, bytesPer/1e6, copyGBs, g)
	} else {
		t.Logf("device copy of %.1f MB: %.1f GB/s (the reference)", bytesPer/1e6, copyGBs)
	}
	report := func(what string, el time.Duration) {
		gbs := bytesPer / el.Seconds() / 1e9
		t.Logf("%s of %.1f MB: %v per transfer, %.1f GB/s, %.0f%% of the device copy", what, bytesPer/1e6, el, gbs, 100*gbs/copyGBs)
	}
	contiguous := make([]transceiver.BlockPair, n)
	scattered := make([]transceiver.BlockPair, n)
	for i := range contiguous {
		contiguous[i] = transceiver.BlockPair{Local: int32(i), Remote: int32(i)}
		scattered[i] = transceiver.BlockPair{Local: int32(i), Remote: int32((i * 37) % n)}
	}
	ctx := context.Background()
	const reps = 10
	t.Run("direct", func(t *testing.T) {
		p := s.devicePair(t, layout, n, "", 0)
		if !p.stg.SupportsDevice() {
			t.Skip("the backend cannot register device memory here (for UCX: a libucp without cuda); see the staged case")
		}
		for _, cs := range []struct {
			name  string
			pairs []transceiver.BlockPair
		}{{"1 descriptor", contiguous}, {"128 descriptors", scattered}} {
			for _, write := range []bool{true, false} {
				mode := "read"
				if write {
					mode = "write"
				} else {
					p.c.mustCall("FILL %d", 99)
				}
				tr := transceiver.Transfer{Pairs: cs.pairs}
				if err := s.move(ctx, p, tr, write); err != nil {
					t.Fatalf("%s %s: %v", mode, cs.name, err)
				}
				l, r := sides(cs.pairs[:8])
				if !bytes.Equal(localBytes(p.region, l), p.c.dump(r)) {
					t.Fatalf("device %s %s: bytes differ", mode, cs.name)
				}
				report("direct "+mode+" "+cs.name, timeReps(t, reps, func() error { return s.move(ctx, p, tr, write) }))
			}
		}
		// the fixed cost of a write: one block, whose copy takes well under a microsecond
		one := transceiver.Transfer{Pairs: contiguous[:1]}
		el := timeReps(t, reps, func() error { return s.move(ctx, p, one, true) })
		t.Logf("direct write of 1 block (%d KB): %v per transfer (the fixed cost)", layout.BlockBytes()>>10, el)
		report("direct push on request, 1 descriptor", s.timePush(t, p, contiguous, reps))
		report("direct push on request, 128 descriptors", s.timePush(t, p, scattered, reps))
		p.c.exit()
	})
	for _, maxTokens := range []int{2048, 512} {
		t.Run(fmt.Sprintf("staged-%d", maxTokens), func(t *testing.T) {
			p := s.devicePair(t, layout, n, transceiver.StagingForce, maxTokens)
			before := p.stg.Stats().Chunks
			el := s.timePush(t, p, scattered, reps)
			if got, per := p.stg.Stats().Chunks-before, chunksFor(n, p.stg.ChunkBlocks()); got%per != 0 || got < int64(reps+1)*per {
				t.Errorf("staged %d chunks in %d+ transfers, want a multiple of %d", got, reps+1, per)
			}
			report(fmt.Sprintf("staged push on request (max_tokens_in_buffer %d), 128 descriptors", maxTokens), el)
			p.c.exit()
		})
	}
}

// deviceCopyGBs measures a device-to-device copy of size bytes.
// With EnvPeerGPU set, the copy goes from device 0 to that device, peer to
// peer (the reference for transfers between two GPUs).
func deviceCopyGBs(t *testing.T, size int) float64 {
	t.Helper()
	a, err := cudamem.Alloc(size)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	var b *cudamem.Memory
	if g := os.Getenv(EnvPeerGPU); g != "" {
		dev, perr := strconv.Atoi(g)
		if perr != nil {
			t.Fatalf("%s=%q: want a device ordinal", EnvPeerGPU, g)
		}
		if err := cudamem.EnablePeer(dev); err != nil {
			t.Logf("no peer access to device %d (%v): the copy may stage through the host", dev, err)
		}
		b, err = cudamem.AllocOn(dev, size)
	} else {
		b, err = cudamem.Alloc(size)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close() }()
	if err := cudamem.Copy(b.Ptr(), a.Ptr(), size); err != nil { // warm-up
		t.Fatal(err)
	}
	if err := cudamem.Sync(); err != nil {
		t.Fatal(err)
	}
	const reps = 20
	start := time.Now()
	for i := 0; i < reps; i++ {
		if err := cudamem.Copy(b.Ptr(), a.Ptr(), size); err != nil {
			t.Fatal(err)
		}
	}
	if err := cudamem.Sync(); err != nil {
		t.Fatal(err)
	}
	return float64(size) / (time.Since(start) / reps).Seconds() / 1e9
}

// devicePair is setupOpts with both pools in device memory.
func (s Suite) devicePair(t *testing.T, layout kvcache.Layout, n int, staging string, maxTokens int) *pair {
	t.Helper()
	mem, err := cudamem.Alloc(n * layout.BlockBytes())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := kvcache.NewPool(layout, n, mem)
	if err != nil {
		_ = mem.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Close() })
	region := transceiver.RegionOf(pool)
	FillRandom(region, 11)
	cfg := transceiver.Config{Name: "parent", KVTransferTimeoutMs: 30000, Staging: staging, MaxTokensInBuffer: maxTokens}
	inner, err := s.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := transceiver.Stage(inner, cfg)
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Error(err)
		}
	})
	if staging == "" && !a.SupportsDevice() {
		return &pair{pool: pool, region: region, agent: a, stg: a}
	}
	if err := a.Register(region); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, peerSpec{Layout: layout, NumBlocks: n, Seed: 22, Device: true, Staging: staging, MaxTokens: maxTokens})
	peer, err := a.Connect(context.Background(), c.info)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = peer.Close() })
	info, err := a.LocalInfo()
	if err != nil {
		t.Fatal(err)
	}
	c.mustCall("CONNECT %s", b64(info))
	return &pair{pool: pool, region: region, agent: a, stg: a, peer: peer, c: c}
}

// timePush has the child push pairs' remote blocks into the local ones on
// request (landing through the staging buffer when staged), checks the
// bytes once, and returns the time of one transfer over reps.
func (s Suite) timePush(t *testing.T, p *pair, pairs []transceiver.BlockPair, reps int) time.Duration {
	t.Helper()
	ctx := context.Background()
	local, remote := sides(pairs)
	id := uint64(1 << 20)
	once := func() error {
		return p.stg.Land(ctx, local, func(ctx context.Context, dst []int32, from, to int) ([]uint32, error) {
			id++
			return ask(ctx, p, id, dst, remote[from:to])
		})
	}
	p.c.mustCall("FILL %d", 123)
	if err := once(); err != nil {
		t.Fatalf("push on request: %v", err)
	}
	if !bytes.Equal(localBytes(p.region, local[:8]), p.c.dump(remote[:8])) {
		t.Fatal("push on request: bytes differ")
	}
	// Timed: the child serves a run of requests without a command each,
	// until a plain notification ends the run.
	p.c.send("SERVEN %d 120000", id+1)
	el := timeReps(t, reps, func() error {
		return p.stg.Land(ctx, local, func(ctx context.Context, dst []int32, from, to int) ([]uint32, error) {
			id++
			return askServed(ctx, p, id, dst, remote[from:to])
		})
	})
	if err := p.peer.(transceiver.Notifier).Notify(ctx, transceiver.Notification{RequestID: id + 1, Err: "end of run"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.c.reply(); err != nil {
		t.Fatalf("child SERVEN: %v", err)
	}
	return el
}

// timeReps runs f for a tenth of a second untimed (the GPU leaves its idle
// clocks, caches and mappings warm up), then at least reps times and for
// at least half a second (fast modes take microseconds), and returns the
// median time of one run.
func timeReps(t *testing.T, reps int, f func() error) time.Duration {
	t.Helper()
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	var runs []time.Duration
	for start := time.Now(); len(runs) < reps || time.Since(start) < 500*time.Millisecond; {
		t0 := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, time.Since(t0))
	}
	slices.Sort(runs)
	return runs[len(runs)/2]
}
