package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"disagg/api"
)

type cluster struct {
	ctx1, ctx2, gen *fakeWorker
	tp              *testProxy
	client          openai.Client
}

func newCluster(t *testing.T, mod func(*Config)) *cluster {
	c := &cluster{ctx1: newFakeWorker(t, RoleContext), ctx2: newFakeWorker(t, RoleContext), gen: newFakeWorker(t, RoleGeneration)}
	c.tp = newTestProxy(t, []string{c.ctx1.srv.URL, c.ctx2.srv.URL}, []string{c.gen.srv.URL}, mod)
	c.client = openai.NewClient(option.WithBaseURL(c.tp.srv.URL+"/v1/"), option.WithAPIKey("k"), option.WithMaxRetries(0))
	return c
}

func (c *cluster) ctxCalls() int { return c.ctx1.calls() + c.ctx2.calls() }

func (c *cluster) lastCtxBody() []byte {
	if c.ctx2.calls() > 0 && (c.ctx1.calls() == 0 || c.ctx2.calls() >= c.ctx1.calls()) {
		return c.ctx2.lastBody()
	}
	return c.ctx1.lastBody()
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestCompletionSDK(t *testing.T) {
	c := newCluster(t, nil)
	var resp *http.Response
	out, err := c.client.Completions.New(testCtx(t), openai.CompletionNewParams{
		Model:     fakeModel,
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("Say hi")},
		MaxTokens: openai.Int(4),
	}, option.WithResponseInto(&resp), option.WithHeader("X-Request-Id", "req-123"))
	if err != nil {
		t.Fatal(err)
	}
	want, finish := fakeText(4)
	if len(out.Choices) != 1 || out.Choices[0].Text != want || string(out.Choices[0].FinishReason) != finish {
		t.Fatalf("answer %+v", out)
	}
	if out.Usage.PromptTokens != int64(len("Say hi")) || out.Usage.CompletionTokens != 4 || out.Usage.TotalTokens != 10 {
		t.Errorf("usage %+v", out.Usage)
	}
	if out.ID != "req-123" {
		t.Errorf("id %q, want the forwarded X-Request-Id", out.ID)
	}
	for _, h := range []string{HeaderContextServer, HeaderContextMs, HeaderGenerationServer, HeaderGenerationMs} {
		if resp.Header.Get(h) == "" {
			t.Errorf("header %s missing", h)
		}
	}
	if resp.Header.Get(api.HeaderContextQueueMs) != "0.125" || resp.Header.Get(api.HeaderPrefillMs) != "2.500" {
		t.Errorf("context breakdown headers not passed on: %q %q", resp.Header.Get(api.HeaderContextQueueMs), resp.Header.Get(api.HeaderPrefillMs))
	}
	if resp.Header.Get(api.HeaderKVBytes) != "4096" || resp.Header.Get(api.HeaderKVTransferMs) != "0.250" {
		t.Errorf("KV transfer headers not passed on: %q %q", resp.Header.Get(api.HeaderKVBytes), resp.Header.Get(api.HeaderKVTransferMs))
	}
	if mresp, err := http.Get(c.tp.srv.URL + "/metrics"); err != nil {
		t.Error(err)
	} else {
		body, _ := io.ReadAll(mresp.Body)
		mresp.Body.Close()
		if !strings.Contains(string(body), "\ndisagg_proxy_kv_transfer_bytes_total 4096\n") || !strings.Contains(string(body), "disagg_proxy_kv_transfer_seconds_count 1") {
			t.Errorf("/metrics lacks the reported KV transfer (4096 bytes, one observation)")
		}
	}
	if resp.Header.Get(HeaderRequestID) != "req-123" || c.gen.lastHeader().Get("X-Request-Id") != "req-123" {
		t.Errorf("request id not forwarded")
	}
	// The context request: context_only, not streamed, same max_tokens.
	var ctxReq api.CompletionRequest
	if err := json.Unmarshal(c.lastCtxBody(), &ctxReq); err != nil {
		t.Fatal(err)
	}
	if ctxReq.DisaggregatedParams == nil || ctxReq.DisaggregatedParams.RequestType != api.RequestContextOnly ||
		ctxReq.DisaggregatedParams.DisaggRequestID == nil || ctxReq.Stream || ctxReq.MaxTokensOrDefault() != 4 {
		t.Errorf("context request %s", c.lastCtxBody())
	}
	// The generation request: generation_only with the context's params and
	// the prompt as token ids.
	var genReq api.CompletionRequest
	if err := json.Unmarshal(c.gen.lastBody(), &genReq); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]int32{toIDs("Say hi")}, genReq.Prompt.Tokens); diff != "" {
		t.Errorf("generation prompt (-want +got):\n%s", diff)
	}
	if *genReq.DisaggregatedParams.DisaggRequestID != *ctxReq.DisaggregatedParams.DisaggRequestID {
		t.Errorf("disagg_request_id differs between phases")
	}
}

func toIDs(s string) []int32 {
	out := make([]int32, len(s))
	for i := range len(s) {
		out[i] = int32(s[i])
	}
	return out
}

func TestChatSDK(t *testing.T) {
	c := newCluster(t, nil)
	out, err := c.client.Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{
		Model:               fakeModel,
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello!")},
		MaxCompletionTokens: openai.Int(3),
	})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := fakeText(3)
	if len(out.Choices) != 1 || out.Choices[0].Message.Content != want || out.Usage.CompletionTokens != 3 || out.Usage.PromptTokens == 0 {
		t.Fatalf("answer %+v", out)
	}
	var genReq fakeRequest
	if err := json.Unmarshal(c.gen.lastBody(), &genReq); err != nil {
		t.Fatal(err)
	}
	if string(toBytes(genReq.PromptTokenIDs)) != "user:Hello!\n" || len(genReq.Messages) != 1 {
		t.Errorf("generation request %s", c.gen.lastBody())
	}
}

func TestStreamsSDK(t *testing.T) {
	for _, early := range []bool{true, false} {
		name := map[bool]string{true: "early first token", false: "relay only"}[early]
		t.Run(name, func(t *testing.T) {
			c := newCluster(t, func(cfg *Config) { cfg.StreamFirstTokenFromContext = &early })
			ctx := testCtx(t)
			want, finish := fakeText(5)

			s := c.client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
				Model:         fakeModel,
				Prompt:        openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once")},
				MaxTokens:     openai.Int(5),
				StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
			})
			var text strings.Builder
			var gotFinish string
			var usage openai.CompletionUsage
			var parts []string
			for s.Next() {
				ch := s.Current()
				for _, x := range ch.Choices {
					text.WriteString(x.Text)
					parts = append(parts, x.Text)
					if x.FinishReason != "" {
						gotFinish = string(x.FinishReason)
					}
				}
				if ch.Usage.TotalTokens > 0 {
					usage = ch.Usage
				}
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			if text.String() != want || gotFinish != finish || usage.PromptTokens != 4 || usage.CompletionTokens != 5 {
				t.Errorf("completion stream %q (parts %q) finish %q usage %+v", text.String(), parts, gotFinish, usage)
			}

			cs := c.client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
				Model:               fakeModel,
				Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hi")},
				MaxCompletionTokens: openai.Int(5),
				StreamOptions:       openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
			})
			acc := openai.ChatCompletionAccumulator{}
			roles := 0
			for cs.Next() {
				ch := cs.Current()
				for _, x := range ch.Choices {
					if x.Delta.Role != "" {
						roles++
					}
				}
				acc.AddChunk(ch)
			}
			if err := cs.Err(); err != nil {
				t.Fatal(err)
			}
			if len(acc.Choices) != 1 || acc.Choices[0].Message.Content != want || string(acc.Choices[0].FinishReason) != finish ||
				acc.Usage.PromptTokens == 0 || roles != 1 {
				t.Errorf("chat stream %+v (role deltas %d)", acc.ChatCompletion, roles)
			}
		})
	}
}

// TestEarlyFirstToken checks that the first token reaches the client before
// the generation server answers.
func TestEarlyFirstToken(t *testing.T) {
	c := newCluster(t, nil)
	c.gen.mode.Store(modeHang) // sends one token, then waits
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	s := c.client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
		Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")}, MaxTokens: openai.Int(5),
	})
	if !s.Next() || s.Current().Choices[0].Text != fakeTokens[0] {
		t.Fatalf("first chunk %+v err %v", s.Current(), s.Err())
	}
	waitFor(t, "the generation request", func() bool { return c.gen.calls() == 1 })
	cancel()
	select {
	case <-c.gen.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the generation request was not cancelled after the client left")
	}
	_ = s.Close()
}

func TestFinishOnFirstToken(t *testing.T) {
	for _, tc := range []struct {
		name, prompt string
		max          int
		finish       string
	}{
		{"max_tokens 1", "Hi", 1, api.FinishLength},
		{"eos", "Hi " + stopAtFirst, 5, api.FinishStop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, nil)
			ctx := testCtx(t)
			out, err := c.client.Completions.New(ctx, openai.CompletionNewParams{
				Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(tc.prompt)}, MaxTokens: openai.Int(int64(tc.max)),
			})
			if err != nil {
				t.Fatal(err)
			}
			if out.Choices[0].Text != fakeTokens[0] || string(out.Choices[0].FinishReason) != tc.finish || out.Usage.PromptTokens != int64(len(tc.prompt)) {
				t.Errorf("answer %+v", out)
			}
			if strings.Contains(out.RawJSON(), "disaggregated_params") || strings.Contains(out.RawJSON(), "prompt_token_ids") {
				t.Errorf("internal fields leaked: %s", out.RawJSON())
			}
			cs := c.client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
				Model: fakeModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(tc.prompt)},
				MaxTokens: openai.Int(int64(tc.max)), StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
			})
			acc := openai.ChatCompletionAccumulator{}
			for cs.Next() {
				acc.AddChunk(cs.Current())
			}
			if err := cs.Err(); err != nil {
				t.Fatal(err)
			}
			if acc.Choices[0].Message.Content != fakeTokens[0] || string(acc.Choices[0].FinishReason) != tc.finish || acc.Usage.CompletionTokens != 1 {
				t.Errorf("chat stream %+v", acc.ChatCompletion)
			}
			if c.gen.calls() != 0 {
				t.Errorf("the generation server was called %d times", c.gen.calls())
			}
		})
	}
}

func TestRetryDeadContextServer(t *testing.T) {
	ctx1 := newFakeWorker(t, RoleContext)
	gen := newFakeWorker(t, RoleGeneration)
	dead := deadURL(t)
	tp := newTestProxy(t, []string{dead, ctx1.srv.URL}, []string{gen.srv.URL}, func(c *Config) {
		c.ContextServers.Router.Type = RouterRoundRobin
	})
	// Pretend the dead one was up, so the router picks it.
	for _, s := range tp.p.Servers(RoleContext) {
		s.up.Store(true)
	}
	client := openai.NewClient(option.WithBaseURL(tp.srv.URL+"/v1/"), option.WithMaxRetries(0))
	for i := range 4 {
		out, err := client.Completions.New(testCtx(t), openai.CompletionNewParams{
			Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")}, MaxTokens: openai.Int(3),
		})
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if want, _ := fakeText(3); out.Choices[0].Text != want {
			t.Errorf("text %q", out.Choices[0].Text)
		}
	}
	if tp.p.Servers(RoleContext)[0].Up() {
		t.Error("the dead context server is not marked down")
	}
	if got := metricValue(t, tp, `disagg_proxy_retries_total{role="context"}`); got != "1" {
		t.Errorf("context retries %q, want 1 (then the dead server is skipped)", got)
	}
}

func TestRetryGenerationServer500(t *testing.T) {
	ctx1 := newFakeWorker(t, RoleContext)
	bad, good := newFakeWorker(t, RoleGeneration), newFakeWorker(t, RoleGeneration)
	bad.mode.Store(modeStatus500)
	tp := newTestProxy(t, []string{ctx1.srv.URL}, []string{bad.srv.URL, good.srv.URL}, nil)
	client := openai.NewClient(option.WithBaseURL(tp.srv.URL+"/v1/"), option.WithMaxRetries(0))
	for _, stream := range []bool{false, true} {
		for range 2 {
			if stream {
				s := client.Completions.NewStreaming(testCtx(t), openai.CompletionNewParams{
					Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")}, MaxTokens: openai.Int(3),
				})
				var text strings.Builder
				for s.Next() {
					for _, ch := range s.Current().Choices {
						text.WriteString(ch.Text)
					}
				}
				if want, _ := fakeText(3); s.Err() != nil || text.String() != want {
					t.Errorf("stream %q err %v", text.String(), s.Err())
				}
				continue
			}
			if _, err := client.Completions.New(testCtx(t), openai.CompletionNewParams{
				Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")}, MaxTokens: openai.Int(3),
			}); err != nil {
				t.Fatal(err)
			}
		}
		tp.p.Servers(RoleGeneration)[0].up.Store(true) // let the router pick it again
	}
	if bad.calls() == 0 || good.calls() < 4 {
		t.Errorf("calls: bad %d good %d", bad.calls(), good.calls())
	}
}

// TestHandoffFailureRePrefills: when the generation server cannot get the
// context server's KV, the proxy prefills again on the other context server
// and the client sees a normal answer; the generation server stays up.
func TestHandoffFailureRePrefills(t *testing.T) {
	for _, stream := range []bool{false, true} {
		c := newCluster(t, func(cfg *Config) { f := false; cfg.StreamFirstTokenFromContext = &f })
		c.gen.mode.Store(modeHandoff)
		want, _ := fakeText(3)
		got := completionText(t, c.client, stream, "handoff failure reached the client")
		if got != want {
			t.Errorf("stream %v: text %q, want %q", stream, got, want)
		}
		if c.ctx1.calls() != 1 || c.ctx2.calls() != 1 || c.gen.calls() != 2 {
			t.Errorf("stream %v: calls ctx1 %d ctx2 %d gen %d, want 1 1 2 (prefill again elsewhere, then generate)", stream, c.ctx1.calls(), c.ctx2.calls(), c.gen.calls())
		}
		if !c.tp.p.Servers(RoleGeneration)[0].up.Load() {
			t.Errorf("stream %v: the generation server was marked down for a handoff failure", stream)
		}
	}
}

func TestAllGenerationServersDown(t *testing.T) {
	ctx1 := newFakeWorker(t, RoleContext)
	tp := newTestProxy(t, []string{ctx1.srv.URL}, []string{deadURL(t), deadURL(t)}, nil)
	client := openai.NewClient(option.WithBaseURL(tp.srv.URL+"/v1/"), option.WithMaxRetries(0))
	_, err := client.Completions.New(testCtx(t), openai.CompletionNewParams{
		Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")}, MaxTokens: openai.Int(3),
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadGateway || apiErr.Type != api.TypeServer {
		t.Fatalf("error %v", err)
	}
	resp, err := http.Get(tp.srv.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("health %d with no generation server up", resp.StatusCode)
	}
}

// TestMidStreamFailure: a generation server dying after sending tokens
// ends the client's stream with an error event and [DONE].
func TestMidStreamFailure(t *testing.T) {
	for _, chat := range []bool{false, true} {
		c := newCluster(t, nil)
		c.gen.mode.Store(modeMidStream)
		path, body := "/v1/completions", `{"prompt":"Hi","max_tokens":6,"stream":true}`
		if chat {
			path, body = "/v1/chat/completions", `{"messages":[{"role":"user","content":"Hi"}],"max_tokens":6,"stream":true}`
		}
		resp, err := http.Post(c.tp.srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		events := readEvents(t, resp)
		if len(events) < 3 || events[len(events)-1] != "[DONE]" {
			t.Fatalf("events %q", events)
		}
		var er api.ErrorResponse
		if err := json.Unmarshal([]byte(events[len(events)-2]), &er); err != nil || er.Error == nil || er.Error.Type != api.TypeServer {
			t.Errorf("error event %q", events[len(events)-2])
		}
		text := ""
		for _, e := range events[:len(events)-2] {
			if chat {
				var ch api.ChatCompletionChunk
				_ = json.Unmarshal([]byte(e), &ch)
				if len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != nil {
					text += *ch.Choices[0].Delta.Content
				}
				continue
			}
			var ch api.CompletionChunk
			_ = json.Unmarshal([]byte(e), &ch)
			if len(ch.Choices) > 0 {
				text += ch.Choices[0].Text
			}
		}
		if want, _ := fakeText(2); text != want {
			t.Errorf("text before the failure %q, want %q", text, want)
		}
	}
}

func readEvents(t *testing.T, resp *http.Response) []string {
	t.Helper()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	return out
}

func TestBadRequests(t *testing.T) {
	c := newCluster(t, func(cfg *Config) { cfg.Model = fakeModel; cfg.APIKey = "secret" })
	for _, tc := range []struct {
		name, method, path, body, key string
		status                        int
		param, code                   string
	}{
		{"malformed json", "POST", "/v1/completions", `{"prompt":`, "secret", 400, "", ""},
		{"empty prompt", "POST", "/v1/completions", `{"prompt":""}`, "secret", 400, "prompt", ""},
		{"two prompts", "POST", "/v1/completions", `{"prompt":["a","b"]}`, "secret", 400, "prompt", api.CodeUnsupported},
		{"n 2", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"n":2}`, "secret", 400, "n", api.CodeUnsupported},
		{"bad temperature", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"temperature":9}`, "secret", 400, "temperature", ""},
		{"no messages", "POST", "/v1/chat/completions", `{"messages":[]}`, "secret", 400, "messages", ""},
		{"unknown model", "POST", "/v1/completions", `{"model":"other","prompt":"x"}`, "secret", 404, "model", api.CodeModelNotFound},
		{"client disaggregated_params", "POST", "/v1/completions", `{"prompt":"x","disaggregated_params":{"request_type":"generation_only"}}`, "secret", 400, "disaggregated_params.request_type", ""},
		{"missing key", "POST", "/v1/completions", `{"prompt":"x"}`, "", 401, "", api.CodeInvalidAPIKey},
		{"wrong key", "GET", "/v1/models", ``, "nope", 401, "", api.CodeInvalidAPIKey},
		{"unknown path", "GET", "/v2/x", ``, "secret", 404, "", ""},
		{"wrong method", "GET", "/v1/completions", ``, "secret", 405, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := send(t, tc.method, c.tp.srv.URL+tc.path, tc.body, tc.key)
			e := openAIError(t, status, body)
			got := struct {
				Status      int
				Param, Code string
			}{status, deref(e.Param), deref(e.Code)}
			want := struct {
				Status      int
				Param, Code string
			}{tc.status, tc.param, tc.code}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s\n%s", diff, e.Message)
			}
		})
	}
	if c.ctxCalls() != 0 || c.gen.calls() != 0 {
		t.Errorf("bad requests reached the workers")
	}
	// The key reaches the workers.
	keyed := openai.NewClient(option.WithBaseURL(c.tp.srv.URL+"/v1/"), option.WithAPIKey("secret"), option.WithMaxRetries(0))
	if _, err := keyed.Completions.New(testCtx(t), openai.CompletionNewParams{Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")}}); err != nil {
		t.Fatal(err)
	}
	if got := c.gen.lastHeader().Get("Authorization"); got != "Bearer secret" {
		t.Errorf("worker Authorization %q", got)
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// TestWorkerErrorRelayed: a worker's 4xx reaches the client as it is, is
// not retried, and does not mark the worker down.
func TestWorkerErrorRelayed(t *testing.T) {
	c := newCluster(t, nil)
	c.ctx1.mode.Store(modeStatus400)
	c.ctx2.mode.Store(modeStatus400)
	_, err := c.client.Completions.New(testCtx(t), openai.CompletionNewParams{
		Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")},
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "prompt" || apiErr.Code != api.CodeContextLengthExceeded {
		t.Fatalf("error %v", err)
	}
	if c.ctxCalls() != 1 || c.gen.calls() != 0 {
		t.Errorf("calls: context %d generation %d", c.ctxCalls(), c.gen.calls())
	}
	for _, s := range c.tp.p.Servers(RoleContext) {
		if !s.Up() {
			t.Errorf("%s marked down", s.URL)
		}
	}
}

func TestModelsAndHealth(t *testing.T) {
	c := newCluster(t, nil)
	page, err := c.client.Models.List(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != fakeModel {
		t.Errorf("models %+v", page.Data)
	}
	c2 := newCluster(t, func(cfg *Config) { cfg.Model = "served" })
	page, err = c2.client.Models.List(testCtx(t))
	if err != nil || len(page.Data) != 1 || page.Data[0].ID != "served" {
		t.Errorf("models %+v %v", page, err)
	}
	resp, err := http.Get(c.tp.srv.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("health %d", resp.StatusCode)
	}
	// A server that fails its health check goes down, and comes back.
	c.tp.startHealth(t)
	c.gen.healthy.Store(false)
	waitFor(t, "generation server down", func() bool { return !c.tp.p.Ready() })
	c.gen.healthy.Store(true)
	waitFor(t, "generation server up", c.tp.p.Ready)
}

func TestMetrics(t *testing.T) {
	c := newCluster(t, nil)
	s := c.client.Completions.NewStreaming(testCtx(t), openai.CompletionNewParams{
		Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")}, MaxTokens: openai.Int(3),
	})
	for s.Next() {
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	// The request is counted when its handler returns, after [DONE].
	waitFor(t, "request counted", func() bool {
		return metricValue(t, c.tp, `disagg_proxy_requests_total{endpoint="/v1/completions",status="200"}`) == "1"
	})
	for _, m := range []string{
		`disagg_proxy_upstream_requests_total{role="generation",server="` + c.gen.srv.URL + `"}`,
		`disagg_proxy_time_to_first_token_seconds_count`,
		`disagg_proxy_inter_token_latency_seconds_count`,
		`disagg_proxy_e2e_request_latency_seconds_count`,
		`disagg_proxy_phase_seconds_count{role="context"}`,
		`disagg_proxy_server_up{role="context",server="` + c.ctx1.srv.URL + `"}`,
	} {
		if v := metricValue(t, c.tp, m); v == "" || v == "0" {
			t.Errorf("%s = %q", m, v)
		}
	}
}

// metricValue scrapes /metrics for one series.
func metricValue(t *testing.T, tp *testProxy, series string) string {
	t.Helper()
	_, b := send(t, http.MethodGet, tp.srv.URL+"/metrics", "", "")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// TestTimeout: a generation server that does not answer within
// request_timeout gives the client a 504, and its request is cancelled.
func TestTimeout(t *testing.T) {
	c := newCluster(t, func(cfg *Config) { cfg.RequestTimeout = 1 })
	c.gen.mode.Store(modeHang)
	t0 := time.Now()
	_, err := c.client.Completions.New(testCtx(t), openai.CompletionNewParams{
		Model: fakeModel, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")}, MaxTokens: openai.Int(3),
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("error %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("took %s", d)
	}
	select {
	case <-c.gen.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the generation request was not cancelled")
	}
	if !c.tp.p.Servers(RoleGeneration)[0].Up() {
		t.Error("a slow server was marked down")
	}
}

// TestStreamContextFailure: when every context server fails before
// anything was sent, a streaming client gets a JSON error, not a stream.
func TestStreamContextFailure(t *testing.T) {
	c := newCluster(t, nil)
	c.ctx1.mode.Store(modeStatus500)
	c.ctx2.mode.Store(modeStatus500)
	resp, err := http.Post(c.tp.srv.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"Hi","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var er api.ErrorResponse
	if err := json.NewDecoder(resp.Body).Decode(&er); err != nil || resp.StatusCode != http.StatusBadGateway || er.Error == nil {
		t.Fatalf("status %d error %+v (%v)", resp.StatusCode, er.Error, err)
	}
	if c.ctxCalls() != 2 || c.gen.calls() != 0 {
		t.Errorf("calls: context %d generation %d", c.ctxCalls(), c.gen.calls())
	}
	if got := metricValue(t, c.tp, `disagg_proxy_retries_total{role="context"}`); got != "1" {
		t.Errorf("retries %q", got)
	}
}
