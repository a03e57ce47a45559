package server

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// sdkSuite drives a server at baseURL with the official Go SDK: completions
// and chat, plain and streamed, and a bad request's error shape. wantText,
// when not empty, is the text every 8-token answer must have.
func sdkSuite(t *testing.T, baseURL, apiKey, model string, wantText func(string) bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := openai.NewClient(option.WithBaseURL(baseURL+"/v1/"), option.WithAPIKey(apiKey), option.WithMaxRetries(0))

	t.Run("completion", func(t *testing.T) {
		c, err := client.Completions.New(ctx, openai.CompletionNewParams{
			Model:       openai.CompletionNewParamsModel(model),
			Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
			MaxTokens:   openai.Int(8),
			Temperature: openai.Float(0),
			Logprobs:    openai.Int(2),
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Choices) != 1 || c.Usage.CompletionTokens == 0 || c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens {
			t.Fatalf("completion %+v", c)
		}
		if !wantText(c.Choices[0].Text) {
			t.Errorf("text %q", c.Choices[0].Text)
		}
		if n := len(c.Choices[0].Logprobs.Tokens); n != int(c.Usage.CompletionTokens) || len(c.Choices[0].Logprobs.TopLogprobs) != n {
			t.Errorf("logprobs %+v for %d tokens", c.Choices[0].Logprobs, c.Usage.CompletionTokens)
		}
	})
	t.Run("completion stream", func(t *testing.T) {
		stream := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
			Model:         openai.CompletionNewParamsModel(model),
			Prompt:        openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
			MaxTokens:     openai.Int(8),
			Temperature:   openai.Float(0),
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		var text strings.Builder
		finish, usage := "", int64(0)
		for stream.Next() {
			ch := stream.Current()
			for _, c := range ch.Choices {
				text.WriteString(c.Text)
				if c.FinishReason != "" {
					finish = string(c.FinishReason)
				}
			}
			if ch.Usage.TotalTokens > 0 {
				usage = ch.Usage.CompletionTokens
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if !wantText(text.String()) || finish == "" || usage == 0 {
			t.Errorf("text %q finish %q usage %d", text.String(), finish, usage)
		}
	})
	t.Run("chat", func(t *testing.T) {
		c, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:               model,
			Messages:            []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Hello!")},
			MaxCompletionTokens: openai.Int(8),
			Temperature:         openai.Float(0),
			N:                   openai.Int(2),
			Logprobs:            openai.Bool(true),
			TopLogprobs:         openai.Int(2),
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Choices) != 2 || c.Choices[1].Index != 1 || c.Choices[0].Message.Role != "assistant" || c.Usage.CompletionTokens == 0 {
			t.Fatalf("chat %+v", c)
		}
		if !wantText(c.Choices[0].Message.Content) || c.Choices[0].Message.Content != c.Choices[1].Message.Content {
			t.Errorf("contents %q %q", c.Choices[0].Message.Content, c.Choices[1].Message.Content)
		}
		if lp := c.Choices[0].Logprobs.Content; len(lp) == 0 || len(lp[0].TopLogprobs) != 2 {
			t.Errorf("logprobs %+v", c.Choices[0].Logprobs)
		}
	})
	t.Run("chat stream", func(t *testing.T) {
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:               model,
			Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello!")},
			MaxCompletionTokens: openai.Int(8),
			Temperature:         openai.Float(0),
			StreamOptions:       openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		acc := openai.ChatCompletionAccumulator{}
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if len(acc.Choices) != 1 || !wantText(acc.Choices[0].Message.Content) || acc.Choices[0].FinishReason == "" || acc.Usage.CompletionTokens == 0 {
			t.Errorf("accumulated %+v", acc.ChatCompletion)
		}
	})
	t.Run("bad request", func(t *testing.T) {
		_, err := client.Completions.New(ctx, openai.CompletionNewParams{
			Model:       openai.CompletionNewParamsModel(model),
			Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")},
			Temperature: openai.Float(5),
		})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "temperature" || apiErr.Type != "invalid_request_error" {
			t.Errorf("error %v", err)
		}
		_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:    "no-such-model",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello!")},
		})
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
			t.Errorf("error %v", err)
		}
	})
	t.Run("models", func(t *testing.T) {
		page, err := client.Models.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Data) != 1 || page.Data[0].ID != model {
			t.Errorf("models %+v", page.Data)
		}
	})
}

func TestOpenAIGoSDKFake(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "The end."}, func(o *Options, _ *Deps) { o.APIKey = "test-key" })
	sdkSuite(t, ts.URL, "test-key", testModel, func(s string) bool { return s == "The end." })
}

func TestOpenAIGoSDKStreamError(t *testing.T) {
	_, ts := newTestServer(t, &fakeGen{reply: "abcdef", failAfter: 2}, nil)
	client := openai.NewClient(option.WithBaseURL(ts.URL+"/v1/"), option.WithAPIKey("x"), option.WithMaxRetries(0))
	stream := client.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model:    testModel,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello!")},
	})
	for stream.Next() {
	}
	if err := stream.Err(); err == nil || !strings.Contains(err.Error(), "device lost") {
		t.Errorf("stream error %v", err)
	}
}
