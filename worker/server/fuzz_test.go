package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"disagg/api"
)

var fuzzSeeds = []string{
	``, `{`, `[]`, `null`, `"x"`, `{"prompt": "hi"}`, `{"prompt": [1, 2]}`, `{"prompt": [[1], [2, 300]]}`,
	`{"prompt": "hi", "stream": true, "n": 3, "stop": ["i", "h"], "logprobs": 2}`,
	`{"prompt": "hi", "max_tokens": 300}`, `{"prompt": "hi", "temperature": 1e309}`,
	`{"messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": true}}`,
	`{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}], "logprobs": true, "top_logprobs": 3}`,
	`{"messages": [{"role": "assistant", "content": null, "tool_calls": []}]}`,
	"{\"prompt\": \"\xff\"}", `{"prompt": "a", "min_tokens": 1, "max_tokens": 2, "ignore_eos": true}`,
}

// fuzzHandler checks that body gets 200 or a 4xx OpenAI error, never a
// panic or a 5xx.
func fuzzHandler(f *testing.F, path string) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	srv := New(Options{ModelName: testModel, MaxModelLen: 256, MaxN: 4, MaxBodyBytes: 16 << 10},
		Deps{Generator: &fakeGen{reply: "Hé y"}, Tokenizer: byteTokenizer{}, Chat: fakeChat{}})
	h := srv.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(string(body))))
		switch {
		case rec.Code == http.StatusOK:
		case rec.Code >= 400 && rec.Code < 500:
			var er api.ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &er); err != nil || er.Error == nil || er.Error.Message == "" {
				t.Fatalf("status %d with body %q", rec.Code, rec.Body.String())
			}
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body.String())
		}
	})
}

func FuzzDecodeCompletionRequest(f *testing.F) { fuzzHandler(f, "/v1/completions") }

func FuzzDecodeChatRequest(f *testing.F) { fuzzHandler(f, "/v1/chat/completions") }
