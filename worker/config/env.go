package config

import (
	"os"
	"sort"
)

// EnvVar documents one environment variable the worker reads.
type EnvVar struct {
	Name        string
	Description string
}

// EnvVars is the one table of environment variables (README mirrors it).
var EnvVars = []EnvVar{
	{"WORKER_API_KEY", "API key required as `Authorization: Bearer <key>` on /v1/* (same as --api-key)"},
	{"WORKER_CLUSTER_SECRET", "HMAC key signing the KV transfer state between context and generation workers; the same on every worker (config key cluster_secret wins); unset: an insecure default, with a warning"},
	{"DISAGG_API_KEY", "the proxy's API key (same as `worker disaggregated --api-key`); also sent to the workers"},
	{"WORKER_LOG_LEVEL", "log level: debug, info, warn, error (same as --log-level)"},
	{"CUDA_VISIBLE_DEVICES", "which GPU a worker uses (one worker per GPU)"},
	{"TRTLLM_NIXL_KVCACHE_BACKEND", "NIXL plugin for KV transfer: UCX (default) or LIBFABRIC (where its plugin cannot load, a warning says why and UCX is used); other values warn and use UCX"},
	{"NIXL_PLUGINS_DIR", "folder of NIXL plugins (libplugin_UCX.so, ...)"},
	{"NIXL_LIB_DIR", "folder holding libnixl_capi.so (default: the project virtualenv's nixl wheel)"},
	{"DISAGG_UCX_LIB", "libucp to dlopen for the UCX backend (default libucp.so.0; point it at a CUDA-enabled UCX to move GPU memory)"},
	{"DISAGG_UCX_WAKEUP", "0: the UCX progress loop naps on a timer instead of sleeping on the worker's event fd"},
	{"DISAGG_UCX_AM_WRITE", "how the UCX backend writes host KV blocks: unset (auto): as active messages where the endpoint has no RMA lane (TCP), else RMA puts; 0: always RMA puts; 1: always active messages (GPU pools always use RMA)"},
	{"DISAGG_UCX_ERR_MODE", "none: UCX endpoints without peer error handling (faster cma/cuda_ipc transports; a dead peer may hang a transfer)"},
	{"DISAGG_KV_STAGING", "auto (default): stage through pinned host buffers of max_tokens_in_buffer tokens only device memory the backend cannot register; force: stage every pool"},
	{"DISAGG_KV_TRANSFER_MODE", "auto (default): the context worker pushes when either pool is on a GPU or staged, or when a KV of 1 MB or more would travel between host pools over UCX active-message writes (TCP); otherwise the generation worker pulls; push; pull"},
	{"UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "unset: y for the UCX backend and NIXL's UCX plugin where GPU memory can move and UCX_TLS allows cuda_ipc (zero-copy reads of GPU memory over cuda_ipc, which UCX leaves off without NVLink); set: left to UCX"},
	{"UCX_*", "passed to UCX unchanged (UCX_TLS, UCX_NET_DEVICES, ...), except the default above"},
}

// EnvMap returns the documented variables that are set, for the start-up log.
func EnvMap() map[string]string {
	out := map[string]string{}
	for _, e := range EnvVars {
		if v, ok := os.LookupEnv(e.Name); ok {
			if e.Name == "WORKER_API_KEY" || e.Name == "WORKER_CLUSTER_SECRET" {
				v = "(set)"
			}
			out[e.Name] = v
		}
	}
	return out
}

// EnvNames lists the documented variable names, sorted.
func EnvNames() []string {
	out := make([]string, len(EnvVars))
	for i, e := range EnvVars {
		out[i] = e.Name
	}
	sort.Strings(out)
	return out
}
