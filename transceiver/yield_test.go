package transceiver

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestHandoff runs Wait both ways (polling first where threads are to
// spare, blocking at once otherwise): every answer reaches its caller,
// an answer sent just before the loop ends still does, and a loop that
// ends without one gives ErrClosed.
func TestHandoff(t *testing.T) {
	spinOnce.Do(func() {})
	saved := maxSpinners
	t.Cleanup(func() { maxSpinners = saved })
	for _, spinners := range []int32{0, 2} {
		maxSpinners = spinners
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
				h.Answered()
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
						t.Errorf("spinners %d: Wait = %v, want the answer", spinners, err)
						return
					}
				}
			}()
		}
		callers.Wait()
		close(work)
		loop.Wait()
		if p, s := h.parked.Load(), h.spinning.Load(); p != 0 || s != 0 {
			t.Fatalf("spinners %d: %d parked and %d spinning callers left", spinners, p, s)
		}
		// answered, then the loop ended: the answer wins
		done := make(chan error, 1)
		done <- nil
		close(loopDone)
		if err := h.Wait(done, loopDone); err != nil {
			t.Fatalf("spinners %d: answer before the end: %v", spinners, err)
		}
		if err := h.Wait(make(chan error, 1), loopDone); !errors.Is(err, ErrClosed) {
			t.Fatalf("spinners %d: loop ended without an answer: %v, want ErrClosed", spinners, err)
		}
	}
}
