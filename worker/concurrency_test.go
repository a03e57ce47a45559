package worker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"disagg/worker/config"
)

// TestConcurrentStreamsWithDisconnects runs 64 streaming clients against the
// embedded model through the real HTTP server; every tenth hangs up after its
// first chunk. All others must end with a finish_reason and [DONE], and the
// KV pool's free count must return to its start value.
func TestConcurrentStreamsWithDisconnects(t *testing.T) {
	cfg := config.Default()
	cfg.KVCache.MaxTokens = 1024 // 32 blocks for 64 clients: requests queue and get preempted
	rt, err := Open(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	start := rt.Pool.FreeBlocks()
	srv := httptest.NewServer(NewHandler(rt, slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()

	const clients = 64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	completed := make(chan int, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			disconnect := i%10 == 0
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			body := fmt.Sprintf(`{"model":"tiny-llama2","prompt":"client %d says %s","max_tokens":%d,"temperature":0.8,"seed":%d,"stream":true,"ignore_eos":true}`,
				i, strings.Repeat("hello ", i%13), 16+i%48, i)
			req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/completions", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- fmt.Errorf("client %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				b, _ := io.ReadAll(resp.Body)
				errs <- fmt.Errorf("client %d: status %d: %s", i, resp.StatusCode, b)
				return
			}
			sc := bufio.NewScanner(resp.Body)
			chunks, finished, done := 0, false, false
			for sc.Scan() {
				line := sc.Text()
				if !strings.HasPrefix(line, "data: ") {
					continue
				}
				if line == "data: [DONE]" {
					done = true
					break
				}
				chunks++
				if strings.Contains(line, `"finish_reason":"length"`) {
					finished = true
				}
				if disconnect && chunks == 1 {
					cancel() // hang up mid-stream
					return
				}
			}
			if !finished || !done {
				errs <- fmt.Errorf("client %d: stream ended without finish_reason length (%v) or [DONE] (%v) after %d chunks", i, finished, done, chunks)
				return
			}
			completed <- i
		}(i)
	}
	wg.Wait()
	close(errs)
	close(completed)
	for err := range errs {
		t.Error(err)
	}
	if n := len(completed); n != clients-clients/10-1 {
		t.Errorf("%d clients completed, want %d", n, clients-clients/10-1)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rt.Pool.FreeBlocks() != start && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := rt.Pool.FreeBlocks(); got != start {
		t.Fatalf("free blocks = %d after all clients ended, want the start value %d", got, start)
	}
	st := rt.Engine.Stats()
	t.Logf("64 clients, %d disconnected early; free blocks %d/%d; preemptions %d; steps %d", clients/10+1, rt.Pool.FreeBlocks(), start, st.Preemptions, st.StepCount)
}
