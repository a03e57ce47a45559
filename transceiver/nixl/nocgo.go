//go:build !cgo

package nixl

import (
	"fmt"

	"disagg/transceiver"
)

// This file stands in for the cgo implementation in a build without cgo
// (CGO_ENABLED=0): the package still compiles, registers the backend, and
// says clearly why it cannot run.

var errNoCgo = fmt.Errorf("%w: NIXL: this binary was built without cgo (CGO_ENABLED=0); rebuild with cgo enabled", transceiver.ErrNotLoaded)

func init() {
	transceiver.Register(transceiver.BackendNIXL, func(cfg transceiver.Config) (transceiver.Transceiver, error) {
		return nil, errNoCgo
	})
}

// LibraryName is the file dlopen'ed from the NIXL library folder.
const LibraryName = "libnixl_capi.so"

// Agent is the NIXL transceiver; without cgo it cannot be made.
type Agent struct{}

// Load always fails without cgo.
func Load(dir, pluginsDir string) (string, error) { return "", errNoCgo }

// PluginList always fails without cgo.
func PluginList(cfg transceiver.Config) ([]string, error) { return nil, errNoCgo }

// New always fails without cgo.
func New(cfg transceiver.Config) (*Agent, error) { return nil, errNoCgo }
