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

// ---- answers and stream events: the fix-ups shared by both endpoints ----
//
// A completions answer and a chat answer differ only in their choices, so
// the proxy edits both with the same code below, reaching into each
// endpoint's types through answerParts and chunkParts. What differs (chat's
// role delta, its content pointer) stays in each endpoint's section.

// answerParts points at what the proxy edits in a non-streamed answer
// whose choices are of type C.
type answerParts[C any] struct {
	usage     *api.Usage
	promptIDs *[]int32
	choices   []C
	// choice points at one choice's internal params and finish reason.
	choice func(*C) (params **api.DisaggregatedParams, finish *string)
}

// chunkParts points at what the proxy edits in a stream event whose
// choices are of type C.
type chunkParts[C any] struct {
	id      *string
	usage   *api.Usage
	choices *[]C
}

// answerFromContext is call.fromContext: the context reply without its
// internal fields, every choice with the finish reason the proxy decided.
func answerFromContext[A, C any](data []byte, r *ctxResult, parts func(*A) answerParts[C]) ([]byte, error) {
	var reply A
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, err
	}
	p := parts(&reply)
	for i := range p.choices {
		params, finish := p.choice(&p.choices[i])
		*params, *finish = nil, r.finish
	}
	*p.promptIDs = nil
	return json.Marshal(&reply)
}

// fixAnswer is call.fixReply: it fills usage's missing prompt tokens and
// drops internal fields, and returns data as it came when neither applies.
func fixAnswer[A, C any](data []byte, r *ctxResult, parts func(*A) answerParts[C]) ([]byte, error) {
	if fix, err := replyNeedsFix(data, r); err != nil || !fix {
		return data, err
	}
	var reply A
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, err
	}
	p := parts(&reply)
	changed := fixUsage(p.usage, r.promptTokens()) || *p.promptIDs != nil
	*p.promptIDs = nil
	for i := range p.choices {
		if params, _ := p.choice(&p.choices[i]); *params != nil {
			*params = nil
			changed = true
		}
	}
	if !changed {
		return data, nil
	}
	return json.Marshal(&reply)
}

// contextStream is call.contextChunks: the chunk of the first choice, made
// by first with the finish reason when the context reply finished the
// request (nil otherwise), then, finished and asked for, the usage chunk
// with no choices. newChunk makes an endpoint's chunk with r's id, time
// and model.
func contextStream[K, C any](r *ctxResult, finished, withUsage bool,
	newChunk func(r *ctxResult, choices []C, u *api.Usage) *K, first func(finish *string) C) ([][]byte, error) {
	var finish *string
	if finished {
		f := r.finish
		finish = &f
	}
	b, err := json.Marshal(newChunk(r, []C{first(finish)}, nil))
	if err != nil {
		return nil, err
	}
	out := [][]byte{b}
	if finished && withUsage && r.usage != nil {
		if b, err = json.Marshal(newChunk(r, []C{}, r.usage)); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// fixStreamChunk is call.fixChunk: it fills usage's missing prompt
// tokens, sets the stream's id, and while the stream's start is trimmed,
// passes each choice through trim, which cuts what the client already has
// and reports whether the choice has anything left to send. An event left
// with neither choices nor usage is dropped.
func fixStreamChunk[K, C any](data []byte, st *streamState, parts func(*K) chunkParts[C], trim func(*streamState, *C) bool) ([]byte, bool, error) {
	if !st.needsFix(data) {
		return data, false, nil
	}
	skipping := st.skipping()
	var chunk K
	if err := json.Unmarshal(data, &chunk); err != nil {
		return nil, false, err
	}
	p := parts(&chunk)
	changed := fixUsage(p.usage, st.promptTokens)
	if st.id != "" && *p.id != st.id {
		*p.id, changed = st.id, true
	}
	if skipping {
		choices := *p.choices
		kept := choices[:0]
		for i := range choices {
			if trim(st, &choices[i]) {
				kept = append(kept, choices[i])
			}
		}
		if len(kept) == 0 && p.usage == nil {
			return nil, true, nil
		}
		*p.choices = kept
		changed = true
	}
	if !changed {
		return data, false, nil
	}
	out, err := json.Marshal(&chunk)
	return out, false, err
}

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
	return answerFromContext(data, r, completionAnswer)
}

// completionAnswer points the shared fix-ups at a completions answer.
func completionAnswer(a *api.Completion) answerParts[api.CompletionChoice] {
	choice := func(ch *api.CompletionChoice) (**api.DisaggregatedParams, *string) {
		return &ch.DisaggregatedParams, &ch.FinishReason
	}
	return answerParts[api.CompletionChoice]{usage: a.Usage, promptIDs: &a.PromptTokenIDs, choices: a.Choices, choice: choice}
}

func (c *completionCall) contextChunks(r *ctxResult, finished bool) ([][]byte, error) {
	return contextStream(r, finished, c.includeUsage(), newCompletionChunk, func(finish *string) api.CompletionChunkChoice {
		return api.CompletionChunkChoice{Index: 0, Text: r.text, FinishReason: finish}
	})
}

func newCompletionChunk(r *ctxResult, choices []api.CompletionChunkChoice, u *api.Usage) *api.CompletionChunk {
	return &api.CompletionChunk{ID: r.id, Object: api.ObjectCompletion, Created: r.created, Model: r.model, Choices: choices, Usage: u}
}

func (c *completionCall) fixReply(data []byte, r *ctxResult) ([]byte, error) {
	return fixAnswer(data, r, completionAnswer)
}

func (c *completionCall) fixChunk(data []byte, st *streamState) ([]byte, bool, error) {
	return fixStreamChunk(data, st, completionChunk, (*streamState).trimCompletion)
}

// trimCompletion cuts from a choice's text what the client already has;
// the choice stays while it has text, logprobs or a finish reason.
func (st *streamState) trimCompletion(ch *api.CompletionChunkChoice) bool {
	ch.Text = st.trim(ch.Text)
	return ch.Text != "" || ch.FinishReason != nil || ch.Logprobs != nil
}

// completionChunk points the shared fix-ups at a completions stream event.
func completionChunk(k *api.CompletionChunk) chunkParts[api.CompletionChunkChoice] {
	return chunkParts[api.CompletionChunkChoice]{id: &k.ID, usage: k.Usage, choices: &k.Choices}
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
	return answerFromContext(data, r, chatAnswer)
}

// chatAnswer points the shared fix-ups at a chat answer.
func chatAnswer(a *api.ChatCompletion) answerParts[api.ChatChoice] {
	choice := func(ch *api.ChatChoice) (**api.DisaggregatedParams, *string) {
		return &ch.DisaggregatedParams, &ch.FinishReason
	}
	return answerParts[api.ChatChoice]{usage: a.Usage, promptIDs: &a.PromptTokenIDs, choices: a.Choices, choice: choice}
}

// contextChunks: the first chunk carries the assistant's role, as a
// worker's first chunk does.
func (c *chatCall) contextChunks(r *ctxResult, finished bool) ([][]byte, error) {
	return contextStream(r, finished, c.includeUsage(), newChatChunk, func(finish *string) api.ChatChunkChoice {
		text := r.text
		return api.ChatChunkChoice{Index: 0, Delta: api.ChatDelta{Role: api.RoleAssistant, Content: &text}, FinishReason: finish}
	})
}

func newChatChunk(r *ctxResult, choices []api.ChatChunkChoice, u *api.Usage) *api.ChatCompletionChunk {
	return &api.ChatCompletionChunk{ID: r.id, Object: api.ObjectChatChunk, Created: r.created, Model: r.model, Choices: choices, Usage: u}
}

func (c *chatCall) fixReply(data []byte, r *ctxResult) ([]byte, error) {
	return fixAnswer(data, r, chatAnswer)
}

func (c *chatCall) fixChunk(data []byte, st *streamState) ([]byte, bool, error) {
	skipping := st.skipping()
	out, drop, err := fixStreamChunk(data, st, chatChunk, (*streamState).trimChat)
	// Once content arrived, later role deltas are the worker's to send.
	if skipping && err == nil && st.skip == "" {
		st.skipRole = false
	}
	return out, drop, err
}

// trimChat drops the role the client already has (skipRole) and cuts from
// the content what it has; the choice stays while it has a role, content,
// logprobs or a finish reason.
func (st *streamState) trimChat(ch *api.ChatChunkChoice) bool {
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
	return ch.Delta.Role != "" || ch.Delta.Content != nil || ch.FinishReason != nil || ch.Logprobs != nil
}

// chatChunk points the shared fix-ups at a chat stream event.
func chatChunk(k *api.ChatCompletionChunk) chunkParts[api.ChatChunkChoice] {
	return chunkParts[api.ChatChunkChoice]{id: &k.ID, usage: k.Usage, choices: &k.Choices}
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
