package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clusterInfo is the part of the proxy's GET /cluster_info the tests read.
type clusterInfo struct {
	Result struct {
		CurrentWorkers struct {
			ContextServers    []struct{ URL string } `json:"context_servers"`
			GenerationServers []struct{ URL string } `json:"generation_servers"`
		} `json:"current_workers"`
	} `json:"result"`
}

func getClusterInfo(t *testing.T, proxy string) (ctx, gen []string) {
	t.Helper()
	resp, err := http.Get(proxy + "/cluster_info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ci clusterInfo
	if err := json.NewDecoder(resp.Body).Decode(&ci); err != nil {
		t.Fatal(err)
	}
	for _, s := range ci.Result.CurrentWorkers.ContextServers {
		ctx = append(ctx, s.URL)
	}
	for _, s := range ci.Result.CurrentWorkers.GenerationServers {
		gen = append(gen, s.URL)
	}
	return ctx, gen
}

func healthOf(t *testing.T, base string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// poll waits for cond, checking often, for at most within (a generous
// bound, not a timing assertion).
func poll(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterE2E runs the proxy with disagg_cluster (cluster_uri: the proxy
// itself) and real workers that register through their own disagg_cluster
// section: /health is 503 until minimal_instances joined; answers through
// the proxy equal a direct request to a worker; a killed generation worker
// is dropped after inactive_timeout_sec and requests keep being served; a
// worker stopped gracefully deregisters.
func TestClusterE2E(t *testing.T) {
	dir := t.TempDir()
	proxyCfg := `hostname: 127.0.0.1
port: 0
max_retries: 1
request_timeout: 60
health_check_interval_sec: 0.2
disagg_cluster:
  cluster_uri: http://127.0.0.1:0 # the proxy's own address; it only reads the scheme
  cluster_name: e2e
  minimal_instances:
    context_servers: 1
    generation_servers: 2
  heartbeat_interval_sec: 1
  inactive_timeout_sec: 2
`
	cfgFile := filepath.Join(dir, "disagg_config.yaml")
	if err := os.WriteFile(cfgFile, []byte(proxyCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	proxy := startProcess(t, workerExe, nil, proxyAddrRE, nil, "disaggregated", "-c", cfgFile, "--port", "0", "--host", "127.0.0.1")
	if st, body := healthOf(t, proxy.URL); st != http.StatusServiceUnavailable || !strings.Contains(body, "0 of 1 context servers and 0 of 2 generation servers") {
		t.Fatalf("/health before any worker: %d %s", st, body)
	}

	// Each worker's file is configs/<role>_config.yaml plus the section.
	workerCfg := func(name string) string {
		data, err := os.ReadFile(filepath.Join("..", "..", "configs", name))
		if err != nil {
			t.Fatal(err)
		}
		s := string(data) + fmt.Sprintf("disagg_cluster:\n  cluster_uri: %s\n  cluster_name: e2e\n  heartbeat_interval_sec: 1\n  inactive_timeout_sec: 2\n", proxy.URL)
		out := filepath.Join(dir, name)
		if err := os.WriteFile(out, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return out
	}
	ctxCfg, genCfg := workerCfg("ctx_config.yaml"), workerCfg("gen_config.yaml")
	env := []string{"WORKER_CLUSTER_SECRET=" + e2eSecret}
	worker := func(role, cfg string) *proc {
		return startProcess(t, workerExe, env, listenRE, nil, "--host", "127.0.0.1", "--port", "0", "--role", role, "--config", cfg)
	}
	ctx1 := worker("context", ctxCfg)
	gen1 := worker("generation", genCfg)
	poll(t, "the first two workers to register", 30*time.Second, func() bool {
		c, g := getClusterInfo(t, proxy.URL)
		return len(c) == 1 && len(g) == 1
	})
	if st, body := healthOf(t, proxy.URL); st != http.StatusServiceUnavailable || !strings.Contains(body, "1 of 2 generation servers") {
		t.Errorf("/health below minimal_instances: %d %s", st, body)
	}
	gen2 := worker("generation", genCfg)
	poll(t, "/health 200 once minimal_instances registered", 30*time.Second, func() bool {
		st, _ := healthOf(t, proxy.URL)
		return st == http.StatusOK
	})
	c, g := getClusterInfo(t, proxy.URL)
	if strings.Join(c, ",") != ctx1.URL || len(g) != 2 {
		t.Errorf("members: context %v, generation %v; want %s and two", c, g, ctx1.URL)
	}

	// A plain aggregated worker, outside the cluster, is the reference.
	direct := startWorker(t, workerExe)
	refs := loadGreedyCases(t, "tiny-llama2")
	check := func(what string, n int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := range n {
			ref := refs[1+i%(len(refs)-1)]
			req := completionReq(ref.PromptIDs, len(ref.OutputIDs), i%2 == 1)
			want, err := do(ctx, direct, "/v1/completions", req, nil)
			if err != nil || want.status != 200 {
				t.Fatalf("%s: direct request %d: %v %v", what, i, err, want)
			}
			got, err := do(ctx, proxy.URL, "/v1/completions", req, nil)
			if err != nil {
				t.Fatalf("%s: request %d: %v", what, i, err)
			}
			if got.status != 200 || len(got.errs) != 0 || got.text != want.text || got.text != ref.OutputText {
				t.Fatalf("%s: request %d: status %d errors %q\n got %q\nwant %q (direct), %q (reference)",
					what, i, got.status, got.errs, got.text, want.text, ref.OutputText)
			}
		}
	}
	check("all registered", 4)

	// SIGKILL: no deregistration; the heartbeats stop.
	if err := gen2.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	poll(t, "the killed worker to be dropped", 30*time.Second, func() bool {
		_, g := getClusterInfo(t, proxy.URL)
		return len(g) == 1 && g[0] == gen1.URL
	})
	if st, _ := healthOf(t, proxy.URL); st != http.StatusServiceUnavailable {
		t.Errorf("/health with 1 of 2 generation servers: %d, want 503", st)
	}
	check("after the kill", 4)

	// SIGINT: the worker deregisters on its way out.
	if err := ctx1.Cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := ctx1.Cmd.Wait(); err != nil {
		t.Errorf("context worker exit: %v", err)
	}
	c, _ = getClusterInfo(t, proxy.URL)
	if len(c) != 0 {
		t.Errorf("context servers right after a graceful exit: %v, want none (deregistered)", c)
	}
}
