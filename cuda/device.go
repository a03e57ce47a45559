//go:build cuda

package cuda

/*
#cgo CFLAGS: -I${SRCDIR}/kernels
#cgo LDFLAGS: -L${SRCDIR}/build -ldcu -lcublas -lcudart_static -lstdc++ -lm -ldl -lpthread -lrt
#include <stdlib.h>
#include "dcu.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"unsafe"

	"disagg/worker/kvcache"
)

// statusErr turns a failed call's dcu_status into an *Error.
func statusErr(st *C.dcu_status) error {
	return &Error{Kind: ErrorKind(st.kind), Code: int(st.code), Name: C.GoString(&st.name[0]), Msg: C.GoString(&st.msg[0])}
}

// call runs a dcu function that fills a status; ok==0 becomes an error.
func call(f func(st *C.dcu_status) C.int) error {
	st := (*C.dcu_status)(C.calloc(1, C.sizeof_dcu_status))
	defer C.free(unsafe.Pointer(st))
	if f(st) == 0 {
		return statusErr(st)
	}
	return nil
}

// Device owns one GPU through one goroutine locked to its OS thread; every
// CUDA call of this package runs there, handed over with Do.
type Device struct {
	Ordinal int
	// Name, compute capability and multiprocessor count, read at open.
	Name         string
	Major, Minor int
	SMs          int

	work chan func()
	mu   sync.Mutex
	done bool
	quit chan struct{}
}

// Built is true: this binary carries the CUDA backend.
const Built = true

// OpenDevice starts the owner goroutine of GPU ordinal (after
// CUDA_VISIBLE_DEVICES) and creates its context.
func OpenDevice(ordinal int) (*Device, error) {
	d := &Device{Ordinal: ordinal, work: make(chan func()), quit: make(chan struct{})}
	started := make(chan error, 1)
	go d.loop(started)
	if err := <-started; err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Device) loop(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var n C.int
	err := call(func(st *C.dcu_status) C.int { return C.dcu_device_count(&n, st) })
	if err == nil && int(n) <= d.Ordinal {
		err = fmt.Errorf("cuda: device %d asked, %d visible", d.Ordinal, int(n))
	}
	if err == nil {
		err = call(func(st *C.dcu_status) C.int {
			if C.dcu_set_device(C.int(d.Ordinal), st) == 0 {
				return 0
			}
			var buf [256]C.char
			var maj, min, sms C.int
			if C.dcu_device_name(C.int(d.Ordinal), &buf[0], C.int(len(buf)), &maj, &min, &sms, st) == 0 {
				return 0
			}
			d.Name, d.Major, d.Minor, d.SMs = C.GoString(&buf[0]), int(maj), int(min), int(sms)
			return 1
		})
	}
	started <- err
	if err != nil {
		return
	}
	for {
		select {
		case fn := <-d.work:
			fn()
		case <-d.quit:
			return
		}
	}
}

// Do runs fn on the device's thread and returns its error. A panic in fn
// comes back as an error carrying fn's own stack. ctx bounds the wait for
// the thread; once fn has started it runs to its end (native work cannot be
// interrupted).
func (d *Device) Do(ctx context.Context, fn func() error) error {
	d.mu.Lock()
	closed := d.done
	d.mu.Unlock()
	if closed {
		return ErrClosed
	}
	res := make(chan error, 1)
	job := func() {
		defer func() {
			if r := recover(); r != nil {
				res <- fmt.Errorf("cuda: panic on the device thread: %v\n%s", r, debug.Stack())
			}
		}()
		res <- fn()
	}
	select {
	case d.work <- job:
	case <-d.quit:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-res
}

// MemInfo returns the device's free and total memory in bytes.
func (d *Device) MemInfo(ctx context.Context) (free, total int64, err error) {
	err = d.Do(ctx, func() error {
		var f, t C.size_t
		e := call(func(st *C.dcu_status) C.int { return C.dcu_mem_info(&f, &t, st) })
		free, total = int64(f), int64(t)
		return e
	})
	return
}

// CopyBandwidth measures device-to-device copy: bytes read plus written per
// second over iters copies of size bytes.
func (d *Device) CopyBandwidth(ctx context.Context, size, iters int) (float64, error) {
	var ms C.float
	err := d.Do(ctx, func() error {
		return call(func(st *C.dcu_status) C.int { return C.dcu_copy_bench(C.size_t(size), C.int(iters), &ms, st) })
	})
	if err != nil {
		return 0, err
	}
	return 2 * float64(size) * float64(iters) / (float64(ms) / 1e3), nil
}

// Close stops the owner goroutine. Memory and backends on the device must
// be closed first.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.done {
		d.done = true
		close(d.quit)
	}
	return nil
}

// Memory is device memory from cudaMalloc; it implements kvcache.Memory with
// Device() true, for a KV pool on the GPU.
type Memory struct {
	dev  *Device
	ptr  unsafe.Pointer
	size int
}

var _ kvcache.Memory = (*Memory)(nil)

// Alloc allocates size bytes of device memory, zeroed.
func (d *Device) Alloc(size int) (*Memory, error) {
	if size <= 0 {
		return nil, fmt.Errorf("cuda: alloc of %d bytes", size)
	}
	m := &Memory{dev: d, size: size}
	err := d.Do(context.Background(), func() error {
		var p unsafe.Pointer
		if err := call(func(st *C.dcu_status) C.int { return C.dcu_malloc(&p, C.size_t(size), st) }); err != nil {
			return err
		}
		m.ptr = p
		return call(func(st *C.dcu_status) C.int { return C.dcu_memset(p, 0, C.size_t(size), st) })
	})
	if err != nil {
		if m.ptr != nil {
			_ = m.Close()
		}
		return nil, fmt.Errorf("cuda: alloc of %d bytes: %w", size, err)
	}
	return m, nil
}

func (m *Memory) Ptr() unsafe.Pointer { return m.ptr }
func (m *Memory) Size() int           { return m.size }
func (m *Memory) Device() bool        { return true }

// Close frees the memory (idempotent).
func (m *Memory) Close() error {
	if m.ptr == nil {
		return nil
	}
	p := m.ptr
	m.ptr = nil
	return m.dev.Do(context.Background(), func() error {
		return call(func(st *C.dcu_status) C.int { return C.dcu_free(p, st) })
	})
}

// CopyToHost copies n bytes at byte offset off of the memory to dst (tests).
func (m *Memory) CopyToHost(dst []byte, off int) error {
	if off < 0 || off+len(dst) > m.size {
		return fmt.Errorf("cuda: copy of [%d,%d) outside %d bytes", off, off+len(dst), m.size)
	}
	if len(dst) == 0 {
		return nil
	}
	return m.dev.Do(context.Background(), func() error {
		return call(func(st *C.dcu_status) C.int {
			return C.dcu_memcpy_dtoh(unsafe.Pointer(&dst[0]), unsafe.Add(m.ptr, off), C.size_t(len(dst)), st)
		})
	})
}
