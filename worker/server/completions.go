package server

import (
	"context"
	"net/http"
	"time"

	"disagg/api"
)

// maxSequences limits the engine sequences of one request (prompts × n).
const maxSequences = 1024

// handleCompletions answers POST /v1/completions.
func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := api.RequestID(r, "cmpl-")
	w.Header().Set("X-Request-Id", id)

	var req api.CompletionRequest
	if e := s.decodeBody(w, r, &req); e != nil {
		s.writeError(w, e)
		return
	}
	if e := s.checkModel(req.Model); e != nil {
		s.writeError(w, e)
		return
	}
	if e := req.Validate(s.opts.MaxN); e != nil {
		s.writeError(w, e)
		return
	}
	if seqs := req.Prompt.Len() * req.Choices(); seqs > maxSequences {
		s.writeError(w, api.InvalidRequest("prompt",
			"A request may ask for at most %d choices in all (prompts times n); this one asks for %d.", maxSequences, seqs))
		return
	}
	prompts, e := s.completionPrompts(&req)
	if e != nil {
		s.writeError(w, e)
		return
	}
	maxTokens := req.MaxTokensOrDefault()
	for _, p := range prompts {
		if _, e := s.maxTokens(len(p), &maxTokens, "prompt", "max_tokens"); e != nil {
			s.writeError(w, e)
			return
		}
	}
	logprobs := -1
	if req.Logprobs != nil {
		logprobs = *req.Logprobs
	}
	phase := disaggPhase(req.DisaggregatedParams)
	if e := s.checkDisagg(phase, len(prompts), req.Choices()); e != nil {
		s.writeError(w, e)
		return
	}
	j, e := s.newJob(id, start, prompts, &req.SamplingOptions, maxTokens, logprobs)
	if e != nil {
		s.writeError(w, e)
		return
	}
	events, cancel, ok := s.startPhase(w, r, j, phase, req.DisaggregatedParams, prompts[0], false)
	if !ok {
		return
	}
	defer cancel()
	if req.Stream {
		s.streamCompletion(w, j, events, cancel, req.IncludeUsage())
		return
	}
	res, e := collect(events, cancel, len(prompts)*j.n)
	if e != nil {
		s.writeError(w, e)
		return
	}
	out := api.Completion{
		ID: id, Object: api.ObjectCompletion, Created: start.Unix(), Model: s.opts.ModelName,
		Choices: make([]api.CompletionChoice, len(res)),
	}
	total := 0
	for i := range res {
		c := &res[i]
		total += c.count
		out.Choices[i] = api.CompletionChoice{Index: i, Text: c.text.String(), FinishReason: c.finish}
		if j.logprobs {
			out.Choices[i].Logprobs = s.completionLogprobs(c.tokens)
		}
	}
	out.Usage = usage(prompts, total)
	s.writeJSON(w, http.StatusOK, out)
}

// completionPrompts tokenizes the request's prompts, or checks its token
// ids against the vocabulary.
func (s *Server) completionPrompts(req *api.CompletionRequest) ([][]int32, *api.Error) {
	if len(req.Prompt.Tokens) > 0 {
		for _, p := range req.Prompt.Tokens {
			if e := s.checkTokens(p, "prompt"); e != nil {
				return nil, e
			}
		}
		return req.Prompt.Tokens, nil
	}
	add := req.AddSpecialTokens == nil || *req.AddSpecialTokens
	out := make([][]int32, len(req.Prompt.Texts))
	for i, text := range req.Prompt.Texts {
		ids, err := s.deps.Tokenizer.Encode(text, add)
		if err != nil {
			return nil, api.InvalidRequest("prompt", "Could not tokenize the prompt: %v.", err)
		}
		if len(ids) == 0 {
			return nil, api.InvalidRequest("prompt", "The prompt tokenizes to no tokens.")
		}
		out[i] = ids
	}
	return out, nil
}

// streamCompletion sends the events as completions chunks.
func (s *Server) streamCompletion(w http.ResponseWriter, j *job, events <-chan event, cancel context.CancelFunc, includeUsage bool) {
	sse := newSSE(w, cancel)
	chunk := func(choices []api.CompletionChunkChoice) api.CompletionChunk {
		return api.CompletionChunk{ID: j.id, Object: api.ObjectCompletion, Created: j.start.Unix(), Model: s.opts.ModelName, Choices: choices}
	}
	total, failed := 0, false
	for ev := range events {
		if failed {
			continue
		}
		if ev.err != nil {
			failed = true
			cancel()
			sse.send(api.ErrorResponse{Error: classify(ev.err)})
			continue
		}
		total += ev.count
		c := api.CompletionChunkChoice{Index: ev.choice, Text: ev.text, FinishReason: finishPtr(ev.finish)}
		if j.logprobs && len(ev.tokens) > 0 {
			c.Logprobs = s.completionLogprobs(ev.tokens)
		}
		sse.send(chunk([]api.CompletionChunkChoice{c}))
	}
	if !failed && includeUsage {
		u := chunk([]api.CompletionChunkChoice{})
		u.Usage = usage(j.prompts, total)
		sse.send(u)
	}
	sse.done()
}
