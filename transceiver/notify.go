package transceiver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
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
	// Push, when set, turns the notification into a request: the receiver
	// is asked to write its blocks Push.Src into the sender's blocks
	// Blocks (same order), then to notify completion with checksums.
	Push *PushRequest
}

// PushRequest is the part of a notification that asks its receiver (the
// side holding a request's blocks) to push them to the asker, which
// cannot pull them efficiently or at all (a staged pool, or CUDA IPC where
// UCX turns zero-copy GET off).
type PushRequest struct {
	// Src are the receiver's block ids to send, one per destination in
	// Notification.Blocks. The receiver checks them against the blocks it
	// holds for the request before anything moves.
	Src []int32
	// Info is the asker's connection info (Transceiver.LocalInfo): where
	// to write. Destinations are checked against its region.
	Info []byte
	// Budget is how long the write may take once the request arrives; the
	// asker waits at least this long for the answer before it reuses the
	// destination blocks.
	Budget time.Duration
	// Token authenticates the request (the disagg layer signs it with the
	// cluster secret); at most MaxPushToken bytes.
	Token []byte
}

// MaxPushToken bounds PushRequest.Token.
const MaxPushToken = 64

const (
	notifMagic   = 'N'
	notifVersion = 1
	// Flag bits of a notification.
	notifSums = 1 << 0
	notifPush = 1 << 1
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
		flags |= notifSums
	}
	if n.Push != nil {
		if len(n.Push.Src) != len(n.Blocks) {
			return nil, fmt.Errorf("transceiver: push request has %d sources for %d destinations", len(n.Push.Src), len(n.Blocks))
		}
		if len(n.Push.Info) > maxPayloadLen+4*maxNameLen {
			return nil, fmt.Errorf("transceiver: push request's connection info of %d bytes is too long", len(n.Push.Info))
		}
		if len(n.Push.Token) > MaxPushToken {
			return nil, fmt.Errorf("transceiver: push token of %d bytes exceeds %d", len(n.Push.Token), MaxPushToken)
		}
		if n.Push.Budget <= 0 || n.Push.Budget/time.Millisecond > 1<<31 {
			return nil, fmt.Errorf("transceiver: push request budget %v: want a positive duration under 24 days", n.Push.Budget)
		}
		flags |= notifPush
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
	b = append(b, msg...)
	if n.Push != nil {
		for _, id := range n.Push.Src {
			b = binary.LittleEndian.AppendUint32(b, uint32(id))
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(max(1, n.Push.Budget/time.Millisecond)))
		b = appendBytes(b, n.Push.Info)
		b = appendBytes(b, n.Push.Token)
	}
	return b, nil
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
		if flags&notifSums != 0 {
			n.Sums = make([]uint32, cnt)
			for i := range n.Sums {
				n.Sums[i] = r.u32()
			}
		}
		n.Err = string(r.take(int(r.u16())))
		if flags&notifPush != 0 && r.err == nil {
			if int64(cnt)*4 > int64(len(r.b)) {
				return Notification{}, fmt.Errorf("transceiver: push request claims %d sources in %d bytes", cnt, len(r.b))
			}
			p := &PushRequest{Src: make([]int32, cnt)}
			for i := range p.Src {
				p.Src[i] = int32(r.u32())
			}
			p.Budget = time.Duration(r.u32()) * time.Millisecond
			p.Info = r.bytes(maxPayloadLen + 4*maxNameLen)
			p.Token = r.bytes(MaxPushToken)
			n.Push = p
		}
		if flags&^(notifSums|notifPush) != 0 && r.err == nil {
			r.err = fmt.Errorf("unknown flags %#x", flags)
		}
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
// receiver can verify (Await); for a device region only when the peer is
// a ChecksumWriter (staged), else the notification carries none. If the write fails and the peer can be
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
	cw, summing := p.(ChecksumWriter)
	if sums && local.Mem != nil && local.Mem.Device() && !summing {
		// Device blocks would need a kernel to checksum; a staged peer
		// (ChecksumWriter) sums them in host memory on the way.
		sums = false
	}
	if sums && !summing {
		s, err := Checksums(local, src)
		if err != nil {
			return err
		}
		n.Sums = s
	}
	var err error
	switch wn, ok := p.(WriteNotifier); {
	case sums && summing:
		if n.Sums, err = cw.WriteSums(ctx, t); err == nil {
			err = nt.Notify(ctx, n)
		}
	case ok:
		err = wn.WriteNotify(ctx, t, n)
	default:
		if err = p.Write(ctx, t); err == nil {
			err = nt.Notify(ctx, n)
		}
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
