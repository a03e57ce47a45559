package config

import (
	"fmt"
	"os"
	"reflect"
	"sort"

	"disagg/internal/strictyaml"
)

// unimplemented lists keys that trtllm-serve's extra LLM API options accept
// and this worker does not implement: they are warned about and ignored, so
// that files written for trtllm-serve load unchanged.
var unimplemented = map[string]bool{
	"tensor_parallel_size": true, "pipeline_parallel_size": true, "context_parallel_size": true,
	"moe_expert_parallel_size": true, "moe_tensor_parallel_size": true, "enable_attention_dp": true,
	"cuda_graph_config": true, "print_iter_log": true, "enable_chunked_prefill": true,
	"speculative_config": true, "stream_interval": true, "scheduler_config": true,
	"guided_decoding_backend": true, "enable_iter_perf_stats": true, "attn_backend": true,
	"moe_config": true, "trust_remote_code": true, "tokenizer": true, "skip_tokenizer_init": true,
	"gpus_per_node": true, "max_beam_width": true, "enable_lora": true, "lora_config": true,
	"build_config": true, "batch_wait_timeout_ms": true, "enable_autotuner": true,
	"torch_compile_config": true, "num_postprocess_workers": true, "return_perf_metrics": true,
	"checkpoint_format": true, "load_format": true, "sampler_type": true, "max_input_len": true,
	"kv_cache_config.dtype": true, "kv_cache_config.event_buffer_max_size": true,
	"kv_cache_config.host_cache_size": true, "kv_cache_config.enable_partial_reuse": true,
	"kv_cache_config.copy_on_partial_reuse": true, "kv_cache_config.max_attention_window": true,
	"kv_cache_config.sink_token_length": true, "kv_cache_config.cross_kv_cache_fraction": true,
	"kv_cache_config.secondary_offload_min_priority": true, "kv_cache_config.use_uvm": true,
}

// LoadFile reads a YAML file over c (which holds the defaults). Unknown keys
// are an error naming the closest valid key; trtllm keys we do not implement
// come back as warnings.
func LoadFile(path string, c *Config) (warnings []string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	w, err := Load(data, c)
	if err != nil {
		return w, fmt.Errorf("%s: %w", path, err)
	}
	return w, nil
}

// Load reads YAML bytes over c. See LoadFile.
func Load(data []byte, c *Config) (warnings []string, err error) {
	warnings, err = strictyaml.Decode(data, c, func(full string) (string, bool) {
		return "a trtllm-serve option this worker does not implement; ignored", unimplemented[full]
	})
	if err != nil {
		return warnings, fmt.Errorf("config: %w", err)
	}
	if c.KVCache.EnableBlockReuse {
		warnings = append(warnings, "kv_cache_config.enable_block_reuse: prefix block reuse is not implemented yet; blocks are not shared between requests")
	}
	return warnings, nil
}

// Keys lists every valid key, dotted, for documentation.
func Keys() []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for name, f := range strictyaml.Fields(t) {
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, prefix+name+".")
				continue
			}
			out = append(out, prefix+name)
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	sort.Strings(out)
	return out
}
