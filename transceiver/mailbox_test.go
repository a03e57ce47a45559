package transceiver

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestMailbox(t *testing.T) {
	m := NewMailbox()
	never := make(chan struct{})
	// Arrives first, claimed later.
	m.Deliver(Notification{RequestID: 1, Err: "early"})
	if n, err := m.Wait(context.Background(), 1, never); err != nil || n.Err != "early" {
		t.Fatalf("early notification: %+v %v", n, err)
	}
	// Waiter first.
	if m.Waiting() {
		t.Fatal("Waiting with nobody waiting")
	}
	got := make(chan Notification, 1)
	go func() {
		n, err := m.Wait(context.Background(), 2, never)
		if err != nil {
			t.Error(err)
		}
		got <- n
	}()
	for !m.Waiting() {
		time.Sleep(time.Millisecond)
	}
	m.mu.Lock()
	_, waiting := m.waiters[2]
	m.mu.Unlock()
	if !waiting {
		t.Fatal("Waiting, but not for request 2")
	}
	if _, err := m.Wait(context.Background(), 2, never); err == nil {
		t.Error("a second waiter for the same request was accepted")
	}
	m.Deliver(Notification{RequestID: 2})
	if m.Waiting() {
		t.Error("Waiting after the only waiter's notification was delivered")
	}
	if n := <-got; n.RequestID != 2 {
		t.Fatalf("waiter got %+v", n)
	}
	// Deadline and close.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := m.Wait(ctx, 3, never); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline: err = %v", err)
	}
	closed := make(chan struct{})
	close(closed)
	if _, err := m.Wait(context.Background(), 4, closed); !errors.Is(err, ErrClosed) {
		t.Errorf("closed: err = %v", err)
	}
	if len(m.waiters) != 0 {
		t.Errorf("%d waiters left behind", len(m.waiters))
	}
}
