package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// lockstepWorker streams completion chunks one at a time: it writes (and
// flushes) chunk i+1 only after the test, having received chunk i, says
// so on next. A proxy that holds back an event until more bytes come
// (a buffered writer flushed by size, a reader that waits to fill its
// buffer) deadlocks with it.
type lockstepWorker struct {
	srv   *httptest.Server
	next  chan struct{}
	sent  chan int // the index of each chunk once written and flushed
	texts []string
}

func newLockstepWorker(t *testing.T, texts []string) *lockstepWorker {
	lw := &lockstepWorker{next: make(chan struct{}), sent: make(chan int, len(texts)), texts: texts}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		id := r.Header.Get("X-Request-Id")
		for i, text := range texts {
			if i > 0 {
				select {
				case <-lw.next:
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprintf(w, "data: {\"id\":%q,\"object\":\"text_completion\",\"created\":1,\"model\":%q,\"choices\":[{\"index\":0,\"text\":%q,\"finish_reason\":null}]}\n\n",
				id, fakeModel, text)
			if err := rc.Flush(); err != nil {
				return
			}
			lw.sent <- i
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	lw.srv = httptest.NewServer(mux)
	t.Cleanup(lw.srv.Close)
	return lw
}

// TestRelayFlushesEachEvent: the proxy passes each event of a worker's
// stream on as soon as it has it. The client must receive chunk i while
// the worker is still waiting to send chunk i+1; if the proxy batched
// events, the first read would never return and the request's deadline
// ends the test with the failure below (no timing is measured).
func TestRelayFlushesEachEvent(t *testing.T) {
	texts := []string{"Hello", " world", "!", " How"}
	for _, tc := range []struct {
		name       string
		aggregated bool
	}{{"aggregated", true}, {"generation phase", false}} {
		t.Run(tc.name, func(t *testing.T) {
			lw := newLockstepWorker(t, texts)
			var ctxURLs []string
			if !tc.aggregated {
				ctxURLs = []string{newFakeWorker(t, RoleContext).srv.URL}
			}
			tp := newTestProxy(t, ctxURLs, []string{lw.srv.URL}, func(c *Config) {
				f := false // relay the generation stream alone
				c.StreamFirstTokenFromContext = &f
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, tp.srv.URL+"/v1/completions",
				strings.NewReader(`{"prompt":"Hi","max_tokens":8,"stream":true}`))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%v (the proxy sent nothing while the worker waited after its first chunk)", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			br := bufio.NewReader(resp.Body)
			got := 0
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("after %d of %d chunks: %v (the proxy held back chunk %d until the worker sent more)", got, len(texts), err, got)
				}
				data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: ")
				if !ok {
					continue
				}
				if data == "[DONE]" {
					break
				}
				if !strings.Contains(data, fmt.Sprintf("%q", texts[got])) {
					t.Fatalf("chunk %d: %s", got, data)
				}
				// The worker has sent this chunk and nothing after it.
				if i := <-lw.sent; i != got {
					t.Fatalf("worker sent chunk %d, client got chunk %d", i, got)
				}
				select {
				case i := <-lw.sent:
					t.Fatalf("the worker sent chunk %d before the client asked for it", i)
				default:
				}
				got++
				if got < len(texts) {
					lw.next <- struct{}{}
				}
			}
			if got != len(texts) {
				t.Errorf("got %d chunks, want %d", got, len(texts))
			}
			if _, err := io.Copy(io.Discard, br); err != nil {
				t.Fatal(err)
			}
			if resp.Trailer.Get(HeaderGenerationServer) != lw.srv.URL {
				t.Errorf("trailer %v", resp.Trailer)
			}
		})
	}
}
