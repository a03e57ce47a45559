package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
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
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(root.Content) == 0 { // empty file
		return nil, nil
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config: the top level must be a mapping of keys to values")
	}
	if err := checkKeys(doc, reflect.TypeOf(*c), "", &warnings); err != nil {
		return warnings, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return warnings, fmt.Errorf("config: %w", err)
	}
	if c.KVCache.EnableBlockReuse {
		warnings = append(warnings, "kv_cache_config.enable_block_reuse: prefix block reuse is not implemented yet; blocks are not shared between requests")
	}
	return warnings, nil
}

// checkKeys walks a mapping node against struct type t. Unimplemented
// trtllm keys are removed from the node (so decoding ignores them) and
// reported as warnings.
func checkKeys(n *yaml.Node, t reflect.Type, prefix string, warnings *[]string) error {
	fields := yamlFields(t)
	kept := n.Content[:0:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		full := prefix + k.Value
		f, ok := fields[k.Value]
		switch {
		case ok:
			if f.Type.Kind() == reflect.Struct {
				if v.Kind != yaml.MappingNode {
					return fmt.Errorf("config: %s (line %d) must be a mapping", full, k.Line)
				}
				if err := checkKeys(v, f.Type, full+".", warnings); err != nil {
					return err
				}
			}
			kept = append(kept, k, v)
		case unimplemented[full]:
			*warnings = append(*warnings, fmt.Sprintf("%s (line %d): a trtllm-serve option this worker does not implement; ignored", full, k.Line))
		default:
			names := make([]string, 0, len(fields))
			for name := range fields {
				names = append(names, name)
			}
			sort.Strings(names)
			msg := fmt.Sprintf("config: unknown key %q (line %d)", full, k.Line)
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

// Keys lists every valid key, dotted, for documentation and suggestions.
func Keys() []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for name, f := range yamlFields(t) {
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
