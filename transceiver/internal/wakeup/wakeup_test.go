package wakeup

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSleep(t *testing.T) {
	w, err := New()
	if err != nil {
		t.Fatal(err)
	}
	// not woken: the nap lasts about d
	start := time.Now()
	if ready, err := w.Sleep(-1, 20*time.Millisecond); err != nil || ready {
		t.Fatalf("Sleep = %v, %v", ready, err)
	}
	if el := time.Since(start); el < 15*time.Millisecond {
		t.Fatalf("an unwoken 20 ms nap lasted %v", el)
	}
	// woken from another goroutine: ends long before d
	go func() {
		time.Sleep(5 * time.Millisecond)
		w.Wake()
	}()
	start = time.Now()
	if _, err := w.Sleep(-1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("a woken nap lasted %v", el)
	}
	// a wake-up before the nap is kept, then drained
	w.Wake()
	w.Wake()
	start = time.Now()
	if _, err := w.Sleep(-1, 10*time.Second); err != nil || time.Since(start) > 5*time.Second {
		t.Fatalf("nap after a pending wake-up: %v after %v", err, time.Since(start))
	}
	start = time.Now()
	if _, err := w.Sleep(-1, 2*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Millisecond {
		t.Fatalf("the nap after a drained wake-up lasted %v of 2 ms: the wake-up was not drained", el)
	}
	// the other fd
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if ready, _ := w.Sleep(p[0], time.Millisecond); ready {
		t.Fatal("empty pipe reported readable")
	}
	if _, err := unix.Write(p[1], []byte{1}); err != nil {
		t.Fatal(err)
	}
	if ready, err := w.Sleep(p[0], 10*time.Second); err != nil || !ready {
		t.Fatalf("readable pipe: %v, %v", ready, err)
	}
	// closed: Wake is a no-op, Sleep fails, Close again is fine
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w.Wake()
	if _, err := w.Sleep(-1, time.Millisecond); err == nil {
		t.Fatal("Sleep on a closed FD succeeded")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}
