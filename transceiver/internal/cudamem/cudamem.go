//go:build cgo

// Package cudamem reaches the CUDA runtime for the transceiver: device
// memory for its GPU tests, and the pinned host buffers and copies of
// staged transfers (transceiver.Staging). libcudart is dlopen'ed (never
// linked), so the package builds and its callers skip or fail cleanly on
// machines without CUDA. It is not the project's CUDA backend (that lives
// in cuda/). Copies run on the calling thread against the current device
// (device 0 of CUDA_VISIBLE_DEVICES: one GPU per worker process).
package cudamem

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stddef.h>

typedef int (*malloc_fn)(void **p, size_t n);
typedef int (*free_fn)(void *p);
typedef int (*memcpy_fn)(void *dst, const void *src, size_t n, int kind);
typedef int (*count_fn)(int *n);
typedef const char *(*errstr_fn)(int e);
typedef int (*hostalloc_fn)(void **p, size_t n, unsigned flags);
typedef int (*freehost_fn)(void *p);
typedef int (*sync_fn)(void);
typedef int (*setdev_fn)(int dev);
typedef int (*peer_fn)(int peer, unsigned flags);
// cudaPointerAttributes as CUDA 12 and 13 lay it out (driver_types.h)
typedef struct { int type; int device; void *dev; void *host; long reserved[8]; } ptr_attrs;
typedef int (*attrs_fn)(ptr_attrs *a, const void *p);

static struct {
	void *lib;
	malloc_fn cmalloc;
	free_fn cfree;
	memcpy_fn cmemcpy;
	count_fn count;
	errstr_fn errstr;
	hostalloc_fn hostalloc;
	freehost_fn freehost;
	sync_fn sync;
	setdev_fn setdev; // optional: two-GPU tests
	peer_fn peer;     // optional: two-GPU tests
	attrs_fn attrs;   // optional: BindThread
} cu;

static int cu_load(char *err, size_t errlen) {
	if (cu.lib) return 0;
	const char *names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
	void *lib = NULL;
	for (int i = 0; i < 3 && lib == NULL; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) { const char *e = dlerror(); snprintf(err, errlen, "%s", e ? e : "dlopen failed"); return -1; }
	*(void **)&cu.cmalloc = dlsym(lib, "cudaMalloc");
	*(void **)&cu.cfree = dlsym(lib, "cudaFree");
	*(void **)&cu.cmemcpy = dlsym(lib, "cudaMemcpy");
	*(void **)&cu.count = dlsym(lib, "cudaGetDeviceCount");
	*(void **)&cu.errstr = dlsym(lib, "cudaGetErrorString");
	*(void **)&cu.hostalloc = dlsym(lib, "cudaHostAlloc");
	*(void **)&cu.freehost = dlsym(lib, "cudaFreeHost");
	*(void **)&cu.sync = dlsym(lib, "cudaDeviceSynchronize");
	*(void **)&cu.setdev = dlsym(lib, "cudaSetDevice");
	*(void **)&cu.peer = dlsym(lib, "cudaDeviceEnablePeerAccess");
	*(void **)&cu.attrs = dlsym(lib, "cudaPointerGetAttributes");
	if (!cu.cmalloc || !cu.cfree || !cu.cmemcpy || !cu.count || !cu.errstr || !cu.hostalloc || !cu.freehost || !cu.sync) {
		snprintf(err, errlen, "libcudart lacks an entry point");
		dlclose(lib);
		return -1;
	}
	cu.lib = lib;
	return 0;
}
static int cu_count(int *n) { return cu.count(n); }
static int cu_malloc(void **p, size_t n) { return cu.cmalloc(p, n); }
static int cu_free(void *p) { return cu.cfree(p); }
static int cu_memcpy(void *d, const void *s, size_t n, int kind) { return cu.cmemcpy(d, s, n, kind); }
static const char *cu_errstr(int e) { return cu.errstr(e); }
static int cu_hostalloc(void **p, size_t n) { return cu.hostalloc(p, n, 0); }
static int cu_freehost(void *p) { return cu.freehost(p); }
static int cu_sync(void) { return cu.sync(); }
static int cu_malloc_on(int dev, void **p, size_t n) {
	if (!cu.setdev) return 1; // cudaErrorInvalidValue
	int e = cu.setdev(dev);
	if (e == 0) e = cu.cmalloc(p, n);
	cu.setdev(0);
	return e;
}
// make the context of p's device current on this thread (type 2: device memory)
static int cu_bind(const void *p) {
	if (!cu.setdev || !cu.attrs) return 1;
	ptr_attrs a = {0};
	int e = cu.attrs(&a, p);
	if (e != 0) return e;
	if (a.type != 2) return 1;
	return cu.setdev(a.device);
}
static int cu_enable_peer(int dev) {
	if (!cu.setdev || !cu.peer) return 1;
	int e = cu.setdev(0);
	if (e == 0) e = cu.peer(dev, 0);
	return e == 704 ? 0 : e; // cudaErrorPeerAccessAlreadyEnabled
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

var loadOnce sync.Once
var loadErr error

// Available loads libcudart and checks that a device exists.
func Available() error {
	loadOnce.Do(func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var buf [256]C.char
		if C.cu_load(&buf[0], C.size_t(len(buf))) != 0 {
			loadErr = fmt.Errorf("cudamem: %s", C.GoString(&buf[0]))
			return
		}
		var n C.int
		if e := C.cu_count(&n); e != 0 || n == 0 {
			loadErr = fmt.Errorf("cudamem: no CUDA device (%s)", C.GoString(C.cu_errstr(e)))
		}
	})
	return loadErr
}

// BindThread makes the CUDA context of the device that holds p current on
// the calling OS thread (the caller keeps the thread locked). A thread that
// calls into a CUDA-aware library for p's transfers (UCX's cuda_ipc) then
// finds the context there instead of having the library look it up and
// push it on every operation.
func BindThread(p unsafe.Pointer) error {
	if err := Available(); err != nil {
		return err
	}
	return check(C.cu_bind(p), "bind this thread to the device of the region")
}

func check(e C.int, what string) error {
	if e == 0 {
		return nil
	}
	return fmt.Errorf("cudamem: %s: %s", what, C.GoString(C.cu_errstr(e)))
}

// Memory is device memory from cudaMalloc; it implements kvcache.Memory.
type Memory struct {
	ptr  unsafe.Pointer
	size int
	once sync.Once
}

// Alloc allocates size bytes on the current device.
func Alloc(size int) (*Memory, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, errors.New("cudamem: size must be positive")
	}
	var p unsafe.Pointer
	if err := check(C.cu_malloc(&p, C.size_t(size)), "cudaMalloc"); err != nil {
		return nil, err
	}
	return &Memory{ptr: p, size: size}, nil
}

// AllocOn allocates size bytes on device dev (an ordinal of
// CUDA_VISIBLE_DEVICES) and makes device 0 current again: for tests that
// measure a copy between two GPUs of one process.
func AllocOn(dev, size int) (*Memory, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, errors.New("cudamem: size must be positive")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var p unsafe.Pointer
	if err := check(C.cu_malloc_on(C.int(dev), &p, C.size_t(size)), fmt.Sprintf("cudaMalloc on device %d", dev)); err != nil {
		return nil, err
	}
	return &Memory{ptr: p, size: size}, nil
}

// EnablePeer lets device 0 reach device dev's memory directly (NVLink or
// PCIe peer to peer), so that Copy between them does not stage through
// the host.
func EnablePeer(dev int) error {
	if err := Available(); err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return check(C.cu_enable_peer(C.int(dev)), fmt.Sprintf("cudaDeviceEnablePeerAccess to device %d", dev))
}

// Ptr is the device address.
func (m *Memory) Ptr() unsafe.Pointer { return m.ptr }

// Size is the length in bytes.
func (m *Memory) Size() int { return m.size }

// Device is true.
func (m *Memory) Device() bool { return true }

// Close frees the memory.
func (m *Memory) Close() error {
	var err error
	m.once.Do(func() { err = check(C.cu_free(m.ptr), "cudaFree") })
	return err
}

// CopyIn copies src to the device at byte offset off.
func (m *Memory) CopyIn(off int, src []byte) error {
	if off < 0 || off+len(src) > m.size {
		return errors.New("cudamem: copy out of range")
	}
	if len(src) == 0 {
		return nil
	}
	return check(C.cu_memcpy(unsafe.Add(m.ptr, off), unsafe.Pointer(&src[0]), C.size_t(len(src)), 1), "cudaMemcpy to device")
}

// CopyOut copies len(dst) bytes from byte offset off of the device.
func (m *Memory) CopyOut(off int, dst []byte) error {
	if off < 0 || off+len(dst) > m.size {
		return errors.New("cudamem: copy out of range")
	}
	if len(dst) == 0 {
		return nil
	}
	return check(C.cu_memcpy(unsafe.Pointer(&dst[0]), unsafe.Add(m.ptr, off), C.size_t(len(dst)), 2), "cudaMemcpy to host")
}

// Sync waits until the device has finished all work
// (cudaDeviceSynchronize).
func Sync() error {
	if err := Available(); err != nil {
		return err
	}
	return check(C.cu_sync(), "cudaDeviceSynchronize")
}

// Copy copies n bytes from src to dst, either of which may be device or
// host memory (cudaMemcpyDefault, unified addressing). Copies to host
// memory and from pinned host memory are complete when it returns; a
// device-to-device copy may still run (Sync waits for it), which is
// ordered before later work on the device.
func Copy(dst, src unsafe.Pointer, n int) error {
	if err := Available(); err != nil {
		return err
	}
	if n <= 0 {
		return nil
	}
	return check(C.cu_memcpy(dst, src, C.size_t(n), 4), "cudaMemcpy")
}

// Pinned is page-locked host memory from cudaHostAlloc; it implements
// kvcache.Memory (host memory: Device is false).
type Pinned struct {
	ptr  unsafe.Pointer
	size int
	once sync.Once
}

// AllocPinned allocates size bytes of page-locked host memory.
func AllocPinned(size int) (*Pinned, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, errors.New("cudamem: size must be positive")
	}
	var p unsafe.Pointer
	if err := check(C.cu_hostalloc(&p, C.size_t(size)), "cudaHostAlloc"); err != nil {
		return nil, err
	}
	return &Pinned{ptr: p, size: size}, nil
}

// Ptr is the host address.
func (m *Pinned) Ptr() unsafe.Pointer { return m.ptr }

// Size is the length in bytes.
func (m *Pinned) Size() int { return m.size }

// Device is false: pinned memory is host memory.
func (m *Pinned) Device() bool { return false }

// Close frees the memory.
func (m *Pinned) Close() error {
	var err error
	m.once.Do(func() { err = check(C.cu_freehost(m.ptr), "cudaFreeHost") })
	return err
}
