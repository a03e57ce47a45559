package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestRun starts the proxy as `worker disaggregated` does (Run, port 0)
// between fake workers and drives it with the SDK until shutdown.
func TestRun(t *testing.T) {
	ctxW, genW := newFakeWorker(t, RoleContext), newFakeWorker(t, RoleGeneration)
	cfg := Default()
	cfg.Hostname, cfg.Port = "127.0.0.1", 0
	cfg.ContextServers.URLs = []string{ctxW.srv.URL}
	cfg.GenerationServers.URLs = []string{genW.srv.URL}
	cfg.ServerStartTimeout = 5
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	meta := DefaultMetadata()
	go func() { done <- Run(ctx, cfg, &meta, nil, func(a string) { addr <- a }) }()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		t.Fatal(err)
	}
	client := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithMaxRetries(0))
	out, err := client.Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{
		Model: fakeModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hi")}, MaxTokens: openai.Int(2),
	})
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := fakeText(2); out.Choices[0].Message.Content != want {
		t.Errorf("content %q", out.Choices[0].Message.Content)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestRunStartTimeout: with no generation server up, Run fails after
// server_start_timeout, naming the servers that are down.
func TestRunStartTimeout(t *testing.T) {
	ctxW := newFakeWorker(t, RoleContext)
	cfg := Default()
	cfg.Hostname, cfg.Port = "127.0.0.1", 0
	cfg.ContextServers.URLs = []string{ctxW.srv.URL}
	cfg.GenerationServers.URLs = []string{deadURL(t)}
	cfg.ServerStartTimeout = 1
	cfg.HealthCheckIntervalSec = 0.1
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), cfg, nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "server_start_timeout") || !strings.Contains(err.Error(), "generation http://") {
		t.Errorf("Run: %v", err)
	}
}
