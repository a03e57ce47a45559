// Package config is the worker's typed configuration: defaults, then the
// YAML file (trtllm-serve's extra LLM API options, where we support them),
// then command-line flags, then Validate. Unknown keys are errors that name
// the closest valid key; keys that trtllm-serve knows but we do not
// implement are warnings.
package config

import (
	"fmt"
	"math"
	"strings"

	"disagg/worker/cluster"
)

// Config is a worker's configuration. YAML keys follow trtllm-serve's
// `--extra_llm_api_options` file.
type Config struct {
	// Model is the Hugging Face checkpoint folder. Empty: the embedded tiny model.
	Model string `yaml:"model"`
	// ServedModelName is the name clients pass as "model". Empty: the
	// model folder's base name (or "tiny-llama2" for the embedded model).
	ServedModelName string `yaml:"served_model_name"`
	// Backend is the runtime flavour; "pytorch" is accepted for
	// compatibility with trtllm-serve files and means the same as "cpu" or
	// "cuda" chosen by ComputeBackend.
	Backend string `yaml:"backend"`
	// ComputeBackend picks the compute backend: "auto" (CUDA when built
	// with it and a GPU is present, else CPU), "cpu" or "cuda".
	ComputeBackend string `yaml:"compute_backend"`
	// DType is the GPU's number format (trtllm's and vLLM's dtype):
	// "auto" or "bfloat16" (weights, activations and KV in bf16), or
	// "float32" (all in fp32: results that follow an fp32 reference to
	// rounding, for small models and checks; twice the memory and much
	// slower). The CPU backend computes in float32 whatever this says.
	DType string `yaml:"dtype"`
	// MaxBatchSize is the most sequences in one model step.
	MaxBatchSize int `yaml:"max_batch_size"`
	// MaxNumTokens is the most tokens (prefill chunks included) in one step.
	MaxNumTokens int `yaml:"max_num_tokens"`
	// MaxSeqLen is the most tokens (prompt plus output) of one sequence.
	// 0: the model's max_position_embeddings.
	MaxSeqLen int `yaml:"max_seq_len"`
	// MaxN is the largest `n` (choices per request) accepted.
	MaxN int `yaml:"max_n"`
	// Threads is the CPU backend's thread count; 0: one per core.
	Threads int `yaml:"threads"`
	// KVCache configures the paged KV pool.
	KVCache KVCacheConfig `yaml:"kv_cache_config"`
	// CacheTransceiver configures KV transfer between workers.
	CacheTransceiver CacheTransceiverConfig `yaml:"cache_transceiver_config"`
	// DisableOverlapScheduler turns off preparing step n+1 while step n runs.
	DisableOverlapScheduler bool `yaml:"disable_overlap_scheduler"`
	// DisaggCluster, when cluster_uri is set, registers the worker with the
	// proxy (trtllm's disagg_cluster; the same section as the proxy's).
	DisaggCluster cluster.Section `yaml:"disagg_cluster"`

	// Flag-only settings (also accepted in the file).

	// Host and Port to listen on.
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// Role is "" (aggregated: both phases), "context" or "generation".
	Role string `yaml:"role"`
	// APIKey, when set, is required as `Authorization: Bearer <key>`.
	APIKey string `yaml:"api_key"`
	// ClusterSecret is the HMAC key that signs encoded_opaque_state between
	// context and generation workers; every worker of a cluster needs the
	// same one. Empty: the environment variable WORKER_CLUSTER_SECRET,
	// else a documented insecure default (with a warning at start).
	ClusterSecret string `yaml:"cluster_secret"`
	// MaxBodyBytes bounds request bodies (413 beyond).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
}

// KVCacheConfig is trtllm's kv_cache_config.
type KVCacheConfig struct {
	// FreeGPUMemoryFraction of free GPU memory (after weights) given to the
	// KV pool. On the CPU backend it scales the host memory budget.
	FreeGPUMemoryFraction float64 `yaml:"free_gpu_memory_fraction"`
	// TokensPerBlock is the block size in tokens.
	TokensPerBlock int `yaml:"tokens_per_block"`
	// MaxTokens caps the pool size in tokens; 0: sized from memory.
	MaxTokens int `yaml:"max_tokens"`
	// EnableBlockReuse reuses KV blocks across requests with a shared
	// prefix. Parsed; not implemented yet (a warning says so when true).
	EnableBlockReuse bool `yaml:"enable_block_reuse"`
}

// CacheTransceiverConfig is trtllm's cache_transceiver_config.
type CacheTransceiverConfig struct {
	// Backend is DEFAULT, UCX or NIXL.
	Backend string `yaml:"backend"`
	// MaxTokensInBuffer sizes the staging buffers where a transfer cannot
	// move GPU memory directly.
	MaxTokensInBuffer int `yaml:"max_tokens_in_buffer"`
	// KVTransferTimeoutMS is the deadline of one KV transfer, after which
	// both sides free the request's blocks.
	KVTransferTimeoutMS int `yaml:"kv_transfer_timeout_ms"`
	// KVTransferSenderFutureTimeoutMS bounds how long the sender waits for
	// the receiver to ask for a request's KV.
	KVTransferSenderFutureTimeoutMS int `yaml:"kv_transfer_sender_future_timeout_ms"`
}

// Roles a worker can take.
const (
	RoleAggregated = ""
	RoleContext    = "context"
	RoleGeneration = "generation"
)

// Default returns the configuration before any file or flag.
func Default() Config {
	return Config{
		Backend:        "pytorch",
		ComputeBackend: "auto",
		DType:          "auto",
		MaxBatchSize:   64,
		MaxNumTokens:   8192,
		MaxN:           16,
		KVCache: KVCacheConfig{
			FreeGPUMemoryFraction: 0.9,
			TokensPerBlock:        32,
		},
		CacheTransceiver: CacheTransceiverConfig{
			Backend:                         "DEFAULT",
			MaxTokensInBuffer:               8192,
			KVTransferTimeoutMS:             30000,
			KVTransferSenderFutureTimeoutMS: 60000,
		},
		Host:         "0.0.0.0",
		Port:         8000,
		MaxBodyBytes: 8 << 20,
		LogLevel:     "info",
	}
}

// allowed lists the values a string setting may take.
var allowed = map[string][]string{
	"backend":                          {"pytorch", "cpu", "cuda"},
	"compute_backend":                  {"auto", "cpu", "cuda"},
	"dtype":                            {"auto", "bfloat16", "float32"},
	"role":                             {"", "context", "generation"},
	"log_level":                        {"debug", "info", "warn", "error"},
	"cache_transceiver_config.backend": {"DEFAULT", "UCX", "NIXL"},
}

// Validate checks every setting and normalizes spellings (role and
// transceiver backend case). Errors name the key, the value and what is
// allowed.
func (c *Config) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	oneOf := func(key string, v *string, fold bool) {
		for _, a := range allowed[key] {
			if *v == a || (fold && strings.EqualFold(*v, a)) {
				*v = a
				return
			}
		}
		bad("%s: %q is not one of %s", key, *v, quoteList(allowed[key]))
	}
	c.Role = strings.ToLower(c.Role)
	oneOf("role", &c.Role, true)
	oneOf("backend", &c.Backend, true)
	oneOf("compute_backend", &c.ComputeBackend, true)
	oneOf("dtype", &c.DType, true)
	oneOf("log_level", &c.LogLevel, true)
	oneOf("cache_transceiver_config.backend", &c.CacheTransceiver.Backend, true)
	if c.MaxBatchSize < 1 {
		bad("max_batch_size: %d must be at least 1", c.MaxBatchSize)
	}
	if c.MaxNumTokens < 1 {
		bad("max_num_tokens: %d must be at least 1", c.MaxNumTokens)
	}
	if c.MaxSeqLen < 0 {
		bad("max_seq_len: %d must be 0 (the model's context) or positive", c.MaxSeqLen)
	}
	if c.MaxN < 1 {
		bad("max_n: %d must be at least 1", c.MaxN)
	}
	if c.Threads < 0 {
		bad("threads: %d must be 0 (one per core) or positive", c.Threads)
	}
	if f := c.KVCache.FreeGPUMemoryFraction; !(f > 0 && f <= 1) || math.IsNaN(f) {
		bad("kv_cache_config.free_gpu_memory_fraction: %v must be in (0, 1]", f)
	}
	if t := c.KVCache.TokensPerBlock; t < 1 || t > 1024 || t&(t-1) != 0 {
		bad("kv_cache_config.tokens_per_block: %d must be a power of two from 1 to 1024", t)
	}
	if c.KVCache.MaxTokens < 0 {
		bad("kv_cache_config.max_tokens: %d must be 0 (sized from memory) or positive", c.KVCache.MaxTokens)
	}
	if c.CacheTransceiver.MaxTokensInBuffer < 1 {
		bad("cache_transceiver_config.max_tokens_in_buffer: %d must be at least 1", c.CacheTransceiver.MaxTokensInBuffer)
	}
	if c.CacheTransceiver.KVTransferTimeoutMS < 1 {
		bad("cache_transceiver_config.kv_transfer_timeout_ms: %d must be at least 1", c.CacheTransceiver.KVTransferTimeoutMS)
	}
	if c.CacheTransceiver.KVTransferSenderFutureTimeoutMS < 1 {
		bad("cache_transceiver_config.kv_transfer_sender_future_timeout_ms: %d must be at least 1", c.CacheTransceiver.KVTransferSenderFutureTimeoutMS)
	}
	if c.Port < 0 || c.Port > 65535 {
		bad("port: %d must be in [0, 65535]", c.Port)
	}
	if c.MaxBodyBytes < 1024 {
		bad("max_body_bytes: %d must be at least 1024", c.MaxBodyBytes)
	}
	if c.DisaggCluster.ClusterURI != "" {
		errs = append(errs, checkCluster(&c.DisaggCluster, c.Role)...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("config: %s", strings.Join(errs, "; "))
	}
	return nil
}

// checkCluster checks the worker's disagg_cluster section: the keys both
// sides read, then the worker's own rules.
func checkCluster(d *cluster.Section, role string) []string {
	errs := d.Check()
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if d.Etcd() {
		bad("disagg_cluster.cluster_uri: %q: etcd:// is not implemented yet; use http://<proxy host>:<port>", d.ClusterURI)
	}
	if role != RoleContext && role != RoleGeneration {
		bad("disagg_cluster: needs role context or generation (as trtllm-serve's server_role); an aggregated worker cannot join a disaggregated cluster")
	}
	if d.MinimalInstances.ContextServers < 0 || d.MinimalInstances.GenerationServers < 0 {
		bad("disagg_cluster.minimal_instances: counts must not be negative")
	}
	return errs
}

func quoteList(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}
