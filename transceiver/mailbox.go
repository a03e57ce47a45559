package transceiver

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// maxQueuedNotifications bounds the notifications kept for nobody yet.
const maxQueuedNotifications = 1 << 16

// Mailbox matches received notifications with the requests waiting for
// them, by request id: a notification that arrives first is kept until its
// request asks, one that arrives later wakes the waiter. Backends feed it
// from their progress loop and serve Waiter.WaitNotification from it.
type Mailbox struct {
	mu      sync.Mutex
	notes   map[uint64]Notification
	waiters map[uint64]chan Notification
	parked  atomic.Int32 // waiters blocked in Wait
}

// NewMailbox makes an empty mailbox.
func NewMailbox() *Mailbox {
	return &Mailbox{notes: map[uint64]Notification{}, waiters: map[uint64]chan Notification{}}
}

// Deliver hands n to its waiter or keeps it. It reports false when n was
// dropped because too many notifications are unclaimed.
func (m *Mailbox) Deliver(n Notification) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ch, ok := m.waiters[n.RequestID]; ok {
		delete(m.waiters, n.RequestID)
		ch <- n // buffered: never blocks
		return true
	}
	if len(m.notes) >= maxQueuedNotifications {
		return false
	}
	m.notes[n.RequestID] = n
	return true
}

// Parked reports whether a waiter may be blocked in Wait: a loop that has
// delivered notifications yields its thread then (YieldToWoken).
func (m *Mailbox) Parked() bool { return m.parked.Load() > 0 }

// Waiting reports whether any request is waiting for its notification
// (a backend that polls for notifications polls faster then).
func (m *Mailbox) Waiting() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.waiters) > 0
}

// Wait returns requestID's notification once it arrives. It gives up when
// ctx ends (an error wrapping its cause) or when closed is closed
// (ErrClosed). One waiter per request id.
func (m *Mailbox) Wait(ctx context.Context, requestID uint64, closed <-chan struct{}) (Notification, error) {
	m.mu.Lock()
	if n, ok := m.notes[requestID]; ok {
		delete(m.notes, requestID)
		m.mu.Unlock()
		return n, nil
	}
	if _, dup := m.waiters[requestID]; dup {
		m.mu.Unlock()
		return Notification{}, fmt.Errorf("transceiver: request %d already has a waiter", requestID)
	}
	ch := make(chan Notification, 1)
	m.waiters[requestID] = ch
	m.mu.Unlock()
	// poll first where threads are to spare (see Handoff): a push's
	// notification comes a transfer's time after the wait begins
	var (
		got   Notification
		found bool
	)
	if !spin(func() bool {
		select {
		case got = <-ch:
			found = true
			return true
		case <-ctx.Done():
			return true
		case <-closed:
			return true
		default:
			return false
		}
	}) {
		m.parked.Add(1)
		select {
		case got = <-ch:
			found = true
		case <-ctx.Done():
		case <-closed:
		}
		m.parked.Add(-1)
	}
	if found {
		return got, nil
	}
	m.mu.Lock()
	if m.waiters[requestID] == ch {
		delete(m.waiters, requestID)
	}
	m.mu.Unlock()
	select {
	case n := <-ch: // delivered while we gave up
		return n, nil
	default:
	}
	if ctx.Err() == nil {
		return Notification{}, ErrClosed
	}
	return Notification{}, fmt.Errorf("transceiver: waiting for request %d: %w", requestID, context.Cause(ctx))
}
