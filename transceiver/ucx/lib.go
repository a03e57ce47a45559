// Package ucx is the UCX transceiver: libucp, dlopen'ed at run time (never
// linked), RMA put/get of registered KV blocks and active-message
// notifications. All UCX calls of an Agent run on one goroutine locked to
// an OS thread (the progress loop); other goroutines hand it work.
//
// Importing the package registers the "UCX" backend with transceiver.
package ucx

/*
#cgo CFLAGS: -I${SRCDIR}/../../cgo -O2 -Wall
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"disagg/transceiver"
)

// DefaultLibrary is the libucp dlopen'ed when no path is configured.
const DefaultLibrary = "libucp.so.0"

// InstallHint says how to get libucp on Debian or Ubuntu.
const InstallHint = "install it with `apt-get install -y libucx0` (or libucx-dev), or point DISAGG_UCX_LIB at a libucp.so"

var (
	loadMu   sync.Mutex
	loadPath string // the library loaded, "" before the first success
)

// Load dlopens libucp from path (DefaultLibrary when empty) with local
// scope and resolves every entry point we call. It may be called many
// times with the same path; asking for a different library once one is
// loaded is an error. Errors wrap transceiver.ErrNotLoaded.
func Load(path string) error {
	if path == "" {
		path = DefaultLibrary
	}
	loadMu.Lock()
	defer loadMu.Unlock()
	if loadPath != "" {
		if loadPath != path {
			return fmt.Errorf("%w: libucp %q is already loaded, cannot switch to %q", transceiver.ErrNotLoaded, loadPath, path)
		}
		return nil
	}
	// dlopen and dlerror state are per thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var buf [512]C.char
	if C.dxu_load(cpath, &buf[0], C.size_t(len(buf))) != 0 {
		return fmt.Errorf("%w: UCX: %s; %s", transceiver.ErrNotLoaded, C.GoString(&buf[0]), InstallHint)
	}
	loadPath = path
	return nil
}

// Status is a UCX ucs_status_t that is not UCS_OK.
type Status int8

// Error implements error with UCX's own string for the status.
func (s Status) Error() string {
	str := "unknown status"
	if C.dxu_loaded() != 0 {
		if p := C.dxu_status_string(C.dxucs_status_t(s)); p != nil {
			str = C.GoString(p)
		}
	}
	return fmt.Sprintf("ucx: %s (status %d)", str, int8(s))
}

// PeerFailure reports whether the status means the peer is gone or
// unreachable (connection reset, unreachable, endpoint timeout, ...).
func (s Status) PeerFailure() bool {
	switch {
	case s == -3 /* IO_ERROR */, s == -6 /* UNREACHABLE */, s == -20 /* TIMED_OUT */, s == -24 /* NOT_CONNECTED */, s == -25 /* CONNECTION_RESET */ :
		return true
	case s <= -40 && s >= -89: // link and endpoint failures
		return true
	}
	return false
}

// Unwrap lets errors.Is(err, transceiver.ErrPeerFailed) hold for peer
// failures.
func (s Status) Unwrap() error {
	if s.PeerFailure() {
		return transceiver.ErrPeerFailed
	}
	return nil
}

func statusErr(st C.dxucs_status_t) error {
	if st == C.DXUCS_OK {
		return nil
	}
	return Status(st)
}

// Memory type bits of ucp_context_attr_t.memory_types.
var memoryTypeNames = []string{"host", "cuda", "cuda-managed", "rocm", "rocm-managed", "rdma", "ze-host", "ze-device", "ze-managed"}

// Capabilities is what Probe found out about the loaded UCX.
type Capabilities struct {
	// Library is the path or name that was dlopen'ed.
	Library string `json:"library"`
	// Version is UCX's own version, "major.minor.release".
	Version string `json:"version"`
	// MemoryTypes are the memory types the context can register.
	MemoryTypes []string `json:"memory_types"`
	// CUDA is true when GPU memory can be moved without staging.
	CUDA bool `json:"cuda"`
}

func memTypeList(bits uint64) []string {
	var out []string
	for i := 0; i < 64; i++ {
		if bits&(1<<i) == 0 {
			continue
		}
		if i < len(memoryTypeNames) {
			out = append(out, memoryTypeNames[i])
		} else {
			out = append(out, fmt.Sprintf("type%d", i))
		}
	}
	return out
}

// Probe loads libucp (path, or DefaultLibrary), creates a context and
// reports the version and memory types (CUDA support). The worker's probe
// command calls it, in a subprocess, to print capabilities as JSON.
func Probe(path string) (Capabilities, error) {
	if path == "" {
		path = DefaultLibrary
	}
	if err := Load(path); err != nil {
		return Capabilities{}, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var maj, min, rel C.uint
	C.dxu_version(&maj, &min, &rel)
	caps := Capabilities{Library: path, Version: fmt.Sprintf("%d.%d.%d", maj, min, rel)}
	var ctx C.dxucp_context_h
	if err := statusErr(C.dxu_init(C.DXUCP_FEATURE_RMA|C.DXUCP_FEATURE_AM, nil, nil, &ctx)); err != nil {
		return caps, fmt.Errorf("ucx: init: %w", err)
	}
	defer C.dxu_cleanup(ctx)
	var types C.uint64_t
	if err := statusErr(C.dxu_memory_types(ctx, &types)); err != nil {
		return caps, fmt.Errorf("ucx: query memory types: %w", err)
	}
	caps.MemoryTypes = memTypeList(uint64(types))
	caps.CUDA = uint64(types)&(1<<C.DXUCS_MEMORY_TYPE_CUDA) != 0
	return caps, nil
}

// errNoCUDA explains a device registration on a UCX without CUDA. The
// NIXL wheel's bundled UCX (1.23.0 in nixl-cu13 1.5.1) reports host, cuda
// and cuda-managed memory on the GPU machine, where Ubuntu's 1.16 reports
// host only.
var errNoCUDA = errors.New("this UCX cannot register CUDA memory (its memory types lack cuda); point DISAGG_UCX_LIB at a CUDA-enabled libucp, e.g. the one the nixl-cu13 wheel bundles (.venv/lib/python3*/site-packages/nixl_cu13.libs/libucp-*.so.0.0.0), or keep the KV pool in host memory")

// Version returns the loaded UCX's version (0, 0, 0 before Load).
func Version() (major, minor, release int) {
	if C.dxu_loaded() == 0 {
		return 0, 0, 0
	}
	var maj, min, rel C.uint
	C.dxu_version(&maj, &min, &rel)
	return int(maj), int(min), int(rel)
}

func versionAtLeast(major, minor int) bool {
	maj, min, _ := Version()
	return maj > major || (maj == major && min >= minor)
}
