package proxy

import (
	"strings"

	"disagg/internal/strictyaml"
)

// workerOptions are trtllm-serve LLM API options that a disagg_config.yaml
// may carry at the top level or in context_servers / generation_servers,
// because trtllm's launcher starts the workers from the same file. The proxy
// does not start workers: they are warned about and ignored.
var workerOptions = map[string]bool{
	"tensor_parallel_size": true, "pipeline_parallel_size": true, "context_parallel_size": true,
	"moe_expert_parallel_size": true, "moe_tensor_parallel_size": true, "enable_attention_dp": true,
	"kv_cache_config": true, "cache_transceiver_config": true, "disable_overlap_scheduler": true,
	"cuda_graph_config": true, "print_iter_log": true, "enable_chunked_prefill": true,
	"max_seq_len": true, "max_input_len": true, "free_gpu_memory_fraction": true,
	"speculative_config": true, "stream_interval": true, "scheduler_config": true,
	"trust_remote_code": true, "enable_iter_perf_stats": true, "return_perf_metrics": true,
	"perf_metrics_max_requests": true, "perf_metrics_output_dir": true, "moe_config": true,
	"attn_backend": true, "gpus_per_node": true, "max_beam_width": true, "lora_config": true,
	"enable_lora": true, "model": true, "served_model_name": true,
}

// workerKeys reports whether key (dotted, full) is a worker option in a
// place where trtllm's file may hold one.
func workerKeys(full string) bool {
	parts := strings.Split(full, ".")
	switch {
	case len(parts) == 1:
		return workerOptions[parts[0]]
	case len(parts) == 2 && (parts[0] == "context_servers" || parts[0] == "generation_servers"):
		return workerOptions[parts[1]]
	}
	return false
}

// decodeStrict decodes YAML data over v (a pointer to a struct holding the
// defaults). A key that names no field is an error that suggests the
// closest valid key, unless ignored(full dotted key) says it is a worker
// option: then it is dropped with a warning.
func decodeStrict(data []byte, v any, ignored func(string) bool) (warnings []string, err error) {
	var ignore strictyaml.Ignore
	if ignored != nil {
		ignore = func(full string) (string, bool) {
			return "a worker option; the proxy does not start workers, so it is ignored here", ignored(full)
		}
	}
	return strictyaml.Decode(data, v, ignore)
}
