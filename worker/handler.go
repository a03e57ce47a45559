package worker

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"disagg/api"
	"disagg/worker/chat"
	roles "disagg/worker/disagg"
	"disagg/worker/server"
)

// The roles plug into the server's seam.
var _ server.Disaggregator = (*roles.Manager)(nil)

// NewServer builds the OpenAI server over a loaded runtime, ready to serve.
func NewServer(rt *Runtime, log *slog.Logger) *server.Server {
	deps := server.Deps{
		Generator: rt.Engine,
		Tokenizer: rt.Tokenizer,
		NewStreamDecoder: func(skip bool) server.StreamDecoder {
			return rt.Tokenizer.NewStreamDecoder(skip)
		},
		Stats: func() server.EngineStats {
			st := rt.Engine.Stats()
			return server.EngineStats{
				Running: st.Running, Waiting: st.Waiting,
				KVBlocksUsed: st.TotalBlocks - st.FreeBlocks, KVBlocksFree: st.FreeBlocks,
			}
		},
		Logger: log,
	}
	if rt.Disagg != nil {
		deps.Disagg = rt.Disagg
		deps.Collectors = rt.Disagg.Collectors()
	}
	if rt.Chat != nil && rt.Chat.Template != nil {
		deps.Chat = chatTemplate{rt.Chat}
	}
	s := server.New(server.Options{
		ModelName:    rt.ModelName,
		ModelRoot:    rt.Config.Model,
		MaxModelLen:  rt.MaxSeqLen,
		MaxBodyBytes: rt.Config.MaxBodyBytes,
		MaxN:         rt.Config.MaxN,
		APIKey:       rt.Config.APIKey,
	}, deps)
	s.SetReady(true)
	return s
}

// NewHandler is NewServer's HTTP handler.
func NewHandler(rt *Runtime, log *slog.Logger) http.Handler { return NewServer(rt, log).Handler() }

// chatTemplate adapts the model's chat template to the server's seam.
type chatTemplate struct{ cfg *chat.Config }

func (c chatTemplate) Render(msgs []api.ChatMessage, addGenerationPrompt bool) (string, error) {
	out := make([]chat.Message, len(msgs))
	for i, m := range msgs {
		out[i] = chat.Message{Role: m.Role, Name: m.Name, ToolCallID: m.ToolCallID}
		if m.Content.Present {
			out[i].Content = m.Content.Text
		}
		if len(m.ToolCalls) > 0 {
			var calls any
			if err := json.Unmarshal(m.ToolCalls, &calls); err == nil {
				out[i].ToolCalls = calls
			}
		}
	}
	return c.cfg.Template.Render(out, chat.RenderOptions{
		AddGenerationPrompt: addGenerationPrompt,
		BOSToken:            c.cfg.BOSToken,
		EOSToken:            c.cfg.EOSToken,
	})
}
