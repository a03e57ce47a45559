package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"disagg/api"
	"disagg/worker/chat"
	"disagg/worker/compute/cpu"
	"disagg/worker/engine"
	"disagg/worker/kvcache"
	"disagg/worker/model"
	"disagg/worker/tokenizer"
)

const tinyDir = "../../testdata/models/tiny-llama2"

// realServer is the server over the real engine, CPU backend, tokenizer
// and chat template of the tiny-llama2 fixture.
type realServer struct {
	srv    *Server
	ts     *httptest.Server
	engine *engine.Engine
	pool   *kvcache.Pool
	tok    *tokenizer.Tokenizer
}

// chatAdapter renders api messages with a model's chat template.
type chatAdapter struct{ cfg *chat.Config }

func (c chatAdapter) Render(msgs []api.ChatMessage, gen bool) (string, error) {
	out := make([]chat.Message, len(msgs))
	for i, m := range msgs {
		out[i] = chat.Message{Role: m.Role, Name: m.Name, ToolCallID: m.ToolCallID}
		if m.Content.Present {
			out[i].Content = m.Content.Text
		}
	}
	return c.cfg.Template.Render(out, chat.RenderOptions{AddGenerationPrompt: gen, BOSToken: c.cfg.BOSToken, EOSToken: c.cfg.EOSToken})
}

func newRealServer(t *testing.T, mod func(*Options)) *realServer {
	t.Helper()
	m, err := model.LoadDir(tinyDir, model.Options{})
	if err != nil {
		t.Fatalf("loading %s: %v", tinyDir, err)
	}
	cfg := m.Config
	pool, err := kvcache.NewHostPool(cpu.LayoutFor(cfg, 32), 128)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pool.Close(); err != nil {
			t.Error(err)
		}
	})
	backend, err := cpu.New(m, pool, cpu.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := backend.Close(); err != nil {
			t.Error(err)
		}
	})
	eng, err := engine.New(backend, pool, engine.Config{
		MaxBatchSize: 8, MaxNumTokens: 256, MaxSeqLen: cfg.MaxPositionEmbeddings,
		EOSTokenIDs: cfg.EOSTokenIDs, VocabSize: cfg.VocabSize,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	eng.Start()
	t.Cleanup(func() {
		if err := eng.Close(); err != nil {
			t.Error(err)
		}
	})
	tok, err := tokenizer.LoadFile(filepath.Join(tinyDir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := os.ReadFile(filepath.Join(tinyDir, "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	chatCfg, err := chat.FromTokenizerConfig(tc)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{ModelName: "tiny-llama2", ModelRoot: tinyDir, MaxModelLen: cfg.MaxPositionEmbeddings}
	if mod != nil {
		mod(&opts)
	}
	s := New(opts, Deps{
		Generator:        eng,
		Tokenizer:        tok,
		NewStreamDecoder: func(skip bool) StreamDecoder { return tok.NewStreamDecoder(skip) },
		Chat:             chatAdapter{chatCfg},
		Stats: func() EngineStats {
			st := eng.Stats()
			return EngineStats{Running: st.Running, Waiting: st.Waiting, KVBlocksUsed: pool.NumBlocks() - st.FreeBlocks, KVBlocksFree: st.FreeBlocks}
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	s.SetReady(true)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return &realServer{srv: s, ts: ts, engine: eng, pool: pool, tok: tok}
}

// waitBlocksFree waits until every KV block is free again.
func (r *realServer) waitBlocksFree(t *testing.T) {
	t.Helper()
	waitFor(t, func() bool { return r.pool.FreeBlocks() == r.pool.NumBlocks() })
}

type greedyRef struct {
	Prompt     string  `json:"prompt"`
	PromptIDs  []int32 `json:"prompt_ids"`
	OutputIDs  []int32 `json:"output_ids"`
	OutputText string  `json:"output_text"`
}

func loadGreedy(t *testing.T) []greedyRef {
	t.Helper()
	data, err := os.ReadFile("../../testdata/reference/tiny-llama2/greedy.json")
	if err != nil {
		t.Fatal(err)
	}
	var refs []greedyRef
	if err := json.Unmarshal(data, &refs); err != nil {
		t.Fatal(err)
	}
	return refs
}

// TestRealGreedyMatchesReference checks text and streamed text against
// Hugging Face's greedy continuations, from text prompts and token ids.
func TestRealGreedyMatchesReference(t *testing.T) {
	rs := newRealServer(t, nil)
	for i, ref := range loadGreedy(t) {
		ids, err := json.Marshal(ref.PromptIDs)
		if err != nil {
			t.Fatal(err)
		}
		prompt, err := json.Marshal(ref.Prompt)
		if err != nil {
			t.Fatal(err)
		}
		n := len(ref.OutputIDs)
		for _, p := range []string{string(ids), string(prompt)} {
			if ref.Prompt == "" && p == string(prompt) {
				continue // an empty text prompt is a 400
			}
			// The reference decodes without skipping special tokens (<unk> appears).
			body := fmt.Sprintf(`{"prompt": %s, "max_tokens": %d, "temperature": 0, "skip_special_tokens": false}`, p, n)
			status, _, out := post(t, rs.ts, "/v1/completions", body)
			var c api.Completion
			if err := json.Unmarshal([]byte(out), &c); err != nil || status != 200 {
				t.Fatalf("ref %d: %d %s", i, status, out)
			}
			if c.Choices[0].Text != ref.OutputText || c.Usage.CompletionTokens != n || c.Usage.PromptTokens != len(ref.PromptIDs) {
				t.Errorf("ref %d (%s): text %q usage %+v, want %q", i, p, c.Choices[0].Text, c.Usage, ref.OutputText)
			}

			_, _, out = post(t, rs.ts, "/v1/completions", strings.Replace(body, "{", `{"stream": true, `, 1))
			var text strings.Builder
			for _, ev := range sseEvents(t, out) {
				var ch api.CompletionChunk
				if err := json.Unmarshal([]byte(ev), &ch); err != nil {
					t.Fatal(err)
				}
				for _, c := range ch.Choices {
					text.WriteString(c.Text)
				}
			}
			if text.String() != ref.OutputText {
				t.Errorf("ref %d streamed: %q, want %q", i, text.String(), ref.OutputText)
			}
		}
	}
	rs.waitBlocksFree(t)
}

// TestRealChatPrompt checks that chat prompts tokenize as Hugging Face's
// apply_chat_template(tokenize=True) does: no second BOS.
func TestRealChatPrompt(t *testing.T) {
	rs := newRealServer(t, nil)
	data, err := os.ReadFile("../../testdata/reference/tiny-llama2/chat.json")
	if err != nil {
		t.Fatal(err)
	}
	var refs []struct {
		Messages            []api.ChatMessage `json:"messages"`
		AddGenerationPrompt bool              `json:"add_generation_prompt"`
		IDs                 []int32           `json:"ids"`
	}
	if err := json.Unmarshal(data, &refs); err != nil {
		t.Fatal(err)
	}
	for i, ref := range refs {
		req := api.ChatCompletionRequest{Messages: ref.Messages, AddGenerationPrompt: &ref.AddGenerationPrompt}
		one := 1
		req.MaxTokens = &one
		body, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		status, _, out := post(t, rs.ts, "/v1/chat/completions", string(body))
		var c api.ChatCompletion
		if err := json.Unmarshal([]byte(out), &c); err != nil || status != 200 {
			t.Fatalf("ref %d: %d %s", i, status, out)
		}
		if c.Usage.PromptTokens != len(ref.IDs) {
			t.Errorf("ref %d: %d prompt tokens, want %d", i, c.Usage.PromptTokens, len(ref.IDs))
		}
	}
}

// TestRealBlocksFreed checks that stop strings, n > 1, engine-side limits
// and client disconnects all give the KV blocks back.
func TestRealBlocksFreed(t *testing.T) {
	rs := newRealServer(t, nil)
	ref := loadGreedy(t)[2]
	stop := []rune(ref.OutputText)[5:9]
	body := fmt.Sprintf(`{"prompt": %q, "max_tokens": 32, "temperature": 0, "stop": %q}`, ref.Prompt, string(stop))
	status, _, out := post(t, rs.ts, "/v1/completions", body)
	var c api.Completion
	if err := json.Unmarshal([]byte(out), &c); err != nil || status != 200 {
		t.Fatalf("%d %s", status, out)
	}
	if want := string([]rune(ref.OutputText)[:5]); !strings.HasPrefix(ref.OutputText, c.Choices[0].Text) || c.Choices[0].FinishReason != "stop" || len(c.Choices[0].Text) > len(want) {
		t.Errorf("stopped text %q finish %q; reference %q, stop %q", c.Choices[0].Text, c.Choices[0].FinishReason, ref.OutputText, string(stop))
	}
	rs.waitBlocksFree(t)

	status, _, out = post(t, rs.ts, "/v1/chat/completions", `{"messages": [{"role": "user", "content": "Hi"}], "n": 3, "max_tokens": 20, "seed": 1}`)
	if status != 200 {
		t.Fatalf("%d %s", status, out)
	}
	rs.waitBlocksFree(t)

	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, rs.ts.URL+"/v1/completions",
				strings.NewReader(`{"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true, "stream": true}`))
			if err != nil {
				t.Error(err)
				return
			}
			resp, err := rs.ts.Client().Do(req)
			if err != nil {
				return // the deadline hit before the answer began
			}
			defer resp.Body.Close()
			buf := make([]byte, 512)
			for {
				if _, err := resp.Body.Read(buf); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	rs.waitBlocksFree(t)
}

func TestRealOpenAIGoSDK(t *testing.T) {
	rs := newRealServer(t, func(o *Options) { o.APIKey = "real-key" })
	sdkSuite(t, rs.ts.URL, "real-key", "tiny-llama2", func(string) bool { return true })
	rs.waitBlocksFree(t)
}

// TestRealLogprobTokens checks that logprob tokens keep their leading
// spaces, so that they join into the text, with matching offsets.
func TestRealLogprobTokens(t *testing.T) {
	rs := newRealServer(t, nil)
	status, _, out := post(t, rs.ts, "/v1/completions", `{"prompt": "Hello", "max_tokens": 6, "logprobs": 1, "temperature": 0}`)
	var c api.Completion
	if err := json.Unmarshal([]byte(out), &c); err != nil || status != 200 {
		t.Fatalf("%d %s", status, out)
	}
	lp := c.Choices[0].Logprobs
	if strings.Join(lp.Tokens, "") != c.Choices[0].Text {
		t.Errorf("tokens %q do not join into %q", lp.Tokens, c.Choices[0].Text)
	}
	offset := 0
	for i, tok := range lp.Tokens {
		if lp.TextOffset[i] != offset {
			t.Errorf("token %d offset %d, want %d", i, lp.TextOffset[i], offset)
		}
		offset += len([]rune(tok))
	}
}
