package disagg

// Push mode: the generation worker asks the context worker to write a
// request's blocks into its pool, instead of reading them itself.
//
// The generation worker sends a notification carrying a
// transceiver.PushRequest to the context worker's agent, keyed by
// ctx_request_id: its destination blocks (its own pool blocks, or the
// slots of its inbound staging buffer), the context worker's source
// blocks, its connection info, the time left (Budget) and an HMAC-SHA256
// token under the cluster secret. The context worker checks the token and
// that every source block is one of the request's parked blocks, connects
// back (cached), and pushes (transceiver.Push: bounds-checked write, then
// a notification with the CRC32C of every block when it can compute
// them), or answers with an error notification. A staged generation
// worker asks once per chunk of its staging buffer and copies each chunk
// into its pool after verifying it; the parked blocks are freed when the
// generation worker's final notification (done or gave up) arrives, or at
// their deadline, never while a push is reading them.
//
// The generation worker never reuses destination blocks while the context
// worker may still write them: when it gives up waiting for an answer it
// waits for that answer for a further Budget plus a grace period (the
// context worker's write is bounded by Budget from the request's arrival)
// before it frees them.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"disagg/transceiver"
)

// pushGrace is added to a push's budget while waiting for a late answer.
const pushGrace = notifyTimeout

// pushToken signs a push request with the cluster secret.
func pushToken(secret []byte, id uint64, n transceiver.Notification) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("disagg-push-v1"))
	var b []byte
	b = binary.LittleEndian.AppendUint64(b, id)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(n.Blocks)))
	for _, x := range n.Blocks {
		b = binary.LittleEndian.AppendUint32(b, uint32(x))
	}
	for _, x := range n.Push.Src {
		b = binary.LittleEndian.AppendUint32(b, uint32(x))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(n.Push.Info)))
	h.Write(b)
	h.Write(n.Push.Info)
	return h.Sum(nil)
}

// usePush says whether the generation side asks the context worker to
// push rather than pulling.
func (m *Manager) usePush(remote transceiver.Info) bool {
	if remote.Region.Staged {
		return true // a staged context pool cannot be read remotely
	}
	switch m.opts.TransferMode {
	case transceiver.ModePush:
		return true
	case transceiver.ModePull:
		return false
	}
	return remote.Region.Device || m.pool.Memory().Device() || m.localStaged()
}

// pushMinBytes is the smallest KV that auto mode pushes where it would
// pull but the peer writes as messages (transceiver.MessageWriter): a push
// costs one notification round trip more than a read (about 0.25 ms
// between two agents over TCP on a 2-core host), and over TCP writes moved
// 1.4-2.1x the bytes per second of reads from 16 blocks up (medians,
// docs/PERFORMANCE.md, "Pull or push over TCP").
const pushMinBytes = 1 << 20

// pushLarge says whether auto mode pushes a KV of n blocks that it would
// otherwise pull through peer.
func (m *Manager) pushLarge(peer transceiver.Peer, n int) bool {
	if m.opts.TransferMode != transceiver.ModeAuto {
		return false
	}
	mw, ok := peer.(transceiver.MessageWriter)
	return ok && mw.WritesAsMessages() && int64(n)*int64(m.pool.Layout().BlockBytes()) >= m.pushMin
}

func (m *Manager) localStaged() bool {
	s, ok := m.opts.Transceiver.(*transceiver.Staging)
	return ok && s.Staged()
}

// servePush runs on the context side: it pushes a parked request's
// blocks to the generation worker that asked.
func (m *Manager) servePush(ctx context.Context, id int64, n transceiver.Notification) {
	req := n.Push
	if !hmac.Equal(req.Token, pushToken(m.opts.Secret, uint64(id), n)) {
		m.log.Warn("ignoring a push request that is not signed with this cluster's secret", "ctx_request_id", id)
		return
	}
	peer, err := m.peer(ctx, req.Info)
	if err != nil {
		m.log.Warn("push: cannot connect to the generation worker; it gives up at its deadline", "ctx_request_id", id, "err", err)
		return
	}
	blocks, ok := m.beginPush(id)
	if !ok {
		m.notify(peer, transceiver.Notification{RequestID: uint64(id), Err: "the context worker no longer holds the request's KV"})
		return
	}
	defer m.endPush(id)
	t := transceiver.Transfer{RequestID: uint64(id), Pairs: make([]transceiver.BlockPair, len(n.Blocks)),
		LocalBlocks: blocks, RemoteBlocks: n.Blocks}
	for i := range n.Blocks {
		t.Pairs[i] = transceiver.BlockPair{Local: req.Src[i], Remote: n.Blocks[i]}
	}
	wctx, cancel := context.WithTimeout(ctx, min(req.Budget, m.opts.TransferTimeout))
	defer cancel()
	err = transceiver.Push(wctx, peer, transceiver.RegionOf(m.pool), t, true)
	switch {
	case err == nil:
		m.log.Debug("KV pushed", "ctx_request_id", id, "blocks", len(n.Blocks))
	case errors.Is(err, transceiver.ErrBadDescriptor):
		// Nothing moved; Push does not notify on a rejected transfer.
		m.log.Warn("push request rejected", "ctx_request_id", id, "err", err)
		m.notify(peer, transceiver.Notification{RequestID: uint64(id), Err: err.Error()})
	case errors.Is(err, transceiver.ErrPeerFailed) || errors.Is(err, transceiver.ErrClosed) || errors.Is(err, context.DeadlineExceeded):
		m.log.Info("push to the generation worker failed", "ctx_request_id", id, "err", err)
		m.dropPeer(req.Info, peer)
	default:
		m.log.Info("push to the generation worker failed", "ctx_request_id", id, "err", err)
	}
}

// pushFetch runs on the generation side: it has the context worker push
// st's blocks into local (through the staging buffer when staged).
func (m *Manager) pushFetch(ctx context.Context, peer transceiver.Peer, st State, local []int32) error {
	w, ok := m.opts.Transceiver.(transceiver.Waiter)
	if !ok {
		return fmt.Errorf("%w: the %s transceiver cannot receive notifications", transceiver.ErrUnsupported, m.opts.Transceiver.Backend())
	}
	nt, ok := peer.(transceiver.Notifier)
	if !ok {
		return fmt.Errorf("%w: the context worker cannot be notified", transceiver.ErrUnsupported)
	}
	ask := func(ctx context.Context, dst []int32, from, to int) ([]uint32, error) {
		return m.askPush(ctx, w, nt, uint64(st.CtxRequestID), dst, st.Blocks[from:to])
	}
	if l, ok := m.opts.Transceiver.(*transceiver.Staging); ok {
		return l.Land(ctx, local, ask)
	}
	sums, err := ask(ctx, local, 0, len(local))
	if err == nil && len(sums) != 0 && !m.pool.Memory().Device() {
		err = transceiver.Verify(transceiver.RegionOf(m.pool), local, sums)
	}
	return err
}

// askPush sends one push request and waits for its answer. It returns
// only once the context worker can no longer write into dst.
func (m *Manager) askPush(ctx context.Context, w transceiver.Waiter, nt transceiver.Notifier, id uint64, dst, src []int32) ([]uint32, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(m.opts.TransferTimeout)
	}
	budget := time.Until(deadline)
	if budget < time.Millisecond {
		return nil, fmt.Errorf("transceiver: push request: %w", context.DeadlineExceeded)
	}
	req := transceiver.Notification{RequestID: id, Blocks: slices.Clone(dst),
		Push: &transceiver.PushRequest{Src: slices.Clone(src), Info: m.info, Budget: budget}}
	req.Push.Token = pushToken(m.opts.Secret, id, req)
	if err := nt.Notify(ctx, req); err != nil {
		// A peer the transport reports failed or closed delivers
		// nothing more and a dead process writes nothing; otherwise the
		// request may have arrived.
		if !errors.Is(err, transceiver.ErrPeerFailed) && !errors.Is(err, transceiver.ErrClosed) {
			m.settle(w, id, budget)
		}
		return nil, err
	}
	n, err := w.WaitNotification(ctx, id)
	if err != nil {
		m.settle(w, id, budget)
		return nil, err
	}
	if n.Err != "" {
		return nil, fmt.Errorf("%w: request %d: %s", transceiver.ErrAborted, id, n.Err)
	}
	if !slices.Equal(n.Blocks, dst) {
		return nil, fmt.Errorf("%w: the context worker reports blocks %v, asked for %v", transceiver.ErrBadDescriptor, n.Blocks, dst)
	}
	return n.Sums, nil
}

// settle waits, after a push request went unanswered, until the context
// worker's answer arrives (its write is over) or budget plus a grace
// period passes (its write has hit its own deadline).
func (m *Manager) settle(w transceiver.Waiter, id uint64, budget time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), budget+pushGrace)
	defer cancel()
	if _, err := w.WaitNotification(ctx, id); err != nil {
		m.log.Debug("no answer to a push request; its write is over by now", "ctx_request_id", id, "err", err)
	}
}
