//go:build cgo

package ucx

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"disagg/transceiver"
	"disagg/transceiver/transceivertest"
)

// TestSplitMessages checks how a write's descriptors become messages:
// large ones alone, small ones gathered (merged where either side
// continues) within the bounds on bytes and runs.
func TestSplitMessages(t *testing.T) {
	const bb = 4096
	d := func(local, remote, blocks int64) transceiver.Descriptor {
		return transceiver.Descriptor{LocalOffset: local * bb, RemoteOffset: remote * bb, Len: blocks * bb}
	}
	iov := func(local, blocks int64) transceiver.Descriptor {
		return transceiver.Descriptor{LocalOffset: local * bb, Len: blocks * bb}
	}
	for _, c := range []struct {
		name  string
		descs []transceiver.Descriptor
		max   int64 // bytes per gathered message
		alone int64 // bytes from which a descriptor goes alone
		runs  int
		want  []wmsg
	}{{
		name:  "gathered, merged on either side",
		descs: []transceiver.Descriptor{d(0, 10, 1), d(1, 20, 1), d(4, 21, 1), d(6, 30, 1)},
		max:   1 << 20, alone: 8 * bb, runs: 64,
		want: []wmsg{{
			runs:  []wrun{{10, 1}, {20, 2}, {30, 1}},
			iov:   []transceiver.Descriptor{iov(0, 2), iov(4, 1), iov(6, 1)},
			bytes: 4 * bb,
		}},
	}, {
		name:  "bounded by bytes",
		descs: []transceiver.Descriptor{d(0, 0, 1), d(2, 2, 1), d(4, 4, 1)},
		max:   2 * bb, alone: 8 * bb, runs: 64,
		want: []wmsg{
			{runs: []wrun{{0, 1}, {2, 1}}, iov: []transceiver.Descriptor{iov(0, 1), iov(2, 1)}, bytes: 2 * bb},
			{runs: []wrun{{4, 1}}, iov: []transceiver.Descriptor{iov(4, 1)}, bytes: bb},
		},
	}, {
		name:  "bounded by runs",
		descs: []transceiver.Descriptor{d(0, 0, 1), d(2, 2, 1), d(4, 4, 1)},
		max:   1 << 20, alone: 8 * bb, runs: 2,
		want: []wmsg{
			{runs: []wrun{{0, 1}, {2, 1}}, iov: []transceiver.Descriptor{iov(0, 1), iov(2, 1)}, bytes: 2 * bb},
			{runs: []wrun{{4, 1}}, iov: []transceiver.Descriptor{iov(4, 1)}, bytes: bb},
		},
	}, {
		name:  "large alone, small gathered",
		descs: []transceiver.Descriptor{d(0, 0, 1), d(2, 40, 5), d(9, 9, 1)},
		max:   1 << 20, alone: 2 * bb, runs: 64,
		want: []wmsg{
			{runs: []wrun{{40, 5}}, iov: []transceiver.Descriptor{iov(2, 5)}, bytes: 5 * bb},
			{runs: []wrun{{0, 1}, {9, 1}}, iov: []transceiver.Descriptor{iov(0, 1), iov(9, 1)}, bytes: 2 * bb},
		},
	}} {
		t.Run(c.name, func(t *testing.T) {
			got := splitMessages(c.descs, bb, c.max, c.alone, c.runs)
			if diff := cmp.Diff(c.want, got, cmp.AllowUnexported(wmsg{}, wrun{})); diff != "" {
				t.Errorf("messages (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWritePath checks which path writes take: active messages over TCP
// (no RMA lane) unless DISAGG_UCX_AM_WRITE=0, RMA where shared-memory
// transports offer RMA lanes, active messages there with =1.
func TestWritePath(t *testing.T) {
	requireUCX(t)
	for _, c := range []struct {
		name, amWrite, errMode string
		want                   bool
	}{
		{"tcp auto", "", "", true},
		{"tcp off", "0", "", false},
		{"shared memory auto", "", "none", false},
		{"shared memory on", "1", "none", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(envAMWrite, c.amWrite)
			t.Setenv(envErrMode, c.errMode)
			t.Setenv("UCX_TLS", "tcp")
			if c.errMode != "" {
				os.Unsetenv("UCX_TLS") // restored by t.Setenv's cleanup
			}
			src, dst := newRegion(t, 4096, 4), newRegion(t, 4096, 4)
			a, b := newAgent(t, "a", src, 0), newAgent(t, "b", dst, 0)
			p := transceivertest.Connect(t, a, b).(*Peer)
			if p.am != c.want {
				t.Errorf("writes use active messages: %v (%s), want %v", p.am, p.path, c.want)
			}
			fillRandom(src, 3)
			if err := p.Write(context.Background(), transceiver.Transfer{Pairs: []transceiver.BlockPair{{Local: 1, Remote: 2}}}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(block(src, 1), block(dst, 2)) {
				t.Error("block differs after the write")
			}
		})
	}
}

// TestForgedWrites sends write messages that a Peer's own checks would
// never let out, as a malicious or broken peer could: the receiver must
// refuse each (counting it), the sender's write must fail with
// ErrBadDescriptor, and the receiver's memory must not change. A good
// message through the same hook then lands where it should.
func TestForgedWrites(t *testing.T) {
	requireUCX(t)
	t.Setenv(envAMWrite, "1")
	const bb, n = 4096, 16
	src, dst := newRegion(t, bb, 32), newRegion(t, bb, n)
	fillRandom(src, 7)
	fillRandom(dst, 8)
	a, b := newAgent(t, "a", src, 0), newAgent(t, "b", dst, 0)
	p := transceivertest.Connect(t, a, b).(*Peer)
	before := regionBytes(dst)
	hdr := func(runs ...wrun) writeHeader {
		return writeHeader{magic: writeMagic, blockBytes: bb, runs: runs}
	}
	forged := []struct {
		name   string
		h      writeHeader
		blocks int64 // data sent, in blocks
	}{
		{"bad magic", writeHeader{magic: 0x1234, blockBytes: bb, runs: []wrun{{1, 1}}}, 1},
		{"other block size", writeHeader{magic: writeMagic, blockBytes: bb / 2, runs: []wrun{{1, 2}}}, 1},
		{"block past the region", hdr(wrun{n, 1}), 1},
		{"run past the region", hdr(wrun{n - 2, 3}), 3},
		{"run count wrapping around", hdr(wrun{2, 1<<32 - 1}), 1},
		{"empty run", hdr(wrun{1, 0}, wrun{2, 1}), 1},
		{"no runs", hdr(), 1},
		{"less data than the runs", hdr(wrun{1, 2}), 1},
		{"more data than the runs", hdr(wrun{1, 1}), 2},
		{"rendezvous with less data", hdr(wrun{0, n}), 8},
		{"rendezvous past the region", hdr(wrun{8, 9}), 9},
		{"run count disagreeing with the header", writeHeader{magic: writeMagic, blockBytes: bb, runs: []wrun{{1, 1}}, extraRuns: 1}, 1},
	}
	for _, f := range forged {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.rawWrite(ctx, f.h, 0, f.blocks*bb)
		cancel()
		if !errors.Is(err, transceiver.ErrBadDescriptor) {
			t.Errorf("%s: %v, want ErrBadDescriptor", f.name, err)
		}
	}
	if !bytes.Equal(before, regionBytes(dst)) {
		t.Fatal("a refused write changed the receiver's memory")
	}
	var refused uint64
	if err := b.do(func() error { refused = uint64(b.wrecv.refused); return nil }); err != nil {
		t.Fatal(err)
	}
	if refused != uint64(len(forged)) {
		t.Errorf("receiver counted %d refused writes, want %d", refused, len(forged))
	}
	// The same hook with a true header: blocks 3..4 of src into 5..6.
	if err := p.rawWrite(context.Background(), hdr(wrun{5, 2}), 3*bb, 2*bb); err != nil {
		t.Fatalf("good write: %v", err)
	}
	for i := int32(0); i < 2; i++ {
		if !bytes.Equal(block(src, 3+i), block(dst, 5+i)) {
			t.Errorf("good write: block %d differs", 5+i)
		}
	}
}

// regionBytes copies every block of r.
func regionBytes(r transceiver.Region) []byte {
	var b []byte
	for i := 0; i < r.NumBlocks; i++ {
		b = append(b, block(r, int32(i))...)
	}
	return b
}
