package transceiver

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Factory makes a Transceiver from a completed, validated Config.
type Factory func(cfg Config) (Transceiver, error)

var (
	regMu     sync.RWMutex
	factories = map[string]Factory{}
)

// Register makes a backend available by name (upper-cased). Backends call
// it from init; registering a name twice panics, as that is a build bug.
func Register(name string, f Factory) {
	name = strings.ToUpper(name)
	regMu.Lock()
	defer regMu.Unlock()
	if f == nil {
		panic("transceiver: Register of nil factory for " + name)
	}
	if _, dup := factories[name]; dup {
		panic("transceiver: Register called twice for " + name)
	}
	factories[name] = f
}

// Backends lists the registered backend names, sorted.
func Backends() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	out := make([]string, 0, len(factories))
	for n := range factories {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// New makes a transceiver of the named backend (DEFAULT, UCX, NIXL;
// DEFAULT resolves per ResolveBackend), wrapped in Staging (which passes
// everything through unless the registered region needs staging). cfg is
// completed from the environment and validated; cfg.Backend is
// overwritten by name.
func New(name string, cfg Config) (Transceiver, error) {
	resolved, err := ResolveBackend(name)
	if err != nil {
		return nil, err
	}
	cfg.Backend = resolved
	cfg.Complete()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	regMu.RLock()
	f, ok := factories[resolved]
	regMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s is not compiled into this binary (have %v); import disagg/transceiver/%s", ErrUnknownBackend, resolved, Backends(), strings.ToLower(resolved))
	}
	tr, err := f(cfg)
	if err != nil {
		return nil, err
	}
	return Stage(tr, cfg), nil
}
