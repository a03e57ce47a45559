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
	"syscall"
	"testing"
	"time"
)

// startAggregated starts two aggregated workers (no role, the embedded
// model) and the proxy in front of them with no context servers, all real
// processes on port 0. The proxy's health loop is slow (60 s), so a worker
// killed later is found out by a request, not by a probe.
func startAggregated(t *testing.T) (workers []*proc, proxy *proc) {
	t.Helper()
	for range 2 {
		workers = append(workers, startProcess(t, workerExe, []string{"WORKER_CLUSTER_SECRET=" + e2eSecret}, listenRE, nil,
			"--host", "127.0.0.1", "--port", "0"))
	}
	hostPort := func(p *proc) string { return strings.TrimPrefix(p.URL, "http://") }
	cfg := fmt.Sprintf(`hostname: localhost
port: 8000
max_retries: 1
request_timeout: 60
server_start_timeout: 60
health_check_interval_sec: 60
# no context_servers: aggregated mode
generation_servers:
  num_instances: 2
  urls:
    - %q
    - %q
  router:
    type: round_robin
`, hostPort(workers[0]), hostPort(workers[1]))
	file := filepath.Join(t.TempDir(), "agg_config.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	proxy = startProcess(t, workerExe, nil, proxyAddrRE, proxyReadyRE, "disaggregated", "-c", file, "--port", "0", "--host", "127.0.0.1")
	return workers, proxy
}

// proxyMetric reads one sample (name with its labels) from the proxy's
// /metrics.
func proxyMetric(t *testing.T, p *proc, series string) float64 {
	t.Helper()
	v, err := metric(p.URL, series)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAggregatedE2E: a proxy without context servers in front of two real
// aggregated CPU workers spreads requests round robin, answers exactly
// as a worker asked directly (greedy, Hugging Face's reference), streamed
// and not, and when a worker is killed the next request goes to the other
// before anything reached the client.
func TestAggregatedE2E(t *testing.T) {
	workers, proxy := startAggregated(t)
	refs := loadGreedyCases(t, "tiny-llama2")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	cases := []int{1, 2, 3, 4} // not 0: its text prompt is empty
	sent := 0
	for _, i := range cases {
		ref := refs[i]
		direct, err := do(ctx, workers[0].URL, "/v1/completions", completionReq(ref.PromptIDs, len(ref.OutputIDs), false), nil)
		if err != nil || direct.status != 200 || direct.text != ref.OutputText {
			t.Fatalf("case %d direct: %v %+v, want %q", i, err, direct, ref.OutputText)
		}
		for _, stream := range []bool{false, true} {
			a, err := do(ctx, proxy.URL, "/v1/completions", completionReq(ref.PromptIDs, len(ref.OutputIDs), stream), nil)
			sent++
			if err != nil {
				t.Fatalf("case %d stream %v: %v", i, stream, err)
			}
			if a.status != 200 || len(a.errs) != 0 || a.text != direct.text || a.finish != direct.finish || (stream && !a.done) {
				t.Errorf("case %d stream %v: status %d errors %q finish %q\n got %q\nwant %q (direct, finish %q)",
					i, stream, a.status, a.errs, a.finish, a.text, direct.text, direct.finish)
			}
		}
	}
	for _, w := range workers {
		series := fmt.Sprintf(`disagg_proxy_upstream_requests_total{role="aggregated",server=%q}`, w.URL)
		if got := proxyMetric(t, proxy, series); got != float64(sent/2) {
			t.Errorf("%s = %v, want %d (round robin)", series, got, sent/2)
		}
	}
	resp, err := http.Get(proxy.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var models struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &models); err != nil || resp.StatusCode != 200 || len(models.Data) == 0 || models.Data[0].ID != "tiny-llama2" {
		t.Errorf("/v1/models: %d %s", resp.StatusCode, body)
	}

	// sent is even: round robin's next pick is workers[0]. Kill it; the
	// proxy has not probed it since, so the next request, a stream, tries
	// it, fails to connect, and goes to workers[1] before any byte.
	c := &cluster{dead: map[*proc]bool{}}
	c.signal(t, workers[0], syscall.SIGKILL)
	ref := refs[5]
	for _, stream := range []bool{true, false} {
		a, err := do(ctx, proxy.URL, "/v1/completions", completionReq(ref.PromptIDs, len(ref.OutputIDs), stream), nil)
		if err != nil {
			t.Fatal(err)
		}
		if a.status != 200 || len(a.errs) != 0 || a.text != ref.OutputText || (stream && !a.done) {
			t.Fatalf("stream %v after the kill: status %d errors %q text %q, want %q", stream, a.status, a.errs, a.text, ref.OutputText)
		}
	}
	if got := proxyMetric(t, proxy, `disagg_proxy_retries_total{role="aggregated"}`); got != 1 {
		t.Errorf("retries %v, want 1 (then the dead worker is skipped)", got)
	}
	if got := proxyMetric(t, proxy, fmt.Sprintf(`disagg_proxy_server_up{role="aggregated",server=%q}`, workers[0].URL)); got != 0 {
		t.Errorf("the killed worker is not marked down")
	}
	resp, err = http.Get(proxy.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/health %d with one worker up", resp.StatusCode)
	}
}
