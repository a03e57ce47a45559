//go:build !cgo

package cudamem

import (
	"errors"
	"unsafe"
)

var errNoCgo = errors.New("cudamem: built without cgo")

// Available always fails without cgo.
func Available() error { return errNoCgo }

// Memory is device memory; without cgo none can be allocated.
type Memory struct{}

// Alloc always fails without cgo.
func Alloc(size int) (*Memory, error) { return nil, errNoCgo }

// AllocOn always fails without cgo.
func AllocOn(dev, size int) (*Memory, error) { return nil, errNoCgo }

// BindThread always fails without cgo.
func BindThread(p unsafe.Pointer) error { return errNoCgo }

// EnablePeer always fails without cgo.
func EnablePeer(dev int) error { return errNoCgo }

// Ptr is nil.
func (m *Memory) Ptr() unsafe.Pointer { return nil }

// Size is 0.
func (m *Memory) Size() int { return 0 }

// Device is true.
func (m *Memory) Device() bool { return true }

// Close does nothing.
func (m *Memory) Close() error { return nil }

// CopyIn fails.
func (m *Memory) CopyIn(off int, src []byte) error { return errNoCgo }

// CopyOut fails.
func (m *Memory) CopyOut(off int, dst []byte) error { return errNoCgo }

// Copy fails without cgo.
func Copy(dst, src unsafe.Pointer, n int) error { return errNoCgo }

// Pinned is page-locked host memory; without cgo none can be allocated.
type Pinned struct{}

// AllocPinned always fails without cgo.
func AllocPinned(size int) (*Pinned, error) { return nil, errNoCgo }

// Ptr is nil.
func (m *Pinned) Ptr() unsafe.Pointer { return nil }

// Size is 0.
func (m *Pinned) Size() int { return 0 }

// Device is false.
func (m *Pinned) Device() bool { return false }

// Close does nothing.
func (m *Pinned) Close() error { return nil }

// Sync fails without cgo.
func Sync() error { return errNoCgo }
