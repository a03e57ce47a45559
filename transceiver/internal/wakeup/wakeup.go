// Package wakeup is the eventfd a transceiver's progress loop sleeps on, so
// that work handed to a sleeping loop wakes it at once instead of after
// its nap.
package wakeup

import (
	"errors"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// FD is a loop's wake-up eventfd. Wake may be called from any goroutine,
// Sleep only from the loop.
type FD struct {
	mu sync.RWMutex
	fd int // -1 once closed
}

// New makes a wake-up eventfd.
func New() (*FD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &FD{fd: fd}, nil
}

// Wake makes a sleeping loop return from Sleep (or the next Sleep return
// at once); it does nothing once w is closed.
func (w *FD) Wake() {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.fd < 0 {
		return
	}
	one := [8]byte{1}
	_, _ = unix.Write(w.fd, one[:]) // EAGAIN: a wake-up is pending already
}

// Sleep blocks until w is woken, other (when not negative) is readable,
// or d passes, and reports whether other is readable. It uses ppoll, so a
// nap of microseconds lasts about that long on a thread whose timer slack
// is small (a Go timer that short often sleeps a millisecond).
func (w *FD) Sleep(other int, d time.Duration) (otherReady bool, err error) {
	w.mu.RLock()
	fd := w.fd
	w.mu.RUnlock()
	if fd < 0 {
		return false, errors.New("wakeup: closed")
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if other >= 0 {
		fds = append(fds, unix.PollFd{Fd: int32(other), Events: unix.POLLIN})
	}
	ts := unix.NsecToTimespec(d.Nanoseconds())
	if _, err := unix.Ppoll(fds, &ts, nil); err != nil && !errors.Is(err, unix.EINTR) {
		return false, err
	}
	if fds[0].Revents&unix.POLLIN != 0 {
		var buf [8]byte
		_, _ = unix.Read(fd, buf[:]) // drain; EAGAIN is fine
	}
	return other >= 0 && fds[1].Revents&unix.POLLIN != 0, nil
}

// Close closes the eventfd; Wake does nothing afterwards.
func (w *FD) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd < 0 {
		return nil
	}
	err := unix.Close(w.fd)
	w.fd = -1
	return err
}
