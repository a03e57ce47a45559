package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"disagg/api"
	"disagg/worker/engine"
	"disagg/worker/sampling"
)

// byteTokenizer is a fake tokenizer: ids 0..2 are <unk>, <s>, </s>; id b+3
// is byte b. Multi-byte characters span several tokens, like byte-fallback.
type byteTokenizer struct{}

const (
	fakeBOS   = 1
	fakeEOS   = 2
	fakeVocab = 259
)

func (byteTokenizer) Encode(text string, add bool) ([]int32, error) {
	var ids []int32
	if add {
		ids = append(ids, fakeBOS)
	}
	for i := 0; i < len(text); i++ {
		ids = append(ids, int32(text[i])+3)
	}
	return ids, nil
}

func (byteTokenizer) Decode(ids []int32, skip bool) (string, error) {
	var b []byte
	for _, id := range ids {
		switch {
		case id < 0 || id >= fakeVocab:
			return "", fmt.Errorf("token id %d out of range", id)
		case id < 3:
			if !skip {
				b = append(b, []string{"<unk>", "<s>", "</s>"}[id]...)
			}
		default:
			b = append(b, byte(id-3))
		}
	}
	return strings.ToValidUTF8(string(b), "\uFFFD"), nil
}

func (byteTokenizer) VocabSize() int { return fakeVocab }

func (byteTokenizer) Token(id int32) (string, bool) {
	if id < 3 || id >= fakeVocab {
		return "", false
	}
	return fmt.Sprintf("<0x%02X>", id-3), true
}

// fakeChat renders "role: content\n" lines and "assistant:" at the end.
type fakeChat struct{}

func (fakeChat) Render(msgs []api.ChatMessage, gen bool) (string, error) {
	var b strings.Builder
	for _, m := range msgs {
		if m.Content.Text == "RAISE" {
			return "", errors.New("template raised: bad conversation")
		}
		fmt.Fprintf(&b, "%s: %s\n", m.Role, m.Content.Text)
	}
	if gen {
		b.WriteString("assistant:")
	}
	return b.String(), nil
}

// fakeGen is a fake engine: every sequence generates reply's bytes as
// tokens, then EOS (unless IgnoreEOS), within MaxTokens.
type fakeGen struct {
	reply     string
	delay     time.Duration // between tokens
	failAfter int           // > 0: abort with an error after this many tokens
	submitErr error
	panicky   bool

	mu        sync.Mutex
	requests  []engine.Request
	cancelled int
	finished  int
}

func (g *fakeGen) Submit(ctx context.Context, r *engine.Request) (<-chan engine.Output, error) {
	if g.panicky {
		panic("fake engine panic")
	}
	if g.submitErr != nil {
		return nil, g.submitErr
	}
	g.mu.Lock()
	g.requests = append(g.requests, *r)
	g.mu.Unlock()
	toks, _ := byteTokenizer{}.Encode(g.reply, false)
	if !r.IgnoreEOS {
		toks = append(toks, fakeEOS)
	}
	ch := make(chan engine.Output, len(toks)+1)
	go func() {
		defer close(ch)
		for i := 0; ; i++ {
			if g.delay > 0 {
				select {
				case <-time.After(g.delay):
				case <-ctx.Done():
				}
			}
			if ctx.Err() != nil {
				g.mu.Lock()
				g.cancelled++
				g.mu.Unlock()
				ch <- engine.Output{Finish: engine.FinishAbort, Err: ctx.Err(), PromptTokens: len(r.Prompt)}
				return
			}
			if g.failAfter > 0 && i == g.failAfter {
				ch <- engine.Output{Finish: engine.FinishAbort, Err: errors.New("device lost"), PromptTokens: len(r.Prompt)}
				return
			}
			tok := int32(fakeEOS)
			if i < len(toks) {
				tok = toks[i]
			}
			o := engine.Output{Token: tok, HasToken: true, Logprob: -0.5}
			for k := 0; k < r.Sampling.Logprobs; k++ {
				o.Top = append(o.Top, sampling.TokenLogprob{Token: int32('a' + 3 + k), Logprob: -1 - float32(k)})
			}
			switch {
			case tok == fakeEOS && !r.IgnoreEOS:
				o.Finish = engine.FinishStop
			case i+1 >= r.MaxTokens:
				o.Finish = engine.FinishLength
			}
			if o.Finish != engine.FinishNone {
				o.PromptTokens = len(r.Prompt)
				g.mu.Lock()
				g.finished++
				g.mu.Unlock()
			}
			ch <- o
			if o.Finish != engine.FinishNone {
				return
			}
		}
	}()
	return ch, nil
}

func (g *fakeGen) snapshot() (reqs []engine.Request, cancelled, finished int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]engine.Request(nil), g.requests...), g.cancelled, g.finished
}

const testModel = "tiny-test"

// newTestServer serves a fake engine that answers reply.
func newTestServer(t *testing.T, gen *fakeGen, mod func(*Options, *Deps)) (*Server, *httptest.Server) {
	t.Helper()
	opts := Options{ModelName: testModel, MaxModelLen: 256, MaxN: 8, MaxBodyBytes: 64 << 10}
	deps := Deps{Generator: gen, Tokenizer: byteTokenizer{}, Chat: fakeChat{},
		Stats: func() EngineStats { return EngineStats{Running: 1, Waiting: 2, KVBlocksUsed: 3, KVBlocksFree: 4} }}
	if mod != nil {
		mod(&opts, &deps)
	}
	s := New(opts, deps)
	s.SetReady(true)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts
}

// post sends body to path and returns the status, headers and body.
func post(t *testing.T, ts *httptest.Server, path, body string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b.String()
}
