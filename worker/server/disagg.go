package server

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"disagg/api"
	"disagg/worker/engine"
)

// Disaggregator runs the two phases of disaggregated serving for the
// server (package worker/disagg): requests whose disaggregated_params
// request_type is context_only or generation_only.
type Disaggregator interface {
	// Check says whether this worker takes a request of requestType now:
	// nil, or the error to answer with (wrong role: 400; no transceiver:
	// 503 naming what is missing).
	Check(requestType string) *api.Error
	// Park takes over the KV a context phase handed over (kv's blocks now
	// belong to it) and returns the reply's disaggregated_params. On error
	// it has freed the blocks.
	Park(kv *engine.KVHandoff, firstTokens []int32, disaggRequestID *int64) (*api.DisaggregatedParams, *api.Error)
	// Fetch verifies a generation_only request's params and moves the
	// prompt's KV into blocks of the engine's pool. The caller owns them
	// until the engine accepts the Resume.
	Fetch(ctx context.Context, p *api.DisaggregatedParams, prompt []int32) (*engine.Resume, api.KVTransfer, *api.Error)
	// Free returns blocks the caller owns to the engine.
	Free(blocks []int32)
}

// disaggPhase is the request's disaggregated phase: "" for a whole
// request (none, or context_and_generation), else context_only or
// generation_only.
func disaggPhase(p *api.DisaggregatedParams) string {
	if p == nil {
		return ""
	}
	switch p.RequestType {
	case api.RequestContextOnly, api.RequestGenerationOnly:
		return p.RequestType
	}
	return ""
}

// checkDisagg refuses a disaggregated request this server cannot run.
// Disaggregated requests carry one prompt and one choice, as trtllm's.
func (s *Server) checkDisagg(phase string, prompts, n int) *api.Error {
	if phase == "" {
		return nil
	}
	if s.deps.Disagg == nil {
		return api.Unavailable("Disaggregated serving (%s) is not enabled on this worker.", phase)
	}
	if prompts != 1 {
		return api.InvalidRequest("prompt", "A %s request carries exactly one prompt; this one has %d.", phase, prompts)
	}
	if n != 1 {
		return api.InvalidRequest("n", "A %s request asks for one choice; this one asks for %d.", phase, n)
	}
	return s.deps.Disagg.Check(phase)
}

// contextResult is what the context phase produced.
type contextResult struct {
	text   string
	tokens []tokenInfo
	finish string // "" when the request goes on on a generation worker
	count  int
	params *api.DisaggregatedParams
	// queue and prefill split the time to the first token.
	queue, prefill time.Duration
}

// runContext runs j's single sequence as a context phase: prefill and the
// first token. Unless that token finishes the request, its KV is parked
// and the result carries the disaggregated_params of the reply. The
// engine's handoff is always consumed, so no block leaks when the client
// goes away.
func (s *Server) runContext(ctx context.Context, j *job, p *api.DisaggregatedParams) (*contextResult, *api.Error) {
	req := j.base
	req.Prompt = j.prompts[0]
	req.ID = j.id
	req.ContextOnly = true
	ch, err := s.deps.Generator.Submit(ctx, &req)
	if err != nil {
		return nil, classify(err)
	}
	s.metrics.promptToks.Add(float64(len(req.Prompt)))
	var (
		toks []int32
		last engine.Output
		res  contextResult
	)
	dec := s.deps.NewStreamDecoder(j.skip)
	stop := newStopMatcher(j.stops)
	stopped := false
	prev := req.Prompt[len(req.Prompt)-1]
	chars := 0
	var decErr error
	for o := range ch {
		if o.HasToken {
			if len(toks) == 0 {
				s.metrics.ttft.Observe(timeSince(j))
				res.queue = o.QueueTime
				res.prefill = max(time.Since(j.start)-o.QueueTime, 0)
			}
			toks = append(toks, o.Token)
			s.metrics.genToks.Inc()
			if j.logprobs {
				res.tokens = append(res.tokens, tokenInfo{id: o.Token, logprob: o.Logprob, top: o.Top, offset: chars, prev: prev})
			}
			prev = o.Token
			piece, err := dec.Add(o.Token)
			if err != nil && decErr == nil {
				decErr = err
			}
			chars += len([]rune(piece))
			if !stopped {
				text, st := stop.push(piece)
				res.text += text
				stopped = st
			}
		}
		if o.Finish != engine.FinishNone {
			last = o
		}
	}
	// A context phase that goes on in a generation worker answers only the
	// text that is final: the decoder's held-back bytes (a byte-fallback
	// run that later tokens may still turn into another character) and a
	// possible stop-string prefix stay out, since the generation worker
	// answers the whole text again and the proxy streams this part first.
	if !stopped && last.Finish != engine.FinishContextDone {
		text, st := stop.push(dec.Flush())
		res.text += text
		stopped = st
		if !stopped {
			res.text += stop.flush()
		}
	}
	res.count = len(toks)
	switch {
	case last.Finish == engine.FinishAbort || last.Finish == engine.FinishNone:
		if last.Err != nil {
			return nil, classify(last.Err)
		}
		return nil, api.Internal("The engine aborted the context phase.")
	case decErr != nil:
		if last.KV != nil {
			s.deps.Disagg.Free(last.KV.Blocks)
		}
		return nil, api.Internal("Could not detokenize the first token: %v", decErr)
	case stopped:
		res.finish = api.FinishStop
	case last.Finish != engine.FinishContextDone:
		res.finish = string(last.Finish)
	}
	if last.KV == nil {
		return &res, nil
	}
	if res.finish != "" || ctx.Err() != nil {
		// Finished by a stop string, or nobody to answer: no transfer.
		s.deps.Disagg.Free(last.KV.Blocks)
		return &res, nil
	}
	params, e := s.deps.Disagg.Park(last.KV, toks, p.DisaggRequestID)
	if e != nil {
		return nil, e
	}
	res.params = params
	return &res, nil
}

// contextCompletion is a context worker's completions reply: the
// completion so far (the first token), finish_reason null unless it
// finished, disaggregated_params on the choice and the prompt's ids.
type contextCompletion struct {
	ID             string                    `json:"id"`
	Object         string                    `json:"object"`
	Created        int64                     `json:"created"`
	Model          string                    `json:"model"`
	Choices        []contextCompletionChoice `json:"choices"`
	Usage          *api.Usage                `json:"usage"`
	PromptTokenIDs []int32                   `json:"prompt_token_ids"`
}

type contextCompletionChoice struct {
	Index               int                      `json:"index"`
	Text                string                   `json:"text"`
	Logprobs            *api.CompletionLogprobs  `json:"logprobs"`
	FinishReason        *string                  `json:"finish_reason"`
	DisaggregatedParams *api.DisaggregatedParams `json:"disaggregated_params,omitempty"`
}

// contextChat is a context worker's chat reply (see contextCompletion).
type contextChat struct {
	ID             string              `json:"id"`
	Object         string              `json:"object"`
	Created        int64               `json:"created"`
	Model          string              `json:"model"`
	Choices        []contextChatChoice `json:"choices"`
	Usage          *api.Usage          `json:"usage"`
	PromptTokenIDs []int32             `json:"prompt_token_ids"`
}

type contextChatChoice struct {
	Index               int                      `json:"index"`
	Message             api.ChatResponseMessage  `json:"message"`
	Logprobs            *api.ChatLogprobs        `json:"logprobs"`
	FinishReason        *string                  `json:"finish_reason"`
	DisaggregatedParams *api.DisaggregatedParams `json:"disaggregated_params,omitempty"`
}

// serveContext answers a context_only request (never streamed: the proxy
// asks for the whole context reply at once).
func (s *Server) serveContext(w http.ResponseWriter, r *http.Request, j *job, p *api.DisaggregatedParams, chat bool) {
	res, e := s.runContext(r.Context(), j, p)
	if e != nil {
		s.writeError(w, e)
		return
	}
	s.metrics.e2e.Observe(timeSince(j))
	w.Header().Set(api.HeaderContextQueueMs, millis(res.queue))
	w.Header().Set(api.HeaderPrefillMs, millis(res.prefill))
	u := usage(j.prompts, res.count)
	if chat {
		c := contextChatChoice{Message: api.ChatResponseMessage{Role: api.RoleAssistant, Content: res.text},
			FinishReason: finishPtr(res.finish), DisaggregatedParams: res.params}
		if j.logprobs {
			c.Logprobs = s.chatLogprobs(res.tokens)
		}
		s.writeJSON(w, http.StatusOK, contextChat{ID: j.id, Object: api.ObjectChatCompletion, Created: j.start.Unix(),
			Model: s.opts.ModelName, Choices: []contextChatChoice{c}, Usage: u, PromptTokenIDs: j.prompts[0]})
		return
	}
	c := contextCompletionChoice{Text: res.text, FinishReason: finishPtr(res.finish), DisaggregatedParams: res.params}
	if j.logprobs {
		c.Logprobs = s.completionLogprobs(res.tokens)
	}
	s.writeJSON(w, http.StatusOK, contextCompletion{ID: j.id, Object: api.ObjectCompletion, Created: j.start.Unix(),
		Model: s.opts.ModelName, Choices: []contextCompletionChoice{c}, Usage: u, PromptTokenIDs: j.prompts[0]})
}

// timeSince is the time since j arrived, in seconds.
func timeSince(j *job) float64 { return time.Since(j.start).Seconds() }

// setKVHeaders reports a generation_only request's KV transfer.
func setKVHeaders(w http.ResponseWriter, moved api.KVTransfer) {
	w.Header().Set(api.HeaderKVBytes, strconv.FormatInt(moved.Bytes, 10))
	w.Header().Set(api.HeaderKVTransferMs, millis(moved.Duration))
}

// millis formats a duration in milliseconds for the breakdown headers.
func millis(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 3, 64)
}

// startPhase starts j as its disaggregated phase asks: a context_only
// request is answered here (ok false), a generation_only one first gets its
// KV from the context worker, a whole request just runs. On ok the caller
// reads events and must call cancel; otherwise the answer was written.
func (s *Server) startPhase(w http.ResponseWriter, r *http.Request, j *job, phase string, p *api.DisaggregatedParams, prompt []int32, chat bool) (<-chan event, context.CancelFunc, bool) {
	switch phase {
	case api.RequestContextOnly:
		s.serveContext(w, r, j, p, chat)
		return nil, nil, false
	case api.RequestGenerationOnly:
		resume, moved, e := s.deps.Disagg.Fetch(r.Context(), p, prompt)
		if e != nil {
			s.writeError(w, e)
			return nil, nil, false
		}
		j.resume = resume
		setKVHeaders(w, moved)
	}
	events, cancel, e := s.run(r.Context(), j)
	if e != nil {
		s.writeError(w, e)
		return nil, nil, false
	}
	return events, cancel, true
}
