//go:build cgo

package nixl

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"disagg/transceiver"
	"disagg/transceiver/internal/cudamem"
	"disagg/transceiver/transceivertest"
	"disagg/transceiver/ucx"
)

// requireNIXL skips the test when libnixl_capi.so cannot be loaded, except
// under CI=true, where a missing library is a failure.
func requireNIXL(t testing.TB) {
	t.Helper()
	if _, err := Load("", os.Getenv(transceiver.EnvNIXLPluginsDir)); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("NIXL is required under CI=true: %v", err)
		}
		t.Skipf("NIXL not available (%v)", err)
	}
}

var suite = transceivertest.Suite{
	New: func(cfg transceiver.Config) (transceiver.Transceiver, error) {
		return New(cfg)
	},
	Require:             requireNIXL,
	StopStallsTransfers: true,
	// cuda_copy beside tcp: NIXL's UCX backend fails to start on a GPU
	// machine when UCX_TLS leaves it out.
	StallEnv:      map[string]string{"UCX_TLS": "tcp,cuda_copy"},
	SkipExitHooks: true,
}

func TestMain(m *testing.M) { suite.Main(m) }

// TestTwoProcess runs the shared two-process suite against NIXL with the
// plugin from TRTLLM_NIXL_KVCACHE_BACKEND (UCX by default).
func TestTwoProcess(t *testing.T) { suite.Run(t) }

func newAgent(t *testing.T, name string, r transceiver.Region) *Agent {
	t.Helper()
	a, err := New(transceiver.Config{Name: name, KVTransferTimeoutMs: 5000})
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

// TestInProcessWithUCXBackend runs a NIXL transfer and a UCX-backend
// transfer in one process: the system libucp and the wheel's bundled UCX
// must not meet (both are dlopen'ed with local scope).
func TestInProcessWithUCXBackend(t *testing.T) {
	requireNIXL(t)
	ctx := context.Background()
	const bb = 8192
	src := transceivertest.NewHostRegion(t, bb, 32)
	dst := transceivertest.NewHostRegion(t, bb, 32)
	transceivertest.FillRandom(src, 1)
	a := newAgent(t, "nixl-a", src)
	b := newAgent(t, "nixl-b", dst)
	p := transceivertest.Connect(t, a, b)
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(pairs []transceiver.BlockPair, what string) {
		t.Helper()
		for _, pr := range pairs {
			if !bytes.Equal(transceivertest.Block(src, pr.Local), transceivertest.Block(dst, pr.Remote)) {
				t.Fatalf("%s: block %d -> %d differs", what, pr.Local, pr.Remote)
			}
		}
	}
	pairs := transceivertest.RandomPairs(rng, 20, 32, 32)
	if err := transceiver.Push(ctx, p, src, transceiver.Transfer{RequestID: 1, Pairs: pairs}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := transceiver.Await(ctx, b, dst, 1, nil, true); err != nil {
		t.Fatal(err)
	}
	check(pairs, "nixl push")
	transceivertest.FillRandom(dst, 3)
	pairs = transceivertest.RandomPairs(rng, 20, 32, 32)
	if err := p.(transceiver.Reader).Read(ctx, transceiver.Transfer{RequestID: 2, Pairs: pairs}); err != nil {
		t.Fatal(err)
	}
	check(pairs, "nixl pull")

	// The UCX backend in the same process.
	if err := ucx.Load(os.Getenv(transceiver.EnvUCXLib)); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("UCX is required under CI=true: %v", err)
		}
		t.Skipf("UCX backend not available: %v", err)
	}
	ua, err := ucx.New(transceiver.Config{Name: "ucx-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ua.Close() }()
	ub, err := ucx.New(transceiver.Config{Name: "ucx-b"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ub.Close() }()
	src2 := transceivertest.NewHostRegion(t, bb, 32)
	dst2 := transceivertest.NewHostRegion(t, bb, 32)
	transceivertest.FillRandom(src2, 7)
	if err := ua.Register(src2); err != nil {
		t.Fatal(err)
	}
	if err := ub.Register(dst2); err != nil {
		t.Fatal(err)
	}
	uinfo, err := ub.LocalInfo()
	if err != nil {
		t.Fatal(err)
	}
	up, err := ua.Connect(ctx, uinfo)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = up.Close() }()
	pairs = transceivertest.RandomPairs(rng, 20, 32, 32)
	if err := up.Write(ctx, transceiver.Transfer{Pairs: pairs}); err != nil {
		t.Fatal(err)
	}
	for _, pr := range pairs {
		if !bytes.Equal(transceivertest.Block(src2, pr.Local), transceivertest.Block(dst2, pr.Remote)) {
			t.Fatalf("ucx beside nixl: block %d -> %d differs", pr.Local, pr.Remote)
		}
	}
	// And NIXL still works after UCX was used.
	transceivertest.FillRandom(src, 9)
	pairs = transceivertest.RandomPairs(rng, 20, 32, 32)
	if err := p.Write(ctx, transceiver.Transfer{Pairs: pairs}); err != nil {
		t.Fatal(err)
	}
	check(pairs, "nixl after ucx")
}

// TestLIBFABRICPlugin: where NIXL's LIBFABRIC plugin loads, the agent uses
// it; where it cannot (this CI machine: see explainPlugin), the agent says
// why in a warning naming the plugin and falls back to the UCX plugin, and
// that agent moves blocks to and from a UCX-plugin agent byte for byte.
func TestLIBFABRICPlugin(t *testing.T) {
	requireNIXL(t)
	var logBuf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logBuf}, nil))
	a, err := New(transceiver.Config{Name: "lf", NIXLPlugin: transceiver.PluginLIBFABRIC, Logger: logger, KVTransferTimeoutMs: 5000})
	if err != nil {
		t.Fatalf("LIBFABRIC requested: %v (want the plugin, or the UCX fallback)", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Error(err)
		}
	})
	if a.Plugin() == transceiver.PluginLIBFABRIC {
		t.Log("LIBFABRIC plugin created")
		return
	}
	mu.Lock()
	logged := logBuf.String()
	mu.Unlock()
	t.Logf("fell back: %s", logged)
	if a.Plugin() != transceiver.PluginUCX {
		t.Fatalf("plugin %q after the fallback, want UCX", a.Plugin())
	}
	for _, want := range []string{"falling back", "wanted=LIBFABRIC", "libplugin_LIBFABRIC.so"} {
		if !strings.Contains(logged, want) {
			t.Errorf("the warning lacks %q: %s", want, logged)
		}
	}
	// The fallback agent works with a UCX-plugin peer.
	src := transceivertest.NewHostRegion(t, 4096, 16)
	if err := a.Register(src); err != nil {
		t.Fatal(err)
	}
	b := newAgent(t, "lf-peer", transceivertest.NewHostRegion(t, 4096, 16))
	p := transceivertest.Connect(t, a, b)
	transceivertest.FillRandom(src, 5)
	pairs := []transceiver.BlockPair{{Local: 0, Remote: 3}, {Local: 1, Remote: 4}, {Local: 7, Remote: 0}}
	if err := p.Write(context.Background(), transceiver.Transfer{Pairs: pairs}); err != nil {
		t.Fatal(err)
	}
	for _, pr := range pairs {
		if !bytes.Equal(transceivertest.Block(src, pr.Local), transceivertest.Block(b.region, pr.Remote)) {
			t.Fatalf("block %d -> %d differs after the write", pr.Local, pr.Remote)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestLoadErrors(t *testing.T) {
	if _, err := FindLibrary(t.TempDir()); !errors.Is(err, transceiver.ErrNotLoaded) {
		t.Errorf("empty folder: %v", err)
	}
}

// TestForgedRegionRejected: an info blob that claims more blocks than its
// agent registered is refused when the remote list is prepared.
func TestForgedRegionRejected(t *testing.T) {
	requireNIXL(t)
	a := newAgent(t, "forge-a", transceivertest.NewHostRegion(t, 4096, 8))
	b := newAgent(t, "forge-b", transceivertest.NewHostRegion(t, 4096, 8))
	info, err := b.LocalInfo()
	if err != nil {
		t.Fatal(err)
	}
	in, err := transceiver.DecodeInfo(info)
	if err != nil {
		t.Fatal(err)
	}
	in.Region.NumBlocks = 64
	forged, err := transceiver.EncodeInfo(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Connect(context.Background(), forged); !errors.Is(err, transceiver.ErrBadInfo) {
		t.Fatalf("forged region: %v, want ErrBadInfo", err)
	}
	// The genuine blob still connects afterwards.
	p, err := a.Connect(context.Background(), info)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkLatency is the fixed cost of a one-block write and read, a
// notification's round trip and a push on request's round trip between
// two NIXL agents of one process (UCX plugin).
func BenchmarkLatency(b *testing.B) { suite.BenchLatency(b) }

// BenchmarkBandwidth is write bandwidth from a NIXL agent to one in a peer
// process against block size and count (transceivertest.Suite.BenchBandwidth).
func BenchmarkBandwidth(b *testing.B) { suite.BenchBandwidth(b) }

// BenchmarkReadBandwidth is BenchmarkBandwidth with reads (pull).
func BenchmarkReadBandwidth(b *testing.B) { suite.BenchReadBandwidth(b) }

// BenchmarkPushBandwidth is BenchmarkBandwidth with the blocks pushed on
// request, as a generation worker asks for a request's KV; with
// DISAGG_KV_STAGING=force both sides gather the blocks into their staging
// buffers (transceivertest.Suite.BenchPushBandwidth).
func BenchmarkPushBandwidth(b *testing.B) { suite.BenchPushBandwidth(b) }

// TestIdleAgentsLeaveTheCPU: two connected agents with nothing to do use
// a small share of a core. NIXL's own progress thread (DISAGG_NIXL_PROGRESS_THREAD=1,
// or a libnixl_capi without nixl_capi_create_configured_agent) busy-waits
// and takes a whole core per agent, which fails this test.
func TestIdleAgentsLeaveTheCPU(t *testing.T) {
	requireNIXL(t)
	src := transceivertest.NewHostRegion(t, 8192, 8)
	dst := transceivertest.NewHostRegion(t, 8192, 8)
	a := newAgent(t, "idle-a", src)
	b := newAgent(t, "idle-b", dst)
	transceivertest.Connect(t, a, b)
	time.Sleep(200 * time.Millisecond) // past the loops' spin after activity
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	c0, w0 := cpu(), time.Now()
	time.Sleep(time.Second)
	share := float64(cpu()-c0) / float64(time.Since(w0))
	t.Logf("two idle agents: %.0f%% of one core", 100*share)
	if share > 0.5 {
		t.Fatalf("two idle agents use %.0f%% of one core, want under 50%%: a progress thread spins", 100*share)
	}
}

// TestGetZcopyDefault checks the default of UCX_CUDA_IPC_ENABLE_GET_ZCOPY
// that an agent leaves for NIXL's UCX plugin: y where a CUDA device is
// present (zero-copy reads of GPU memory, which UCX leaves off without
// NVLink), untouched where none is (a UCX without CUDA would warn about
// the variable), and an operator's value kept either way.
func TestGetZcopyDefault(t *testing.T) {
	requireNIXL(t)
	const env = transceiver.EnvCUDAIPCGetZcopy
	t.Setenv("UCX_TLS", "") // every transport, cuda_ipc included (TestSetGetZcopy covers the others)
	if err := os.Unsetenv("UCX_TLS"); err != nil {
		t.Fatal(err)
	}
	unsetWant := "y"
	if err := cudamem.Available(); err != nil {
		unsetWant = "" // left unset
		t.Logf("no CUDA device (%v): the variable must stay unset", err)
	}
	for _, tc := range []struct {
		set       bool
		val, want string
	}{{false, "", unsetWant}, {true, "auto", "auto"}, {true, "n", "n"}} {
		t.Setenv(env, tc.val) // restored when the test ends
		if !tc.set {
			if err := os.Unsetenv(env); err != nil {
				t.Fatal(err)
			}
		}
		a, err := New(transceiver.Config{Name: "getzcopy"})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if got := os.Getenv(env); got != tc.want {
			t.Errorf("%s set=%v %q: after New it is %q, want %q", env, tc.set, tc.val, got, tc.want)
		}
	}
}
