//go:build cgo

package ucx

import (
	"os"
	"testing"

	"disagg/transceiver"
	"disagg/transceiver/transceivertest"
)

// requireUCX skips the test when libucp cannot be loaded, except under
// CI=true, where a missing library is a failure.
func requireUCX(t testing.TB) {
	t.Helper()
	if err := Load(os.Getenv(transceiver.EnvUCXLib)); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("UCX is required under CI=true: %v", err)
		}
		t.Skipf("UCX not available (%v); run scripts/setup-native.sh", err)
	}
}

var suite = transceivertest.Suite{
	New: func(cfg transceiver.Config) (transceiver.Transceiver, error) {
		return New(cfg)
	},
	Require:             requireUCX,
	StopStallsTransfers: true,
	// RMA over TCP needs the target's progress, so a stopped peer stalls.
	StallEnv: map[string]string{"UCX_TLS": "tcp"},
	// UCX 1.13.1 (Debian bookworm) segfaults in ucp_worker_progress, about
	// one run in four, when a SIGSTOPped peer whose endpoint we
	// force-closed resumes over TCP; UCX 1.23.0 (the NIXL wheel's) passed
	// 12 of 12. Resume only on UCX >= 1.23, where it was verified.
	KillStalledPeer: func() bool { return !versionAtLeast(1, 23) },
}

func TestMain(m *testing.M) { suite.Main(m) }

// TestTwoProcess runs the shared two-process suite against UCX.
func TestTwoProcess(t *testing.T) { suite.Run(t) }

var (
	newRegion   = transceivertest.NewHostRegion
	fillRandom  = transceivertest.FillRandom
	randomPairs = transceivertest.RandomPairs
	block       = transceivertest.Block
)

// TestTwoProcessRMAWrites runs the core two-process tests with writes as
// RMA puts (DISAGG_UCX_AM_WRITE=0, inherited by the peer process): the
// path of device memory and of endpoints with RMA lanes, which over TCP
// (CI) the default would not take.
func TestTwoProcessRMAWrites(t *testing.T) {
	t.Setenv(envAMWrite, "0")
	for _, c := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"Transfers", suite.Transfers},
		{"Forged", suite.Forged},
		{"SenderTimeout", suite.SenderTimeout},
		{"FaultInjection", suite.FaultInjection},
		{"Staged", suite.Staged},
		{"PushRequests", suite.PushRequests},
	} {
		t.Run(c.name, c.run)
	}
}
