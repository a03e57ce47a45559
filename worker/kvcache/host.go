package kvcache

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hostMemory is anonymous mmap'ed memory: outside the Go heap, page
// aligned, zeroed, and never moved by the garbage collector.
type hostMemory struct {
	once sync.Once
	buf  []byte
}

// AllocHost maps size bytes of anonymous host memory.
func AllocHost(size int) (Memory, error) {
	if size <= 0 {
		return nil, fmt.Errorf("kvcache: host allocation of %d bytes", size)
	}
	buf, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("kvcache: mmap %d bytes: %w", size, err)
	}
	return &hostMemory{buf: buf}, nil
}

func (m *hostMemory) Ptr() unsafe.Pointer { return unsafe.Pointer(&m.buf[0]) }
func (m *hostMemory) Size() int           { return len(m.buf) }
func (m *hostMemory) Device() bool        { return false }

// Bytes is the host memory as a byte slice.
func (m *hostMemory) Bytes() []byte { return m.buf }

func (m *hostMemory) Close() error {
	var err error
	m.once.Do(func() { err = unix.Munmap(m.buf) })
	return err
}
