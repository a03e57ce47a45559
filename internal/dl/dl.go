//go:build cgo

// Package dl opens shared libraries at run time (dlopen with RTLD_LOCAL),
// so that a binary starts without them and says what is missing when a
// feature needs one. dlopen, dlsym and dlerror run on a locked OS thread,
// since dlerror's state is per thread.
package dl

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

static const char *callCString(void *f) { return ((const char *(*)(void))f)(); }
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Library is an opened shared library.
type Library struct {
	Name   string
	handle unsafe.Pointer
	mu     sync.Mutex
}

// Open dlopens name (a file name searched on the loader path, or a path)
// with RTLD_NOW|RTLD_LOCAL.
func Open(name string) (*Library, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	C.dlerror()
	h := C.dlopen(cname, C.RTLD_NOW|C.RTLD_LOCAL)
	if h == nil {
		return nil, fmt.Errorf("%w: %s: %s", ErrNotFound, name, dlerror())
	}
	return &Library{Name: name, handle: h}, nil
}

// Sym looks up a symbol's address.
func (l *Library) Sym(name string) (unsafe.Pointer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.handle == nil {
		return nil, fmt.Errorf("dl: %s is closed", l.Name)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	C.dlerror()
	p := C.dlsym(l.handle, cname)
	if p == nil {
		return nil, fmt.Errorf("%w: %s in %s: %s", ErrNoSymbol, name, l.Name, dlerror())
	}
	return p, nil
}

// Close dlcloses the library.
func (l *Library) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.handle == nil {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if C.dlclose(l.handle) != 0 {
		return fmt.Errorf("dl: close %s: %s", l.Name, dlerror())
	}
	l.handle = nil
	return nil
}

func dlerror() string {
	if e := C.dlerror(); e != nil {
		return C.GoString(e)
	}
	return "unknown error"
}

// CString calls a `const char *f(void)` symbol (version strings).
func CString(fn unsafe.Pointer) string {
	return C.GoString(C.callCString(fn))
}
