package transceiver

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// YieldToWoken lets the goroutines a progress loop has just answered (a
// transfer's caller, a notification's waiter) run now. Called by the loop
// after a pass that answered any.
//
// The runtime queues a goroutine woken by a channel send on the sender's
// P, and a progress loop keeps its P while it polls, so the woken one waits
// for an idle thread to be woken to steal it: measured on two cores, a
// one-block UCX write spent 85–300 µs there out of 150–420 µs, and 22–24 µs
// with this yield. For the loop, locked to its thread, the yield costs a
// hand-off of its P and back.
func YieldToWoken() { runtime.Gosched() }

// EnvSpinWait, set to 0, makes every goroutine waiting for its progress
// loop's answer block at once instead of polling for it first; set to 1,
// lets one caller at a time poll even with fewer than four threads, to
// try the polling path on a small machine (a tuning and diagnosis knob).
const EnvSpinWait = "DISAGG_SPIN_WAIT"

// spinWait bounds how long a caller polls for its answer before it blocks:
// longer than a transfer's fixed cost, short against a large transfer.
const spinWait = 200 * time.Microsecond

var (
	spinOnce sync.Once
	// maxSpinners is how many callers may poll at once: none with fewer
	// than four threads for Go code (the progress loops and, on one host,
	// the peer need them: on two cores a polling caller made a one-block
	// UCX write 72–106 → 412–470 µs), else a quarter of them.
	maxSpinners int32
	// spinners counts the goroutines polling now, in this process.
	spinners atomic.Int32
)

// LoopMaySpin reports whether a progress loop may watch for work by
// polling rather than sleep between its polls of the backend: where
// callers may poll for their answers (four threads or more for Go code,
// DISAGG_SPIN_WAIT unset; see spin), the loop's thread has a core of its
// own to spend, and a thread woken from ppoll takes microseconds to run.
func LoopMaySpin() bool {
	spinPolicy()
	return maxSpinners > 0
}

func spinPolicy() {
	spinOnce.Do(func() {
		switch n := runtime.GOMAXPROCS(0); {
		case os.Getenv(EnvSpinWait) == "0":
		case n >= 4:
			maxSpinners = int32(n / 4)
		case os.Getenv(EnvSpinWait) == "1":
			maxSpinners = 1
		}
	})
}

// spin calls try, a check that does not block, until it reports true or
// spinWait passes, where a goroutine may poll (see Handoff); it reports
// whether try succeeded.
func spin(try func() bool) bool {
	spinPolicy()
	if maxSpinners == 0 {
		return false
	}
	defer spinners.Add(-1)
	if spinners.Add(1) > maxSpinners {
		return false
	}
	start := time.Now()
	for i := 1; ; i++ {
		if try() {
			return true
		}
		if i%32 == 0 && time.Since(start) > spinWait {
			return false
		}
	}
}

// Handoff carries a progress loop's answers to the goroutines that wait
// for them. A goroutine woken from a channel wait reaches its CPU only
// through a chain of thread wake-ups (see YieldToWoken): tens of
// microseconds on a virtual machine, as much as a GPU-to-GPU write's own
// cost. Where threads are to spare, a caller therefore polls its answer
// channel for a while before it blocks, and the loop yields its thread only
// when some caller is blocked. Measured on a 16-core H100 machine, UCX
// between two processes on the GPU: a one-block write 43–51 → 14–16 µs, a
// 46 MB write 68–73 → 56–57 µs. The zero value is ready to use.
type Handoff struct {
	parked atomic.Int32 // callers blocked in Wait
}

// Wait returns the answer sent on done, or ErrClosed once loopDone is
// closed without one.
func (h *Handoff) Wait(done <-chan error, loopDone <-chan struct{}) error {
	var answer error
	if spin(func() bool {
		select {
		case answer = <-done:
			return true
		case <-loopDone:
			answer = answerOrClosed(done)
			return true
		default:
			return false
		}
	}) {
		return answer
	}
	h.parked.Add(1)
	defer h.parked.Add(-1)
	select {
	case err := <-done:
		return err
	case <-loopDone:
		return answerOrClosed(done)
	}
}

// Parked reports whether a caller of Wait may be blocked: a loop that has
// answered callers yields its thread then (YieldToWoken).
func (h *Handoff) Parked() bool { return h.parked.Load() > 0 }

// answerOrClosed: the loop may have answered just before it ended.
func answerOrClosed(done <-chan error) error {
	select {
	case err := <-done:
		return err
	default:
		return ErrClosed
	}
}
