package server

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"disagg/api"
	"disagg/worker/engine"
	"disagg/worker/sampling"
)

// decodeBody reads the size-limited body into v and validates its JSON.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any) *api.Error {
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	data, e := api.ReadBody(body, s.opts.MaxBodyBytes)
	if e != nil {
		return e
	}
	return api.DecodeJSON(data, v)
}

// writeJSON answers with v as JSON.
func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		s.writeError(w, api.Internal("Could not encode the response: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if _, err := w.Write(append(body, '\n')); err != nil {
		s.log.Debug("writing response", "error", err)
	}
}

// checkTokens checks that every id is in the vocabulary.
func (s *Server) checkTokens(ids []int32, param string) *api.Error {
	vocab := s.deps.Tokenizer.VocabSize()
	for _, id := range ids {
		if id < 0 || int(id) >= vocab {
			return api.InvalidRequest(param, "Token id %d is outside the vocabulary (0 to %d).", id, vocab-1)
		}
	}
	return nil
}

// maxTokens checks that a prompt of promptLen tokens and the requested
// completion fit the context, and returns the completion budget: requested,
// or the rest of the context when nil.
func (s *Server) maxTokens(promptLen int, requested *int, promptParam, maxParam string) (int, *api.Error) {
	limit := s.opts.MaxModelLen
	if promptLen >= limit {
		return 0, api.InvalidRequest(promptParam,
			"This model's maximum context length is %d tokens, but the prompt has %d tokens, which leaves no room for a completion.",
			limit, promptLen).WithCode(api.CodeContextLengthExceeded)
	}
	if requested == nil {
		return limit - promptLen, nil
	}
	if promptLen+*requested > limit {
		return 0, api.InvalidRequest(maxParam,
			"This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the prompt, %d for the completion). Please reduce the prompt or %s.",
			limit, promptLen+*requested, promptLen, *requested, maxParam).WithCode(api.CodeContextLengthExceeded)
	}
	return *requested, nil
}

// newJob builds the engine request shared by a request's sequences.
func (s *Server) newJob(id string, start time.Time, prompts [][]int32, o *api.SamplingOptions, maxTokens, logprobs int) (*job, *api.Error) {
	if e := s.checkTokens(o.StopTokenIDs, "stop_token_ids"); e != nil {
		return nil, e
	}
	p := sampling.Params{Temperature: 1, TopP: 1, RepetitionPenalty: 1, Logprobs: logprobs}
	if o.Temperature != nil {
		p.Temperature = float32(*o.Temperature)
	}
	if o.TopP != nil {
		p.TopP = float32(*o.TopP)
	}
	if o.TopK != nil {
		p.TopK = *o.TopK
	}
	if o.MinP != nil {
		p.MinP = float32(*o.MinP)
	}
	if o.Seed != nil {
		p.Seed, p.HasSeed = *o.Seed, true
	}
	if o.RepetitionPenalty != nil {
		p.RepetitionPenalty = float32(*o.RepetitionPenalty)
	}
	if o.PresencePenalty != nil {
		p.PresencePenalty = float32(*o.PresencePenalty)
	}
	if o.FrequencyPenalty != nil {
		p.FrequencyPenalty = float32(*o.FrequencyPenalty)
	}
	base := engine.Request{Sampling: p, MaxTokens: maxTokens, IgnoreEOS: o.IgnoreEOS, StopTokenIDs: o.StopTokenIDs}
	if o.MinTokens != nil {
		base.MinTokens = min(*o.MinTokens, maxTokens)
	}
	return &job{
		id:       id,
		start:    start,
		prompts:  prompts,
		n:        o.Choices(),
		base:     base,
		stops:    o.Stop,
		skip:     o.SkipSpecialTokens == nil || *o.SkipSpecialTokens,
		logprobs: logprobs >= 0,
	}, nil
}

// choiceResult accumulates one choice of a non-streamed answer.
type choiceResult struct {
	text   strings.Builder
	tokens []tokenInfo
	finish string
	count  int
}

// collect gathers every choice; an engine error cancels the rest and is
// returned.
func collect(events <-chan event, cancel func(), choices int) ([]choiceResult, *api.Error) {
	res := make([]choiceResult, choices)
	var failed *api.Error
	for ev := range events {
		if failed != nil {
			continue
		}
		if ev.err != nil {
			failed = classify(ev.err)
			cancel()
			continue
		}
		c := &res[ev.choice]
		c.text.WriteString(ev.text)
		c.tokens = append(c.tokens, ev.tokens...)
		if ev.finish != "" {
			c.finish, c.count = ev.finish, ev.count
		}
	}
	return res, failed
}

// usage sums a request's tokens: each prompt once, every choice's tokens.
func usage(prompts [][]int32, completion int) *api.Usage {
	u := &api.Usage{CompletionTokens: completion}
	for _, p := range prompts {
		u.PromptTokens += len(p)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

// tokenText is a token's text for logprobs, decoded after the token prev
// so that it keeps the leading space a tokenizer drops at the start of a
// text (as vLLM reports it). It falls back to the token decoded alone.
func (s *Server) tokenText(prev, id int32) string {
	alone, err := s.deps.Tokenizer.Decode([]int32{id}, false)
	if err != nil {
		return ""
	}
	before, err := s.deps.Tokenizer.Decode([]int32{prev}, false)
	if err != nil || strings.ContainsRune(before, utf8.RuneError) {
		return alone
	}
	both, err := s.deps.Tokenizer.Decode([]int32{prev, id}, false)
	if err != nil || !strings.HasPrefix(both, before) {
		return alone
	}
	return both[len(before):]
}

// tokenBytes are a token's bytes for chat logprobs: the text's UTF-8, or,
// for a byte-fallback token that is part of a character, that byte.
func (s *Server) tokenBytes(id int32, text string) []int {
	if strings.ContainsRune(text, utf8.RuneError) {
		if tt, ok := s.deps.Tokenizer.(interface{ Token(int32) (string, bool) }); ok {
			if piece, ok := tt.Token(id); ok && len(piece) == 6 && strings.HasPrefix(piece, "<0x") && piece[5] == '>' {
				if b, err := strconv.ParseUint(piece[3:5], 16, 8); err == nil {
					return []int{int(b)}
				}
			}
		}
	}
	out := make([]int, len(text))
	for i := 0; i < len(text); i++ {
		out[i] = int(text[i])
	}
	return out
}

// completionLogprobs converts tokens to completions' logprobs shape.
func (s *Server) completionLogprobs(toks []tokenInfo) *api.CompletionLogprobs {
	lp := &api.CompletionLogprobs{
		Tokens:        make([]string, 0, len(toks)),
		TokenLogprobs: make([]float64, 0, len(toks)),
		TopLogprobs:   make([]map[string]float64, 0, len(toks)),
		TextOffset:    make([]int, 0, len(toks)),
	}
	for _, t := range toks {
		text := s.tokenText(t.prev, t.id)
		top := make(map[string]float64, len(t.top)+1)
		for _, alt := range t.top {
			top[s.tokenText(t.prev, alt.Token)] = float64(alt.Logprob)
		}
		top[text] = float64(t.logprob)
		lp.Tokens = append(lp.Tokens, text)
		lp.TokenLogprobs = append(lp.TokenLogprobs, float64(t.logprob))
		lp.TopLogprobs = append(lp.TopLogprobs, top)
		lp.TextOffset = append(lp.TextOffset, t.offset)
	}
	return lp
}

// chatLogprobs converts tokens to chat's logprobs shape.
func (s *Server) chatLogprobs(toks []tokenInfo) *api.ChatLogprobs {
	lp := &api.ChatLogprobs{Content: make([]api.ChatTokenLogprob, 0, len(toks))}
	for _, t := range toks {
		text := s.tokenText(t.prev, t.id)
		top := make([]api.TopLogprob, 0, len(t.top))
		for _, alt := range t.top {
			at := s.tokenText(t.prev, alt.Token)
			top = append(top, api.TopLogprob{Token: at, Logprob: float64(alt.Logprob), Bytes: s.tokenBytes(alt.Token, at)})
		}
		lp.Content = append(lp.Content, api.ChatTokenLogprob{
			Token: text, Logprob: float64(t.logprob), Bytes: s.tokenBytes(t.id, text), TopLogprobs: top,
		})
	}
	return lp
}

// sseWriter writes server-sent events: "data: <json>\n\n", then
// "data: [DONE]\n\n". After a write fails (the client left) it drops the
// rest and failed reports true.
type sseWriter struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	err    error
	onFail func()
}

func newSSE(w http.ResponseWriter, onFail func()) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w), onFail: onFail}
}

// send writes one event holding v as JSON.
func (e *sseWriter) send(v any) {
	if e.err != nil {
		return
	}
	body, err := json.Marshal(v)
	if err != nil {
		e.fail(err)
		return
	}
	e.raw(body)
}

// done writes the final [DONE] event.
func (e *sseWriter) done() { e.raw([]byte("[DONE]")) }

func (e *sseWriter) raw(data []byte) {
	if e.err != nil {
		return
	}
	buf := make([]byte, 0, len(data)+8)
	buf = append(buf, "data: "...)
	buf = append(buf, data...)
	buf = append(buf, "\n\n"...)
	if _, err := e.w.Write(buf); err != nil {
		e.fail(err)
		return
	}
	if err := e.rc.Flush(); err != nil {
		e.fail(err)
	}
}

func (e *sseWriter) fail(err error) {
	e.err = err
	if e.onFail != nil {
		e.onFail()
	}
}

// finishPtr is nil for "", else a pointer to a copy of f.
func finishPtr(f string) *string {
	if f == "" {
		return nil
	}
	return &f
}
