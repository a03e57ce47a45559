package transceiver

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"

	"disagg/worker/kvcache"
)

func TestCoalesce(t *testing.T) {
	tests := []struct {
		name  string
		pairs []BlockPair
		want  []Run
	}{
		{"empty", nil, nil},
		{"one", []BlockPair{{3, 7}}, []Run{{3, 7, 1}}},
		{"adjacent both", []BlockPair{{0, 10}, {1, 11}, {2, 12}}, []Run{{0, 10, 3}}},
		{"unsorted input", []BlockPair{{2, 12}, {0, 10}, {1, 11}}, []Run{{0, 10, 3}}},
		{"local adjacent only", []BlockPair{{0, 10}, {1, 5}}, []Run{{0, 10, 1}, {1, 5, 1}}},
		{"remote adjacent only", []BlockPair{{0, 10}, {5, 11}}, []Run{{0, 10, 1}, {5, 11, 1}}},
		{"remote descending", []BlockPair{{0, 11}, {1, 10}}, []Run{{0, 11, 1}, {1, 10, 1}}},
		{"two runs", []BlockPair{{0, 0}, {1, 1}, {5, 2}, {6, 3}, {7, 4}}, []Run{{0, 0, 2}, {5, 2, 3}}},
		{"gap then rejoin", []BlockPair{{0, 0}, {2, 2}, {3, 3}}, []Run{{0, 0, 1}, {2, 2, 2}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, Coalesce(tc.pairs)); diff != "" {
				t.Errorf("Coalesce (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDescriptors(t *testing.T) {
	got := Descriptors([]Run{{2, 5, 3}}, 100)
	want := []Descriptor{{LocalOffset: 200, RemoteOffset: 500, Len: 300}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
}

func TestCheckPairs(t *testing.T) {
	tests := []struct {
		name string
		t    Transfer
		ok   bool
	}{
		{"ok", Transfer{Pairs: []BlockPair{{0, 0}, {9, 4}}}, true},
		{"empty", Transfer{}, false},
		{"local negative", Transfer{Pairs: []BlockPair{{-1, 0}}}, false},
		{"local too big", Transfer{Pairs: []BlockPair{{10, 0}}}, false},
		{"remote too big", Transfer{Pairs: []BlockPair{{0, 5}}}, false},
		{"remote negative", Transfer{Pairs: []BlockPair{{0, -3}}}, false},
		{"dup local", Transfer{Pairs: []BlockPair{{1, 0}, {1, 1}}}, false},
		{"dup remote", Transfer{Pairs: []BlockPair{{1, 0}, {2, 0}}}, false},
		{"remote not granted", Transfer{Pairs: []BlockPair{{0, 3}}, RemoteBlocks: []int32{1, 2}}, false},
		{"remote granted", Transfer{Pairs: []BlockPair{{0, 2}}, RemoteBlocks: []int32{1, 2}}, true},
		{"local not owned", Transfer{Pairs: []BlockPair{{4, 2}}, LocalBlocks: []int32{0, 1}}, false},
		{"local owned", Transfer{Pairs: []BlockPair{{1, 2}}, LocalBlocks: []int32{0, 1}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckPairs(tc.t, 10, 5)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckPairs = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadDescriptor) {
				t.Errorf("error %v does not wrap ErrBadDescriptor", err)
			}
		})
	}
}

func hostRegion(t *testing.T, blockBytes, n int) Region {
	t.Helper()
	mem, err := kvcache.AllocHost(blockBytes * n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mem.Close() })
	return Region{Mem: mem, BlockBytes: blockBytes, NumBlocks: n}
}

func TestPlan(t *testing.T) {
	local := hostRegion(t, 64, 8)
	remote := RemoteRegion{Base: 0x1000, BlockBytes: 64, NumBlocks: 4}
	d, err := Plan(Transfer{Pairs: []BlockPair{{6, 2}, {7, 3}}}, local, remote)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Descriptor{{384, 128, 128}}, d); diff != "" {
		t.Error(diff)
	}
	remote.BlockBytes = 32
	if _, err := Plan(Transfer{Pairs: []BlockPair{{0, 0}}}, local, remote); !errors.Is(err, ErrBadDescriptor) {
		t.Errorf("mismatched block size: %v", err)
	}
}

func TestRegionValidate(t *testing.T) {
	r := hostRegion(t, 64, 8)
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	r.NumBlocks = 9
	if err := r.Validate(); err == nil {
		t.Error("region larger than its memory accepted")
	}
}

func TestInfoRoundTrip(t *testing.T) {
	staged := Info{Backend: "NIXL", Agent: "gen-1", Region: RemoteRegion{Base: 0x1000, BlockBytes: 64, NumBlocks: 4, Staged: true}, Payload: []byte("md")}
	sb, err := EncodeInfo(staged)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := DecodeInfo(sb); err != nil || !cmp.Equal(staged, out) {
		t.Errorf("staged info round trip: %+v, %v", out, err)
	}
	sb[len(sb)-len(staged.Payload)-5] |= 0x80 // an unknown region flag
	if _, err := DecodeInfo(sb); !errors.Is(err, ErrBadInfo) {
		t.Errorf("unknown region flag: %v", err)
	}
	in := Info{Backend: "UCX", Agent: "ctx-1", Region: RemoteRegion{Base: 0x7f0000, BlockBytes: 4096, NumBlocks: 12, Device: true}, Payload: []byte("addr+rkey")}
	b, err := EncodeInfo(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeInfo(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, out); diff != "" {
		t.Error(diff)
	}
	// Every truncation and a trailing byte are rejected, never a panic.
	for i := 0; i < len(b); i++ {
		if _, err := DecodeInfo(b[:i]); !errors.Is(err, ErrBadInfo) {
			t.Fatalf("truncated at %d: %v", i, err)
		}
	}
	if _, err := DecodeInfo(append(bytes.Clone(b), 0)); !errors.Is(err, ErrBadInfo) {
		t.Errorf("trailing byte: %v", err)
	}
	bad := bytes.Clone(b)
	bad[4] = 9 // version
	if _, err := DecodeInfo(bad); !errors.Is(err, ErrBadInfo) {
		t.Errorf("bad version: %v", err)
	}
	zero := in
	zero.Region.NumBlocks = 0
	zb, err := EncodeInfo(zero)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeInfo(zb); !errors.Is(err, ErrBadInfo) {
		t.Errorf("empty region: %v", err)
	}
}

func FuzzDecodeInfo(f *testing.F) {
	b, err := EncodeInfo(Info{Backend: "UCX", Agent: "a", Region: RemoteRegion{Base: 1, BlockBytes: 2, NumBlocks: 3}, Payload: []byte{1}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = DecodeInfo(b) })
}

func TestNotificationRoundTrip(t *testing.T) {
	for _, n := range []Notification{
		{RequestID: 7},
		{RequestID: 1 << 60, Blocks: []int32{3, 1, 2}},
		{RequestID: 9, Blocks: []int32{3, 1}, Sums: []uint32{0xdeadbeef, 1}},
		{RequestID: 9, Err: "deadline exceeded"},
		{RequestID: 11, Blocks: []int32{0, 1, 2}, Push: &PushRequest{Src: []int32{9, 4, 6}, Info: []byte("asker"), Budget: 1500 * time.Millisecond, Token: []byte("mac")}},
	} {
		b, err := EncodeNotification(n)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeNotification(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(n, got, cmp.Comparer(func(a, b []int32) bool { return len(a) == len(b) && (len(a) == 0 || cmp.Equal(a, b)) }), cmp.Comparer(func(a, b []uint32) bool { return len(a) == len(b) && (len(a) == 0 || cmp.Equal(a, b)) })); diff != "" {
			t.Error(diff)
		}
		for i := 0; i < len(b); i++ {
			if _, err := DecodeNotification(b[:i]); err == nil {
				t.Fatalf("truncated notification at %d accepted", i)
			}
		}
	}
	if _, err := EncodeNotification(Notification{Blocks: []int32{1}, Sums: []uint32{1, 2}}); err == nil {
		t.Error("mismatched sums accepted")
	}
	for name, p := range map[string]*PushRequest{
		"sources":   {Src: []int32{1, 2}, Budget: time.Second},
		"no budget": {Src: []int32{1}},
		"token":     {Src: []int32{1}, Budget: time.Second, Token: make([]byte, MaxPushToken+1)},
	} {
		if _, err := EncodeNotification(Notification{Blocks: []int32{1}, Push: p}); err == nil {
			t.Errorf("push request with bad %s accepted", name)
		}
	}
}

func TestStagingBlocks(t *testing.T) {
	for _, c := range []struct{ tokens, perBlock, want int }{
		{0, 16, DefaultMaxTokensInBuffer / 16}, {2048, 16, 128}, {2049, 16, 129}, {1, 16, 1}, {5, 0, 5}, {5, 3, 2},
	} {
		if got := StagingBlocks(c.tokens, c.perBlock); got != c.want {
			t.Errorf("StagingBlocks(%d, %d) = %d, want %d", c.tokens, c.perBlock, got, c.want)
		}
	}
}

func TestTransferModeFromEnv(t *testing.T) {
	for v, want := range map[string]string{"": ModeAuto, "PUSH": ModePush, " pull ": ModePull, "auto": ModeAuto, "sideways": ""} {
		t.Setenv(EnvTransferMode, v)
		got, err := TransferModeFromEnv()
		if got != want || (want == "") != (err != nil) {
			t.Errorf("%s=%q: %q, %v; want %q", EnvTransferMode, v, got, err, want)
		}
	}
}

func TestChecksumsVerify(t *testing.T) {
	r := hostRegion(t, 256, 4)
	buf := unsafe.Slice((*byte)(r.Mem.Ptr()), r.Mem.Size())
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	blocks := []int32{2, 0}
	sums, err := Checksums(r, blocks)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(r, blocks, sums); err != nil {
		t.Fatal(err)
	}
	buf[2*256+17] ^= 1
	if err := Verify(r, blocks, sums); !errors.Is(err, ErrChecksum) {
		t.Errorf("flipped bit: %v", err)
	}
	if _, err := Checksums(r, []int32{4}); !errors.Is(err, ErrBadDescriptor) {
		t.Errorf("out of range block: %v", err)
	}
}

func TestResolveBackend(t *testing.T) {
	for in, want := range map[string]string{"": "UCX", "DEFAULT": "UCX", "ucx": "UCX", "NIXL": "NIXL", "nixl": "NIXL"} {
		got, err := ResolveBackend(in)
		if err != nil || got != want {
			t.Errorf("ResolveBackend(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ResolveBackend("MPI"); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("MPI: %v", err)
	}
}

type logBuf struct{ bytes.Buffer }

func TestNIXLPluginFromEnv(t *testing.T) {
	for in, want := range map[string]string{"": "UCX", "UCX": "UCX", "libfabric": "LIBFABRIC", "LIBFABRIC": "LIBFABRIC", "GDS": "UCX"} {
		t.Setenv(EnvNIXLPlugin, in)
		var lb logBuf
		log := slog.New(slog.NewTextHandler(&lb, nil))
		if got := NIXLPluginFromEnv(log); got != want {
			t.Errorf("%q -> %q, want %q", in, got, want)
		}
		warned := bytes.Contains(lb.Bytes(), []byte("level=WARN"))
		if warned != (in == "GDS") {
			t.Errorf("%q: warned=%v, log %q", in, warned, lb.String())
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Backend: "DEFAULT", KVTransferTimeoutMs: 1000}
	good.Complete()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Config{
		{Backend: "MPI"},
		{MaxTokensInBuffer: -1},
		{KVTransferTimeoutMs: -1},
		{Staging: "always"},
		{KVTransferSenderFutureTimeoutMs: -1},
		{NIXLPlugin: "GDS"},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestRegistry(t *testing.T) {
	called := ""
	Register("fake-test", func(cfg Config) (Transceiver, error) {
		called = cfg.Backend
		return nil, ErrNotLoaded
	})
	if _, err := New("bogus", Config{}); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("unknown name: %v", err)
	}
	// NIXL is not linked into this test binary.
	if _, err := New("NIXL", Config{}); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("unregistered backend: %v", err)
	}
	_ = called
}

// fakePeer records what Push does, to test the generic notify path.
type fakePeer struct {
	writeErr error
	notes    []Notification
}

func (p *fakePeer) Name() string                                { return "fake" }
func (p *fakePeer) Write(ctx context.Context, t Transfer) error { return p.writeErr }
func (p *fakePeer) Close() error                                { return nil }
func (p *fakePeer) Notify(ctx context.Context, n Notification) error {
	p.notes = append(p.notes, n)
	return nil
}

type fakeWaiter struct{ n Notification }

func (w fakeWaiter) WaitNotification(ctx context.Context, id uint64) (Notification, error) {
	return w.n, nil
}

func TestPushAwait(t *testing.T) {
	src := hostRegion(t, 128, 4)
	dst := hostRegion(t, 128, 4)
	sb := unsafe.Slice((*byte)(src.Mem.Ptr()), src.Mem.Size())
	db := unsafe.Slice((*byte)(dst.Mem.Ptr()), dst.Mem.Size())
	for i := range sb {
		sb[i] = byte(i)
	}
	tr := Transfer{RequestID: 5, Pairs: []BlockPair{{0, 3}, {1, 2}}}
	p := &fakePeer{}
	if err := Push(context.Background(), p, src, tr, true); err != nil {
		t.Fatal(err)
	}
	if len(p.notes) != 1 {
		t.Fatalf("%d notifications", len(p.notes))
	}
	// "Transfer" by hand, then verify on the receiver.
	copy(db[3*128:4*128], sb[0:128])
	copy(db[2*128:3*128], sb[128:256])
	if _, err := Await(context.Background(), fakeWaiter{p.notes[0]}, dst, 5, []int32{2, 3}, true); err != nil {
		t.Fatal(err)
	}
	db[2*128] ^= 0xff
	if _, err := Await(context.Background(), fakeWaiter{p.notes[0]}, dst, 5, nil, true); !errors.Is(err, ErrChecksum) {
		t.Errorf("corrupted block: %v", err)
	}
	if _, err := Await(context.Background(), fakeWaiter{p.notes[0]}, dst, 5, []int32{3}, true); !errors.Is(err, ErrBadDescriptor) {
		t.Errorf("block outside the request: %v", err)
	}
	if _, err := Await(context.Background(), fakeWaiter{Notification{RequestID: 5}}, dst, 5, nil, true); !errors.Is(err, ErrChecksum) {
		t.Errorf("missing sums with requireSums: %v", err)
	}
	// A failed write sends an abort notice.
	p2 := &fakePeer{writeErr: context.DeadlineExceeded}
	if err := Push(context.Background(), p2, src, tr, false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	if len(p2.notes) != 1 || p2.notes[0].Err == "" {
		t.Fatalf("abort notice: %+v", p2.notes)
	}
	if _, err := Await(context.Background(), fakeWaiter{p2.notes[0]}, dst, 5, nil, false); !errors.Is(err, ErrAborted) {
		t.Errorf("abort: %v", err)
	}
}

func FuzzDecodeNotification(f *testing.F) {
	b, err := EncodeNotification(Notification{RequestID: 1, Blocks: []int32{1, 2}, Sums: []uint32{3, 4}, Err: "x"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = DecodeNotification(b) })
}

func TestTransferContext(t *testing.T) {
	cfg := Config{KVTransferTimeoutMs: 1500}
	ctx, cancel := cfg.TransferContext(context.Background())
	defer cancel()
	d, ok := ctx.Deadline()
	if left := time.Until(d); !ok || left > 1500*time.Millisecond || left < 1400*time.Millisecond {
		t.Fatalf("deadline %v (set %v): want about kv_transfer_timeout_ms, 1.5 s, from now", left, ok)
	}
	mine, stop := context.WithTimeout(context.Background(), time.Hour)
	defer stop()
	ctx, cancel = cfg.TransferContext(mine)
	defer cancel()
	if d2, _ := ctx.Deadline(); d2.Before(time.Now().Add(59 * time.Minute)) {
		t.Fatalf("a caller's deadline was replaced by %v", time.Until(d2))
	}
}

// TestSetGetZcopy checks when a backend turns cuda_ipc's zero-copy GET
// on: only with UCX_CUDA_IPC_ENABLE_GET_ZCOPY absent and a UCX_TLS that
// lets UCX open cuda_ipc (UCX's aliases: "cuda" holds cuda_ipc, "sm" does
// not; "^" excludes).
func TestSetGetZcopy(t *testing.T) {
	for _, tc := range []struct {
		tls  string // "-": unset
		want bool
	}{
		{"-", true}, {"", true}, {"all", true}, {"cuda_ipc,cuda_copy,tcp", true}, {"rc,CUDA", true},
		{`\cuda_ipc,tcp`, true}, {"^sm", true}, {"^", true},
		{"rc,cuda_copy,gdr_copy", false}, {"tcp", false}, {"sm,tcp", false}, {"^cuda_ipc", false}, {"^tcp,cuda", false},
	} {
		if tc.tls == "-" {
			t.Setenv("UCX_TLS", "")
			if err := os.Unsetenv("UCX_TLS"); err != nil {
				t.Fatal(err)
			}
		} else {
			t.Setenv("UCX_TLS", tc.tls)
		}
		t.Setenv(EnvCUDAIPCGetZcopy, "")
		if err := os.Unsetenv(EnvCUDAIPCGetZcopy); err != nil {
			t.Fatal(err)
		}
		if got := SetGetZcopy(); got != tc.want {
			t.Errorf("UCX_TLS=%q, %s unset: SetGetZcopy() = %v, want %v", tc.tls, EnvCUDAIPCGetZcopy, got, tc.want)
		}
		for _, v := range []string{"", "auto", "y"} {
			t.Setenv(EnvCUDAIPCGetZcopy, v)
			if SetGetZcopy() {
				t.Errorf("UCX_TLS=%q, %s=%q (the operator's choice): SetGetZcopy() = true, want false", tc.tls, EnvCUDAIPCGetZcopy, v)
			}
		}
	}
}
