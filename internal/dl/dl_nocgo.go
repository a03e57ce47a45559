//go:build !cgo

package dl

import "unsafe"

// Library is an opened shared library (never, without cgo).
type Library struct{ Name string }

// Open always fails without cgo.
func Open(name string) (*Library, error) { return nil, ErrNoCgo }

// Sym always fails without cgo.
func (l *Library) Sym(name string) (unsafe.Pointer, error) { return nil, ErrNoCgo }

// Close does nothing.
func (l *Library) Close() error { return nil }

// CString is unavailable without cgo.
func CString(fn unsafe.Pointer) string { return "" }
