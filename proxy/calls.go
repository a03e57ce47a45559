package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"disagg/api"
)

// ctxResult is what the proxy keeps of a context server's reply.
type ctxResult struct {
	id      string
	created int64
	model   string
	// text is the first choice's text (the first token's).
	text   string
	finish string
	params *api.DisaggregatedParams
	// promptIDs are the prompt's token ids (top-level prompt_token_ids) as
	// the JSON array the context server sent: the proxy passes them on
	// without reading them.
	promptIDs json.RawMessage
	usage     *api.Usage
	// breakdown holds the context server's queue and prefill times
	// (api.HeaderContextQueueMs, api.HeaderPrefillMs), passed to the client.
	breakdown map[string]string
}

// promptTokens is the prompt length the context server reported.
func (r *ctxResult) promptTokens() int {
	if r.usage != nil && r.usage.PromptTokens > 0 {
		return r.usage.PromptTokens
	}
	if !r.hasPromptIDs() {
		return 0
	}
	return bytes.Count(r.promptIDs, []byte(",")) + 1
}

// hasPromptIDs reports whether the reply carried a non-empty token list.
func (r *ctxResult) hasPromptIDs() bool {
	t := bytes.TrimSpace(r.promptIDs)
	return len(t) > 2 && t[0] == '['
}

// ctxCompletionReply is the part of a context server's completions reply
// the proxy reads.
type ctxCompletionReply struct {
	ID      string `json:"id"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Text                string                   `json:"text"`
		FinishReason        string                   `json:"finish_reason"`
		DisaggregatedParams *api.DisaggregatedParams `json:"disaggregated_params"`
	} `json:"choices"`
	Usage          *api.Usage      `json:"usage"`
	PromptTokenIDs json.RawMessage `json:"prompt_token_ids"`
}

// ctxChatReply is the part of a context server's chat reply the proxy
// reads.
type ctxChatReply struct {
	ID      string `json:"id"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		FinishReason        string                   `json:"finish_reason"`
		DisaggregatedParams *api.DisaggregatedParams `json:"disaggregated_params"`
	} `json:"choices"`
	Usage          *api.Usage      `json:"usage"`
	PromptTokenIDs json.RawMessage `json:"prompt_token_ids"`
}

// replyCheck is what the proxy reads of a generation server's
// non-streamed answer on the fast path.
type replyCheck struct {
	Usage *api.Usage `json:"usage"`
}

var (
	paramsKey    = []byte(`"disaggregated_params"`)
	promptIDsKey = []byte(`"prompt_token_ids"`)
)

// replyNeedsFix reports whether a generation answer must be rewritten:
// it carries internal fields, or usage without prompt tokens. It fails
// when data is not a JSON object.
func replyNeedsFix(data []byte, r *ctxResult) (bool, error) {
	if bytes.Contains(data, paramsKey) || bytes.Contains(data, promptIDsKey) {
		return true, nil
	}
	var rc replyCheck
	if err := json.Unmarshal(data, &rc); err != nil {
		return false, err
	}
	return rc.Usage != nil && rc.Usage.PromptTokens == 0 && r.promptTokens() > 0, nil
}

// call is one client request of either endpoint, as the request flow needs
// it: the bodies for both phases, and the answers built from or fixed up
// after each.
type call interface {
	path() string
	streaming() bool
	includeUsage() bool
	// earlyOK: the first token may be streamed from the context reply (one
	// choice, no logprobs).
	earlyOK() bool
	// maxTokens is the requested max_tokens, or 0 when absent.
	maxTokens() int
	route() *routeInfo
	contextBody(disaggID int64) ([]byte, error)
	parseContext(data []byte) (*ctxResult, error)
	generationBody(r *ctxResult, disaggID int64) ([]byte, error)
	// fromContext is the non-streamed answer when the context reply
	// finished the request.
	fromContext(data []byte, r *ctxResult) ([]byte, error)
	// contextChunks are the stream events built from the context reply:
	// the whole answer when finished (usage included when asked), else the
	// first token's chunk.
	contextChunks(r *ctxResult, finished bool) ([][]byte, error)
	// fixReply checks a generation server's non-streamed answer and fixes
	// what the proxy owns: usage's prompt tokens, internal fields.
	fixReply(data []byte, r *ctxResult) ([]byte, error)
	// fixChunk rewrites one streamed event; drop: send nothing.
	fixChunk(data []byte, st *streamState) (out []byte, drop bool, err error)
}

// streamState follows a relayed generation stream.
type streamState struct {
	// skip is the text already sent from the context reply that the
	// generation stream repeats at its start.
	skip string
	// skipRole: the role was sent already (chat).
	skipRole bool
	// promptTokens fixes a usage chunk that lacks them.
	promptTokens int
	// mismatch: the generation stream did not start with skip.
	mismatch bool
	// id is the stream's id, set when the first chunk came from the
	// context reply; idNeedle is it as JSON ("id":"..."). Our workers use
	// the X-Request-Id the proxy sends both as their answer's id, so the
	// generation chunks carry it already; a chunk that does not is
	// rewritten, since clients (the OpenAI SDKs' accumulators) drop chunks
	// of another id.
	id       string
	idNeedle []byte
}

// setID records the id that every chunk of the stream must carry.
func (st *streamState) setID(id string) error {
	q, err := json.Marshal(id)
	if err != nil {
		return err
	}
	st.id = id
	st.idNeedle = append([]byte(`"id":`), q...)
	return nil
}

// needsFix reports whether a chunk must be decoded: its start is trimmed,
// it carries usage, or its id differs.
func (st *streamState) needsFix(data []byte) bool {
	return st.skipping() || bytes.Contains(data, usageKey) || (st.idNeedle != nil && !bytes.Contains(data, st.idNeedle))
}

// skipping reports whether the stream's start is still being trimmed.
func (st *streamState) skipping() bool { return st.skip != "" || st.skipRole }

// trim removes the part of text the client already has.
func (st *streamState) trim(text string) string {
	if st.skip == "" {
		return text
	}
	switch {
	case strings.HasPrefix(text, st.skip):
		text = text[len(st.skip):]
		st.skip = ""
	case strings.HasPrefix(st.skip, text):
		st.skip = st.skip[len(text):]
		text = ""
	default:
		n := 0
		for n < len(text) && n < len(st.skip) && text[n] == st.skip[n] {
			n++
		}
		st.mismatch = true
		st.skip = ""
		text = text[n:]
	}
	return text
}

// fixUsage sets missing prompt tokens; it reports whether u changed.
func fixUsage(u *api.Usage, prompt int) bool {
	if u == nil || u.PromptTokens > 0 || prompt == 0 {
		return false
	}
	u.PromptTokens = prompt
	u.TotalTokens = prompt + u.CompletionTokens
	return true
}

var usageKey = []byte(`"usage"`)

func contextParams(id int64) *api.DisaggregatedParams {
	return &api.DisaggregatedParams{RequestType: api.RequestContextOnly, DisaggRequestID: &id}
}

func generationParams(r *ctxResult, id int64) *api.DisaggregatedParams {
	p := *r.params
	p.RequestType = api.RequestGenerationOnly
	p.DisaggRequestID = &id
	return &p
}

var errNoParams = errors.New("the context reply has no choices[0].disaggregated_params with first_gen_tokens")

// ---- /v1/completions ----

type completionCall struct {
	req  api.CompletionRequest
	info routeInfo
}

var _ call = (*completionCall)(nil)

func (c *completionCall) path() string       { return "/v1/completions" }
func (c *completionCall) streaming() bool    { return c.req.Stream }
func (c *completionCall) includeUsage() bool { return c.req.IncludeUsage() }
func (c *completionCall) earlyOK() bool      { return c.req.Logprobs == nil && c.req.Choices() == 1 }
func (c *completionCall) route() *routeInfo  { return &c.info }
func (c *completionCall) maxTokens() int     { return c.req.MaxTokensOrDefault() }

func (c *completionCall) contextBody(id int64) ([]byte, error) {
	r := c.req
	r.Stream = false
	r.StreamOptions = nil
	r.DisaggregatedParams = contextParams(id)
	return json.Marshal(&r)
}

func (c *completionCall) parseContext(data []byte) (*ctxResult, error) {
	var reply ctxCompletionReply
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, err
	}
	if len(reply.Choices) == 0 {
		return nil, errors.New("the context reply has no choices")
	}
	ch := &reply.Choices[0]
	return &ctxResult{id: reply.ID, created: reply.Created, model: reply.Model, text: ch.Text, finish: ch.FinishReason,
		params: ch.DisaggregatedParams, promptIDs: reply.PromptTokenIDs, usage: reply.Usage}, nil
}

// completionGenRequest is the generation_only completions request: the
// client's request with the prompt replaced by the context server's token
// ids, passed on as they came (trtllm does the same).
type completionGenRequest struct {
	api.CompletionRequest
	// Prompt shadows CompletionRequest.Prompt.
	Prompt json.RawMessage `json:"prompt"`
}

func (c *completionCall) generationBody(r *ctxResult, id int64) ([]byte, error) {
	g := c.req
	g.DisaggregatedParams = generationParams(r, id)
	if !r.hasPromptIDs() {
		return json.Marshal(&g)
	}
	return json.Marshal(&completionGenRequest{CompletionRequest: g, Prompt: r.promptIDs})
}

func (c *completionCall) fromContext(data []byte, r *ctxResult) ([]byte, error) {
	var reply api.Completion
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, err
	}
	for i := range reply.Choices {
		reply.Choices[i].DisaggregatedParams = nil
		reply.Choices[i].FinishReason = r.finish
	}
	reply.PromptTokenIDs = nil
	return json.Marshal(&reply)
}

func (c *completionCall) contextChunks(r *ctxResult, finished bool) ([][]byte, error) {
	chunk := api.CompletionChunk{ID: r.id, Object: api.ObjectCompletion, Created: r.created, Model: r.model,
		Choices: []api.CompletionChunkChoice{{Index: 0, Text: r.text}}}
	if !finished {
		b, err := json.Marshal(&chunk)
		return [][]byte{b}, err
	}
	f := r.finish
	chunk.Choices[0].FinishReason = &f
	out := make([][]byte, 0, 2)
	b, err := json.Marshal(&chunk)
	if err != nil {
		return nil, err
	}
	out = append(out, b)
	if c.includeUsage() && r.usage != nil {
		u := api.CompletionChunk{ID: r.id, Object: api.ObjectCompletion, Created: r.created, Model: r.model,
			Choices: []api.CompletionChunkChoice{}, Usage: r.usage}
		if b, err = json.Marshal(&u); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func (c *completionCall) fixReply(data []byte, r *ctxResult) ([]byte, error) {
	if fix, err := replyNeedsFix(data, r); err != nil || !fix {
		return data, err
	}
	var reply api.Completion
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, err
	}
	changed := fixUsage(reply.Usage, r.promptTokens()) || reply.PromptTokenIDs != nil
	reply.PromptTokenIDs = nil
	for i := range reply.Choices {
		if reply.Choices[i].DisaggregatedParams != nil {
			reply.Choices[i].DisaggregatedParams = nil
			changed = true
		}
	}
	if !changed {
		return data, nil
	}
	return json.Marshal(&reply)
}

func (c *completionCall) fixChunk(data []byte, st *streamState) ([]byte, bool, error) {
	if !st.needsFix(data) {
		return data, false, nil
	}
	skipping := st.skipping()
	var chunk api.CompletionChunk
	if err := json.Unmarshal(data, &chunk); err != nil {
		return nil, false, err
	}
	changed := fixUsage(chunk.Usage, st.promptTokens)
	if st.id != "" && chunk.ID != st.id {
		chunk.ID, changed = st.id, true
	}
	if skipping {
		kept := chunk.Choices[:0]
		for _, ch := range chunk.Choices {
			ch.Text = st.trim(ch.Text)
			if ch.Text != "" || ch.FinishReason != nil || ch.Logprobs != nil {
				kept = append(kept, ch)
			}
		}
		if len(kept) == 0 && chunk.Usage == nil {
			return nil, true, nil
		}
		chunk.Choices = kept
		changed = true
	}
	if !changed {
		return data, false, nil
	}
	out, err := json.Marshal(&chunk)
	return out, false, err
}

// ---- /v1/chat/completions ----

// chatGenRequest is the generation_only chat request: the client's request
// plus the prompt's token ids from the context server (trtllm's chat
// request field), so that the generation worker does not render and
// tokenize the messages again.
type chatGenRequest struct {
	api.ChatCompletionRequest
	// PromptTokenIDs are the rendered prompt's token ids, as the context
	// server sent them.
	PromptTokenIDs json.RawMessage `json:"prompt_token_ids,omitempty"`
}

type chatCall struct {
	req  api.ChatCompletionRequest
	info routeInfo
}

var _ call = (*chatCall)(nil)

func (c *chatCall) path() string       { return "/v1/chat/completions" }
func (c *chatCall) streaming() bool    { return c.req.Stream }
func (c *chatCall) includeUsage() bool { return c.req.IncludeUsage() }
func (c *chatCall) earlyOK() bool      { return !c.req.Logprobs && c.req.Choices() == 1 }
func (c *chatCall) route() *routeInfo  { return &c.info }

func (c *chatCall) maxTokens() int {
	if m := c.req.MaxTokensRequested(); m != nil {
		return *m
	}
	return 0
}

func (c *chatCall) contextBody(id int64) ([]byte, error) {
	r := c.req
	r.Stream = false
	r.StreamOptions = nil
	r.DisaggregatedParams = contextParams(id)
	return json.Marshal(&r)
}

func (c *chatCall) parseContext(data []byte) (*ctxResult, error) {
	var reply ctxChatReply
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, err
	}
	if len(reply.Choices) == 0 {
		return nil, errors.New("the context reply has no choices")
	}
	ch := &reply.Choices[0]
	return &ctxResult{id: reply.ID, created: reply.Created, model: reply.Model, text: ch.Message.Content, finish: ch.FinishReason,
		params: ch.DisaggregatedParams, promptIDs: reply.PromptTokenIDs, usage: reply.Usage}, nil
}

func (c *chatCall) generationBody(r *ctxResult, id int64) ([]byte, error) {
	g := chatGenRequest{ChatCompletionRequest: c.req}
	if r.hasPromptIDs() {
		g.PromptTokenIDs = r.promptIDs
	}
	g.DisaggregatedParams = generationParams(r, id)
	return json.Marshal(&g)
}

func (c *chatCall) fromContext(data []byte, r *ctxResult) ([]byte, error) {
	var reply api.ChatCompletion
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, err
	}
	for i := range reply.Choices {
		reply.Choices[i].DisaggregatedParams = nil
		reply.Choices[i].FinishReason = r.finish
	}
	reply.PromptTokenIDs = nil
	return json.Marshal(&reply)
}

func (c *chatCall) contextChunks(r *ctxResult, finished bool) ([][]byte, error) {
	text := r.text
	chunk := api.ChatCompletionChunk{ID: r.id, Object: api.ObjectChatChunk, Created: r.created, Model: r.model,
		Choices: []api.ChatChunkChoice{{Index: 0, Delta: api.ChatDelta{Role: api.RoleAssistant, Content: &text}}}}
	if !finished {
		b, err := json.Marshal(&chunk)
		return [][]byte{b}, err
	}
	f := r.finish
	chunk.Choices[0].FinishReason = &f
	out := make([][]byte, 0, 2)
	b, err := json.Marshal(&chunk)
	if err != nil {
		return nil, err
	}
	out = append(out, b)
	if c.includeUsage() && r.usage != nil {
		u := api.ChatCompletionChunk{ID: r.id, Object: api.ObjectChatChunk, Created: r.created, Model: r.model,
			Choices: []api.ChatChunkChoice{}, Usage: r.usage}
		if b, err = json.Marshal(&u); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func (c *chatCall) fixReply(data []byte, r *ctxResult) ([]byte, error) {
	if fix, err := replyNeedsFix(data, r); err != nil || !fix {
		return data, err
	}
	var reply api.ChatCompletion
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, err
	}
	changed := fixUsage(reply.Usage, r.promptTokens()) || reply.PromptTokenIDs != nil
	reply.PromptTokenIDs = nil
	for i := range reply.Choices {
		if reply.Choices[i].DisaggregatedParams != nil {
			reply.Choices[i].DisaggregatedParams = nil
			changed = true
		}
	}
	if !changed {
		return data, nil
	}
	return json.Marshal(&reply)
}

func (c *chatCall) fixChunk(data []byte, st *streamState) ([]byte, bool, error) {
	if !st.needsFix(data) {
		return data, false, nil
	}
	skipping := st.skipping()
	var chunk api.ChatCompletionChunk
	if err := json.Unmarshal(data, &chunk); err != nil {
		return nil, false, err
	}
	changed := fixUsage(chunk.Usage, st.promptTokens)
	if st.id != "" && chunk.ID != st.id {
		chunk.ID, changed = st.id, true
	}
	if skipping {
		kept := chunk.Choices[:0]
		for _, ch := range chunk.Choices {
			if st.skipRole {
				ch.Delta.Role = ""
			}
			if ch.Delta.Content != nil {
				t := st.trim(*ch.Delta.Content)
				ch.Delta.Content = &t
				if t == "" {
					ch.Delta.Content = nil
				}
			}
			if ch.Delta.Role != "" || ch.Delta.Content != nil || ch.FinishReason != nil || ch.Logprobs != nil {
				kept = append(kept, ch)
			}
		}
		// Once content arrived, later role deltas are the worker's to send.
		if st.skip == "" {
			st.skipRole = false
		}
		if len(kept) == 0 && chunk.Usage == nil {
			return nil, true, nil
		}
		chunk.Choices = kept
		changed = true
	}
	if !changed {
		return data, false, nil
	}
	out, err := json.Marshal(&chunk)
	return out, false, err
}

// ---- decoding and checks shared by both endpoints ----

// unsupported is the 400 for a request shape the disaggregated flow cannot
// serve.
func unsupported(param, format string, a ...any) *api.Error {
	return api.InvalidRequest(param, format, a...).WithCode(api.CodeUnsupported)
}

func newCompletionCall(body []byte) (*completionCall, *api.Error) {
	c := &completionCall{}
	if e := api.DecodeJSON(body, &c.req); e != nil {
		return nil, e
	}
	if e := c.req.Validate(0); e != nil {
		return nil, e
	}
	if c.req.Prompt.Len() != 1 {
		return nil, unsupported("prompt", "Disaggregated serving takes one prompt per request; got %d.", c.req.Prompt.Len())
	}
	if c.req.Choices() != 1 {
		return nil, unsupported("n", "Disaggregated serving supports n = 1 only; got %d.", c.req.Choices())
	}
	if e := checkClientParams(c.req.DisaggregatedParams); e != nil {
		return nil, e
	}
	if len(c.req.Prompt.Texts) == 1 {
		c.info.textKey = c.req.Prompt.Texts[0]
		c.info.tokens = len(c.info.textKey)/4 + 1
	} else {
		c.info.tokenKey = c.req.Prompt.Tokens[0]
		c.info.tokens = len(c.info.tokenKey)
	}
	return c, nil
}

func newChatCall(body []byte) (*chatCall, *api.Error) {
	c := &chatCall{}
	if e := api.DecodeJSON(body, &c.req); e != nil {
		return nil, e
	}
	if e := c.req.Validate(0); e != nil {
		return nil, e
	}
	if c.req.Choices() != 1 {
		return nil, unsupported("n", "Disaggregated serving supports n = 1 only; got %d.", c.req.Choices())
	}
	if e := checkClientParams(c.req.DisaggregatedParams); e != nil {
		return nil, e
	}
	var b strings.Builder
	for _, m := range c.req.Messages {
		b.WriteString(m.Role)
		b.WriteByte('\n')
		b.WriteString(m.Content.Text)
		b.WriteByte('\n')
	}
	c.info.textKey = b.String()
	c.info.tokens = len(c.info.textKey)/4 + 1
	return c, nil
}

// checkClientParams refuses disaggregated_params from a client: the proxy
// sets them.
func checkClientParams(p *api.DisaggregatedParams) *api.Error {
	if p == nil || p.RequestType == "" || p.RequestType == api.RequestContextAndGeneration {
		return nil
	}
	return api.InvalidRequest("disaggregated_params.request_type",
		"The proxy sets disaggregated_params itself; a client may not send request_type %q.", p.RequestType)
}

// finished reports whether the context reply already ends the request:
// EOS or a stop string on the first token, or max_tokens reached by it. In
// the second case the reply's finish reason becomes "length" whatever the
// context server said (it may say the request is not finished, since its
// phase is only the first token).
func finished(r *ctxResult, maxTokens int) bool {
	if r.finish == api.FinishStop {
		return true
	}
	n := 1
	if r.params != nil && len(r.params.FirstGenTokens) > 0 {
		n = len(r.params.FirstGenTokens)
	}
	if maxTokens > 0 && maxTokens <= n {
		r.finish = api.FinishLength
		return true
	}
	return false
}

// checkContext checks that a context reply that does not finish the
// request carries what the generation server needs.
func checkContext(r *ctxResult) error {
	if r.params == nil || len(r.params.FirstGenTokens) == 0 {
		return errNoParams
	}
	if r.finish == api.FinishAbort {
		return fmt.Errorf("the context server aborted the request")
	}
	return nil
}
