package transceiver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"unsafe"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Notification tells the receiver of a transfer that a request's blocks
// are complete (or that the sender gave up).
type Notification struct {
	// RequestID names the request.
	RequestID uint64
	// Blocks are the receiver's block ids the transfer wrote, in the order
	// of Sums.
	Blocks []int32
	// Sums, when non-empty, holds the CRC32C of each block in Blocks as
	// the sender read it; the receiver verifies them (Verify).
	Sums []uint32
	// Err, when non-empty, says the sender aborted the request; the
	// receiver frees its blocks.
	Err string
}

const (
	notifMagic   = 'N'
	notifVersion = 1
	// MaxNotificationBlocks bounds the blocks one notification may name.
	MaxNotificationBlocks = 1 << 20
	maxNotifErr           = 4096
)

// EncodeNotification serializes n.
func EncodeNotification(n Notification) ([]byte, error) {
	if len(n.Blocks) > MaxNotificationBlocks {
		return nil, fmt.Errorf("transceiver: notification names %d blocks, more than %d", len(n.Blocks), MaxNotificationBlocks)
	}
	if len(n.Sums) != 0 && len(n.Sums) != len(n.Blocks) {
		return nil, fmt.Errorf("transceiver: notification has %d checksums for %d blocks", len(n.Sums), len(n.Blocks))
	}
	msg := n.Err
	if len(msg) > maxNotifErr {
		msg = msg[:maxNotifErr]
	}
	b := make([]byte, 0, 20+8*len(n.Blocks)+len(msg))
	b = append(b, notifMagic, notifVersion)
	b = binary.LittleEndian.AppendUint64(b, n.RequestID)
	flags := byte(0)
	if len(n.Sums) != 0 {
		flags |= 1
	}
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(n.Blocks)))
	for _, id := range n.Blocks {
		b = binary.LittleEndian.AppendUint32(b, uint32(id))
	}
	for _, s := range n.Sums {
		b = binary.LittleEndian.AppendUint32(b, s)
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...), nil
}

// DecodeNotification parses an untrusted notification.
func DecodeNotification(b []byte) (Notification, error) {
	r := &reader{b: b}
	if m, v := r.u8(), r.u8(); r.err == nil && (m != notifMagic || v != notifVersion) {
		return Notification{}, fmt.Errorf("transceiver: notification with magic %#x version %d, want %#x version %d", m, v, notifMagic, notifVersion)
	}
	var n Notification
	n.RequestID = r.u64()
	flags := r.u8()
	cnt := r.u32()
	if r.err == nil && (cnt > MaxNotificationBlocks || int64(cnt)*4 > int64(len(r.b))) {
		return Notification{}, fmt.Errorf("transceiver: notification claims %d blocks in %d bytes", cnt, len(b))
	}
	if r.err == nil {
		n.Blocks = make([]int32, cnt)
		for i := range n.Blocks {
			n.Blocks[i] = int32(r.u32())
		}
		if flags&1 != 0 {
			n.Sums = make([]uint32, cnt)
			for i := range n.Sums {
				n.Sums[i] = r.u32()
			}
		}
		n.Err = string(r.take(int(r.u16())))
	}
	if r.err != nil {
		return Notification{}, fmt.Errorf("transceiver: malformed notification: %v", r.err)
	}
	if len(r.b) != 0 {
		return Notification{}, fmt.Errorf("transceiver: notification has %d trailing bytes", len(r.b))
	}
	return n, nil
}

// blockBytes returns block b of a host region as a byte slice.
func blockBytes(r Region, b int32) ([]byte, error) {
	if r.Mem == nil || r.Mem.Device() {
		return nil, fmt.Errorf("%w: checksums of device memory need a device kernel", ErrUnsupported)
	}
	if b < 0 || int(b) >= r.NumBlocks {
		return nil, fmt.Errorf("%w: block %d outside the registered %d blocks", ErrBadDescriptor, b, r.NumBlocks)
	}
	base := unsafe.Add(r.Mem.Ptr(), int(b)*r.BlockBytes)
	return unsafe.Slice((*byte)(base), r.BlockBytes), nil
}

// Checksums returns the CRC32C of each listed block of a host region.
func Checksums(r Region, blocks []int32) ([]uint32, error) {
	out := make([]uint32, len(blocks))
	for i, b := range blocks {
		s, err := blockBytes(r, b)
		if err != nil {
			return nil, err
		}
		out[i] = crc32.Checksum(s, castagnoli)
	}
	return out, nil
}

// Verify checks blocks against sums (one per block); any mismatch or bad
// id fails closed with an error wrapping ErrChecksum or ErrBadDescriptor.
func Verify(r Region, blocks []int32, sums []uint32) error {
	if len(sums) != len(blocks) {
		return fmt.Errorf("%w: %d checksums for %d blocks", ErrChecksum, len(sums), len(blocks))
	}
	got, err := Checksums(r, blocks)
	if err != nil {
		return err
	}
	for i := range got {
		if got[i] != sums[i] {
			return fmt.Errorf("%w: block %d has crc32c %#08x, sender sent %#08x", ErrChecksum, blocks[i], got[i], sums[i])
		}
	}
	return nil
}

// Push writes t's blocks to the peer and then notifies it. With sums, the
// notification carries the CRC32C of each source block so that the
// receiver can verify (Await). If the write fails and the peer can be
// notified, it is told the request aborted so it can free its blocks.
func Push(ctx context.Context, p Peer, local Region, t Transfer, sums bool) error {
	nt, ok := p.(Notifier)
	if !ok {
		return fmt.Errorf("%w: peer cannot be notified", ErrUnsupported)
	}
	n := Notification{RequestID: t.RequestID, Blocks: make([]int32, len(t.Pairs))}
	src := make([]int32, len(t.Pairs))
	for i, pr := range t.Pairs {
		n.Blocks[i], src[i] = pr.Remote, pr.Local
	}
	if sums {
		s, err := Checksums(local, src)
		if err != nil {
			return err
		}
		n.Sums = s
	}
	var err error
	if wn, ok := p.(WriteNotifier); ok {
		err = wn.WriteNotify(ctx, t, n)
	} else if err = p.Write(ctx, t); err == nil {
		err = nt.Notify(ctx, n)
	}
	if err != nil {
		if !errors.Is(err, ErrBadDescriptor) && !errors.Is(err, ErrPeerFailed) && !errors.Is(err, ErrClosed) {
			abortCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortNotifyTimeout)
			defer cancel()
			// Best effort: the peer's own deadline covers a lost abort.
			if aerr := nt.Notify(abortCtx, Notification{RequestID: t.RequestID, Err: err.Error()}); aerr != nil {
				return fmt.Errorf("%w (and the abort notice failed: %v)", err, aerr)
			}
		}
		return err
	}
	return nil
}

// Await waits for requestID's notification and verifies the received
// blocks against its checksums. With requireSums, a notification without
// checksums fails closed. Blocks named by the notification must be in
// allowed (the request's own blocks) when allowed is non-nil.
func Await(ctx context.Context, w Waiter, local Region, requestID uint64, allowed []int32, requireSums bool) (Notification, error) {
	n, err := w.WaitNotification(ctx, requestID)
	if err != nil {
		return Notification{}, err
	}
	if n.Err != "" {
		return n, fmt.Errorf("%w: request %d: %s", ErrAborted, requestID, n.Err)
	}
	ok := allowSet(allowed)
	for _, b := range n.Blocks {
		if b < 0 || int(b) >= local.NumBlocks {
			return n, fmt.Errorf("%w: notification names block %d of %d", ErrBadDescriptor, b, local.NumBlocks)
		}
		if ok != nil {
			if _, in := ok[b]; !in {
				return n, fmt.Errorf("%w: notification names block %d, not one of request %d's", ErrBadDescriptor, b, requestID)
			}
		}
	}
	if len(n.Sums) == 0 {
		if requireSums {
			return n, fmt.Errorf("%w: request %d arrived without checksums", ErrChecksum, requestID)
		}
		return n, nil
	}
	return n, Verify(local, n.Blocks, n.Sums)
}
