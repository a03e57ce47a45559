package server

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"disagg/api"
)

// TestDisaggregatedWithoutRoles: without a Disaggregator, context_only and
// generation_only requests get a 503 OpenAI error and reach no engine;
// context_and_generation is an ordinary request.
func TestDisaggregatedWithoutRoles(t *testing.T) {
	gen := &fakeGen{reply: "ok"}
	_, ts := newTestServer(t, gen, nil)
	for _, c := range []struct{ path, body string }{
		{"/v1/completions", `{"prompt": "hi", "disaggregated_params": {"request_type": "context_only"}}`},
		{"/v1/completions", `{"prompt": "hi", "disaggregated_params": {"request_type": "generation_only", "first_gen_tokens": [5]}}`},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "disaggregated_params": {"request_type": "context_only"}}`},
	} {
		status, _, body := post(t, ts, c.path, c.body)
		if diff := cmp.Diff(errShape{503, api.TypeServer, "", ""}, decodeErr(t, status, body)); diff != "" {
			t.Errorf("%s %s (-want +got):\n%s", c.path, c.body, diff)
		}
	}
	if reqs, _, _ := gen.snapshot(); len(reqs) != 0 {
		t.Errorf("%d requests reached the engine", len(reqs))
	}
	status, _, body := post(t, ts, "/v1/completions", `{"prompt": "hi", "disaggregated_params": {"request_type": "context_and_generation"}}`)
	if status != 200 {
		t.Errorf("context_and_generation: %d %s", status, body)
	}
}
