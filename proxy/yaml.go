package proxy

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
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
// closest valid key, unless ignored(full dotted key) says it is a known
// foreign key: then it is dropped with a warning.
func decodeStrict(data []byte, v any, ignored func(string) bool) (warnings []string, err error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	if len(root.Content) == 0 {
		return nil, nil
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, errors.New("the top level must be a mapping of keys to values")
	}
	t := reflect.TypeOf(v).Elem()
	if err := checkNode(doc, t, "", ignored, &warnings); err != nil {
		return warnings, err
	}
	if err := doc.Decode(v); err != nil {
		return warnings, err
	}
	return warnings, nil
}

// checkNode walks mapping node n against struct type t, removing ignored
// keys and failing on unknown ones.
func checkNode(n *yaml.Node, t reflect.Type, prefix string, ignored func(string) bool, warnings *[]string) error {
	fields := yamlFields(t)
	kept := n.Content[:0:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		full := prefix + k.Value
		f, ok := fields[k.Value]
		switch {
		case ok:
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && v.Tag != "!!null" {
				if v.Kind != yaml.MappingNode {
					return fmt.Errorf("%s (line %d) must be a mapping", full, k.Line)
				}
				if err := checkNode(v, ft, full+".", ignored, warnings); err != nil {
					return err
				}
			}
			kept = append(kept, k, v)
		case ignored != nil && ignored(full):
			*warnings = append(*warnings, fmt.Sprintf("%s (line %d): a worker option; the proxy does not start workers, so it is ignored here", full, k.Line))
		default:
			names := make([]string, 0, len(fields))
			for name := range fields {
				names = append(names, name)
			}
			sort.Strings(names)
			msg := fmt.Sprintf("unknown key %q (line %d)", full, k.Line)
			if s := closest(k.Value, names); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", prefix+s)
			}
			return fmt.Errorf("%s; valid keys here: %s", msg, strings.Join(names, ", "))
		}
	}
	n.Content = kept
	return nil
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			out[name] = f
		}
	}
	return out
}

// closest returns the candidate nearest to s by edit distance, or "" when
// none is near enough to be a likely typo.
func closest(s string, candidates []string) string {
	best, bestD := "", len(s)/2+2
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
