package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"disagg/api"
)

// fastWorker answers every POST with a fixed body, as fast as net/http
// allows: the upstream cost is then the HTTP round trip alone.
func fastWorker(b *testing.B, reply []byte) *httptest.Server {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if _, err := w.Write(reply); err != nil {
			return
		}
	})
	s := httptest.NewServer(h)
	b.Cleanup(s.Close)
	return s
}

func mustJSON(b *testing.B, v any) []byte {
	out, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// BenchmarkProxyOverhead measures what the proxy adds to a request, in
// process, against fast fake workers on loopback:
//
//   - latency: one request at a time. direct-p50-µs is a client making the
//     context and the generation call itself; proxy-p50-µs is the same
//     request through the proxy; added-p50-µs is the difference (the extra
//     hop plus the proxy's work); work-p50-µs is the time in the proxy's
//     handler less its two upstream calls (decoding, routing, encoding,
//     answering).
//   - throughput: concurrent clients (RunParallel, 16 per GOMAXPROCS);
//     req/s through the proxy. The fake workers run in the same process and
//     share its cores.
//
// Run: go test -run '^$' -bench BenchmarkProxyOverhead -cpu 2 ./proxy
func BenchmarkProxyOverhead(b *testing.B) {
	prompt := "The quick brown fox jumps over the lazy dog. Tell me a story about it."
	ids := make([]int32, len(prompt))
	for i := range ids {
		ids[i] = int32(prompt[i])
	}
	ctxID, one := int64(1), int64(1)
	ctxReply := mustJSON(b, api.Completion{ID: "cmpl-x", Object: api.ObjectCompletion, Created: 1, Model: "m",
		Choices: []api.CompletionChoice{{Text: " Once", FinishReason: api.FinishLength, DisaggregatedParams: &api.DisaggregatedParams{
			RequestType: api.RequestContextOnly, FirstGenTokens: []int32{9}, CtxRequestID: &ctxID, DisaggRequestID: &one, EncodedOpaqueState: "c3RhdGU=",
		}}},
		Usage: &api.Usage{PromptTokens: len(ids), CompletionTokens: 1, TotalTokens: len(ids) + 1}, PromptTokenIDs: ids})
	genReply := mustJSON(b, api.Completion{ID: "cmpl-x", Object: api.ObjectCompletion, Created: 1, Model: "m",
		Choices: []api.CompletionChoice{{Text: " Once upon a time there was a fox.", FinishReason: api.FinishLength}},
		Usage:   &api.Usage{PromptTokens: len(ids), CompletionTokens: 16, TotalTokens: len(ids) + 16}})
	cw, gw := fastWorker(b, ctxReply), fastWorker(b, genReply)

	cfg := Default()
	cfg.ContextServers.URLs = []string{cw.URL}
	cfg.GenerationServers.URLs = []string{gw.URL}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	p, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	p.CheckNow(context.Background())
	// handlerTime is the last request's time in the proxy's handler; the
	// latency run is sequential, so one value is enough.
	var handlerTime atomic.Int64
	h := p.Handler()
	ps := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		h.ServeHTTP(w, r)
		handlerTime.Store(int64(time.Since(t0)))
	}))
	b.Cleanup(ps.Close)

	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024}}
	reqBody := mustJSON(b, map[string]any{"model": "m", "prompt": prompt, "max_tokens": 16})
	var ctxBody, genBody []byte
	{
		c, e := newCompletionCall(reqBody)
		if e != nil {
			b.Fatal(e)
		}
		if ctxBody, err = c.contextBody(1); err != nil {
			b.Fatal(err)
		}
		res, err := c.parseContext(ctxReply)
		if err != nil {
			b.Fatal(err)
		}
		if genBody, err = c.generationBody(res, 1); err != nil {
			b.Fatal(err)
		}
	}
	var lastHeader http.Header
	post := func(url string, body []byte) error {
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		lastHeader = resp.Header
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return &statusError{status: resp.StatusCode}
		}
		return nil
	}
	direct := func() error {
		if err := post(cw.URL+"/v1/completions", ctxBody); err != nil {
			return err
		}
		return post(gw.URL+"/v1/completions", genBody)
	}
	viaProxy := func() error { return post(ps.URL+"/v1/completions", reqBody) }

	b.Run("latency", func(b *testing.B) {
		n := max(b.N, 200)
		measure := func(f func() error) time.Duration {
			lat := make([]time.Duration, 0, n)
			for range n {
				t0 := time.Now()
				if err := f(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			return lat[len(lat)/2]
		}
		for range 200 { // warm the connection pools
			if err := direct(); err != nil {
				b.Fatal(err)
			}
			if err := viaProxy(); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		d := measure(direct)
		// work: the proxy handler's time less its two upstream calls (as
		// its X-Disagg-*-Ms headers report them).
		work := make([]time.Duration, 0, n)
		px := measure(func() error {
			if err := viaProxy(); err != nil {
				return err
			}
			up := 0.0
			for _, h := range []string{HeaderContextMs, HeaderGenerationMs} {
				v, err := strconv.ParseFloat(lastHeader.Get(h), 64)
				if err != nil {
					return err
				}
				up += v
			}
			work = append(work, time.Duration(handlerTime.Load())-time.Duration(up*float64(time.Millisecond)))
			return nil
		})
		slices.Sort(work)
		b.ReportMetric(float64(d.Microseconds()), "direct-p50-µs")
		b.ReportMetric(float64(px.Microseconds()), "proxy-p50-µs")
		b.ReportMetric(float64((px - d).Microseconds()), "added-p50-µs")
		b.ReportMetric(float64(work[len(work)/2].Microseconds()), "work-p50-µs")
	})

	b.Run("throughput", func(b *testing.B) {
		b.SetParallelism(16)
		var mu sync.Mutex
		var firstErr error
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := viaProxy(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
		if firstErr != nil {
			b.Fatal(firstErr)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	})
}
