// Package server is the worker's OpenAI-compatible HTTP server:
// POST /v1/completions and /v1/chat/completions (plain or streamed as
// server-sent events), GET /v1/models, /health and /metrics. It turns each
// OpenAI request into engine requests (one per prompt and choice), detokenizes
// the engine's tokens incrementally, cuts the text at stop strings, and
// answers in the OpenAI shapes of package api, errors included. Requests
// whose disaggregated_params.request_type is context_only or
// generation_only go through the Disaggregator seam (package
// worker/disagg): the context phase answers with the first token and the
// transfer state, the generation phase starts from the transferred KV.
//
// It consumes the engine, the tokenizer and the chat template through the
// small interfaces below, so that tests can put fakes at those seams.
package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"disagg/api"
	"disagg/worker/engine"
)

// Generator runs sequences: the engine.
type Generator interface {
	// Submit starts r; the channel carries one Output per token and is
	// closed after the one with Finish set. Cancelling ctx aborts r.
	Submit(ctx context.Context, r *engine.Request) (<-chan engine.Output, error)
}

// Tokenizer turns text into token ids and back.
type Tokenizer interface {
	// Encode tokenizes text, adding BOS etc. when addSpecialTokens.
	Encode(text string, addSpecialTokens bool) ([]int32, error)
	// Decode turns ids into text.
	Decode(ids []int32, skipSpecialTokens bool) (string, error)
	// VocabSize is the number of token ids.
	VocabSize() int
}

// StreamDecoder detokenizes one sequence incrementally: Add returns only
// whole UTF-8 characters, and the concatenation of every Add and the final
// Flush equals the decoding of all ids.
type StreamDecoder interface {
	Add(id int32) (string, error)
	Flush() string
}

// ChatTemplate renders a conversation into prompt text.
type ChatTemplate interface {
	// Render renders msgs, ending with the assistant's turn header when
	// addGenerationPrompt.
	Render(msgs []api.ChatMessage, addGenerationPrompt bool) (string, error)
}

// EngineStats is a snapshot of the engine for the metrics gauges.
type EngineStats struct {
	// Running and Waiting count sequences being decoded and queued.
	Running, Waiting int
	// KVBlocksUsed and KVBlocksFree count the KV pool's blocks.
	KVBlocksUsed, KVBlocksFree int
}

// Options configure a Server.
type Options struct {
	// ModelName is the served model name (--served-model-name, or the
	// model folder's base name); requests naming another model get 404.
	ModelName string
	// ModelRoot is reported as the model's "root" in /v1/models (optional).
	ModelRoot string
	// MaxModelLen is the context length in tokens (prompt + completion).
	// Default 2048.
	MaxModelLen int
	// MaxBodyBytes limits request bodies (413 beyond). Default 4 MiB.
	MaxBodyBytes int64
	// MaxN limits n. Default 128.
	MaxN int
	// APIKey, when set, is required as "Authorization: Bearer <key>" on
	// /v1/*.
	APIKey string
}

// Deps are what the server drives.
type Deps struct {
	// Generator runs the sequences (required).
	Generator Generator
	// Tokenizer tokenizes prompts and detokenizes output (required).
	Tokenizer Tokenizer
	// NewStreamDecoder makes a sequence's incremental detokenizer;
	// nil: one built on Tokenizer.Decode.
	NewStreamDecoder func(skipSpecialTokens bool) StreamDecoder
	// Chat renders chat requests; nil: the model has no chat template and
	// chat requests get 400.
	Chat ChatTemplate
	// Stats feeds the engine gauges of /metrics (optional).
	Stats func() EngineStats
	// Logger logs server errors; nil: slog.Default().
	Logger *slog.Logger
	// Disagg runs context_only and generation_only requests; nil: they
	// get 503.
	Disagg Disaggregator
	// Collectors are more metrics for /metrics (the transfer metrics).
	Collectors []prometheus.Collector
}

// Server answers OpenAI requests with one model.
type Server struct {
	opts    Options
	deps    Deps
	log     *slog.Logger
	ready   atomic.Bool
	metrics *metrics
	created int64
	handler http.Handler
}

// New makes a server; it reports not ready (/health 503) until SetReady.
func New(opts Options, deps Deps) *Server {
	if opts.MaxModelLen <= 0 {
		opts.MaxModelLen = 2048
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 4 << 20
	}
	if opts.MaxN <= 0 {
		opts.MaxN = 128
	}
	s := &Server{opts: opts, deps: deps, log: deps.Logger, created: time.Now().Unix()}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.deps.NewStreamDecoder == nil {
		tok := deps.Tokenizer
		s.deps.NewStreamDecoder = func(skip bool) StreamDecoder { return newDecodeStream(tok, skip) }
	}
	s.metrics = newMetrics(deps.Stats, deps.Collectors...)
	s.handler = s.routes()
	return s
}

// SetReady switches /health between 503 (false) and 200 (true).
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// route is one path's handlers by method.
type route map[string]http.HandlerFunc

func (s *Server) routes() http.Handler {
	table := map[string]route{
		"/v1/completions":      {http.MethodPost: s.handleCompletions},
		"/v1/chat/completions": {http.MethodPost: s.handleChat},
		"/v1/models":           {http.MethodGet: s.handleModels},
		"/health":              {http.MethodGet: s.handleHealth},
		"/metrics":             {http.MethodGet: s.metrics.handler().ServeHTTP},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		endpoint := r.URL.Path
		rt, known := table[endpoint]
		if !known {
			endpoint = "other"
		}
		start := time.Now()
		rec := &api.StatusRecorder{ResponseWriter: w}
		s.metrics.inFlight.Inc()
		defer func() {
			s.metrics.inFlight.Dec()
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic in handler", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				if !rec.Wrote() {
					s.writeError(rec, api.Internal("Internal server error."))
				}
			}
			s.metrics.requests.WithLabelValues(endpoint, strconv.Itoa(rec.StatusCode())).Inc()
			if endpoint != "/health" && endpoint != "/metrics" {
				s.log.Debug("http request", "method", r.Method, "path", r.URL.Path, "status", rec.StatusCode(),
					"request_id", rec.Header().Get("X-Request-Id"), "duration", time.Since(start))
			}
		}()
		switch {
		case !known:
			s.writeError(rec, api.NotFound(r.Method, r.URL.Path))
			return
		case strings.HasPrefix(r.URL.Path, "/v1/") && !s.authorized(r):
			s.writeError(rec, api.Unauthorized())
			return
		}
		h, ok := rt[r.Method]
		if !ok {
			allowed := make([]string, 0, len(rt))
			for m := range rt {
				allowed = append(allowed, m)
			}
			rec.Header().Set("Allow", strings.Join(allowed, ", "))
			s.writeError(rec, api.MethodNotAllowed(r.Method, r.URL.Path))
			return
		}
		h(rec, r)
	})
}

func (s *Server) authorized(r *http.Request) bool {
	if s.opts.APIKey == "" {
		return true
	}
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(key)), []byte(s.opts.APIKey)) == 1
}

// writeError answers with e, logging server-side failures.
func (s *Server) writeError(w http.ResponseWriter, e *api.Error) {
	if e.Status >= 500 {
		s.log.Error("request failed", "status", e.Status, "error", e.Message)
	}
	if err := api.WriteError(w, e); err != nil {
		s.log.Debug("writing error response", "error", err)
	}
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	if !s.ready.Load() {
		s.writeError(w, api.Unavailable("The server is not ready yet."))
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleModels(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, api.ModelList{Object: api.ObjectList, Data: []api.Model{{
		ID:          s.opts.ModelName,
		Object:      api.ObjectModel,
		Created:     s.created,
		OwnedBy:     "disagg",
		Root:        s.opts.ModelRoot,
		MaxModelLen: s.opts.MaxModelLen,
	}}})
}

// checkModel answers whether the request's model is the one served.
func (s *Server) checkModel(model string) *api.Error {
	if model != "" && model != s.opts.ModelName {
		return api.ModelNotFound(model)
	}
	return nil
}

// classify maps an engine error to an OpenAI error.
func classify(err error) *api.Error {
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
		return ae
	case isInvalidRequest(err):
		return api.InvalidRequest("", "%v", err)
	case errors.Is(err, engine.ErrClosed):
		return api.Unavailable("The engine is shutting down.")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return api.NewError(499, api.TypeInvalidRequest, "", "The request was cancelled.")
	}
	return api.Internal("The engine failed: %v", err)
}
