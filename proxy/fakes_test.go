package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"disagg/api"
)

// The fake workers implement the disaggregation contract the way the real
// worker does: a context_only request answers with the first token, its
// disaggregated_params and prompt_token_ids; a generation_only request
// checks them and answers with the whole completion (the first token
// included), streamed or not. Prompts tokenize one byte per token; the
// generated tokens are fakeTokens in order, ending with "stop" when they
// run out. A fake of role RoleAggregated (a worker without a role)
// answers the client's request whole, as the generation phase would.

var fakeTokens = []string{"Hello", " world", "!", " How", " are", " you", "?"}

const (
	fakeFirstID  = 100
	fakeState    = "b3BhcXVl"
	fakeModel    = "fake-model"
	stopAtFirst  = "STOP-AT-FIRST" // a prompt holding this ends at the first token (EOS)
	fakeCtxReqID = 4242
)

// fakeText is the text of the first n generated tokens and its finish
// reason.
func fakeText(n int) (string, string) {
	if n >= len(fakeTokens) {
		return strings.Join(fakeTokens, ""), api.FinishStop
	}
	return strings.Join(fakeTokens[:n], ""), api.FinishLength
}

// Failure modes of a fake worker.
const (
	modeOK        = iota
	modeStatus500 // answer 500
	modeMidStream // stream two chunks, then drop the connection
	modeHang      // stream one chunk, then wait for the request to be cancelled
	modeStatus400 // answer 400 (context length exceeded)
	modeHandoff   // a generation server whose next KV pull fails (502 kv_transfer_failed), once
)

type fakeWorker struct {
	t    *testing.T
	role string
	srv  *httptest.Server
	mode atomic.Int32

	mu        sync.Mutex
	bodies    [][]byte
	headers   []http.Header
	cancelled chan struct{}
	healthy   atomic.Bool
}

func newFakeWorker(t *testing.T, role string) *fakeWorker {
	f := &fakeWorker{t: t, role: role, cancelled: make(chan struct{}, 16)}
	f.healthy.Store(true)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) { f.handle(w, r, false) })
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { f.handle(w, r, true) })
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		if !f.healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, api.ModelList{Object: api.ObjectList, Data: []api.Model{{ID: fakeModel, Object: api.ObjectModel, OwnedBy: "test"}}})
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeWorker) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.bodies)
}

func (f *fakeWorker) lastBody() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.bodies) == 0 {
		return nil
	}
	return f.bodies[len(f.bodies)-1]
}

func (f *fakeWorker) lastHeader() http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.headers) == 0 {
		return nil
	}
	return f.headers[len(f.headers)-1]
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		panic(http.ErrAbortHandler)
	}
}

// fakeRequest is the union of what the fake reads from both endpoints.
type fakeRequest struct {
	api.SamplingOptions
	Model               string            `json:"model"`
	Prompt              api.Prompt        `json:"prompt"`
	Messages            []api.ChatMessage `json:"messages"`
	MaxTokens           *int              `json:"max_tokens"`
	MaxCompletionTokens *int              `json:"max_completion_tokens"`
	PromptTokenIDs      []int32           `json:"prompt_token_ids"`
}

func (f *fakeWorker) handle(w http.ResponseWriter, r *http.Request, chat bool) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, body)
	f.headers = append(f.headers, r.Header.Clone())
	f.mu.Unlock()
	if f.mode.CompareAndSwap(modeHandoff, modeOK) {
		e := api.NewError(http.StatusBadGateway, api.TypeServer, "", "The KV transfer from the context worker failed: peer gone.").WithCode(api.CodeKVTransferFailed)
		if err := api.WriteError(w, e); err != nil {
			f.t.Log(err)
		}
		return
	}
	if f.mode.Load() == modeStatus500 {
		if err := api.WriteError(w, api.Internal("fake failure")); err != nil {
			f.t.Log(err)
		}
		return
	}
	if f.mode.Load() == modeStatus400 {
		_ = api.WriteError(w, api.InvalidRequest("prompt", "The prompt is too long.").WithCode(api.CodeContextLengthExceeded))
		return
	}
	var req fakeRequest
	if e := api.DecodeJSON(body, &req); e != nil {
		_ = api.WriteError(w, e)
		return
	}
	if f.mode.Load() == modeHang && !req.Stream {
		<-r.Context().Done()
		f.cancelled <- struct{}{}
		return
	}
	maxTokens := 16
	if req.MaxTokens != nil {
		maxTokens = *req.MaxTokens
	}
	if req.MaxCompletionTokens != nil {
		maxTokens = *req.MaxCompletionTokens
	}
	prompt := promptIDs(&req, chat)
	dp := req.DisaggregatedParams
	switch {
	case f.role == RoleContext && (dp == nil || dp.RequestType != api.RequestContextOnly):
		_ = api.WriteError(w, api.InvalidRequest("disaggregated_params", "context server wants context_only"))
	case f.role == RoleContext:
		if req.Stream {
			_ = api.WriteError(w, api.InvalidRequest("stream", "context_only must not stream"))
			return
		}
		f.answerContext(w, r.Header.Get("X-Request-Id"), &req, chat, prompt)
	case f.role == RoleAggregated && dp != nil:
		_ = api.WriteError(w, api.InvalidRequest("disaggregated_params", "an aggregated worker wants the client's request whole"))
	case f.role == RoleAggregated:
		f.answerGeneration(w, r, &req, chat, prompt, maxTokens)
	case dp == nil || dp.RequestType != api.RequestGenerationOnly:
		_ = api.WriteError(w, api.InvalidRequest("disaggregated_params", "generation server wants generation_only"))
	case !slices.Equal(dp.FirstGenTokens, []int32{fakeFirstID}) || dp.EncodedOpaqueState != fakeState ||
		dp.CtxRequestID == nil || *dp.CtxRequestID != fakeCtxReqID || dp.DisaggRequestID == nil:
		_ = api.WriteError(w, api.InvalidRequest("disaggregated_params", "bad params %+v", dp))
	case len(prompt) == 0 || (chat && len(req.PromptTokenIDs) == 0) || (!chat && len(req.Prompt.Tokens) != 1):
		_ = api.WriteError(w, api.InvalidRequest("prompt", "generation_only needs the prompt's token ids"))
	default:
		w.Header().Set(api.HeaderKVBytes, "4096") // as a real generation worker reports its pull
		w.Header().Set(api.HeaderKVTransferMs, "0.250")
		f.answerGeneration(w, r, &req, chat, prompt, maxTokens)
	}
}

// promptIDs tokenizes one byte per token, or takes the ids given.
func promptIDs(req *fakeRequest, chat bool) []int32 {
	if len(req.PromptTokenIDs) > 0 {
		return req.PromptTokenIDs
	}
	var text string
	switch {
	case chat:
		for _, m := range req.Messages {
			text += m.Role + ":" + m.Content.Text + "\n"
		}
	case len(req.Prompt.Tokens) == 1:
		return req.Prompt.Tokens[0]
	case len(req.Prompt.Texts) == 1:
		text = req.Prompt.Texts[0]
	}
	ids := make([]int32, len(text))
	for i := range len(text) {
		ids[i] = int32(text[i])
	}
	return ids
}

// answerContext answers as the real worker does, with the proxy's
// X-Request-Id as the answer's id.
func (f *fakeWorker) answerContext(w http.ResponseWriter, id string, req *fakeRequest, chat bool, prompt []int32) {
	w.Header().Set(api.HeaderContextQueueMs, "0.125") // as a real context worker reports its breakdown
	w.Header().Set(api.HeaderPrefillMs, "2.500")
	finish := api.FinishLength // the context phase is over; trtllm says "length"
	if strings.Contains(string(toBytes(prompt)), stopAtFirst) {
		finish = api.FinishStop
	}
	ctxID := int64(fakeCtxReqID)
	params := &api.DisaggregatedParams{RequestType: api.RequestContextOnly, FirstGenTokens: []int32{fakeFirstID},
		CtxRequestID: &ctxID, DisaggRequestID: req.DisaggregatedParams.DisaggRequestID, EncodedOpaqueState: fakeState}
	usage := &api.Usage{PromptTokens: len(prompt), CompletionTokens: 1, TotalTokens: len(prompt) + 1}
	if chat {
		writeJSON(w, api.ChatCompletion{ID: id, Object: api.ObjectChatCompletion, Created: 1, Model: fakeModel,
			Choices: []api.ChatChoice{{Message: api.ChatResponseMessage{Role: api.RoleAssistant, Content: fakeTokens[0]},
				FinishReason: finish, DisaggregatedParams: params}},
			Usage: usage, PromptTokenIDs: prompt})
		return
	}
	writeJSON(w, api.Completion{ID: id, Object: api.ObjectCompletion, Created: 1, Model: fakeModel,
		Choices: []api.CompletionChoice{{Text: fakeTokens[0], FinishReason: finish, DisaggregatedParams: params}},
		Usage:   usage, PromptTokenIDs: prompt})
}

func toBytes(ids []int32) []byte {
	b := make([]byte, len(ids))
	for i, id := range ids {
		b[i] = byte(id)
	}
	return b
}

func (f *fakeWorker) answerGeneration(w http.ResponseWriter, r *http.Request, req *fakeRequest, chat bool, prompt []int32, maxTokens int) {
	n := min(maxTokens, len(fakeTokens))
	text, finish := fakeText(maxTokens)
	usage := &api.Usage{PromptTokens: len(prompt), CompletionTokens: n, TotalTokens: len(prompt) + n}
	id := r.Header.Get("X-Request-Id")
	if !req.Stream {
		if chat {
			writeJSON(w, api.ChatCompletion{ID: id, Object: api.ObjectChatCompletion, Created: 2, Model: fakeModel,
				Choices: []api.ChatChoice{{Message: api.ChatResponseMessage{Role: api.RoleAssistant, Content: text}, FinishReason: finish}},
				Usage:   usage})
			return
		}
		writeJSON(w, api.Completion{ID: id, Object: api.ObjectCompletion, Created: 2, Model: fakeModel,
			Choices: []api.CompletionChoice{{Text: text, FinishReason: finish}}, Usage: usage})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(v any) {
		b, err := json.Marshal(v)
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		fmt.Fprintf(w, "data: %s\n\n", b)
		if err := rc.Flush(); err != nil {
			panic(http.ErrAbortHandler)
		}
	}
	chatChunk := func(d api.ChatDelta, finish *string) api.ChatCompletionChunk {
		return api.ChatCompletionChunk{ID: id, Object: api.ObjectChatChunk, Created: 2, Model: fakeModel,
			Choices: []api.ChatChunkChoice{{Delta: d, FinishReason: finish}}}
	}
	if chat {
		empty := ""
		send(chatChunk(api.ChatDelta{Role: api.RoleAssistant, Content: &empty}, nil))
	}
	mode := f.mode.Load()
	for i := range n {
		if mode == modeMidStream && i == 2 {
			panic(http.ErrAbortHandler)
		}
		if mode == modeHang && i == 1 {
			<-r.Context().Done()
			f.cancelled <- struct{}{}
			return
		}
		tok := fakeTokens[i]
		if chat {
			send(chatChunk(api.ChatDelta{Content: &tok}, nil))
		} else {
			send(api.CompletionChunk{ID: id, Object: api.ObjectCompletion, Created: 2, Model: fakeModel,
				Choices: []api.CompletionChunkChoice{{Text: tok}}})
		}
	}
	if chat {
		send(chatChunk(api.ChatDelta{}, &finish))
	} else {
		send(api.CompletionChunk{ID: id, Object: api.ObjectCompletion, Created: 2, Model: fakeModel,
			Choices: []api.CompletionChunkChoice{{FinishReason: &finish}}})
	}
	if req.IncludeUsage() {
		if chat {
			send(api.ChatCompletionChunk{ID: id, Object: api.ObjectChatChunk, Created: 2, Model: fakeModel, Choices: []api.ChatChunkChoice{}, Usage: usage})
		} else {
			send(api.CompletionChunk{ID: id, Object: api.ObjectCompletion, Created: 2, Model: fakeModel, Choices: []api.CompletionChunkChoice{}, Usage: usage})
		}
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// deadURL is an address that refuses connections.
func deadURL(t *testing.T) string {
	s := httptest.NewServer(http.NotFoundHandler())
	u := s.URL
	s.Close()
	return u
}

// testProxy starts a proxy over the given servers, health-checked once.
type testProxy struct {
	p   *Proxy
	srv *httptest.Server
}

func newTestProxy(t *testing.T, ctxURLs, genURLs []string, mod func(*Config)) *testProxy {
	t.Helper()
	cfg := Default()
	cfg.ContextServers.URLs = ctxURLs
	cfg.GenerationServers.URLs = genURLs
	cfg.RequestTimeout = 10
	cfg.HealthCheckIntervalSec = 0.2
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	level := slog.LevelError
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	p, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p.CheckNow(ctx)
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)
	return &testProxy{p: p, srv: srv}
}

// startHealth runs the background health loop for the test's duration.
func (tp *testProxy) startHealth(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	tp.p.Start(ctx)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// send makes one request to url (with `Authorization: Bearer key` when
// key is set) and returns the status and the whole body.
func send(t *testing.T, method, url, body, key string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// openAIError decodes an OpenAI error body, failing the test when it is not one.
func openAIError(t *testing.T, status int, body []byte) *api.Error {
	t.Helper()
	var e api.ErrorResponse
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
		t.Fatalf("status %d, body not an OpenAI error (%v): %s", status, err, body)
	}
	return e.Error
}

// completionText asks client for 3 tokens after "Hi", streamed or not, and
// returns the text; an error the client sees fails the test with what.
func completionText(t *testing.T, client openai.Client, stream bool, what string) string {
	t.Helper()
	p := openai.CompletionNewParams{Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")}, MaxTokens: openai.Int(3)}
	if !stream {
		out, err := client.Completions.New(testCtx(t), p)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return out.Choices[0].Text
	}
	s := client.Completions.NewStreaming(testCtx(t), p)
	got := ""
	for s.Next() {
		for _, ch := range s.Current().Choices {
			got += ch.Text
		}
	}
	if s.Err() != nil {
		t.Fatalf("%s (stream): %v", what, s.Err())
	}
	return got
}
