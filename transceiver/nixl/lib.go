// Package nixl is the NIXL transceiver: libnixl_capi.so from the NIXL
// wheel, dlopen'ed at run time with local scope, with the transfer plugin
// chosen by TRTLLM_NIXL_KVCACHE_BACKEND (UCX or LIBFABRIC).
//
// Importing the package registers the "NIXL" backend with transceiver.
package nixl

/*
#cgo CFLAGS: -I${SRCDIR}/../../cgo -O2 -Wall
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"unsafe"

	"disagg/transceiver"
)

// LibraryName is the file dlopen'ed from the NIXL library folder.
const LibraryName = "libnixl_capi.so"

// InstallHint says how to get libnixl_capi.so.
const InstallHint = "install the NIXL wheel with `scripts/setup-native.sh` (pip install --no-deps nixl-cu13 into .venv), or set NIXL_LIB_DIR to the folder holding libnixl_capi.so"

var (
	loadMu   sync.Mutex
	loadPath string
)

// FindLibrary returns the path of libnixl_capi.so: in dir when given (or
// NIXL_LIB_DIR), else in the site-packages of the project virtualenv
// (VIRTUAL_ENV, or .venv in the working directory or any parent).
func FindLibrary(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv(transceiver.EnvNIXLLibDir)
	}
	if dir != "" {
		p := filepath.Join(dir, LibraryName)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: NIXL: %s not found in %s (%v); %s", transceiver.ErrNotLoaded, LibraryName, dir, err, InstallHint)
		}
		return p, nil
	}
	var venvs []string
	if v := os.Getenv("VIRTUAL_ENV"); v != "" {
		venvs = append(venvs, v)
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			venvs = append(venvs, filepath.Join(d, ".venv"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, v := range venvs {
		// The wheels (nixl-cu13, nixl-cu12, nixl) keep their libraries in
		// site-packages/.nixl_<flavour>.mesonpy.libs/.
		matches, err := filepath.Glob(filepath.Join(v, "lib", "python3*", "site-packages", ".nixl*.mesonpy.libs", LibraryName))
		if err != nil {
			continue
		}
		sort.Strings(matches)
		if len(matches) > 0 {
			return matches[len(matches)-1], nil
		}
	}
	return "", fmt.Errorf("%w: NIXL: %s not found in any of %v; %s", transceiver.ErrNotLoaded, LibraryName, venvs, InstallHint)
}

// Load finds and dlopens libnixl_capi.so (see FindLibrary) and checks
// that every symbol we call is exported. pluginsDir, when non-empty, is
// exported as NIXL_PLUGIN_DIR (the variable NIXL itself reads) before the
// library starts. Asking for another library once one is loaded is an
// error. Errors wrap transceiver.ErrNotLoaded.
func Load(dir, pluginsDir string) (string, error) {
	path, err := FindLibrary(dir)
	if err != nil {
		return "", err
	}
	loadMu.Lock()
	defer loadMu.Unlock()
	if loadPath != "" {
		if loadPath != path {
			return "", fmt.Errorf("%w: %s is already loaded, cannot switch to %s", transceiver.ErrNotLoaded, loadPath, path)
		}
		return path, nil
	}
	if pluginsDir != "" {
		if err := os.Setenv("NIXL_PLUGIN_DIR", pluginsDir); err != nil {
			return "", fmt.Errorf("nixl: set NIXL_PLUGIN_DIR: %w", err)
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var buf [2048]C.char
	if C.dxn_load(cpath, &buf[0], C.size_t(len(buf))) != 0 {
		msg := C.GoString(&buf[0])
		return "", fmt.Errorf("%w: NIXL: %s: %s (missing symbols mean the wheel's C API differs from the release our cgo/nixl_capi.h declares: use nixl-cu13==1.5.1); %s", transceiver.ErrNotLoaded, path, msg, InstallHint)
	}
	if C.dxn_is_stub() == 1 {
		return "", fmt.Errorf("%w: NIXL: %s is NIXL's stub build, which cannot transfer", transceiver.ErrNotLoaded, path)
	}
	loadPath = path
	return path, nil
}

// Status is a nixl_capi_status_t that is not success.
type Status int

var statusNames = map[Status]string{
	1: "in progress", -1: "invalid parameter", -2: "backend error", -3: "invalid state",
	-4: "exception", -5: "no telemetry", -6: "not found",
}

// Error implements error.
func (s Status) Error() string {
	name, ok := statusNames[s]
	if !ok {
		name = "unknown status"
	}
	return fmt.Sprintf("nixl: %s (status %d)", name, int(s))
}

func statusErr(st C.dxnixl_status_t) error {
	if st == C.DXNIXL_SUCCESS {
		return nil
	}
	return Status(st)
}
