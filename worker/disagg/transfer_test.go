package disagg

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"
	"unsafe"

	dto "github.com/prometheus/client_model/go"

	"disagg/api"
	"disagg/transceiver"
	"disagg/worker/engine"
	"disagg/worker/kvcache"

	_ "disagg/transceiver/ucx" // the real backend these tests move KV with
)

// testLayout: 4 tokens per block, 64-byte blocks.
var testLayout = kvcache.Layout{Layers: 1, KVHeads: 1, HeadDim: 4, TokensPerBlock: 4, DType: kvcache.Float32}

// side is one worker of a test cluster: pool, real UCX transceiver (in
// Staging, as transceiver.New makes it) and Manager.
type side struct {
	pool *kvcache.Pool
	tr   *transceiver.Staging
	m    *Manager
}

type sideOpts struct {
	role      string
	blocks    int
	staging   string // "" or transceiver.StagingForce
	maxTokens int
	mode      string
	sender    time.Duration
	transfer  time.Duration
}

// newSide starts a worker over the real UCX backend; it skips when libucp
// is missing (fails under CI=true).
func newSide(t *testing.T, o sideOpts) *side {
	t.Helper()
	pool, err := kvcache.NewHostPool(testLayout, o.blocks)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Close() })
	tr, err := transceiver.New(transceiver.BackendUCX, transceiver.Config{
		Name: o.role + "-" + t.Name(), MaxTokensInBuffer: o.maxTokens, Staging: o.staging,
		KVTransferTimeoutMs: int(o.transfer / time.Millisecond),
	})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("UCX is required under CI=true: %v", err)
		}
		t.Skipf("UCX not available (%v); run scripts/setup-native.sh", err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := tr.Register(transceiver.RegionOf(pool)); err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{Role: o.role, Secret: []byte("k"), SenderTimeout: o.sender, TransferTimeout: o.transfer,
		Transceiver: tr, KV: poolKV{pool}, TransferMode: o.mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return &side{pool: pool, tr: tr.(*transceiver.Staging), m: m}
}

func blockOf(p *kvcache.Pool, b int32) []byte {
	bb := p.Layout().BlockBytes()
	return unsafe.Slice((*byte)(unsafe.Add(p.Memory().Ptr(), int(b)*bb)), bb)
}

// park fills n scattered blocks of the context side with random bytes and
// parks them for tokens tokens.
func park(t *testing.T, c *side, tokens int, seed uint64) (*api.DisaggregatedParams, []int32) {
	t.Helper()
	n := testLayout.BlocksFor(tokens)
	// Take every other block so the mapping is not contiguous.
	all, err := c.pool.Alloc(2 * n)
	if err != nil {
		t.Fatal(err)
	}
	var blocks, spare []int32
	for i, b := range all {
		if i%2 == 1 {
			blocks = append(blocks, b)
		} else {
			spare = append(spare, b)
		}
	}
	c.pool.Free(spare)
	rng := rand.New(rand.NewPCG(seed, 1))
	slices.Reverse(blocks)
	for _, b := range blocks {
		for i, s := 0, blockOf(c.pool, b); i < len(s); i++ {
			s[i] = byte(rng.Uint32())
		}
	}
	p, e := c.m.Park(&engine.KVHandoff{Blocks: blocks, Tokens: tokens}, []int32{7}, nil)
	if e != nil {
		t.Fatal(e)
	}
	return p, blocks
}

// waitFor polls cond (bounded, so a bug fails rather than hangs).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// moveAndCheck fetches a parked request and checks the bytes, then frees
// both sides and checks that the pools are whole again.
func moveAndCheck(t *testing.T, c, g *side, tokens int, seed uint64) {
	t.Helper()
	p, src := park(t, c, tokens, seed)
	r, moved, e := g.m.Fetch(context.Background(), p, make([]int32, tokens))
	if e != nil {
		t.Fatalf("fetch: %v", e)
	}
	if len(r.Blocks) != len(src) || moved.Bytes != int64(len(src)*testLayout.BlockBytes()) {
		t.Fatalf("fetched %d blocks (%d bytes) for %d", len(r.Blocks), moved.Bytes, len(src))
	}
	for i := range src {
		if !bytes.Equal(blockOf(c.pool, src[i]), blockOf(g.pool, r.Blocks[i])) {
			t.Fatalf("block %d (%d -> %d) differs", i, src[i], r.Blocks[i])
		}
	}
	g.m.Free(r.Blocks)
	waitFor(t, "the context side to free its parked blocks", func() bool { return c.m.Parked() == 0 })
	if c.pool.FreeBlocks() != c.pool.NumBlocks() || g.pool.FreeBlocks() != g.pool.NumBlocks() {
		t.Fatalf("free blocks: context %d of %d, generation %d of %d", c.pool.FreeBlocks(), c.pool.NumBlocks(), g.pool.FreeBlocks(), g.pool.NumBlocks())
	}
}

// TestTransferModes moves a request's KV between two real UCX agents in
// each mode, byte for byte: pull, push (the context side writes on the
// generation side's request), and push between two staged sides.
func TestTransferModes(t *testing.T) {
	for _, c := range []struct {
		name, mode, staging string
	}{
		{"pull", transceiver.ModePull, ""},
		{"push", transceiver.ModePush, ""},
		{"auto-host-pulls", transceiver.ModeAuto, ""},
		{"staged", transceiver.ModeAuto, transceiver.StagingForce},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := sideOpts{blocks: 64, staging: c.staging, maxTokens: 8, mode: c.mode, sender: 10 * time.Second, transfer: 10 * time.Second}
			o.role = RoleContext
			ctxSide := newSide(t, o)
			o.role = RoleGeneration
			gen := newSide(t, o)
			if got, want := gen.m.usePush(mustInfo(t, ctxSide)), c.mode == transceiver.ModePush || c.staging != ""; got != want {
				t.Fatalf("usePush = %v, want %v", got, want)
			}
			for i, tokens := range []int{1, 9, 37} {
				moveAndCheck(t, ctxSide, gen, tokens, uint64(i))
			}
		})
	}
}

// TestAutoPushesLargeKVOverMessages: in auto mode between host pools, a
// KV of at least pushMin bytes is pushed when the peer's writes travel as
// UCX active messages (DISAGG_UCX_AM_WRITE=1, the path UCX takes over
// TCP), and pulled when they are RMA puts (=0); a smaller KV is pulled
// either way. The bytes arrive intact in every case.
func TestAutoPushesLargeKVOverMessages(t *testing.T) {
	for _, c := range []struct {
		amWrite   string
		wantPush  float64 // of the two transfers below
		wantPulls float64
	}{{"1", 1, 1}, {"0", 0, 2}} {
		t.Run("DISAGG_UCX_AM_WRITE="+c.amWrite, func(t *testing.T) {
			t.Setenv("DISAGG_UCX_AM_WRITE", c.amWrite)
			o := sideOpts{blocks: 64, mode: transceiver.ModeAuto, sender: 10 * time.Second, transfer: 10 * time.Second}
			o.role = RoleContext
			ctxSide := newSide(t, o)
			o.role = RoleGeneration
			gen := newSide(t, o)
			gen.m.pushMin = int64(8 * testLayout.BlockBytes())
			moveAndCheck(t, ctxSide, gen, 9, 1)  // 3 blocks: pulled
			moveAndCheck(t, ctxSide, gen, 37, 2) // 10 blocks: pushed over messages
			for mode, want := range map[string]float64{"push": c.wantPush, "pull": c.wantPulls} {
				var mv dto.Metric
				if err := gen.m.metrics.transfers.WithLabelValues(mode).Write(&mv); err != nil {
					t.Fatal(err)
				}
				if got := mv.GetCounter().GetValue(); got != want {
					t.Errorf("worker_kv_transfers_total{mode=%q} = %v, want %v", mode, got, want)
				}
			}
		})
	}
}

func mustInfo(t *testing.T, s *side) transceiver.Info {
	t.Helper()
	blob, err := s.tr.LocalInfo()
	if err != nil {
		t.Fatal(err)
	}
	in, err := transceiver.DecodeInfo(blob)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// TestMaxTokensInBuffer: with staging forced on host pools, a staged
// transfer of T tokens moves in ceil(T / max_tokens_in_buffer) chunks on
// each side (max_tokens_in_buffer a multiple of tokens_per_block here),
// and the bytes arrive intact. Two buffer sizes give two chunk counts, so
// the knob cannot be ignored.
func TestMaxTokensInBuffer(t *testing.T) {
	const tokens = 37 // 10 blocks of 4 tokens
	for _, c := range []struct{ maxTokens, chunks int }{
		{4, 10},  // one block per chunk
		{8, 5},   // two blocks
		{12, 4},  // three blocks: 3+3+3+1
		{400, 1}, // the whole request
	} {
		o := sideOpts{blocks: 32, staging: transceiver.StagingForce, maxTokens: c.maxTokens, sender: 10 * time.Second, transfer: 10 * time.Second}
		o.role = RoleContext
		ctxSide := newSide(t, o)
		o.role = RoleGeneration
		gen := newSide(t, o)
		if !ctxSide.tr.Staged() || !gen.tr.Staged() {
			t.Fatal("staging was forced but is not in use")
		}
		if got, want := gen.tr.ChunkBlocks(), min(transceiver.StagingBlocks(c.maxTokens, testLayout.TokensPerBlock), 32); got != want {
			t.Fatalf("max_tokens_in_buffer %d: %d blocks per chunk, want %d", c.maxTokens, got, want)
		}
		c0, g0 := ctxSide.tr.Stats(), gen.tr.Stats()
		moveAndCheck(t, ctxSide, gen, tokens, 3)
		c1, g1 := ctxSide.tr.Stats(), gen.tr.Stats()
		if got := c1.Chunks - c0.Chunks; got != int64(c.chunks) {
			t.Errorf("max_tokens_in_buffer %d: the context side staged %d chunks, want %d", c.maxTokens, got, c.chunks)
		}
		if got := g1.Chunks - g0.Chunks; got != int64(c.chunks) {
			t.Errorf("max_tokens_in_buffer %d: the generation side staged %d chunks, want %d", c.maxTokens, got, c.chunks)
		}
		if got, want := g1.Bytes-g0.Bytes, int64(10*testLayout.BlockBytes()); got != want {
			t.Errorf("the generation side staged %d bytes, want %d", got, want)
		}
	}
}

// TestSenderFutureTimeout: a context worker whose generation side never
// asks frees its parked blocks once kv_transfer_sender_future_timeout_ms
// (plus kv_transfer_timeout_ms) has passed, counts it as expired, and a
// late fetch gets a clear 504. The state's expiry is the sender window
// from the park: with the knob ignored the blocks would stay parked.
func TestSenderFutureTimeout(t *testing.T) {
	const window = 50 * time.Millisecond
	o := sideOpts{role: RoleContext, blocks: 16, sender: window, transfer: 50 * time.Millisecond}
	c := newSide(t, o)
	o.role, o.sender, o.transfer = RoleGeneration, 10*time.Second, 10*time.Second
	g := newSide(t, o)
	before := time.Now()
	p, _ := park(t, c, 9, 1)
	st, err := Decode(p.EncodedOpaqueState, []byte("k"), before)
	if err != nil {
		t.Fatal(err)
	}
	if limit := time.Now().Add(window).UnixMilli(); st.Expiry > limit {
		t.Fatalf("state expires at %d, after the sender window ends (%d)", st.Expiry, limit)
	}
	waitFor(t, "the parked blocks to expire", func() bool { return c.m.Parked() == 0 })
	if c.pool.FreeBlocks() != c.pool.NumBlocks() {
		t.Fatalf("%d of %d blocks free after expiry", c.pool.FreeBlocks(), c.pool.NumBlocks())
	}
	var mv dto.Metric
	if err := c.m.metrics.expired.Write(&mv); err != nil {
		t.Fatal(err)
	}
	if n := mv.GetCounter().GetValue(); n != 1 {
		t.Errorf("expired counter %v, want 1", n)
	}
	_, _, e := g.m.Fetch(context.Background(), p, make([]int32, 9))
	if e == nil || e.Status != http.StatusGatewayTimeout || e.Code == nil || *e.Code != api.CodeKVTransferFailed {
		t.Fatalf("late fetch: %v, want 504 %s", e, api.CodeKVTransferFailed)
	}
	if g.pool.FreeBlocks() != g.pool.NumBlocks() {
		t.Errorf("generation side leaks blocks after a late fetch")
	}
}

// TestPushTimeout: in push mode, a context agent that never answers
// makes the fetch fail with a 504 naming kv_transfer_timeout_ms after the
// transfer timeout, and the generation side's blocks come back. The
// context agent here is a bare transceiver with no Manager: nobody serves
// the push request.
func TestPushTimeout(t *testing.T) {
	g := newSide(t, sideOpts{role: RoleGeneration, blocks: 16, mode: transceiver.ModePush, sender: time.Second, transfer: 100 * time.Millisecond})
	pool, err := kvcache.NewHostPool(testLayout, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	mute, err := transceiver.New(transceiver.BackendUCX, transceiver.Config{Name: "mute"})
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	if err := mute.Register(transceiver.RegionOf(pool)); err != nil {
		t.Fatal(err)
	}
	info, err := mute.LocalInfo()
	if err != nil {
		t.Fatal(err)
	}
	st := State{CtxRequestID: 1 << 41, Info: info, Blocks: []int32{3, 1, 4}, Tokens: 9, Layout: FingerprintOf(testLayout),
		Expiry: time.Now().Add(time.Minute).UnixMilli()}
	enc, err := Encode(st, []byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, e := g.m.Fetch(context.Background(), &api.DisaggregatedParams{FirstGenTokens: []int32{1}, EncodedOpaqueState: enc}, make([]int32, 9))
	if e == nil || e.Status != http.StatusGatewayTimeout {
		t.Fatalf("fetch from a mute context agent: %v, want 504", e)
	}
	if g.pool.FreeBlocks() != g.pool.NumBlocks() {
		t.Errorf("%d of %d blocks free after the timeout", g.pool.FreeBlocks(), g.pool.NumBlocks())
	}
	// The mute agent did receive the (signed) push request.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := mute.(transceiver.Waiter).WaitNotification(ctx, uint64(st.CtxRequestID))
	if err != nil || n.Push == nil || !slices.Equal(n.Push.Src, st.Blocks) {
		t.Fatalf("the context agent got %+v, %v; want a push request for blocks %v", n, err, st.Blocks)
	}
	// kv_transfer_timeout_ms bounds the context side's write too.
	if n.Push.Budget <= 0 || n.Push.Budget > 100*time.Millisecond {
		t.Errorf("push budget %v, want at most kv_transfer_timeout_ms (100ms)", n.Push.Budget)
	}
}

// TestForgedPushRequest: a push request not signed with the cluster's
// secret, or naming blocks the request does not hold, moves nothing.
func TestForgedPushRequest(t *testing.T) {
	o := sideOpts{role: RoleContext, blocks: 16, sender: 10 * time.Second, transfer: 10 * time.Second}
	c := newSide(t, o)
	o.role, o.mode = RoleGeneration, transceiver.ModePush
	o.transfer = 300 * time.Millisecond
	g := newSide(t, o)
	p, src := park(t, c, 9, 5)
	st := mustState(t, p)
	id := uint64(st.CtxRequestID)
	peer, err := g.m.peer(context.Background(), st.Info)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := g.pool.Alloc(len(src))
	if err != nil {
		t.Fatal(err)
	}
	defer g.pool.Free(dst)
	for _, b := range dst {
		clear(blockOf(g.pool, b))
	}
	// Signed with another secret: the context side ignores it, so no
	// answer comes and nothing is written.
	req := transceiver.Notification{RequestID: id, Blocks: dst, Push: &transceiver.PushRequest{Src: src, Info: g.m.info, Budget: time.Second}}
	req.Push.Token = pushToken([]byte("other"), id, req)
	if err := peer.(transceiver.Notifier).Notify(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	n, err := g.tr.WaitNotification(wctx, id)
	wcancel()
	if err == nil {
		t.Fatalf("a push request signed with another secret got an answer: %+v", n)
	}
	for _, b := range dst {
		if !bytes.Equal(blockOf(g.pool, b), make([]byte, testLayout.BlockBytes())) {
			t.Fatal("a push request signed with another secret wrote blocks")
		}
	}
	if c.m.Parked() != 1 {
		t.Fatal("the context side dropped the request after a forged push request")
	}
	// A correctly signed request for blocks outside the request is
	// rejected with an answer, before anything moves.
	free := []int32{}
	for b := int32(0); b < 16; b++ {
		if !c.pool.InUse(b) {
			free = append(free, b)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = g.m.askPush(ctx, g.tr, peer.(transceiver.Notifier), id, dst[:1], free[:1])
	if err == nil {
		t.Fatal("a push of a block outside the request was served")
	}
	t.Logf("rejected: %v", err)
}

func mustState(t *testing.T, p *api.DisaggregatedParams) State {
	t.Helper()
	st, err := Decode(p.EncodedOpaqueState, []byte("k"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestParkedBlocksOutlivePush: the deadline (or a done notification)
// that releases a parked request while this worker pushes its blocks only
// marks them due; they are freed when the push's write has returned, so
// the backend never reads reused memory.
func TestParkedBlocksOutlivePush(t *testing.T) {
	c := newSide(t, sideOpts{role: RoleContext, blocks: 16, sender: 10 * time.Second, transfer: 10 * time.Second})
	p, blocks := park(t, c, 9, 1)
	id := mustState(t, p).CtxRequestID
	got, ok := c.m.beginPush(id)
	if !ok || !slices.Equal(got, blocks) {
		t.Fatalf("beginPush: %v, %v", got, ok)
	}
	if _, again := c.m.beginPush(id); again {
		t.Fatal("a second push of the same request began")
	}
	if !c.m.release(id) {
		t.Fatal("release of a busy request reported it was not parked")
	}
	for _, b := range blocks {
		if !c.pool.InUse(b) {
			t.Fatalf("block %d freed while a push reads it", b)
		}
	}
	c.m.endPush(id)
	if c.m.Parked() != 0 || c.pool.FreeBlocks() != c.pool.NumBlocks() {
		t.Fatalf("after the push: %d parked, %d of %d blocks free", c.m.Parked(), c.pool.FreeBlocks(), c.pool.NumBlocks())
	}
}
