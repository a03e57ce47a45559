package server

import (
	"context"
	"net/http"
	"time"

	"disagg/api"
)

// chatRequest is a chat request body with trtllm's prompt_token_ids, which
// a generation_only request carries from the context worker's reply so
// that the messages are not rendered and tokenized again.
type chatRequest struct {
	api.ChatCompletionRequest
	// PromptTokenIDs are the rendered prompt's token ids.
	PromptTokenIDs []int32 `json:"prompt_token_ids,omitempty"`
}

// handleChat answers POST /v1/chat/completions: the messages are rendered
// with the model's chat template (ending with the assistant's turn header)
// and tokenized without adding special tokens again, as vLLM does: the
// template carries them.
func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := api.RequestID(r, "chatcmpl-")
	w.Header().Set("X-Request-Id", id)

	var body chatRequest
	if e := s.decodeBody(w, r, &body); e != nil {
		s.writeError(w, e)
		return
	}
	req := body.ChatCompletionRequest
	if e := s.checkModel(req.Model); e != nil {
		s.writeError(w, e)
		return
	}
	if e := req.Validate(s.opts.MaxN); e != nil {
		s.writeError(w, e)
		return
	}
	if s.deps.Chat == nil {
		s.writeError(w, api.InvalidRequest("messages",
			"The model %q has no chat template (tokenizer_config.json has no chat_template); use /v1/completions.", s.opts.ModelName))
		return
	}
	phase := disaggPhase(req.DisaggregatedParams)
	var prompt []int32
	if phase == api.RequestGenerationOnly && len(body.PromptTokenIDs) > 0 {
		// The context worker rendered and tokenized the messages already.
		if e := s.checkTokens(body.PromptTokenIDs, "prompt_token_ids"); e != nil {
			s.writeError(w, e)
			return
		}
		prompt = body.PromptTokenIDs
	} else {
		text, err := s.deps.Chat.Render(req.Messages, req.WantsGenerationPrompt())
		if err != nil {
			s.writeError(w, api.InvalidRequest("messages", "Could not apply the chat template: %v.", err))
			return
		}
		add := req.AddSpecialTokens != nil && *req.AddSpecialTokens
		if prompt, err = s.deps.Tokenizer.Encode(text, add); err != nil {
			s.writeError(w, api.InvalidRequest("messages", "Could not tokenize the rendered messages: %v.", err))
			return
		}
	}
	if len(prompt) == 0 {
		s.writeError(w, api.InvalidRequest("messages", "The rendered messages tokenize to no tokens."))
		return
	}
	param := "max_tokens"
	if req.MaxCompletionTokens != nil {
		param = "max_completion_tokens"
	}
	maxTokens, e := s.maxTokens(len(prompt), req.MaxTokensRequested(), "messages", param)
	if e != nil {
		s.writeError(w, e)
		return
	}
	logprobs := -1
	if req.Logprobs {
		logprobs = 0
		if req.TopLogprobs != nil {
			logprobs = *req.TopLogprobs
		}
	}
	prompts := [][]int32{prompt}
	if e := s.checkDisagg(phase, 1, req.Choices()); e != nil {
		s.writeError(w, e)
		return
	}
	j, e := s.newJob(id, start, prompts, &req.SamplingOptions, maxTokens, logprobs)
	if e != nil {
		s.writeError(w, e)
		return
	}
	events, cancel, ok := s.startPhase(w, r, j, phase, req.DisaggregatedParams, prompt, true)
	if !ok {
		return
	}
	defer cancel()
	if req.Stream {
		s.streamChat(w, j, events, cancel, req.IncludeUsage())
		return
	}
	res, e := collect(events, cancel, j.n)
	if e != nil {
		s.writeError(w, e)
		return
	}
	out := api.ChatCompletion{
		ID: id, Object: api.ObjectChatCompletion, Created: start.Unix(), Model: s.opts.ModelName,
		Choices: make([]api.ChatChoice, len(res)),
	}
	total := 0
	for i := range res {
		c := &res[i]
		total += c.count
		out.Choices[i] = api.ChatChoice{
			Index:        i,
			Message:      api.ChatResponseMessage{Role: api.RoleAssistant, Content: c.text.String()},
			FinishReason: c.finish,
		}
		if j.logprobs {
			out.Choices[i].Logprobs = s.chatLogprobs(c.tokens)
		}
	}
	out.Usage = usage(prompts, total)
	s.writeJSON(w, http.StatusOK, out)
}

// streamChat sends the events as chat chunks: each choice's role first,
// then content deltas, then an empty delta with the finish reason.
func (s *Server) streamChat(w http.ResponseWriter, j *job, events <-chan event, cancel context.CancelFunc, includeUsage bool) {
	sse := newSSE(w, cancel)
	chunk := func(c api.ChatChunkChoice) api.ChatCompletionChunk {
		return api.ChatCompletionChunk{
			ID: j.id, Object: api.ObjectChatChunk, Created: j.start.Unix(), Model: s.opts.ModelName,
			Choices: []api.ChatChunkChoice{c},
		}
	}
	empty := ""
	for i := 0; i < j.n; i++ {
		sse.send(chunk(api.ChatChunkChoice{Index: i, Delta: api.ChatDelta{Role: api.RoleAssistant, Content: &empty}}))
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
		if ev.text != "" || len(ev.tokens) > 0 {
			text := ev.text
			c := api.ChatChunkChoice{Index: ev.choice, Delta: api.ChatDelta{Content: &text}}
			if j.logprobs {
				c.Logprobs = s.chatLogprobs(ev.tokens)
			}
			sse.send(chunk(c))
		}
		if ev.finish != "" {
			sse.send(chunk(api.ChatChunkChoice{Index: ev.choice, FinishReason: finishPtr(ev.finish)}))
		}
	}
	if !failed && includeUsage {
		u := api.ChatCompletionChunk{
			ID: j.id, Object: api.ObjectChatChunk, Created: j.start.Unix(), Model: s.opts.ModelName,
			Choices: []api.ChatChunkChoice{}, Usage: usage(j.prompts, total),
		}
		sse.send(u)
	}
	sse.done()
}
