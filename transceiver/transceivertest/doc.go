// Package transceivertest is the shared test suite of transceiver
// backends: two real processes (the test binary re-executes itself as the
// peer), random bytes moved between random block mappings and checked byte
// for byte, timeouts, a killed peer, forged descriptors and injected
// faults. A backend's tests call it:
//
//	var suite = transceivertest.Suite{New: factory, Require: requireLib}
//	func TestMain(m *testing.M) { suite.Main(m) }
//	func TestTwoProcess(t *testing.T) { suite.Run(t) }
package transceivertest

import (
	"testing"

	"disagg/transceiver"
)

// Suite runs the two-process tests against one backend.
type Suite struct {
	// New makes a transceiver of the backend under test.
	New func(cfg transceiver.Config) (transceiver.Transceiver, error)
	// Require skips (or, under CI=true, fails) when the backend's native
	// library cannot be loaded.
	Require func(t testing.TB)
	// StopStallsTransfers is true when a SIGSTOPped peer stalls writes
	// (RMA that needs the target's progress, e.g. UCX over TCP).
	StopStallsTransfers bool
	// StallEnv is extra environment for the sender-timeout test (both
	// processes), e.g. UCX_TLS=tcp.
	StallEnv map[string]string
	// KillStalledPeer, when it returns true, makes SenderTimeout kill the
	// stopped peer instead of resuming it: for native libraries known to
	// crash when a peer whose endpoint was force-closed comes back.
	KillStalledPeer func() bool
	// SkipExitHooks makes Main leave through syscall.Exit, past the
	// runtime's exit hooks: under -race, racefini segfaults in a process
	// where NIXL's threads have run (m.Run has already reported races).
	SkipExitHooks bool
}

// Run runs every test of the suite as subtests.
func (s Suite) Run(t *testing.T) {
	t.Run("Transfers", s.Transfers)
	t.Run("Forged", s.Forged)
	t.Run("ReceiverTimeout", s.ReceiverTimeout)
	t.Run("SenderTimeout", s.SenderTimeout)
	t.Run("PeerKilled", s.PeerKilled)
	t.Run("FaultInjection", s.FaultInjection)
	t.Run("Staged", s.Staged)
	t.Run("PushRequests", s.PushRequests)
	t.Run("PushTimeout", s.PushTimeout)
	t.Run("Throughput", s.Throughput)
	t.Run("DeviceTransfers", s.DeviceTransfers)
}
