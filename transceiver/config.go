package transceiver

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Backend names accepted in cache_transceiver_config.backend.
const (
	// BackendDefault resolves to BackendUCX (see ResolveBackend).
	BackendDefault = "DEFAULT"
	// BackendUCX is the UCX transceiver (libucp).
	BackendUCX = "UCX"
	// BackendNIXL is the NIXL transceiver (libnixl_capi from the NIXL wheel).
	BackendNIXL = "NIXL"
)

// NIXL plugin names accepted in TRTLLM_NIXL_KVCACHE_BACKEND.
const (
	// PluginUCX is NIXL's UCX plugin, the default.
	PluginUCX = "UCX"
	// PluginLIBFABRIC is NIXL's LIBFABRIC plugin.
	PluginLIBFABRIC = "LIBFABRIC"
)

// Environment variables read by this package and its backends.
const (
	// EnvNIXLPlugin picks NIXL's transfer plugin: UCX (default) or
	// LIBFABRIC; any other value logs a warning and falls back to UCX.
	EnvNIXLPlugin = "TRTLLM_NIXL_KVCACHE_BACKEND"
	// EnvNIXLPluginsDir is the folder NIXL loads its plugins from.
	EnvNIXLPluginsDir = "NIXL_PLUGINS_DIR"
	// EnvNIXLLibDir is the folder holding libnixl_capi.so; by default the
	// project virtualenv's site-packages is searched.
	EnvNIXLLibDir = "NIXL_LIB_DIR"
	// EnvUCXLib is the path or name of libucp to dlopen (default
	// "libucp.so.0").
	EnvUCXLib = "DISAGG_UCX_LIB"
	// EnvStaging is "auto" (default: stage only device memory the backend
	// cannot register) or "force" (stage every region, host ones through
	// plain memory copies: for tests and measurements).
	EnvStaging = "DISAGG_KV_STAGING"
	// EnvTransferMode is how a generation worker gets a request's KV:
	// "auto" (default: the context worker pushes when either pool is on a
	// GPU or its side is staged, else the generation worker pulls),
	// "push" or "pull".
	EnvTransferMode = "DISAGG_KV_TRANSFER_MODE"
	// EnvCUDAIPCGetZcopy is UCX's own switch for zero-copy GET over
	// cuda_ipc. At UCX's default (auto) it is off wherever the GPU has no
	// NVLink, two processes on one GPU included, and reads of GPU memory
	// then take a fallback path at well under 1 GB/s. Unset (and cuda_ipc
	// allowed by UCX_TLS), the UCX backend turns it on in its own context
	// where its UCX moves CUDA memory, and the NIXL backend sets it to y in
	// the process environment before creating its UCX plugin where a CUDA
	// device is present; any value set is left to UCX.
	EnvCUDAIPCGetZcopy = "UCX_CUDA_IPC_ENABLE_GET_ZCOPY"
)

// SetGetZcopy says whether a backend should turn cuda_ipc's zero-copy GET
// on (see EnvCUDAIPCGetZcopy): the variable is absent from the environment
// (set to anything, even empty, it is the operator's choice), and UCX_TLS,
// if set, lets UCX open cuda_ipc. For a transport UCX does not open, the
// setting would only earn a warning at every start ("invalid
// configuration", or "unused env variable").
func SetGetZcopy() bool {
	if _, set := os.LookupEnv(EnvCUDAIPCGetZcopy); set {
		return false
	}
	return tlsOpensCUDAIPC(os.Getenv("UCX_TLS"))
}

// tlsOpensCUDAIPC reads a UCX_TLS value: empty or "all" (every transport),
// a list naming cuda_ipc or the "cuda" alias, or an exclusion list ("^...")
// that names neither. A leading backslash (UCX's "no alias" mark) is
// ignored.
func tlsOpensCUDAIPC(tls string) bool {
	tls = strings.TrimSpace(tls)
	exclude := strings.HasPrefix(tls, "^")
	tls = strings.TrimPrefix(tls, "^")
	if tls == "" {
		return true
	}
	named := false
	for _, t := range strings.Split(tls, ",") {
		switch strings.TrimPrefix(strings.ToLower(strings.TrimSpace(t)), `\`) {
		case "all":
			if !exclude {
				return true
			}
		case "cuda_ipc", "cuda":
			named = true
		}
	}
	return named != exclude
}

// Values of DISAGG_KV_STAGING.
const (
	StagingAuto  = "auto"
	StagingForce = "force"
)

// Values of DISAGG_KV_TRANSFER_MODE.
const (
	ModeAuto = "auto"
	ModePush = "push"
	ModePull = "pull"
)

// DefaultMaxTokensInBuffer is max_tokens_in_buffer when unset: the tokens
// one staging chunk holds.
const DefaultMaxTokensInBuffer = 4096

// TransferModeFromEnv reads DISAGG_KV_TRANSFER_MODE (lower-cased; unset:
// auto) and checks it.
func TransferModeFromEnv() (string, error) {
	v := strings.ToLower(strings.TrimSpace(os.Getenv(EnvTransferMode)))
	switch v {
	case "":
		return ModeAuto, nil
	case ModeAuto, ModePush, ModePull:
		return v, nil
	}
	return "", fmt.Errorf("transceiver: %s=%q: want %s, %s or %s", EnvTransferMode, v, ModeAuto, ModePush, ModePull)
}

// EnvVars documents every environment variable the transceiver reads, for
// the README table and `worker probe`.
func EnvVars() map[string]string {
	return map[string]string{
		EnvNIXLPlugin:         "NIXL transfer plugin: UCX (default) or LIBFABRIC (where its plugin cannot load, a warning says why and UCX is used); other values warn and use UCX",
		EnvNIXLPluginsDir:     "folder of NIXL plugins (default: the plugins folder beside libnixl_capi.so)",
		EnvNIXLLibDir:         "folder holding libnixl_capi.so (default: search .venv site-packages)",
		EnvUCXLib:             "libucp to dlopen for the UCX backend (default libucp.so.0)",
		"DISAGG_UCX_WAKEUP":   "0: the UCX progress loop naps on a timer instead of sleeping on the worker's event fd",
		"DISAGG_UCX_AM_WRITE": "how writes between host regions travel: unset (auto): as active messages where the endpoint has no RMA lane (TCP), else RMA puts; 0: always RMA puts; 1: always active messages (GPU regions always use RMA)",
		"DISAGG_UCX_ERR_MODE": "none: UCX endpoints without peer error handling (faster transports such as cma and cuda_ipc; a dead peer may hang or abort the process)",
		EnvCUDAIPCGetZcopy:    "unset: y (zero-copy reads of GPU memory over cuda_ipc, which UCX leaves off without NVLink), for the UCX backend's context and NIXL's UCX plugin, where GPU memory can move and UCX_TLS allows cuda_ipc; set: left to UCX (auto is UCX's own default)",
		"UCX_*":               "passed to UCX unchanged (UCX_TLS, UCX_NET_DEVICES, ...), except for the default above",
		EnvStaging:            "auto (default): stage through pinned host buffers only device memory the backend cannot register; force: stage every pool",
		EnvTransferMode:       "auto (default): the context worker pushes when either pool is on a GPU or staged, or when a KV of 1 MB or more would travel between host pools over UCX active-message writes (TCP); otherwise the generation worker pulls; push; pull",
	}
}

const (
	defaultTransferTimeout = 30 * time.Second
	abortNotifyTimeout     = time.Second
)

// Config mirrors TensorRT-LLM's cache_transceiver_config, plus the
// settings our backends take from the environment (not from YAML).
type Config struct {
	// Backend is DEFAULT, UCX or NIXL (case-insensitive).
	Backend string `yaml:"backend" json:"backend"`
	// MaxTokensInBuffer sizes the pinned host staging buffer used when
	// device memory cannot be moved directly (see Staging): each chunk of
	// a staged transfer holds at most this many tokens, rounded up to
	// whole blocks; 0 means DefaultMaxTokensInBuffer.
	MaxTokensInBuffer int `yaml:"max_tokens_in_buffer" json:"max_tokens_in_buffer"`
	// KVTransferTimeoutMs is the deadline of one request's transfer on
	// either side; 0 means 30 s.
	KVTransferTimeoutMs int `yaml:"kv_transfer_timeout_ms" json:"kv_transfer_timeout_ms"`
	// KVTransferSenderFutureTimeoutMs bounds how long a sender waits for
	// the receiver to ask for a request's blocks; 0 means no bound
	// besides KVTransferTimeoutMs.
	KVTransferSenderFutureTimeoutMs int `yaml:"kv_transfer_sender_future_timeout_ms" json:"kv_transfer_sender_future_timeout_ms"`

	// Name is this agent's name, unique in the cluster (default: host-pid).
	Name string `yaml:"-" json:"name,omitempty"`
	// NIXLPlugin is NIXL's plugin (from TRTLLM_NIXL_KVCACHE_BACKEND).
	NIXLPlugin string `yaml:"-" json:"nixl_plugin,omitempty"`
	// NIXLPluginsDir is NIXL's plugin folder (from NIXL_PLUGINS_DIR).
	NIXLPluginsDir string `yaml:"-" json:"nixl_plugins_dir,omitempty"`
	// NIXLLibDir is the folder of libnixl_capi.so (from NIXL_LIB_DIR).
	NIXLLibDir string `yaml:"-" json:"nixl_lib_dir,omitempty"`
	// UCXLib is the libucp to dlopen (from DISAGG_UCX_LIB).
	UCXLib string `yaml:"-" json:"ucx_lib,omitempty"`
	// Staging is StagingAuto or StagingForce (from DISAGG_KV_STAGING).
	Staging string `yaml:"-" json:"staging,omitempty"`
	// FaultEvery, when positive, makes the backend fail every Nth posted
	// operation with ErrInjected. For tests only.
	FaultEvery int `yaml:"-" json:"-"`
	// Logger receives the backend's logs (default slog.Default()).
	Logger *slog.Logger `yaml:"-" json:"-"`
}

// ResolveBackend maps a configured backend name to a concrete one.
//
// DEFAULT means UCX. Both ends of a transfer must run the same backend,
// and a rule such as "NIXL when libnixl_capi loads" would make the choice
// depend on what each machine happens to have installed, so two workers
// with the same config could disagree. UCX is also the smaller dependency
// (a distribution package, not a 60 MB wheel). Choose NIXL explicitly.
func ResolveBackend(name string) (string, error) {
	switch strings.ToUpper(strings.TrimSpace(name)) {
	case "", BackendDefault, BackendUCX:
		return BackendUCX, nil
	case BackendNIXL:
		return BackendNIXL, nil
	}
	return "", fmt.Errorf("%w: cache_transceiver_config.backend %q: want DEFAULT, UCX or NIXL", ErrUnknownBackend, name)
}

// NIXLPluginFromEnv reads TRTLLM_NIXL_KVCACHE_BACKEND: UCX when unset,
// UCX or LIBFABRIC when set to one of them (case-insensitive), else a
// warning on log and UCX.
func NIXLPluginFromEnv(log *slog.Logger) string {
	v := strings.TrimSpace(os.Getenv(EnvNIXLPlugin))
	switch strings.ToUpper(v) {
	case "", PluginUCX:
		return PluginUCX
	case PluginLIBFABRIC:
		return PluginLIBFABRIC
	}
	if log == nil {
		log = slog.Default()
	}
	log.Warn("unknown NIXL plugin, falling back to UCX", "env", EnvNIXLPlugin, "value", v, "allowed", []string{PluginUCX, PluginLIBFABRIC})
	return PluginUCX
}

// Complete fills unset fields from the environment and defaults.
func (c *Config) Complete() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Backend == "" {
		c.Backend = BackendDefault
	}
	if c.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "agent"
		}
		c.Name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.NIXLPlugin == "" {
		c.NIXLPlugin = NIXLPluginFromEnv(c.Logger)
	}
	if c.NIXLPluginsDir == "" {
		c.NIXLPluginsDir = os.Getenv(EnvNIXLPluginsDir)
	}
	if c.NIXLLibDir == "" {
		c.NIXLLibDir = os.Getenv(EnvNIXLLibDir)
	}
	if c.UCXLib == "" {
		c.UCXLib = os.Getenv(EnvUCXLib)
	}
	if c.Staging == "" {
		c.Staging = strings.ToLower(strings.TrimSpace(os.Getenv(EnvStaging)))
	}
	if c.Staging == "" {
		c.Staging = StagingAuto
	}
}

// Validate names the first bad field and what is allowed.
func (c Config) Validate() error {
	if _, err := ResolveBackend(c.Backend); err != nil {
		return err
	}
	if c.MaxTokensInBuffer < 0 {
		return fmt.Errorf("transceiver: cache_transceiver_config.max_tokens_in_buffer = %d: must be >= 0", c.MaxTokensInBuffer)
	}
	if c.KVTransferTimeoutMs < 0 {
		return fmt.Errorf("transceiver: cache_transceiver_config.kv_transfer_timeout_ms = %d: must be >= 0", c.KVTransferTimeoutMs)
	}
	if c.KVTransferSenderFutureTimeoutMs < 0 {
		return fmt.Errorf("transceiver: cache_transceiver_config.kv_transfer_sender_future_timeout_ms = %d: must be >= 0", c.KVTransferSenderFutureTimeoutMs)
	}
	switch c.Staging {
	case "", StagingAuto, StagingForce:
	default:
		return fmt.Errorf("transceiver: %s=%q: want %s or %s", EnvStaging, c.Staging, StagingAuto, StagingForce)
	}
	switch c.NIXLPlugin {
	case "", PluginUCX, PluginLIBFABRIC:
	default:
		return fmt.Errorf("transceiver: NIXL plugin %q: want %s or %s", c.NIXLPlugin, PluginUCX, PluginLIBFABRIC)
	}
	if len(c.Name) > maxNameLen {
		return fmt.Errorf("transceiver: agent name longer than %d bytes", maxNameLen)
	}
	return nil
}

// TransferContext gives ctx the transfer timeout as its deadline when it
// has none (the caller calls cancel either way).
func (c Config) TransferContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.TransferTimeout())
}

// TransferTimeout is kv_transfer_timeout_ms as a duration (default 30 s).
func (c Config) TransferTimeout() time.Duration {
	if c.KVTransferTimeoutMs <= 0 {
		return defaultTransferTimeout
	}
	return time.Duration(c.KVTransferTimeoutMs) * time.Millisecond
}
