//go:build !cgo

package ucx

import (
	"fmt"

	"disagg/transceiver"
)

// This file stands in for the cgo implementation in a build without cgo
// (CGO_ENABLED=0): the package still compiles, registers the backend, and
// says clearly why it cannot run.

var errNoCgo = fmt.Errorf("%w: UCX: this binary was built without cgo (CGO_ENABLED=0); rebuild with cgo enabled", transceiver.ErrNotLoaded)

func init() {
	transceiver.Register(transceiver.BackendUCX, func(cfg transceiver.Config) (transceiver.Transceiver, error) {
		return nil, errNoCgo
	})
}

// DefaultLibrary is the libucp dlopen'ed when no path is configured.
const DefaultLibrary = "libucp.so.0"

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

// Agent is the UCX transceiver; without cgo it cannot be made.
type Agent struct{}

// Load always fails without cgo.
func Load(path string) error { return errNoCgo }

// Probe always fails without cgo.
func Probe(path string) (Capabilities, error) { return Capabilities{}, errNoCgo }

// Version is 0.0.0 without cgo.
func Version() (major, minor, release int) { return 0, 0, 0 }

// New always fails without cgo.
func New(cfg transceiver.Config) (*Agent, error) { return nil, errNoCgo }
