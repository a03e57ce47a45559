package worker

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"disagg/api"
	"disagg/worker/config"
)

// These tests run a context worker and a generation worker in one process,
// each a real engine on the embedded tiny model with its own KV pool and
// its own transceiver (the configured backend, UCX by default), behind
// httptest servers, and drive them as the proxy does.

// node is one worker runtime behind an HTTP server.
type node struct {
	rt    *Runtime
	srv   *httptest.Server
	start int // free blocks at start
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newNode opens a runtime with role and the config changes of edit.
func newNode(t *testing.T, role string, edit func(*config.Config)) *node {
	t.Helper()
	cfg := config.Default()
	cfg.Role = role
	cfg.KVCache.MaxTokens = 2048
	cfg.MaxBatchSize = 8
	cfg.ClusterSecret = "test-cluster-secret"
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rt, err := Open(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if rt.Transceiver == nil {
		_ = rt.Close()
		if os.Getenv("CI") == "true" {
			t.Fatalf("the KV transceiver is required under CI=true: %s", rt.DisaggUnavailable)
		}
		t.Skipf("no KV transceiver here: %s", rt.DisaggUnavailable)
	}
	n := &node{rt: rt, start: rt.Pool.FreeBlocks()}
	n.srv = httptest.NewServer(NewHandler(rt, quietLog()))
	t.Cleanup(n.close)
	return n
}

// close stops the node's server and runtime (idempotent).
func (n *node) close() {
	if n.srv != nil {
		n.srv.Close()
		n.srv = nil
	}
	if n.rt != nil {
		_ = n.rt.Close()
		n.rt = nil
	}
}

// waitIdle waits until every block of the node's pool is free and nothing
// is parked.
func (n *node) waitIdle(t *testing.T, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.rt.Pool.FreeBlocks() != n.start || n.rt.Disagg.Parked() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d blocks free, %d requests parked", what, n.rt.Pool.FreeBlocks(), n.start, n.rt.Disagg.Parked())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// post sends body to path and returns the status and body.
func post(t *testing.T, url, path string, body any) (int, []byte) {
	t.Helper()
	status, out, _ := postHeader(t, url, path, body)
	return status, out
}

// postHeader is post that also returns the response headers.
func postHeader(t *testing.T, url, path string, body any) (int, []byte, http.Header) {
	t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(url+path, "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out, resp.Header
}

// ctxReply is the part of a context reply the generation request needs.
type ctxReply struct {
	Choices []struct {
		Text                string                   `json:"text"`
		FinishReason        *string                  `json:"finish_reason"`
		DisaggregatedParams *api.DisaggregatedParams `json:"disaggregated_params"`
	} `json:"choices"`
	PromptTokenIDs []int32 `json:"prompt_token_ids"`
}

// contextPhase sends req as context_only and returns the reply.
func contextPhase(t *testing.T, n *node, path string, req map[string]any) ctxReply {
	t.Helper()
	c := clone(req)
	c["stream"] = false
	c["disaggregated_params"] = map[string]any{"request_type": "context_only", "disagg_request_id": 77}
	status, body, hdr := postHeader(t, n.srv.URL, path, c)
	if status != 200 {
		t.Fatalf("context phase: %d %s", status, body)
	}
	for _, h := range []string{api.HeaderContextQueueMs, api.HeaderPrefillMs} {
		if ms, err := strconv.ParseFloat(hdr.Get(h), 64); err != nil || ms < 0 {
			t.Errorf("context reply header %s = %q, want milliseconds", h, hdr.Get(h))
		}
	}
	var r ctxReply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Choices) != 1 || r.Choices[0].FinishReason != nil || r.Choices[0].DisaggregatedParams == nil {
		t.Fatalf("context reply: %s", body)
	}
	p := r.Choices[0].DisaggregatedParams
	if p.RequestType != "context_only" || len(p.FirstGenTokens) != 1 || p.CtxRequestID == nil || p.EncodedOpaqueState == "" ||
		p.DisaggRequestID == nil || *p.DisaggRequestID != 77 || len(r.PromptTokenIDs) == 0 {
		t.Fatalf("context reply params: %s", body)
	}
	return r
}

// generationRequest is req made generation_only from a context reply, as
// the proxy builds it.
func generationRequest(req map[string]any, path string, r ctxReply) map[string]any {
	g := clone(req)
	p := *r.Choices[0].DisaggregatedParams
	p.RequestType = api.RequestGenerationOnly
	g["disaggregated_params"] = p
	if strings.Contains(path, "chat") {
		g["prompt_token_ids"] = r.PromptTokenIDs
	} else {
		g["prompt"] = r.PromptTokenIDs
	}
	return g
}

func clone(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// answerText is a non-streamed answer's text and finish reason.
func answerText(t *testing.T, body []byte) (string, string) {
	t.Helper()
	var r struct {
		Choices []struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
			Message      struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(body, &r); err != nil || len(r.Choices) != 1 {
		t.Fatalf("answer %s: %v", body, err)
	}
	return r.Choices[0].Text + r.Choices[0].Message.Content, r.Choices[0].FinishReason
}

// streamText reads a streamed answer's text.
func streamText(t *testing.T, url, path string, body any) string {
	t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(url+path, "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("stream: %d %s", resp.StatusCode, b)
	}
	var sb strings.Builder
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			done = true
			break
		}
		var c struct {
			Choices []struct {
				Text  string `json:"text"`
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Error *api.Error `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &c); err != nil || c.Error != nil {
			t.Fatalf("stream event %s: %v", line, err)
		}
		for _, ch := range c.Choices {
			sb.WriteString(ch.Text + ch.Delta.Content)
		}
	}
	if !done {
		t.Fatal("stream ended without [DONE]")
	}
	return sb.String()
}

// greedyRef is one case of testdata/reference/tiny-llama2/greedy.json.
type greedyRef struct {
	PromptIDs  []int32 `json:"prompt_ids"`
	OutputIDs  []int32 `json:"output_ids"`
	OutputText string  `json:"output_text"`
}

func TestDisaggregatedGreedyMatchesAggregated(t *testing.T) {
	ctxN := newNode(t, config.RoleContext, nil)
	genN := newNode(t, config.RoleGeneration, nil)
	data, err := os.ReadFile(filepath.Join("..", "testdata", "reference", "tiny-llama2", "greedy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var refs []greedyRef
	if err := json.Unmarshal(data, &refs); err != nil {
		t.Fatal(err)
	}
	for i, ref := range refs {
		req := map[string]any{"prompt": ref.PromptIDs, "max_tokens": len(ref.OutputIDs), "temperature": 0, "ignore_eos": true,
			"skip_special_tokens": false}
		// Aggregated, on the context worker (a role does not stop it from
		// serving whole requests).
		status, body := post(t, ctxN.srv.URL, "/v1/completions", req)
		if status != 200 {
			t.Fatalf("aggregated: %d %s", status, body)
		}
		want, _ := answerText(t, body)
		hfText, err := ctxN.rt.Tokenizer.Decode(ref.OutputIDs, false)
		if err != nil {
			t.Fatal(err)
		}
		if want != hfText {
			t.Errorf("case %d: aggregated text %q differs from the reference's %q", i, want, hfText)
		}

		r := contextPhase(t, ctxN, "/v1/completions", req)
		if r.Choices[0].DisaggregatedParams.FirstGenTokens[0] != ref.OutputIDs[0] {
			t.Errorf("case %d: first token %d, reference %d", i, r.Choices[0].DisaggregatedParams.FirstGenTokens[0], ref.OutputIDs[0])
		}
		gen := generationRequest(req, "/v1/completions", r)
		if i%2 == 0 {
			var hdr http.Header
			status, body, hdr = postHeader(t, genN.srv.URL, "/v1/completions", gen)
			if status != 200 {
				t.Fatalf("case %d: generation phase: %d %s", i, status, body)
			}
			layout := genN.rt.Pool.Layout()
			wantBytes := strconv.Itoa(layout.BlocksFor(len(ref.PromptIDs)) * layout.BlockBytes())
			if got := hdr.Get(api.HeaderKVBytes); got != wantBytes || hdr.Get(api.HeaderKVTransferMs) == "" {
				t.Errorf("case %d: %s = %q (want %s), %s = %q", i, api.HeaderKVBytes, got, wantBytes, api.HeaderKVTransferMs, hdr.Get(api.HeaderKVTransferMs))
			}
			got, finish := answerText(t, body)
			if diff := cmp.Diff(want, got); diff != "" || finish != "length" {
				t.Errorf("case %d: generation answer (finish %q) differs (-aggregated +disaggregated):\n%s", i, finish, diff)
			}
		} else {
			gen["stream"] = true
			if diff := cmp.Diff(want, streamText(t, genN.srv.URL, "/v1/completions", gen)); diff != "" {
				t.Errorf("case %d: streamed generation answer differs (-aggregated +disaggregated):\n%s", i, diff)
			}
		}
		ctxN.waitIdle(t, "context worker after the transfer")
		genN.waitIdle(t, "generation worker")
	}

	// Chat, streamed.
	chatReq := map[string]any{"messages": []map[string]string{{"role": "user", "content": "Tell me a story about a cat."}},
		"max_tokens": 20, "temperature": 0, "ignore_eos": true}
	status, body := post(t, ctxN.srv.URL, "/v1/chat/completions", chatReq)
	if status != 200 {
		t.Fatalf("aggregated chat: %d %s", status, body)
	}
	want, _ := answerText(t, body)
	r := contextPhase(t, ctxN, "/v1/chat/completions", chatReq)
	gen := generationRequest(chatReq, "/v1/chat/completions", r)
	gen["stream"] = true
	if diff := cmp.Diff(want, streamText(t, genN.srv.URL, "/v1/chat/completions", gen)); diff != "" {
		t.Errorf("chat: generation answer differs (-aggregated +disaggregated):\n%s", diff)
	}
	ctxN.waitIdle(t, "context worker after the chat transfer")
	genN.waitIdle(t, "generation worker after chat")

	resp, err := http.Get(genN.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	metrics, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"worker_kv_transfer_bytes_total", "worker_kv_transfer_seconds_count", "worker_kv_parked_blocks"} {
		if !bytes.Contains(metrics, []byte(m)) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	if bytes.Contains(metrics, []byte("worker_kv_transfer_bytes_total 0\n")) {
		t.Errorf("no transfer bytes counted")
	}
}

// TestDisaggregatedCorruptKV: blocks that change between the context
// phase and the transfer fail the checksum check: a 502, and both sides
// free their blocks.
func TestDisaggregatedCorruptKV(t *testing.T) {
	ctxN := newNode(t, config.RoleContext, nil)
	genN := newNode(t, config.RoleGeneration, nil)
	req := map[string]any{"prompt": "Corrupted on the way", "max_tokens": 8, "temperature": 0}
	r := contextPhase(t, ctxN, "/v1/completions", req)
	raw, err := base64.StdEncoding.DecodeString(r.Choices[0].DisaggregatedParams.EncodedOpaqueState)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Blocks []int32 `json:"blocks"`
	}
	if err := json.Unmarshal(raw[33:], &st); err != nil {
		t.Fatal(err)
	}
	data, err := ctxN.rt.Pool.HostFloat32()
	if err != nil {
		t.Fatal(err)
	}
	data[int(st.Blocks[0])*ctxN.rt.Pool.Layout().BlockElems()+3] += 1
	status, body := post(t, genN.srv.URL, "/v1/completions", generationRequest(req, "/v1/completions", r))
	if status != 502 || !strings.Contains(string(body), "checksum") || !strings.Contains(string(body), `"code":"`+api.CodeKVTransferFailed+`"`) {
		t.Errorf("got %d %s, want a 502 naming the checksum, with code %s (the proxy's cue to prefill again)", status, body, api.CodeKVTransferFailed)
	}
	genN.waitIdle(t, "generation worker after the corrupt transfer")
	ctxN.waitIdle(t, "context worker after the abort notification")
}

// TestDisaggregatedSeeded: seeded sampling continues the same random
// stream on the generation worker.
func TestDisaggregatedSeeded(t *testing.T) {
	ctxN := newNode(t, config.RoleContext, nil)
	genN := newNode(t, config.RoleGeneration, nil)
	req := map[string]any{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 1234, "ignore_eos": true}
	status, body := post(t, ctxN.srv.URL, "/v1/completions", req)
	if status != 200 {
		t.Fatalf("aggregated: %d %s", status, body)
	}
	want, _ := answerText(t, body)
	r := contextPhase(t, ctxN, "/v1/completions", req)
	status, body = post(t, genN.srv.URL, "/v1/completions", generationRequest(req, "/v1/completions", r))
	if status != 200 {
		t.Fatalf("generation: %d %s", status, body)
	}
	got, _ := answerText(t, body)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("seeded answer differs (-aggregated +disaggregated):\n%s", diff)
	}
	ctxN.waitIdle(t, "context worker")
	genN.waitIdle(t, "generation worker")
}

// TestDisaggregatedTamperedState: a forged or altered state is a 400 that
// touches no memory, and the context worker frees its blocks at the
// deadline with no other traffic.
func TestDisaggregatedTamperedState(t *testing.T) {
	ctxN := newNode(t, config.RoleContext, func(c *config.Config) {
		c.CacheTransceiver.KVTransferSenderFutureTimeoutMS = 300
		c.CacheTransceiver.KVTransferTimeoutMS = 200
	})
	genN := newNode(t, config.RoleGeneration, nil)
	req := map[string]any{"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
	r := contextPhase(t, ctxN, "/v1/completions", req)
	if ctxN.rt.Disagg.Parked() != 1 {
		t.Fatalf("%d requests parked after the context phase, want 1", ctxN.rt.Disagg.Parked())
	}
	enc := r.Choices[0].DisaggregatedParams.EncodedOpaqueState
	raw, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(raw)
	flipped[len(flipped)-3] ^= 1 // inside the JSON body
	// A state re-signed with another key: what a forger without the secret can make.
	for name, state := range map[string]string{
		"flipped byte": base64.StdEncoding.EncodeToString(flipped),
		"truncated":    enc[:len(enc)/2],
		"not base64":   "!!!" + enc,
		"empty":        "",
		"other key":    forge(t, raw),
	} {
		g := generationRequest(req, "/v1/completions", r)
		p := g["disaggregated_params"].(api.DisaggregatedParams)
		p.EncodedOpaqueState = state
		g["disaggregated_params"] = p
		status, body := post(t, genN.srv.URL, "/v1/completions", g)
		var e api.ErrorResponse
		if status != 400 || json.Unmarshal(body, &e) != nil || e.Error == nil || e.Error.Type != api.TypeInvalidRequest {
			t.Errorf("%s: %d %s, want a 400 OpenAI error", name, status, body)
		}
		if free := genN.rt.Pool.FreeBlocks(); free != genN.start {
			t.Errorf("%s: generation pool has %d free blocks, want %d", name, free, genN.start)
		}
	}
	// The context worker gets no notification: the deadline frees the blocks.
	ctxN.waitIdle(t, "context worker after the deadline")
	// The genuine state has expired by now: a 504, and nothing is read.
	status, body := post(t, genN.srv.URL, "/v1/completions", generationRequest(req, "/v1/completions", r))
	if status != 504 || !strings.Contains(string(body), "expired") {
		t.Errorf("expired state: %d %s, want a 504", status, body)
	}
	genN.waitIdle(t, "generation worker after the expired state")
}

// forge re-signs the state's body with a key that is not the cluster's.
func forge(t *testing.T, raw []byte) string {
	t.Helper()
	body := raw[33:]
	var st map[string]any
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	st["blocks"] = []int{0, 1, 2, 3, 4, 5, 6, 7} // another request's blocks
	forged, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	out := append([]byte{raw[0]}, bytes.Repeat([]byte{0xAB}, 32)...)
	return base64.StdEncoding.EncodeToString(append(out, forged...))
}

// TestDisaggregatedContextGone: a generation request whose context worker
// has gone fails with a 5xx OpenAI error and leaks no block.
func TestDisaggregatedContextGone(t *testing.T) {
	t.Run("new connection", func(t *testing.T) { testContextGone(t, false) })
	t.Run("cached connection", func(t *testing.T) { testContextGone(t, true) })
}

func testContextGone(t *testing.T, cached bool) {
	ctxN := newNode(t, config.RoleContext, nil)
	genN := newNode(t, config.RoleGeneration, func(c *config.Config) { c.CacheTransceiver.KVTransferTimeoutMS = 2000 })
	req := map[string]any{"prompt": "A context worker that dies", "max_tokens": 8, "temperature": 0}
	if cached {
		// One good transfer first, so that the generation worker holds a
		// connection to the context worker when it dies.
		r := contextPhase(t, ctxN, "/v1/completions", req)
		if status, body := post(t, genN.srv.URL, "/v1/completions", generationRequest(req, "/v1/completions", r)); status != 200 {
			t.Fatalf("first transfer: %d %s", status, body)
		}
	}
	r := contextPhase(t, ctxN, "/v1/completions", req)
	ctxN.close()
	status, body := post(t, genN.srv.URL, "/v1/completions", generationRequest(req, "/v1/completions", r))
	var e api.ErrorResponse
	if status < 500 || json.Unmarshal(body, &e) != nil || e.Error == nil {
		t.Fatalf("got %d %s, want a 5xx OpenAI error", status, body)
	}
	t.Logf("answer: %d %s", status, strings.TrimSpace(string(body)))
	genN.waitIdle(t, "generation worker after the failed transfer")
}

// TestDisaggregatedRoles: each role refuses the other phase; a finished
// first token parks nothing.
func TestDisaggregatedRoles(t *testing.T) {
	ctxN := newNode(t, config.RoleContext, nil)
	genN := newNode(t, config.RoleGeneration, nil)
	for _, c := range []struct {
		n    *node
		kind string
	}{{ctxN, "generation_only"}, {genN, "context_only"}} {
		status, body := post(t, c.n.srv.URL, "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 4,
			"disaggregated_params": map[string]any{"request_type": c.kind, "first_gen_tokens": []int{5}, "encoded_opaque_state": "x"}})
		if status != 400 {
			t.Errorf("%s on a %s worker: %d %s", c.kind, c.n.rt.Config.Role, status, body)
		}
	}
	status, body := post(t, ctxN.srv.URL, "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 1,
		"disaggregated_params": map[string]any{"request_type": "context_only"}})
	if status != 200 {
		t.Fatalf("max_tokens 1: %d %s", status, body)
	}
	var r struct {
		Choices []struct {
			FinishReason        *string          `json:"finish_reason"`
			DisaggregatedParams *json.RawMessage `json:"disaggregated_params"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(body, &r); err != nil || len(r.Choices) != 1 || r.Choices[0].FinishReason == nil ||
		*r.Choices[0].FinishReason != "length" || r.Choices[0].DisaggregatedParams != nil {
		t.Errorf("max_tokens 1: %s", body)
	}
	ctxN.waitIdle(t, "context worker after a finished first token")
}

// TestTransceiverMissing: a worker whose transceiver's native library is
// missing still starts and serves whole requests, and answers
// disaggregated ones with a 503 that names what is missing.
func TestTransceiverMissing(t *testing.T) {
	t.Setenv("NIXL_LIB_DIR", t.TempDir()) // no libnixl_capi.so there
	cfg := config.Default()
	cfg.Role = config.RoleContext
	cfg.KVCache.MaxTokens = 512
	cfg.CacheTransceiver.Backend = "NIXL"
	rt, err := Open(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if rt.Transceiver != nil || !strings.Contains(rt.DisaggUnavailable, "libnixl_capi.so") {
		t.Fatalf("transceiver %v, unavailable %q", rt.Transceiver, rt.DisaggUnavailable)
	}
	srv := httptest.NewServer(NewHandler(rt, quietLog()))
	defer srv.Close()
	status, body := post(t, srv.URL, "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 4,
		"disaggregated_params": map[string]any{"request_type": "context_only"}})
	if status != 503 || !strings.Contains(string(body), "libnixl_capi.so") {
		t.Errorf("context_only: %d %s, want a 503 naming libnixl_capi.so", status, body)
	}
	if status, body := post(t, srv.URL, "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 4}); status != 200 {
		t.Errorf("whole request: %d %s", status, body)
	}
}

// TestDisaggregatedOneWorker: a worker without a role runs both phases of
// one request (its transceiver connects to itself).
func TestDisaggregatedOneWorker(t *testing.T) {
	n := newNode(t, config.RoleAggregated, nil)
	req := map[string]any{"prompt": "Both phases here", "max_tokens": 12, "temperature": 0, "ignore_eos": true}
	status, body := post(t, n.srv.URL, "/v1/completions", req)
	if status != 200 {
		t.Fatalf("aggregated: %d %s", status, body)
	}
	want, _ := answerText(t, body)
	r := contextPhase(t, n, "/v1/completions", req)
	status, body = post(t, n.srv.URL, "/v1/completions", generationRequest(req, "/v1/completions", r))
	if status != 200 {
		t.Fatalf("generation: %d %s", status, body)
	}
	if got, _ := answerText(t, body); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	n.waitIdle(t, "worker after both phases")
}
