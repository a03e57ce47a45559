package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"disagg/api"
	"disagg/worker/engine"
	"disagg/worker/sampling"
)

type errShape struct {
	Status int
	Type   string
	Param  string
	Code   string
}

func decodeErr(t *testing.T, status int, body string) errShape {
	t.Helper()
	var er api.ErrorResponse
	if err := json.Unmarshal([]byte(body), &er); err != nil || er.Error == nil {
		t.Fatalf("status %d body %q is not an OpenAI error: %v", status, body, err)
	}
	if er.Error.Message == "" {
		t.Errorf("error without message: %s", body)
	}
	got := errShape{Status: status, Type: er.Error.Type}
	if er.Error.Param != nil {
		got.Param = *er.Error.Param
	}
	if er.Error.Code != nil {
		got.Code = *er.Error.Code
	}
	return got
}

func TestBadRequests(t *testing.T) {
	const inv = api.TypeInvalidRequest
	long := strings.Repeat("x", 300)
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		want   errShape
	}{
		{"malformed json", "POST", "/v1/completions", `{"prompt": "hi",`, errShape{400, inv, "", ""}},
		{"trailing garbage", "POST", "/v1/completions", `{"prompt": "hi"} x`, errShape{400, inv, "", ""}},
		{"array body", "POST", "/v1/completions", `["prompt"]`, errShape{400, inv, "", ""}},
		{"string body", "POST", "/v1/chat/completions", `"hello"`, errShape{400, inv, "", ""}},
		{"empty body", "POST", "/v1/completions", ``, errShape{400, inv, "", ""}},
		{"invalid utf8", "POST", "/v1/completions", "{\"prompt\": \"\xff\xfe\"}", errShape{400, inv, "", ""}},
		{"unknown model", "POST", "/v1/completions", `{"model": "gpt-9", "prompt": "hi"}`, errShape{404, inv, "model", "model_not_found"}},
		{"unknown model chat", "POST", "/v1/chat/completions", `{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}`, errShape{404, inv, "model", "model_not_found"}},
		{"missing prompt", "POST", "/v1/completions", `{"model": "tiny-test"}`, errShape{400, inv, "prompt", ""}},
		{"empty prompt", "POST", "/v1/completions", `{"prompt": ""}`, errShape{400, inv, "prompt", ""}},
		{"empty prompt list", "POST", "/v1/completions", `{"prompt": []}`, errShape{400, inv, "prompt", ""}},
		{"empty token list", "POST", "/v1/completions", `{"prompt": [[]]}`, errShape{400, inv, "prompt", ""}},
		{"prompt object", "POST", "/v1/completions", `{"prompt": {"text": "hi"}}`, errShape{400, inv, "prompt", ""}},
		{"prompt mixed", "POST", "/v1/completions", `{"prompt": [1, "a"]}`, errShape{400, inv, "prompt", ""}},
		{"prompt float id", "POST", "/v1/completions", `{"prompt": [1.5]}`, errShape{400, inv, "prompt", ""}},
		{"prompt huge id", "POST", "/v1/completions", `{"prompt": [99999999999]}`, errShape{400, inv, "prompt", ""}},
		{"token id beyond vocab", "POST", "/v1/completions", `{"prompt": [5, 259]}`, errShape{400, inv, "prompt", ""}},
		{"negative token id", "POST", "/v1/completions", `{"prompt": [[5], [-1]]}`, errShape{400, inv, "prompt", ""}},
		{"stop token id beyond vocab", "POST", "/v1/completions", `{"prompt": "hi", "stop_token_ids": [1000]}`, errShape{400, inv, "stop_token_ids", ""}},
		{"prompt beyond context", "POST", "/v1/completions", `{"prompt": "` + long + `"}`, errShape{400, inv, "prompt", "context_length_exceeded"}},
		{"prompt plus max_tokens beyond context", "POST", "/v1/completions", `{"prompt": "hello", "max_tokens": 252}`, errShape{400, inv, "max_tokens", "context_length_exceeded"}},
		{"chat beyond context", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1000}`, errShape{400, inv, "max_completion_tokens", "context_length_exceeded"}},
		{"max_tokens zero", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": 0}`, errShape{400, inv, "max_tokens", ""}},
		{"max_tokens negative", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}`, errShape{400, inv, "max_tokens", ""}},
		{"max_tokens string", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": "8"}`, errShape{400, inv, "max_tokens", ""}},
		{"temperature high", "POST", "/v1/completions", `{"prompt": "hi", "temperature": 2.5}`, errShape{400, inv, "temperature", ""}},
		{"temperature negative", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}`, errShape{400, inv, "temperature", ""}},
		{"top_p zero", "POST", "/v1/completions", `{"prompt": "hi", "top_p": 0}`, errShape{400, inv, "top_p", ""}},
		{"top_p above one", "POST", "/v1/completions", `{"prompt": "hi", "top_p": 1.01}`, errShape{400, inv, "top_p", ""}},
		{"n zero", "POST", "/v1/completions", `{"prompt": "hi", "n": 0}`, errShape{400, inv, "n", ""}},
		{"n above limit", "POST", "/v1/completions", `{"prompt": "hi", "n": 9}`, errShape{400, inv, "n", ""}},
		{"logprobs above limit", "POST", "/v1/completions", `{"prompt": "hi", "logprobs": 21}`, errShape{400, inv, "logprobs", ""}},
		{"logprobs negative", "POST", "/v1/completions", `{"prompt": "hi", "logprobs": -1}`, errShape{400, inv, "logprobs", ""}},
		{"chat logprobs int", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "logprobs": 3}`, errShape{400, inv, "logprobs", ""}},
		{"top_logprobs above limit", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}`, errShape{400, inv, "top_logprobs", ""}},
		{"top_logprobs without logprobs", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}`, errShape{400, inv, "top_logprobs", ""}},
		{"presence penalty", "POST", "/v1/completions", `{"prompt": "hi", "presence_penalty": 2.1}`, errShape{400, inv, "presence_penalty", ""}},
		{"frequency penalty", "POST", "/v1/completions", `{"prompt": "hi", "frequency_penalty": -3}`, errShape{400, inv, "frequency_penalty", ""}},
		{"repetition penalty", "POST", "/v1/completions", `{"prompt": "hi", "repetition_penalty": 0}`, errShape{400, inv, "repetition_penalty", ""}},
		{"top_k", "POST", "/v1/completions", `{"prompt": "hi", "top_k": -2}`, errShape{400, inv, "top_k", ""}},
		{"min_p", "POST", "/v1/completions", `{"prompt": "hi", "min_p": 1.5}`, errShape{400, inv, "min_p", ""}},
		{"min_tokens above max", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": 4, "min_tokens": 5}`, errShape{400, inv, "min_tokens", ""}},
		{"too many stops", "POST", "/v1/completions", `{"prompt": "hi", "stop": [` + strings.Repeat(`"a",`, 64) + `"b"]}`, errShape{400, inv, "stop", ""}},
		{"too many choices", "POST", "/v1/completions", `{"prompt": [` + strings.Repeat(`"a",`, 200) + `"b"], "n": 8}`, errShape{400, inv, "prompt", ""}},
		{"stop number", "POST", "/v1/completions", `{"prompt": "hi", "stop": 5}`, errShape{400, inv, "stop", ""}},
		{"echo", "POST", "/v1/completions", `{"prompt": "hi", "echo": true}`, errShape{400, inv, "echo", "unsupported_parameter"}},
		{"logit bias", "POST", "/v1/completions", `{"prompt": "hi", "logit_bias": {"5": 1}}`, errShape{400, inv, "logit_bias", "unsupported_parameter"}},
		{"bad request type", "POST", "/v1/completions", `{"prompt": "hi", "disaggregated_params": {"request_type": "both"}}`, errShape{400, inv, "disaggregated_params.request_type", ""}},
		{"chat no messages", "POST", "/v1/chat/completions", `{"model": "tiny-test"}`, errShape{400, inv, "messages", ""}},
		{"chat empty messages", "POST", "/v1/chat/completions", `{"messages": []}`, errShape{400, inv, "messages", ""}},
		{"chat messages object", "POST", "/v1/chat/completions", `{"messages": {"role": "user"}}`, errShape{400, inv, "messages", ""}},
		{"chat missing role", "POST", "/v1/chat/completions", `{"messages": [{"content": "hi"}]}`, errShape{400, inv, "messages[0].role", ""}},
		{"chat unknown role", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "hi"}]}`, errShape{400, inv, "messages[1].role", ""}},
		{"chat content number", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": 42}]}`, errShape{400, inv, "messages[0].content", ""}},
		{"chat content missing", "POST", "/v1/chat/completions", `{"messages": [{"role": "user"}]}`, errShape{400, inv, "messages[0].content", ""}},
		{"chat image part", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}`, errShape{400, inv, "messages[0].content[0].type", "unsupported_parameter"}},
		{"chat template raises", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "RAISE"}]}`, errShape{400, inv, "messages", ""}},
		{"wrong method", "GET", "/v1/completions", ``, errShape{405, inv, "", ""}},
		{"wrong method models", "POST", "/v1/models", `{}`, errShape{405, inv, "", ""}},
		{"unknown path", "POST", "/v1/embeddings", `{}`, errShape{404, inv, "", ""}},
		{"oversize body", "POST", "/v1/completions", `{"prompt": "` + strings.Repeat("a", 70<<10) + `"}`, errShape{413, inv, "", ""}},
	}
	gen := &fakeGen{reply: "ok"}
	_, ts := newTestServer(t, gen, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, ts.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b strings.Builder
			if _, err := bufio.NewReader(resp.Body).WriteTo(&b); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, decodeErr(t, resp.StatusCode, b.String())); diff != "" {
				t.Errorf("error (-want +got):\n%s\nbody: %s", diff, b.String())
			}
		})
	}
	if reqs, _, _ := gen.snapshot(); len(reqs) != 0 {
		t.Errorf("bad requests reached the engine: %d", len(reqs))
	}
}

func TestNoChatTemplate(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "ok"}, func(_ *Options, d *Deps) { d.Chat = nil })
	status, _, body := post(t, ts, "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}]}`)
	got := decodeErr(t, status, body)
	if diff := cmp.Diff(errShape{400, api.TypeInvalidRequest, "messages", ""}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if !strings.Contains(body, "chat template") {
		t.Errorf("message does not say why: %s", body)
	}
}

func TestContextLengthMessageStatesBothNumbers(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "ok"}, nil)
	_, _, body := post(t, ts, "/v1/completions", `{"prompt": "hello", "max_tokens": 252}`)
	// "hello" is 6 tokens with BOS; the context is 256.
	for _, want := range []string{"256", "258", "6 in the prompt", "252 for the completion"} {
		if !strings.Contains(body, want) {
			t.Errorf("message lacks %q: %s", want, body)
		}
	}
}

func TestManyBadRequestsThenGood(t *testing.T) {
	gen := &fakeGen{reply: "fine"}
	_, ts := newTestServer(t, gen, nil)
	bad := []string{`{`, `[]`, `{"prompt": ""}`, `{"prompt": "x", "temperature": 9}`, `{"prompt": [999999]}`, "{\"prompt\": \"\xc3\"}", `{"model": "nope", "prompt": "x"}`}
	for i := 0; i < 500; i++ {
		status, _, _ := post(t, ts, "/v1/completions", bad[i%len(bad)])
		if status < 400 || status >= 500 {
			t.Fatalf("bad request %d: status %d", i, status)
		}
	}
	status, _, body := post(t, ts, "/v1/completions", `{"model": "tiny-test", "prompt": "hi", "max_tokens": 10}`)
	if status != 200 {
		t.Fatalf("good request after bad ones: %d %s", status, body)
	}
	var c api.Completion
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	if c.Choices[0].Text != "fine" {
		t.Errorf("text %q, want %q", c.Choices[0].Text, "fine")
	}
}

func TestCompletionNonStream(t *testing.T) {
	gen := &fakeGen{reply: "Hello world"}
	_, ts := newTestServer(t, gen, nil)
	status, hdr, body := post(t, ts, "/v1/completions", `{"model": "tiny-test", "prompt": "hi", "max_tokens": 5}`, "X-Request-Id", "my-req-1")
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	if got := hdr.Get("X-Request-Id"); got != "my-req-1" {
		t.Errorf("X-Request-Id %q", got)
	}
	var c api.Completion
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	c.Created = 0
	want := api.Completion{
		ID: "my-req-1", Object: "text_completion", Model: testModel,
		Choices: []api.CompletionChoice{{Index: 0, Text: "Hello", FinishReason: "length"}},
		Usage:   &api.Usage{PromptTokens: 3, CompletionTokens: 5, TotalTokens: 8},
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	reqs, _, _ := gen.snapshot()
	if len(reqs) != 1 || reqs[0].ID != "my-req-1" || reqs[0].MaxTokens != 5 || reqs[0].Sampling.Temperature != 1 || reqs[0].Sampling.Logprobs != -1 {
		t.Errorf("engine request %+v", reqs)
	}
}

func TestGeneratedRequestID(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "x"}, nil)
	for _, tc := range []struct{ path, body, prefix string }{
		{"/v1/completions", `{"prompt": "hi"}`, "cmpl-"},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}]}`, "chatcmpl-"},
	} {
		_, hdr, body := post(t, ts, tc.path, tc.body, "X-Request-Id", "bad id with spaces")
		id := hdr.Get("X-Request-Id")
		if !strings.HasPrefix(id, tc.prefix) || !strings.Contains(body, `"id":"`+id+`"`) {
			t.Errorf("%s: id %q, body %s", tc.path, id, body)
		}
	}
}

func TestChatNonStream(t *testing.T) {
	gen := &fakeGen{reply: "Hi there"}
	_, ts := newTestServer(t, gen, nil)
	status, _, body := post(t, ts, "/v1/chat/completions",
		`{"model": "tiny-test", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hello"}]}], "seed": 7}`)
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var c api.ChatCompletion
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	prompt := "system: be brief\nuser: hello\nassistant:"
	want := []api.ChatChoice{{Index: 0, Message: api.ChatResponseMessage{Role: "assistant", Content: "Hi there"}, FinishReason: "stop"}}
	if diff := cmp.Diff(want, c.Choices); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if c.Object != "chat.completion" || c.Usage == nil || c.Usage.PromptTokens != len(prompt) || c.Usage.CompletionTokens != len("Hi there")+1 {
		t.Errorf("response %+v usage %+v", c, c.Usage)
	}
	reqs, _, _ := gen.snapshot()
	// No BOS added: the template carries the special tokens.
	if len(reqs) != 1 || reqs[0].Prompt[0] == fakeBOS || !reqs[0].Sampling.HasSeed || reqs[0].Sampling.Seed != 7 {
		t.Errorf("engine request %+v", reqs)
	}
	if reqs[0].MaxTokens != 256-len(prompt) {
		t.Errorf("default max tokens %d, want the rest of the context %d", reqs[0].MaxTokens, 256-len(prompt))
	}
}

func TestNChoices(t *testing.T) {
	gen := &fakeGen{reply: "abc"}
	_, ts := newTestServer(t, gen, nil)
	status, _, body := post(t, ts, "/v1/completions", `{"prompt": ["p1", "p22"], "n": 2, "seed": 10, "max_tokens": 2}`)
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var c api.Completion
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Choices) != 4 {
		t.Fatalf("%d choices, want 4", len(c.Choices))
	}
	for i, ch := range c.Choices {
		if ch.Index != i || ch.Text != "ab" || ch.FinishReason != "length" {
			t.Errorf("choice %d: %+v", i, ch)
		}
	}
	if diff := cmp.Diff(&api.Usage{PromptTokens: 3 + 4, CompletionTokens: 8, TotalTokens: 15}, c.Usage); diff != "" {
		t.Errorf("usage (-want +got):\n%s", diff)
	}
	reqs, _, _ := gen.snapshot()
	seeds := map[string]int64{}
	for _, r := range reqs {
		seeds[r.ID] = r.Sampling.Seed
	}
	id := c.ID
	want := map[string]int64{id + "-0": 10, id + "-1": 11, id + "-2": 10, id + "-3": 11}
	if diff := cmp.Diff(want, seeds); diff != "" {
		t.Errorf("seeds (-want +got):\n%s", diff)
	}
}

func TestStopStrings(t *testing.T) {
	tests := []struct {
		name   string
		reply  string
		stop   string
		want   string
		finish string
	}{
		{"across tokens", "Hello world", `"o w"`, "Hell", "stop"},
		{"first of several", "Hello world", `["rld", "lo"]`, "Hel", "stop"},
		{"multibyte stop", "naïve café", `"é"`, "naïve caf", "stop"},
		{"at start", "Hello", `"He"`, "", "stop"},
		{"no match keeps held text", "Hello wor", `"world"`, "Hello wor", "stop"},
		{"empty stop ignored", "Hi", `[""]`, "Hi", "stop"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gen := &fakeGen{reply: tt.reply}
			_, ts := newTestServer(t, gen, nil)
			for _, stream := range []bool{false, true} {
				body := `{"prompt": "x", "max_tokens": 50, "stop": ` + tt.stop + `, "stream": ` + map[bool]string{false: "false", true: "true"}[stream] + `}`
				status, _, out := post(t, ts, "/v1/completions", body)
				if status != 200 {
					t.Fatalf("status %d: %s", status, out)
				}
				var text, finish string
				if stream {
					for _, ev := range sseEvents(t, out) {
						var ch api.CompletionChunk
						if err := json.Unmarshal([]byte(ev), &ch); err != nil {
							t.Fatal(err)
						}
						for _, c := range ch.Choices {
							text += c.Text
							if c.FinishReason != nil {
								finish = *c.FinishReason
							}
						}
					}
				} else {
					var c api.Completion
					if err := json.Unmarshal([]byte(out), &c); err != nil {
						t.Fatal(err)
					}
					text, finish = c.Choices[0].Text, c.Choices[0].FinishReason
				}
				if text != tt.want || finish != tt.finish {
					t.Errorf("stream=%v: text %q finish %q, want %q %q", stream, text, finish, tt.want, tt.finish)
				}
			}
		})
	}
}

func TestStopStringCancelsEngine(t *testing.T) {
	gen := &fakeGen{reply: "Hello world and much more text", delay: time.Millisecond}
	_, ts := newTestServer(t, gen, nil)
	status, _, body := post(t, ts, "/v1/completions", `{"prompt": "x", "max_tokens": 100, "stop": "wor"}`)
	if status != 200 || !strings.Contains(body, `"text":"Hello "`) {
		t.Fatalf("status %d: %s", status, body)
	}
	waitFor(t, func() bool { _, cancelled, _ := gen.snapshot(); return cancelled == 1 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sseEvents checks the SSE framing of body and returns the JSON payloads,
// without the final [DONE].
func sseEvents(t *testing.T, body string) []string {
	t.Helper()
	if !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("stream does not end with [DONE]: %q", body)
	}
	var out []string
	for _, block := range strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n") {
		payload, ok := strings.CutPrefix(block, "data: ")
		if !ok || strings.Contains(payload, "\n") {
			t.Fatalf("bad SSE event %q", block)
		}
		if payload == "[DONE]" {
			continue
		}
		if !json.Valid([]byte(payload)) {
			t.Fatalf("event is not JSON: %q", payload)
		}
		out = append(out, payload)
	}
	return out
}

func TestChatStreamFormat(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "Hé!"}, nil)
	status, hdr, body := post(t, ts, "/v1/chat/completions",
		`{"messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": true}}`)
	if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d, content type %q", status, hdr.Get("Content-Type"))
	}
	events := sseEvents(t, body)
	var chunks []api.ChatCompletionChunk
	for _, ev := range events {
		var c api.ChatCompletionChunk
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			t.Fatal(err)
		}
		if c.Object != "chat.completion.chunk" || c.ID != hdr.Get("X-Request-Id") || c.Model != testModel {
			t.Errorf("chunk header %+v", c)
		}
		chunks = append(chunks, c)
	}
	first := chunks[0].Choices[0]
	if first.Delta.Role != "assistant" || first.Delta.Content == nil || *first.Delta.Content != "" {
		t.Errorf("first chunk %+v", first)
	}
	var text string
	for _, c := range chunks[1 : len(chunks)-2] {
		if c.Choices[0].Delta.Role != "" || c.Choices[0].FinishReason != nil {
			t.Errorf("content chunk %+v", c.Choices[0])
		}
		text += *c.Choices[0].Delta.Content
	}
	if text != "Hé!" {
		t.Errorf("text %q", text)
	}
	fin := chunks[len(chunks)-2]
	if fin.Choices[0].FinishReason == nil || *fin.Choices[0].FinishReason != "stop" || fin.Choices[0].Delta.Content != nil {
		t.Errorf("finish chunk %s", events[len(events)-2])
	}
	last := chunks[len(chunks)-1]
	if len(last.Choices) != 0 || last.Usage == nil || last.Usage.CompletionTokens != 5 {
		t.Errorf("usage chunk %s", events[len(events)-1])
	}
	// Every content chunk holds whole characters: "é" is two tokens.
	for _, ev := range events {
		if strings.Contains(ev, `\ufffd`) || strings.Contains(ev, "\uFFFD") {
			t.Errorf("partial character in %s", ev)
		}
	}
}

func TestCompletionStreamFormat(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "abc"}, nil)
	_, _, body := post(t, ts, "/v1/completions", `{"prompt": "hi", "stream": true, "n": 2}`)
	events := sseEvents(t, body)
	texts := map[int]string{}
	finishes := map[int]string{}
	for _, ev := range events {
		var c api.CompletionChunk
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			t.Fatal(err)
		}
		if c.Object != "text_completion" || len(c.Choices) != 1 || c.Usage != nil {
			t.Fatalf("chunk %s", ev)
		}
		texts[c.Choices[0].Index] += c.Choices[0].Text
		if f := c.Choices[0].FinishReason; f != nil {
			finishes[c.Choices[0].Index] = *f
		}
	}
	if diff := cmp.Diff(map[int]string{0: "abc", 1: "abc"}, texts); diff != "" {
		t.Errorf("texts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[int]string{0: "stop", 1: "stop"}, finishes); diff != "" {
		t.Errorf("finishes (-want +got):\n%s", diff)
	}
}

func TestEngineErrorMidStream(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "abcdef", failAfter: 3}, nil)
	_, _, body := post(t, ts, "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "stream": true}`)
	events := sseEvents(t, body)
	last := events[len(events)-1]
	var er api.ErrorResponse
	if err := json.Unmarshal([]byte(last), &er); err != nil || er.Error == nil || er.Error.Type != api.TypeServer {
		t.Fatalf("last event is not an error: %s", last)
	}
	status, _, body := post(t, ts, "/v1/completions", `{"prompt": "hi"}`)
	if got := decodeErr(t, status, body); got.Status != 500 {
		t.Errorf("non-stream engine error: %+v", got)
	}
}

func TestSubmitErrors(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{submitErr: fmt.Errorf("%w: bad params", engine.ErrInvalidRequest)}, nil)
	status, _, body := post(t, ts, "/v1/completions", `{"prompt": "hi"}`)
	if got := decodeErr(t, status, body); got.Status != 400 {
		t.Errorf("invalid request from the engine: %+v", got)
	}
}

func TestPanicRecovered(t *testing.T) {
	gen := &fakeGen{panicky: true}
	_, ts := newTestServer(t, gen, nil)
	status, _, body := post(t, ts, "/v1/completions", `{"prompt": "hi"}`)
	if got := decodeErr(t, status, body); got.Status != 500 || got.Type != api.TypeServer {
		t.Errorf("panic: %+v", got)
	}
	gen.panicky = false
	gen.reply = "ok"
	if status, _, body := post(t, ts, "/v1/completions", `{"prompt": "hi"}`); status != 200 {
		t.Errorf("after a panic: %d %s", status, body)
	}
}

func TestLogprobsShapes(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "ab"}, nil)
	_, _, body := post(t, ts, "/v1/completions", `{"prompt": "hi", "logprobs": 2, "max_tokens": 2}`)
	var c api.Completion
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	want := &api.CompletionLogprobs{
		Tokens:        []string{"a", "b"},
		TokenLogprobs: []float64{-0.5, -0.5},
		TopLogprobs:   []map[string]float64{{"a": -0.5, "b": -2}, {"a": -1, "b": -0.5}},
		TextOffset:    []int{0, 1},
	}
	if diff := cmp.Diff(want, c.Choices[0].Logprobs); diff != "" {
		t.Errorf("completions logprobs (-want +got):\n%s", diff)
	}

	_, _, body = post(t, ts, "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 1, "max_tokens": 1}`)
	var cc api.ChatCompletion
	if err := json.Unmarshal([]byte(body), &cc); err != nil {
		t.Fatal(err)
	}
	wantChat := &api.ChatLogprobs{Content: []api.ChatTokenLogprob{{
		Token: "a", Logprob: -0.5, Bytes: []int{'a'},
		TopLogprobs: []api.TopLogprob{{Token: "a", Logprob: -1, Bytes: []int{'a'}}},
	}}}
	if diff := cmp.Diff(wantChat, cc.Choices[0].Logprobs); diff != "" {
		t.Errorf("chat logprobs (-want +got):\n%s", diff)
	}
	if !strings.Contains(body, `"bytes":[97]`) {
		t.Errorf("bytes are not a JSON array of integers: %s", body)
	}

	_, _, body = post(t, ts, "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}`)
	if !strings.Contains(body, `"logprobs":null`) {
		t.Errorf("logprobs not null when not asked: %s", body)
	}
}

func TestHealthAndModels(t *testing.T) {
	s, ts := newTestServer(t, &fakeGen{}, func(o *Options, _ *Deps) { o.APIKey = "sekret" })
	s.SetReady(false)
	get := func(path string, hdr ...string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, ts.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		if _, err := bufio.NewReader(resp.Body).WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b.String()
	}
	if status, _ := get("/health"); status != 503 {
		t.Errorf("health before ready: %d", status)
	}
	s.SetReady(true)
	if status, _ := get("/health"); status != 200 {
		t.Errorf("health when ready: %d", status)
	}
	status, body := get("/v1/models")
	if got := decodeErr(t, status, body); got.Status != 401 || got.Code != api.CodeInvalidAPIKey {
		t.Errorf("models without key: %+v", got)
	}
	if status, _ := get("/v1/models", "Authorization", "Bearer wrong"); status != 401 {
		t.Errorf("models with a wrong key: %d", status)
	}
	status, body = get("/v1/models", "Authorization", "Bearer sekret")
	var ml api.ModelList
	if err := json.Unmarshal([]byte(body), &ml); err != nil || status != 200 {
		t.Fatalf("models: %d %s", status, body)
	}
	ml.Data[0].Created = 0
	if diff := cmp.Diff(api.ModelList{Object: "list", Data: []api.Model{{ID: testModel, Object: "model", OwnedBy: "disagg", MaxModelLen: 256}}}, ml); diff != "" {
		t.Errorf("models (-want +got):\n%s", diff)
	}
	if status, _, _ := post(t, ts, "/v1/completions", `{"prompt": "hi"}`, "Authorization", "Bearer sekret"); status != 200 {
		t.Errorf("completion with key: %d", status)
	}
	status, body = get("/metrics")
	if status != 200 {
		t.Fatalf("metrics: %d", status)
	}
	for _, name := range []string{
		"worker_http_requests_total", "worker_http_requests_in_flight", "worker_prompt_tokens_total",
		"worker_generation_tokens_total", "worker_time_to_first_token_seconds", "worker_inter_token_latency_seconds",
		"worker_e2e_request_latency_seconds", "worker_num_requests_running 1", "worker_num_requests_waiting 2",
		"worker_kv_blocks_used 3", "worker_kv_blocks_free 4",
		`worker_http_requests_total{endpoint="/v1/models",status="401"} 2`,
	} {
		if !strings.Contains(body, name) {
			t.Errorf("metrics lack %q", name)
		}
	}
}

func TestClientDisconnectCancels(t *testing.T) {
	gen := &fakeGen{reply: strings.Repeat("x", 1000), delay: 5 * time.Millisecond}
	_, ts := newTestServer(t, gen, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/completions",
		strings.NewReader(`{"prompt": "hi", "max_tokens": 200, "stream": true, "n": 2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first line %q: %v", line, err)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, func() bool { _, cancelled, _ := gen.snapshot(); return cancelled == 2 })
}

func TestEngineRequestMapping(t *testing.T) {
	gen := &fakeGen{reply: "ok"}
	_, ts := newTestServer(t, gen, nil)
	body := `{"prompt": [5, 6], "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
		"repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 3,
		"min_tokens": 2, "ignore_eos": true, "stop_token_ids": [7], "logprobs": 3, "user": "u"}`
	if status, _, out := post(t, ts, "/v1/completions", body); status != 200 {
		t.Fatalf("%d %s", status, out)
	}
	reqs, _, _ := gen.snapshot()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	r := reqs[0]
	r.ID = ""
	want := engine.Request{
		Prompt: []int32{5, 6},
		Sampling: sampling.Params{Temperature: 0.5, TopP: 0.9, TopK: 40, MinP: 0.05, Seed: 3, HasSeed: true,
			RepetitionPenalty: 1.1, PresencePenalty: 0.5, FrequencyPenalty: -0.5, Logprobs: 3},
		MaxTokens: 9, MinTokens: 2, IgnoreEOS: true, StopTokenIDs: []int32{7},
	}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("engine request (-want +got):\n%s", diff)
	}
}
