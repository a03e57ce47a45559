package proxy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	cw "disagg/worker/cluster"
)

func TestShippedConfigs(t *testing.T) {
	cfg := Default()
	warnings, err := LoadFile("../configs/disagg_config.yaml", &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings %q", warnings)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	want := []string{"http://localhost:8001", "http://localhost:8002"}
	if diff := cmp.Diff(want, cfg.ContextServers.URLs); diff != "" {
		t.Errorf("context urls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"http://localhost:8003"}, cfg.GenerationServers.URLs); diff != "" {
		t.Errorf("generation urls (-want +got):\n%s", diff)
	}
	if cfg.Addr() != "localhost:8000" || cfg.ContextServers.Router.Type != RouterKVCacheAware || cfg.GenerationServers.Router.Type != RouterLoadBalancing {
		t.Errorf("config %+v", cfg)
	}
	m := DefaultMetadata()
	if err := LoadMetadataFile("../configs/metadata_config.yaml", &m); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(MetadataConfig{ServerType: "etcd", Hostname: "localhost", Port: 2379, HealthCheckTimeout: 5, RefreshInterval: 10}, m); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}
}

func loadString(t *testing.T, text string) (Config, []string, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	w, err := LoadFile(path, &cfg)
	if err == nil {
		err = cfg.Validate()
	}
	return cfg, w, err
}

const minimal = `
context_servers: {urls: ["a:1"]}
generation_servers: {urls: ["b:2"]}
`

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string // substrings of the error
	}{
		{"typo top level", "hostnme: x\n" + minimal, []string{`unknown key "hostnme"`, `did you mean "hostname"?`}},
		{"typo nested", "context_servers: {urls: [\"a:1\"], router: {tpye: round_robin}}\ngeneration_servers: {urls: [\"b:2\"]}",
			[]string{`unknown key "context_servers.router.tpye"`, `did you mean "context_servers.router.type"?`}},
		{"typo cluster", "disagg_cluster: {cluster_url: x}\n", []string{`did you mean "disagg_cluster.cluster_uri"?`}},
		{"num_instances", "context_servers: {num_instances: 2, urls: [\"a:1\"]}\ngeneration_servers: {urls: [\"b:2\"]}",
			[]string{"context_servers.num_instances: 2 does not match the 1 urls"}},
		{"no generation", "context_servers: {urls: [\"a:1\"]}\n", []string{"generation_servers.urls: at least one server"}},
		{"no servers at all", "hostname: x\n", []string{"context_servers.urls and generation_servers.urls: no servers are listed"}},
		{"no servers, zero instances", "context_servers: {num_instances: 0}\ngeneration_servers: {num_instances: 0, urls: []}\n",
			[]string{"context_servers.urls and generation_servers.urls", "generation_servers.urls"}},
		{"generation instances without urls", "generation_servers: {num_instances: 2}\n",
			[]string{"generation_servers.urls: at least one server", "generation_servers.num_instances: 2 does not match the 0 urls"}},
		{"context instances without urls", "context_servers: {num_instances: 1}\ngeneration_servers: {urls: [\"b:2\"]}\n",
			[]string{"context_servers.urls: at least one server", "context_servers.num_instances: 1 does not match the 0 urls"}},
		{"negative instances", "context_servers: {num_instances: -1, urls: [\"a:1\"]}\ngeneration_servers: {urls: [\"b:2\"]}\n",
			[]string{"context_servers.num_instances: -1 must not be negative"}},
		{"aggregated bad router", "generation_servers: {urls: [\"b:2\"], router: {type: kv_cache_aware}}\n",
			[]string{"generation_servers.router.type"}},
		{"bad url", "context_servers: {urls: [\"a\"]}\ngeneration_servers: {urls: [\"b:2\"]}", []string{"context_servers.urls[0]", "host:port"}},
		{"duplicate url", "context_servers: {urls: [\"a:1\", \"http://a:1\"]}\ngeneration_servers: {urls: [\"b:2\"]}", []string{"listed twice"}},
		{"router type", "context_servers: {urls: [\"a:1\"], router: {type: random}}\ngeneration_servers: {urls: [\"b:2\"]}",
			[]string{`context_servers.router.type: "random" is not one of`}},
		{"prefix on generation", "context_servers: {urls: [\"a:1\"]}\ngeneration_servers: {urls: [\"b:2\"], router: {type: kv_cache_aware}}",
			[]string{"generation_servers.router.type"}},
		{"backend", "backend: tensorrt\n" + minimal, []string{`backend: "tensorrt" is not supported`}},
		{"retries", "max_retries: -1\n" + minimal, []string{"max_retries"}},
		{"timeout", "request_timeout: 0\n" + minimal, []string{"request_timeout"}},
		{"node id", "node_id: 300\n" + minimal, []string{"node_id"}},
		{"cluster bad", "disagg_cluster: {cluster_uri: \"ftp://x\"}\n", []string{"scheme \"ftp\""}},
		{"cluster heartbeat", "disagg_cluster: {cluster_uri: \"etcd://h:2379\", heartbeat_interval_sec: 5, inactive_timeout_sec: 3}\n",
			[]string{"inactive_timeout_sec"}},
		{"not a mapping", "- a\n", []string{"top level must be a mapping"}},
		{"section not a mapping", "context_servers: 3\n", []string{"context_servers (line 1) must be a mapping"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := loadString(t, tc.text)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestConfigCluster(t *testing.T) {
	cfg, _, err := loadString(t, "disagg_cluster:\n  cluster_uri: etcd://localhost:2379\n  cluster_name: c1\n  minimal_instances: {context_servers: 2}\n")
	if !errors.Is(err, ErrNotImplemented) || !strings.Contains(err.Error(), "disagg_cluster") {
		t.Fatalf("error %v", err)
	}
	want := cw.Section{ClusterURI: "etcd://localhost:2379", ClusterName: "c1",
		MinimalInstances:     cw.MinimalInstances{ContextServers: 2, GenerationServers: 1},
		HeartbeatIntervalSec: 5, InactiveTimeoutSec: 10}
	if diff := cmp.Diff(&want, cfg.DisaggCluster); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestConfigTrtllmFile: a disagg_config.yaml written for trtllm-serve,
// with worker options for its launcher, loads with warnings.
func TestConfigTrtllmFile(t *testing.T) {
	cfg, warnings, err := loadString(t, `
hostname: 0.0.0.0
port: 8123
backend: pytorch
free_gpu_memory_fraction: 0.9
context_servers:
  num_instances: 1
  tensor_parallel_size: 1
  max_batch_size: 8
  kv_cache_config: {free_gpu_memory_fraction: 0.5}
  cache_transceiver_config: {backend: UCX}
  urls: ["host1:8001"]
  router: {type: load_balancing, use_tokens: true}
generation_servers:
  num_instances: 2
  urls: ["host2:8002", "http://host3:8003"]
`)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 4 {
		t.Errorf("warnings %q", warnings)
	}
	if cfg.Addr() != "0.0.0.0:8123" || !cfg.ContextServers.Router.UseTokens || cfg.ContextServers.Router.MaxBatchSize != 8 ||
		cfg.GenerationServers.URLs[1] != "http://host3:8003" || cfg.GenerationServers.Router.Type != RouterRoundRobin {
		t.Errorf("config %+v", cfg)
	}
}

func TestMetadataErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(path, []byte("server_type: consul\nport: 0\nrefresh_intervall: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := DefaultMetadata()
	err := LoadMetadataFile(path, &m)
	if err == nil || !strings.Contains(err.Error(), `did you mean "refresh_interval"?`) {
		t.Errorf("error %v", err)
	}
	if err := os.WriteFile(path, []byte("server_type: consul\nport: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = LoadMetadataFile(path, &m)
	if err == nil || !strings.Contains(err.Error(), "server_type") || !strings.Contains(err.Error(), "port: 0") {
		t.Errorf("error %v", err)
	}
}

// TestConfigAggregated: without context servers (the key left out, or
// num_instances 0 and no urls) the configuration is valid and names the
// aggregated mode.
func TestConfigAggregated(t *testing.T) {
	for _, text := range []string{
		"generation_servers: {num_instances: 2, urls: [\"a:1\", \"b:2\"]}\n",
		"context_servers: {num_instances: 0}\ngeneration_servers: {urls: [\"a:1\", \"b:2\"]}\n",
		"context_servers: {num_instances: 0, urls: []}\ngeneration_servers: {urls: [\"a:1\", \"b:2\"], router: {type: load_balancing}}\n",
		"context_servers: {}\ngeneration_servers: {urls: [\"a:1\", \"b:2\"]}\n",
	} {
		cfg, warnings, err := loadString(t, text)
		if err != nil || len(warnings) > 0 {
			t.Errorf("%q: %v %q", text, err, warnings)
			continue
		}
		if !cfg.Aggregated() || cfg.Mode() != ModeAggregated || len(cfg.GenerationServers.URLs) != 2 || cfg.GenerationServers.NumInstances != 2 {
			t.Errorf("%q: aggregated %v mode %q config %+v", text, cfg.Aggregated(), cfg.Mode(), cfg)
		}
	}
	cfg, _, err := loadString(t, minimal)
	if err != nil || cfg.Aggregated() || cfg.Mode() != ModeDisaggregated {
		t.Errorf("minimal: %v %q", err, cfg.Mode())
	}
}
