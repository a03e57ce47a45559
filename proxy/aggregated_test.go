package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"disagg/api"
)

// aggCluster is a proxy without context servers in front of two fake
// aggregated workers.
type aggCluster struct {
	w1, w2 *fakeWorker
	tp     *testProxy
	client openai.Client
}

func newAggCluster(t *testing.T, mod func(*Config)) *aggCluster {
	c := &aggCluster{w1: newFakeWorker(t, RoleAggregated), w2: newFakeWorker(t, RoleAggregated)}
	c.tp = newTestProxy(t, nil, []string{c.w1.srv.URL, c.w2.srv.URL}, mod)
	c.client = openai.NewClient(option.WithBaseURL(c.tp.srv.URL+"/v1/"), option.WithAPIKey("k"), option.WithMaxRetries(0))
	return c
}

// TestAggregatedMode: without context servers every request, streamed or
// not, of either endpoint, goes whole to a generation server chosen round
// robin, with the request id and the API key; health, models and metrics
// name the servers "aggregated".
func TestAggregatedMode(t *testing.T) {
	c := newAggCluster(t, func(cfg *Config) { cfg.APIKey = "k" })
	if c.tp.p.Mode() != ModeAggregated || !c.tp.p.Ready() {
		t.Fatalf("mode %q ready %v", c.tp.p.Mode(), c.tp.p.Ready())
	}
	ctx := testCtx(t)
	want, finish := fakeText(4)
	params := openai.CompletionNewParams{Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Say hi")}, MaxTokens: openai.Int(4)}

	var resp *http.Response
	out, err := c.client.Completions.New(ctx, params, option.WithResponseInto(&resp), option.WithHeader("X-Request-Id", "agg-1"))
	if err != nil {
		t.Fatal(err)
	}
	if out.Choices[0].Text != want || string(out.Choices[0].FinishReason) != finish || out.ID != "agg-1" || out.Usage.PromptTokens != int64(len("Say hi")) {
		t.Errorf("completion %+v", out)
	}
	if resp.Header.Get(HeaderRequestID) != "agg-1" || resp.Header.Get(HeaderGenerationServer) != c.w1.srv.URL || resp.Header.Get(HeaderContextServer) != "" {
		t.Errorf("headers %v", resp.Header)
	}
	// The worker got the client's body as sent: no disaggregated_params, the
	// text prompt, the request id and the key.
	var got map[string]any
	if err := json.Unmarshal(c.w1.lastBody(), &got); err != nil {
		t.Fatal(err)
	}
	if _, ok := got["disaggregated_params"]; ok || got["prompt"] != "Say hi" {
		t.Errorf("worker body %s", c.w1.lastBody())
	}
	if h := c.w1.lastHeader(); h.Get("X-Request-Id") != "agg-1" || h.Get("Authorization") != "Bearer k" {
		t.Errorf("worker headers %v", h)
	}

	s := c.client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
		Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once")}, MaxTokens: openai.Int(4),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var text strings.Builder
	var usage openai.CompletionUsage
	for s.Next() {
		for _, ch := range s.Current().Choices {
			text.WriteString(ch.Text)
		}
		if s.Current().Usage.TotalTokens > 0 {
			usage = s.Current().Usage
		}
	}
	if s.Err() != nil || text.String() != want || usage.PromptTokens != 4 || usage.CompletionTokens != 4 {
		t.Errorf("stream %q usage %+v err %v", text.String(), usage, s.Err())
	}

	chat, err := c.client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: fakeModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hi")}, MaxCompletionTokens: openai.Int(3),
	})
	if want3, _ := fakeText(3); err != nil || chat.Choices[0].Message.Content != want3 {
		t.Errorf("chat %+v %v", chat, err)
	}
	cs := c.client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: fakeModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hi")}, MaxCompletionTokens: openai.Int(5),
	})
	acc := openai.ChatCompletionAccumulator{}
	for cs.Next() {
		acc.AddChunk(cs.Current())
	}
	if want5, _ := fakeText(5); cs.Err() != nil || len(acc.Choices) != 1 || acc.Choices[0].Message.Content != want5 {
		t.Errorf("chat stream %+v %v", acc.ChatCompletion, cs.Err())
	}

	// Round robin over the two workers, nothing else called.
	if c.w1.calls() != 2 || c.w2.calls() != 2 {
		t.Errorf("calls %d %d, want 2 2", c.w1.calls(), c.w2.calls())
	}
	// No key, no answer.
	r, err := http.Post(c.tp.srv.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusUnauthorized {
		t.Errorf("without the key: %d", r.StatusCode)
	}

	page, err := c.client.Models.List(ctx)
	if err != nil || len(page.Data) != 1 || page.Data[0].ID != fakeModel {
		t.Errorf("models %+v %v", page, err)
	}
	waitFor(t, "requests counted", func() bool {
		return metricValue(t, c.tp, `disagg_proxy_requests_total{endpoint="/v1/chat/completions",status="200"}`) == "2"
	})
	for m, v := range map[string]string{
		`disagg_proxy_info{mode="aggregated"}`:                                                  "1",
		`disagg_proxy_upstream_requests_total{role="aggregated",server="` + c.w1.srv.URL + `"}`: "2",
		`disagg_proxy_upstream_requests_total{role="aggregated",server="` + c.w2.srv.URL + `"}`: "2",
		`disagg_proxy_server_up{role="aggregated",server="` + c.w2.srv.URL + `"}`:               "1",
		`disagg_proxy_phase_seconds_count{role="aggregated"}`:                                   "4",
	} {
		if got := metricValue(t, c.tp, m); got != v {
			t.Errorf("%s = %q, want %q", m, got, v)
		}
	}
	if got := metricValue(t, c.tp, `disagg_proxy_phase_seconds_count{role="context"}`); got != "" {
		t.Errorf("a context phase was recorded: %q", got)
	}

	// /health follows the generation servers alone.
	health := func() int {
		r, err := http.Get(c.tp.srv.URL + "/health")
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if got := health(); got != http.StatusOK {
		t.Errorf("health %d", got)
	}
	c.tp.startHealth(t)
	c.w1.healthy.Store(false)
	c.w2.healthy.Store(false)
	waitFor(t, "workers down", func() bool { return !c.tp.p.Ready() })
	if got := health(); got != http.StatusServiceUnavailable {
		t.Errorf("health %d with no worker up", got)
	}
	c.w2.healthy.Store(true)
	waitFor(t, "a worker up", c.tp.p.Ready)
}

// TestAggregatedRetry: a worker that refuses connections or answers 500
// before the first byte is marked down and the request, streamed or not,
// goes to the other worker; with every worker dead the client gets a 502.
func TestAggregatedRetry(t *testing.T) {
	good := newFakeWorker(t, RoleAggregated)
	bad := newFakeWorker(t, RoleAggregated)
	bad.mode.Store(modeStatus500)
	dead := deadURL(t)
	for _, tc := range []struct {
		name string
		urls []string
	}{
		{"dead", []string{dead, good.srv.URL}},
		{"500", []string{bad.srv.URL, good.srv.URL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTestProxy(t, nil, tc.urls, nil)
			client := openai.NewClient(option.WithBaseURL(tp.srv.URL+"/v1/"), option.WithMaxRetries(0))
			want, _ := fakeText(3)
			for _, stream := range []bool{false, true} {
				for _, s := range tp.p.Servers(RoleAggregated) {
					s.up.Store(true) // as if the failing one were up: the router picks it first
				}
				got := completionText(t, client, stream, "failover")
				if got != want {
					t.Errorf("stream %v: %q, want %q", stream, got, want)
				}
				if tp.p.Servers(RoleAggregated)[0].Up() {
					t.Errorf("stream %v: the failing worker is not marked down", stream)
				}
			}
			if got := metricValue(t, tp, `disagg_proxy_retries_total{role="aggregated"}`); got != "2" {
				t.Errorf("retries %q, want 2", got)
			}
		})
	}
	tp := newTestProxy(t, nil, []string{dead, deadURL(t)}, nil)
	client := openai.NewClient(option.WithBaseURL(tp.srv.URL+"/v1/"), option.WithMaxRetries(0))
	_, err := client.Completions.New(testCtx(t), openai.CompletionNewParams{
		Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")}, MaxTokens: openai.Int(3),
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadGateway || !strings.Contains(apiErr.Message, "aggregated") {
		t.Fatalf("error %v", err)
	}
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunLogsMode: Run says once which mode it serves in.
func TestRunLogsMode(t *testing.T) {
	for _, aggregated := range []bool{false, true} {
		w := newFakeWorker(t, RoleAggregated)
		cfg := Default()
		cfg.Hostname, cfg.Port = "127.0.0.1", 0
		cfg.GenerationServers.URLs = []string{w.srv.URL}
		want := `msg="proxy mode" mode=aggregated`
		if !aggregated {
			cfg.ContextServers.URLs = []string{newFakeWorker(t, RoleContext).srv.URL}
			want = `msg="proxy mode" mode=disaggregated`
		}
		cfg.ServerStartTimeout = 5
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, cfg, nil, slog.New(slog.NewTextHandler(&logs, nil)), func(string) { close(ready) })
		}()
		select {
		case <-ready:
		case err := <-done:
			t.Fatal(err)
		}
		waitFor(t, "proxy ready", func() bool { return strings.Contains(logs.String(), `msg="proxy ready"`) })
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
		}
		if n := strings.Count(logs.String(), `msg="proxy mode"`); n != 1 || !strings.Contains(logs.String(), want) {
			t.Errorf("aggregated %v: %d mode lines, want one with %q:\n%s", aggregated, n, want, logs.String())
		}
	}
}

// TestAggregatedRejectsContextParams: a client may still not send
// context_only or generation_only to the proxy.
func TestAggregatedRejectsContextParams(t *testing.T) {
	c := newAggCluster(t, nil)
	r, err := http.Post(c.tp.srv.URL+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"x","disaggregated_params":{"request_type":"context_only"}}`))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var er api.ErrorResponse
	if err := json.NewDecoder(r.Body).Decode(&er); err != nil || r.StatusCode != http.StatusBadRequest || er.Error == nil {
		t.Fatalf("status %d %+v %v", r.StatusCode, er.Error, err)
	}
	if c.w1.calls()+c.w2.calls() != 0 {
		t.Error("a worker was called")
	}
}
