package transceiver

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// eachSpinLimit runs f with polling off (limit 0) and on (limit 2),
// whatever this machine's threads would choose.
func eachSpinLimit(t *testing.T, f func(limit int32)) {
	spinOnce.Do(func() {})
	saved := maxSpinners
	t.Cleanup(func() { maxSpinners = saved })
	for _, limit := range []int32{0, 2} {
		maxSpinners = limit
		f(limit)
	}
}

// TestHandoff runs Handoff.Wait both ways (polling first where threads are
// to spare, blocking at once otherwise): every answer reaches its caller,
// an answer sent just before the loop ends still does, and a loop that
// ends without one gives ErrClosed.
func TestHandoff(t *testing.T) {
	eachSpinLimit(t, func(limit int32) {
		var h Handoff
		loopDone := make(chan struct{})
		work := make(chan chan error)
		var loop sync.WaitGroup
		loop.Add(1)
		go func() { // a progress loop that answers after a varying delay
			defer loop.Done()
			i := 0
			for done := range work {
				time.Sleep(time.Duration(i%3) * 150 * time.Microsecond) // within and past spinWait
				done <- errors.New("answer")
				if h.Parked() {
					YieldToWoken()
				}
				i++
			}
		}()
		var callers sync.WaitGroup
		for c := 0; c < 4; c++ {
			callers.Add(1)
			go func() {
				defer callers.Done()
				for i := 0; i < 50; i++ {
					done := make(chan error, 1)
					work <- done
					if err := h.Wait(done, loopDone); err == nil || err.Error() != "answer" {
						t.Errorf("limit %d: Wait = %v, want the answer", limit, err)
						return
					}
				}
			}()
		}
		callers.Wait()
		close(work)
		loop.Wait()
		if p, s := h.parked.Load(), spinners.Load(); p != 0 || s != 0 {
			t.Fatalf("limit %d: %d parked and %d spinning callers left", limit, p, s)
		}
		// answered, then the loop ended: the answer wins
		done := make(chan error, 1)
		done <- nil
		close(loopDone)
		if err := h.Wait(done, loopDone); err != nil {
			t.Fatalf("limit %d: answer before the end: %v", limit, err)
		}
		if err := h.Wait(make(chan error, 1), loopDone); !errors.Is(err, ErrClosed) {
			t.Fatalf("limit %d: loop ended without an answer: %v, want ErrClosed", limit, err)
		}
	})
}

// TestMailboxWaitBothWays: notifications delivered within and past the
// polling time reach their waiters, and a waiter whose context ends or
// whose loop closes gives up, polling first or not.
func TestMailboxWaitBothWays(t *testing.T) {
	eachSpinLimit(t, func(limit int32) {
		m := NewMailbox()
		never := make(chan struct{})
		for i, delay := range []time.Duration{0, 50 * time.Microsecond, 400 * time.Microsecond, 5 * time.Millisecond} {
			id := uint64(i + 1)
			go func() {
				time.Sleep(delay)
				for !m.Deliver(Notification{RequestID: id, Err: "x"}) {
				}
			}()
			n, err := m.Wait(context.Background(), id, never)
			if err != nil || n.RequestID != id {
				t.Fatalf("limit %d, delay %v: %+v, %v", limit, delay, n, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err := m.Wait(ctx, 100, never)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("limit %d: expired wait: %v", limit, err)
		}
		closed := make(chan struct{})
		close(closed)
		if _, err := m.Wait(context.Background(), 101, closed); !errors.Is(err, ErrClosed) {
			t.Fatalf("limit %d: closed loop: %v", limit, err)
		}
		if m.Parked() || m.Waiting() {
			t.Fatalf("limit %d: a waiter left behind", limit)
		}
	})
}
