package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"disagg/transceiver"
)

func TestLoadTrtllmFile(t *testing.T) {
	c := Default()
	w, err := Load([]byte(`
backend: pytorch
max_batch_size: 16
max_num_tokens: 4096
disable_overlap_scheduler: true
tensor_parallel_size: 1
kv_cache_config:
  free_gpu_memory_fraction: 0.5
  tokens_per_block: 64
  dtype: auto
cache_transceiver_config:
  backend: ucx
  max_tokens_in_buffer: 2048
  kv_transfer_timeout_ms: 5000
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(w) != 2 || !strings.Contains(w[0], "tensor_parallel_size") || !strings.Contains(w[1], "kv_cache_config.dtype") {
		t.Errorf("warnings = %q, want tensor_parallel_size and kv_cache_config.dtype", w)
	}
	want := Default()
	want.MaxBatchSize, want.MaxNumTokens, want.DisableOverlapScheduler = 16, 4096, true
	want.KVCache.FreeGPUMemoryFraction, want.KVCache.TokensPerBlock = 0.5, 64
	want.CacheTransceiver.Backend, want.CacheTransceiver.MaxTokensInBuffer, want.CacheTransceiver.KVTransferTimeoutMS = "UCX", 2048, 5000
	if d := cmp.Diff(want, c); d != "" {
		t.Errorf("config (-want +got):\n%s", d)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"typo top", "max_batch_sise: 4", `unknown key "max_batch_sise" (line 1); did you mean "max_batch_size"?`},
		{"typo nested", "kv_cache_config:\n  tokens_per_blok: 8", `did you mean "kv_cache_config.tokens_per_block"?`},
		{"no suggestion", "zzzzzzzzzzzz: 1", `unknown key "zzzzzzzzzzzz"`},
		{"not mapping", "kv_cache_config: 3", "kv_cache_config (line 1) must be a mapping"},
		{"top not mapping", "- a", "top level must be a mapping"},
		{"bad type", "max_batch_size: lots", "cannot unmarshal"},
		{"bad yaml", "a: [", "config:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			_, err := Load([]byte(tc.yaml), &c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"role", func(c *Config) { c.Role = "decoder" }, `role: "decoder" is not one of "", "context", "generation"`},
		{"transceiver", func(c *Config) { c.CacheTransceiver.Backend = "MPI" }, `cache_transceiver_config.backend: "MPI" is not one of "DEFAULT", "UCX", "NIXL"`},
		{"fraction", func(c *Config) { c.KVCache.FreeGPUMemoryFraction = 1.5 }, "free_gpu_memory_fraction: 1.5 must be in (0, 1]"},
		{"tpb", func(c *Config) { c.KVCache.TokensPerBlock = 24 }, "tokens_per_block: 24 must be a power of two"},
		{"batch", func(c *Config) { c.MaxBatchSize = 0 }, "max_batch_size: 0 must be at least 1"},
		{"timeout", func(c *Config) { c.CacheTransceiver.KVTransferTimeoutMS = 0 }, "kv_transfer_timeout_ms: 0"},
		{"port", func(c *Config) { c.Port = 70000 }, "port: 70000"},
		{"dtype", func(c *Config) { c.DType = "float16" }, `dtype: "float16" is not one of "auto", "bfloat16", "float32"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	c := Default()
	c.Role = "Context"
	if err := c.Validate(); err != nil || c.Role != "context" {
		t.Fatalf("Validate of role Context: %v, role %q", err, c.Role)
	}
	c = Default()
	c.DType = "Float32"
	if err := c.Validate(); err != nil || c.DType != "float32" {
		t.Fatalf("Validate of dtype Float32: %v, dtype %q", err, c.DType)
	}
}

func TestShippedConfigsLoad(t *testing.T) {
	files, err := filepath.Glob("../../configs/*_config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		base := filepath.Base(f)
		if base != "ctx_config.yaml" && base != "gen_config.yaml" {
			continue // the proxy's and metadata files have their own schema
		}
		n++
		c := Default()
		w, err := LoadFile(f, &c)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		if len(w) > 0 {
			t.Logf("%s warnings: %q", f, w)
		}
	}
	if n != 2 {
		t.Errorf("found %d of configs/ctx_config.yaml and gen_config.yaml, want 2", n)
	}
	if _, err := os.Stat("../../configs/disagg_config.yaml"); err != nil {
		t.Logf("no disagg_config.yaml yet: %v", err)
	}
}

// TestEnvTableCoversTransceiver keeps one table of environment variables:
// every variable the transceiver reads is documented here.
func TestEnvTableCoversTransceiver(t *testing.T) {
	documented := map[string]bool{}
	for _, e := range EnvVars {
		documented[e.Name] = true
	}
	for name := range transceiver.EnvVars() {
		if !documented[name] {
			t.Errorf("transceiver reads %s, which config.EnvVars does not document", name)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range EnvVars {
		if !strings.Contains(string(readme), "`"+e.Name+"`") {
			t.Errorf("README.md does not document %s", e.Name)
		}
	}
}

// TestREADMEDocumentsEveryKey: every config key appears in README.md.
func TestREADMEDocumentsEveryKey(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		if !strings.Contains(string(readme), "`"+k+"`") {
			t.Errorf("README.md does not document the config key %s", k)
		}
	}
}
