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
	{"WORKER_LOG_LEVEL", "log level: debug, info, warn, error (same as --log-level)"},
	{"CUDA_VISIBLE_DEVICES", "which GPU a worker uses (one worker per GPU)"},
	{"TRTLLM_NIXL_KVCACHE_BACKEND", "NIXL plugin for KV transfer: UCX (default) or LIBFABRIC; other values warn and use UCX"},
	{"NIXL_PLUGINS_DIR", "folder of NIXL plugins (libplugin_UCX.so, ...)"},
	{"NIXL_LIB_DIR", "folder holding libnixl_capi.so (default: the project virtualenv's nixl wheel)"},
}

// EnvMap returns the documented variables that are set, for the start-up log.
func EnvMap() map[string]string {
	out := map[string]string{}
	for _, e := range EnvVars {
		if v, ok := os.LookupEnv(e.Name); ok {
			if e.Name == "WORKER_API_KEY" {
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
