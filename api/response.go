package api

// Object names of the response types.
const (
	ObjectCompletion     = "text_completion"
	ObjectChatCompletion = "chat.completion"
	ObjectChatChunk      = "chat.completion.chunk"
	ObjectModel          = "model"
	ObjectList           = "list"
)

// Finish reasons of a choice.
const (
	FinishStop   = "stop"
	FinishLength = "length"
	FinishAbort  = "abort"
)

// Usage counts tokens of one request: the prompts once each, and every
// choice's generated tokens.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// CompletionLogprobs are completions' log probabilities, one entry per
// generated token in each list.
type CompletionLogprobs struct {
	// Tokens are the tokens' texts.
	Tokens []string `json:"tokens"`
	// TokenLogprobs are the sampled tokens' log probabilities.
	TokenLogprobs []float64 `json:"token_logprobs"`
	// TopLogprobs map the most likely tokens' texts to their log
	// probabilities (the sampled one included).
	TopLogprobs []map[string]float64 `json:"top_logprobs"`
	// TextOffset is each token's offset in the choice's text, in characters.
	TextOffset []int `json:"text_offset"`
}

// CompletionChoice is one choice of a completions response.
type CompletionChoice struct {
	Index        int                 `json:"index"`
	Text         string              `json:"text"`
	Logprobs     *CompletionLogprobs `json:"logprobs"`
	FinishReason string              `json:"finish_reason"`
	// DisaggregatedParams is set on a context worker's reply.
	DisaggregatedParams *DisaggregatedParams `json:"disaggregated_params,omitempty"`
}

// Completion is the answer to a non-streaming completions request.
type Completion struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []CompletionChoice `json:"choices"`
	Usage   *Usage             `json:"usage,omitempty"`
	// PromptTokenIDs (trtllm disaggregated) lets the generation worker skip
	// tokenizing; set on a context worker's reply.
	PromptTokenIDs []int32 `json:"prompt_token_ids,omitempty"`
}

// CompletionChunkChoice is one choice of a streamed completions chunk.
type CompletionChunkChoice struct {
	Index        int                 `json:"index"`
	Text         string              `json:"text"`
	Logprobs     *CompletionLogprobs `json:"logprobs"`
	FinishReason *string             `json:"finish_reason"`
}

// CompletionChunk is one server-sent event of a streamed completions
// answer. The usage chunk has no choices.
type CompletionChunk struct {
	ID      string                  `json:"id"`
	Object  string                  `json:"object"`
	Created int64                   `json:"created"`
	Model   string                  `json:"model"`
	Choices []CompletionChunkChoice `json:"choices"`
	Usage   *Usage                  `json:"usage,omitempty"`
}

// TopLogprob is one alternative token in chat logprobs.
type TopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	// Bytes are the token's UTF-8 bytes (a JSON array of integers).
	Bytes []int `json:"bytes"`
}

// ChatTokenLogprob is one generated token in chat logprobs.
type ChatTokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []TopLogprob `json:"top_logprobs"`
}

// ChatLogprobs are chat's log probabilities.
type ChatLogprobs struct {
	Content []ChatTokenLogprob `json:"content"`
}

// ChatResponseMessage is the assistant's message in a chat answer.
type ChatResponseMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ChatChoice is one choice of a chat answer.
type ChatChoice struct {
	Index        int                 `json:"index"`
	Message      ChatResponseMessage `json:"message"`
	Logprobs     *ChatLogprobs       `json:"logprobs"`
	FinishReason string              `json:"finish_reason"`
	// DisaggregatedParams is set on a context worker's reply.
	DisaggregatedParams *DisaggregatedParams `json:"disaggregated_params,omitempty"`
}

// ChatCompletion is the answer to a non-streaming chat request.
type ChatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []ChatChoice `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
	// PromptTokenIDs: see Completion.PromptTokenIDs.
	PromptTokenIDs []int32 `json:"prompt_token_ids,omitempty"`
}

// ChatDelta is the new part of a streamed message: the role in a choice's
// first chunk, then content.
type ChatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// ChatChunkChoice is one choice of a streamed chat chunk.
type ChatChunkChoice struct {
	Index        int           `json:"index"`
	Delta        ChatDelta     `json:"delta"`
	Logprobs     *ChatLogprobs `json:"logprobs"`
	FinishReason *string       `json:"finish_reason"`
}

// ChatCompletionChunk is one server-sent event of a streamed chat answer.
// The usage chunk has no choices.
type ChatCompletionChunk struct {
	ID      string            `json:"id"`
	Object  string            `json:"object"`
	Created int64             `json:"created"`
	Model   string            `json:"model"`
	Choices []ChatChunkChoice `json:"choices"`
	Usage   *Usage            `json:"usage,omitempty"`
}

// Model describes a served model, as GET /v1/models lists it.
type Model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
	// Root is the model's folder or original name (vLLM).
	Root string `json:"root,omitempty"`
	// MaxModelLen is the context length in tokens (vLLM).
	MaxModelLen int `json:"max_model_len,omitempty"`
}

// ModelList is the answer to GET /v1/models.
type ModelList struct {
	Object string  `json:"object"`
	Data   []Model `json:"data"`
}
