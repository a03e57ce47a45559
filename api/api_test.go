package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestDecodePrompt(t *testing.T) {
	tests := []struct {
		body      string
		want      Prompt
		wantParam string // "" when decoding succeeds
	}{
		{`{"prompt": "hi"}`, Prompt{Texts: []string{"hi"}}, ""},
		{`{"prompt": ["a", "b"]}`, Prompt{Texts: []string{"a", "b"}}, ""},
		{`{"prompt": [1, 2, 3]}`, Prompt{Tokens: [][]int32{{1, 2, 3}}}, ""},
		{`{"prompt": [[1], [2, 3]]}`, Prompt{Tokens: [][]int32{{1}, {2, 3}}}, ""},
		{`{"prompt": []}`, Prompt{Texts: []string{}}, ""},
		{`{"prompt": null}`, Prompt{}, ""},
		{`{}`, Prompt{}, ""},
		{`{"prompt": 5}`, Prompt{}, "prompt"},
		{`{"prompt": {"a": 1}}`, Prompt{}, "prompt"},
		{`{"prompt": ["a", 1]}`, Prompt{}, "prompt"},
		{`{"prompt": [1, "a"]}`, Prompt{}, "prompt"},
		{`{"prompt": [[1], "a"]}`, Prompt{}, "prompt"},
		{`{"prompt": [[1, [2]]]}`, Prompt{}, "prompt"},
		{`{"prompt": [1.5]}`, Prompt{}, "prompt"},
		{`{"prompt": [4294967296]}`, Prompt{}, "prompt"},
		{`{"prompt": [true]}`, Prompt{}, "prompt"},
		{`{"prompt": [null]}`, Prompt{}, "prompt"},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			var r CompletionRequest
			e := DecodeJSON([]byte(tt.body), &r)
			if tt.wantParam != "" {
				if e == nil || e.Param == nil || *e.Param != tt.wantParam || e.Status != 400 {
					t.Fatalf("want a 400 about %q, got %v", tt.wantParam, e)
				}
				return
			}
			if e != nil {
				t.Fatalf("unexpected error %v", e)
			}
			if diff := cmp.Diff(tt.want, r.Prompt, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestPromptRoundTrip(t *testing.T) {
	for _, p := range []Prompt{
		{Texts: []string{"x"}}, {Texts: []string{"x", "y"}}, {Tokens: [][]int32{{1, 2}}}, {Tokens: [][]int32{{1}, {2}}},
	} {
		data, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var back Prompt
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(p, back); diff != "" {
			t.Errorf("%s: (-want +got):\n%s", data, diff)
		}
	}
}

func TestDecodeStop(t *testing.T) {
	tests := []struct {
		body string
		want StopList
		bad  bool
	}{
		{`{"stop": "x"}`, StopList{"x"}, false},
		{`{"stop": ["x", "", "y"]}`, StopList{"x", "y"}, false},
		{`{"stop": ""}`, nil, false},
		{`{"stop": null}`, nil, false},
		{`{"stop": 3}`, nil, true},
		{`{"stop": [3]}`, nil, true},
	}
	for _, tt := range tests {
		var r ChatCompletionRequest
		e := DecodeJSON([]byte(tt.body), &r)
		if tt.bad != (e != nil) {
			t.Errorf("%s: error %v", tt.body, e)
			continue
		}
		if diff := cmp.Diff(tt.want, r.Stop, cmpopts.EquateEmpty()); !tt.bad && diff != "" {
			t.Errorf("%s: (-want +got):\n%s", tt.body, diff)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		body  string
		param string
		frag  string
	}{
		{"", "", "empty"},
		{"  [1]", "", "JSON object"},
		{"\"x\"", "", "JSON object"},
		{"{\"model\": \"\xff\"}", "", "UTF-8"},
		{`{"model": 1}`, "model", "expected a string, got number"},
		{`{"n": "2"}`, "n", "expected an integer"},
		{`{"stream_options": {"include_usage": 1}}`, "stream_options.include_usage", "expected a boolean"},
		{`{"model": "x"`, "", "Malformed JSON"},
		{`{"model": "x"} {}`, "", "Malformed JSON"},
	}
	for _, tt := range tests {
		var r CompletionRequest
		e := DecodeJSON([]byte(tt.body), &r)
		if e == nil {
			t.Errorf("%q: no error", tt.body)
			continue
		}
		param := ""
		if e.Param != nil {
			param = *e.Param
		}
		if param != tt.param || !strings.Contains(e.Message, tt.frag) || e.Status != 400 {
			t.Errorf("%q: got param %q message %q status %d; want param %q and %q", tt.body, param, e.Message, e.Status, tt.param, tt.frag)
		}
	}
}

func TestReadBodyLimit(t *testing.T) {
	if _, e := ReadBody(strings.NewReader("12345"), 4); e == nil || e.Status != 413 {
		t.Errorf("over the limit: %v", e)
	}
	if data, e := ReadBody(strings.NewReader("1234"), 4); e != nil || string(data) != "1234" {
		t.Errorf("at the limit: %q %v", data, e)
	}
	rec := httptest.NewRecorder()
	body := http.MaxBytesReader(rec, http.NoBody, 0)
	if _, e := ReadBody(body, 10); e != nil {
		t.Errorf("empty body: %v", e)
	}
}

func TestMessageContent(t *testing.T) {
	var r ChatCompletionRequest
	body := `{"messages": [
		{"role": "system", "content": "s"},
		{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
		{"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]},
		{"role": "tool", "content": "r", "tool_call_id": "1"}]}`
	if e := DecodeJSON([]byte(body), &r); e != nil {
		t.Fatal(e)
	}
	if e := r.Validate(0); e != nil {
		t.Fatal(e)
	}
	got := []string{r.Messages[0].Content.Text, r.Messages[1].Content.Text, r.Messages[2].Content.Text}
	if diff := cmp.Diff([]string{"s", "a\nb", ""}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if r.Messages[2].Content.Present {
		t.Error("null content is present")
	}
	data, err := json.Marshal(r.Messages)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"content":null`) || !strings.Contains(string(data), `"content":[{"type":"text","text":"a"}`) {
		t.Errorf("marshalled %s", data)
	}
}

func TestErrorJSON(t *testing.T) {
	data, err := json.Marshal(ErrorResponse{Error: InvalidRequest("", "bad")})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}`
	if string(data) != want {
		t.Errorf("got %s, want %s", data, want)
	}
	data, err = json.Marshal(ErrorResponse{Error: ModelNotFound("m")})
	if err != nil {
		t.Fatal(err)
	}
	want = "{\"error\":{\"message\":\"The model `m` does not exist.\",\"type\":\"invalid_request_error\",\"param\":\"model\",\"code\":\"model_not_found\"}}"
	if string(data) != want {
		t.Errorf("got %s, want %s", data, want)
	}
}

func TestValidateDefaults(t *testing.T) {
	var r CompletionRequest
	if e := DecodeJSON([]byte(`{"prompt": "x", "ignore_eos": true, "min_tokens": 3, "disaggregated_params": {"request_type": "context_only", "ctx_request_id": 7}, "unknown_field": [1, {}]}`), &r); e != nil {
		t.Fatal(e)
	}
	if e := r.Validate(4); e != nil {
		t.Fatal(e)
	}
	if r.MaxTokensOrDefault() != 16 || r.Choices() != 1 || !r.IgnoreEOS || *r.DisaggregatedParams.CtxRequestID != 7 {
		t.Errorf("decoded %+v", r)
	}
}

func TestRequestID(t *testing.T) {
	for _, tc := range []struct {
		header string
		keep   bool
	}{
		{"req-123", true},
		{"", false},
		{strings.Repeat("a", 129), false},
		{"has space", false},
		{`quo"te`, false},
		{"ünicode", false},
	} {
		r, _ := http.NewRequest("POST", "/", nil)
		if tc.header != "" {
			r.Header.Set(HeaderRequestID, tc.header)
		}
		got := RequestID(r, "cmpl-")
		if tc.keep && got != tc.header {
			t.Errorf("%q: id %q, want it kept", tc.header, got)
		}
		if !tc.keep && (!strings.HasPrefix(got, "cmpl-") || len(got) != len("cmpl-")+24) {
			t.Errorf("%q: id %q, want a fresh cmpl- id", tc.header, got)
		}
	}
}
