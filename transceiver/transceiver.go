// Package transceiver moves KV-cache blocks between two agents (a context
// worker and a generation worker) through a pluggable backend: UCX, or NIXL
// with its UCX or LIBFABRIC plugin.
//
// The shape of a transfer:
//
//  1. Each side registers its KV pool once (Register) and exports its
//     connection info as an opaque, versioned blob (LocalInfo).
//  2. One side imports the other's blob (Connect) and gets a Peer.
//  3. The initiator moves (local block, remote block) pairs: Write pushes
//     its blocks into the peer's, Read (optional ability) pulls the peer's
//     blocks into its own. Adjacent runs coalesce into one descriptor, and
//     every pair is checked against both registered regions and the
//     request's own blocks before anything is posted.
//  4. The initiator notifies the peer (Notifier, optional ability) with the
//     request id and, when enabled, a checksum of every block, which the
//     receiver verifies (Await); a mismatch fails closed.
//
// A receiver may also ask the holder of the blocks to push them (a
// notification carrying a PushRequest), and a pool that the backend cannot
// register (device memory without a CUDA-enabled UCX) moves through host
// staging buffers (Staging, which New wraps every backend in).
//
// Completion, errors and deadlines travel through context.Context and
// errors; every native resource has an explicit Close.
package transceiver

import (
	"context"
	"errors"
	"fmt"

	"disagg/worker/kvcache"
)

// Sentinel errors. Backends wrap them so callers can test with errors.Is.
var (
	// ErrNotLoaded means the backend's native library could not be loaded.
	ErrNotLoaded = errors.New("transceiver: native library not loaded")
	// ErrUnknownBackend means no backend is registered under the name.
	ErrUnknownBackend = errors.New("transceiver: unknown backend")
	// ErrNotRegistered means a transfer was attempted before Register.
	ErrNotRegistered = errors.New("transceiver: memory not registered")
	// ErrBadDescriptor means a block pair lies outside a registered region
	// or outside the request's blocks; nothing was posted.
	ErrBadDescriptor = errors.New("transceiver: descriptor out of bounds")
	// ErrBadInfo means a peer's connection info blob is malformed.
	ErrBadInfo = errors.New("transceiver: malformed connection info")
	// ErrChecksum means a received block does not match its checksum.
	ErrChecksum = errors.New("transceiver: block checksum mismatch")
	// ErrClosed means the transceiver or peer was closed.
	ErrClosed = errors.New("transceiver: closed")
	// ErrPeerFailed means the transport reported the peer unreachable or
	// dead; the peer must be reconnected.
	ErrPeerFailed = errors.New("transceiver: peer failed")
	// ErrUnsupported means the backend lacks an optional ability.
	ErrUnsupported = errors.New("transceiver: not supported by backend")
	// ErrInjected is returned by deliberate fault injection (tests only).
	ErrInjected = errors.New("transceiver: injected fault")
	// ErrAborted means the peer notified that it aborted the request.
	ErrAborted = errors.New("transceiver: transfer aborted by peer")
)

// BlockPair maps one local block to one remote block of a transfer.
type BlockPair struct {
	// Local is the block id in this agent's region.
	Local int32
	// Remote is the block id in the peer's region.
	Remote int32
}

// Region is the memory an agent registers once: NumBlocks blocks of
// BlockBytes bytes each, starting at Mem.Ptr().
type Region struct {
	// Mem is the memory; blocks start at Mem.Ptr().
	Mem kvcache.Memory
	// BlockBytes is the size of one block.
	BlockBytes int
	// NumBlocks is the number of blocks.
	NumBlocks int
	// TokensPerBlock is the number of tokens one block holds; it converts
	// max_tokens_in_buffer into staging blocks (0: unknown, one token per
	// block is assumed).
	TokensPerBlock int
}

// RegionOf describes a whole KV pool as a Region.
func RegionOf(p *kvcache.Pool) Region {
	return Region{Mem: p.Memory(), BlockBytes: p.Layout().BlockBytes(), NumBlocks: p.NumBlocks(), TokensPerBlock: p.Layout().TokensPerBlock}
}

// Validate checks that the region is non-empty and fits in its memory.
func (r Region) Validate() error {
	if r.Mem == nil {
		return errors.New("transceiver: region has no memory")
	}
	if r.BlockBytes <= 0 || r.NumBlocks <= 0 {
		return fmt.Errorf("transceiver: region of %d blocks of %d bytes: both must be positive", r.NumBlocks, r.BlockBytes)
	}
	if r.Mem.Ptr() == nil {
		return errors.New("transceiver: region memory has a nil base address")
	}
	need := int64(r.BlockBytes) * int64(r.NumBlocks)
	if need/int64(r.NumBlocks) != int64(r.BlockBytes) || need > int64(r.Mem.Size()) {
		return fmt.Errorf("transceiver: %d blocks of %d bytes do not fit in %d bytes of memory", r.NumBlocks, r.BlockBytes, r.Mem.Size())
	}
	return nil
}

// Bytes is the region's length in bytes.
func (r Region) Bytes() int64 { return int64(r.BlockBytes) * int64(r.NumBlocks) }

// Transfer is one request's block movement.
type Transfer struct {
	// RequestID identifies the request in notifications.
	RequestID uint64
	// Pairs maps local blocks to remote blocks. Order does not matter; a
	// block may appear at most once on each side.
	Pairs []BlockPair
	// LocalBlocks, when non-nil, lists the local blocks this request owns;
	// a pair naming any other local block is rejected.
	LocalBlocks []int32
	// RemoteBlocks, when non-nil, lists the peer's blocks this request was
	// granted (from the request's opaque state); a pair naming any other
	// remote block is rejected.
	RemoteBlocks []int32
}

// Transceiver is one agent: a registered region and its connections.
type Transceiver interface {
	// Backend names the backend ("UCX", "NIXL").
	Backend() string
	// Register registers the region for transfers. It may be called once.
	Register(r Region) error
	// LocalInfo returns this agent's connection info, an opaque versioned
	// blob to hand to the peer out of band. Register must come first.
	LocalInfo() ([]byte, error)
	// Connect imports a peer's connection info and returns a Peer.
	Connect(ctx context.Context, info []byte) (Peer, error)
	// Close releases every native resource; in-flight transfers fail.
	Close() error
}

// Peer is a connection to one remote agent.
type Peer interface {
	// Name is the peer agent's name from its connection info.
	Name() string
	// Write pushes local blocks into the peer's blocks and returns when
	// the data is complete at the peer, or an error. On error or deadline
	// every posted operation has been cancelled or completed before Write
	// returns, so the local blocks may be reused.
	Write(ctx context.Context, t Transfer) error
	// Close disconnects from the peer.
	Close() error
}

// Reader is the optional pull ability of a Peer.
type Reader interface {
	// Read pulls the peer's blocks into local blocks, with the same
	// guarantees as Write.
	Read(ctx context.Context, t Transfer) error
}

// MessageWriter is the optional report of a Peer whose writes travel as
// messages that the target's progress loop lands rather than as one-sided
// RMA (UCX where the endpoint has no RMA lane, as over TCP). There a write
// outruns a read of the same blocks, which the transport emulates with a
// request and a reply, so a generation worker asks for a large KV to be
// pushed (docs/PERFORMANCE.md, "Pull or push over TCP").
type MessageWriter interface {
	WritesAsMessages() bool
}

// Notifier is the optional ability of a Peer to send a notification.
type Notifier interface {
	// Notify sends n to the peer; it is ordered after completed transfers.
	Notify(ctx context.Context, n Notification) error
}

// WriteNotifier is the optional ability of a Peer to attach a
// notification to a write, delivered after the data (NIXL's notification
// with a transfer). Push prefers it to Write followed by Notify.
type WriteNotifier interface {
	// WriteNotify writes t and has n delivered to the peer once the data
	// is complete there.
	WriteNotify(ctx context.Context, t Transfer, n Notification) error
}

// Waiter is the optional ability of a Transceiver to receive notifications.
type Waiter interface {
	// WaitNotification returns the notification for requestID, waiting
	// until it arrives or ctx is done. Each notification is returned once.
	WaitNotification(ctx context.Context, requestID uint64) (Notification, error)
}

// ChecksumWriter is the optional ability of a Peer to write and return
// the CRC32C of every block as it was sent, in t.Pairs order. A staged
// peer has each block in host memory on the way, so it can checksum
// device blocks without a kernel; Push uses it for device regions.
type ChecksumWriter interface {
	WriteSums(ctx context.Context, t Transfer) ([]uint32, error)
}

// DeviceMemory is the optional ability to register GPU memory directly.
type DeviceMemory interface {
	// SupportsDevice reports whether device (CUDA) memory can be
	// registered and moved without staging through host memory.
	SupportsDevice() bool
}
