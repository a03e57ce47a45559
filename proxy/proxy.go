package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"disagg/api"
)

// Response headers with the per-request breakdown. For a stream the
// generation ones are HTTP trailers (the headers leave before the
// generation server is known).
const (
	HeaderRequestID        = "X-Request-Id"
	HeaderContextServer    = "X-Disagg-Context-Server"
	HeaderContextMs        = "X-Disagg-Context-Ms"
	HeaderGenerationServer = "X-Disagg-Generation-Server"
	HeaderGenerationMs     = "X-Disagg-Generation-Ms"
)

// Proxy is the disaggregated serving front end: an OpenAI HTTP API that
// runs each request's prefill on a context server and its decode on a
// generation server.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	ctxPool   *pool
	genPool   *pool
	client    *http.Client
	metrics   *metrics
	handler   http.Handler
	workerKey string
	reg       *registry // disagg_cluster members; nil without disagg_cluster
	nodeID    int64
	seq       atomic.Int64
	created   int64
}

// New builds a proxy from a validated configuration. Servers start marked
// down; Start (or Run) health-checks them.
func New(cfg Config, log *slog.Logger) (*Proxy, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		cfg: cfg, log: log, metrics: newMetrics(), workerKey: cfg.workerAPIKey(),
		client: newHTTPClient(secs(cfg.ConnectTimeoutSec)), created: time.Now().Unix(),
	}
	var err error
	if p.ctxPool, err = newPool(RoleContext, cfg.ContextServers, p.metrics, log); err != nil {
		return nil, fmt.Errorf("context_servers: %w", err)
	}
	genRole := RoleGeneration
	if cfg.Aggregated() {
		genRole = RoleAggregated
	}
	if p.genPool, err = newPool(genRole, cfg.GenerationServers, p.metrics, log); err != nil {
		return nil, fmt.Errorf("generation_servers: %w", err)
	}
	p.metrics.info.WithLabelValues(cfg.Mode()).Set(1)
	for _, pl := range []*pool{p.ctxPool, p.genPool} {
		for _, s := range pl.snapshot() {
			p.metrics.serverUp.WithLabelValues(pl.role, s.URL).Set(0)
		}
	}
	if cfg.NodeID != nil {
		p.nodeID = int64(*cfg.NodeID)
	} else {
		var b [1]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		p.nodeID = int64(b[0])
	}
	p.seq.Store(time.Now().UnixNano() & (1<<40 - 1))
	if cfg.DisaggCluster != nil {
		p.reg = newRegistry(p, cfg.DisaggCluster)
	}
	p.handler = p.routes()
	return p, nil
}

// Handler is the proxy's HTTP handler.
func (p *Proxy) Handler() http.Handler { return p.handler }

// Ready reports whether at least one context and one generation server
// are up (aggregated mode: one generation server); with disagg_cluster,
// whether minimal_instances of each role are up.
func (p *Proxy) Ready() bool {
	return p.notReady() == ""
}

// notReady says why the proxy is not ready, or "".
func (p *Proxy) notReady() string {
	if d := p.cfg.DisaggCluster; d != nil {
		c, g := p.ctxPool.countUp(), p.genPool.countUp()
		if c < d.MinimalInstances.ContextServers || g < d.MinimalInstances.GenerationServers {
			return fmt.Sprintf("Waiting for workers to register: %d of %d context servers and %d of %d generation servers are up (disagg_cluster.minimal_instances).",
				c, d.MinimalInstances.ContextServers, g, d.MinimalInstances.GenerationServers)
		}
		return ""
	}
	if p.cfg.Aggregated() {
		if !p.genPool.anyUp() {
			return "No generation server (aggregated worker) is up."
		}
		return ""
	}
	if !p.ctxPool.anyUp() {
		return "No context server is up."
	}
	if !p.genPool.anyUp() {
		return "No generation server is up."
	}
	return ""
}

// Mode is ModeDisaggregated, or ModeAggregated when the configuration has
// no context servers.
func (p *Proxy) Mode() string { return p.cfg.Mode() }

// Servers lists the current servers of a role (static and registered): RoleContext, or
// RoleGeneration (RoleAggregated names the same servers).
func (p *Proxy) Servers(role string) []*Server {
	if role == RoleContext {
		return p.ctxPool.snapshot()
	}
	return p.genPool.snapshot()
}

// CheckNow health-checks every server once.
func (p *Proxy) CheckNow(ctx context.Context) {
	timeout := min(secs(p.cfg.HealthCheckIntervalSec), 5*time.Second)
	p.ctxPool.checkAll(ctx, p.client, p.workerKey, timeout)
	p.genPool.checkAll(ctx, p.client, p.workerKey, timeout)
}

// Start health-checks every server now and then every
// health_check_interval_sec until ctx ends: a server marked down after a
// failed call comes back when its /health answers 200 again, and one that
// stops answering is marked down before a request finds out.
func (p *Proxy) Start(ctx context.Context) {
	if p.reg != nil {
		// several times per inactive_timeout_sec
		go every(ctx, min(max(p.reg.timeout/8, 50*time.Millisecond), time.Second), p.reg.expire)
	}
	p.CheckNow(ctx)
	go every(ctx, secs(p.cfg.HealthCheckIntervalSec), func() { p.CheckNow(ctx) })
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// nextDisaggID is a request id unique across the proxy's requests: the node
// id in bits 55..62, a counter below.
func (p *Proxy) nextDisaggID() int64 {
	return p.nodeID<<55 | (p.seq.Add(1) & (1<<55 - 1))
}

func (p *Proxy) routes() http.Handler {
	table := map[string]map[string]http.HandlerFunc{
		"/v1/completions":      {http.MethodPost: p.handleCompletions},
		"/v1/chat/completions": {http.MethodPost: p.handleChat},
		"/v1/models":           {http.MethodGet: p.handleModels},
		"/health":              {http.MethodGet: p.handleHealth},
		"/metrics":             {http.MethodGet: p.metrics.handler().ServeHTTP},
	}
	if p.reg != nil {
		p.reg.routes(table)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		endpoint := r.URL.Path
		rt, known := table[endpoint]
		if !known {
			endpoint = "other"
		}
		rec := &api.StatusRecorder{ResponseWriter: w}
		p.metrics.inFlight.Inc()
		defer func() {
			p.metrics.inFlight.Dec()
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				p.log.Error("panic in handler", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				if !rec.Wrote() {
					p.writeError(rec, api.Internal("Internal server error."))
				}
			}
			p.metrics.requests.WithLabelValues(endpoint, statusLabel(rec.StatusCode())).Inc()
		}()
		switch {
		case !known:
			p.writeError(rec, api.NotFound(r.Method, r.URL.Path))
			return
		case strings.HasPrefix(r.URL.Path, "/v1/") && !p.authorized(r):
			p.writeError(rec, api.Unauthorized())
			return
		}
		h, ok := rt[r.Method]
		if !ok {
			for m := range rt {
				rec.Header().Set("Allow", m)
			}
			p.writeError(rec, api.MethodNotAllowed(r.Method, r.URL.Path))
			return
		}
		h(rec, r)
	})
}

var statusLabels = func() map[int]string {
	m := map[int]string{}
	for _, s := range []int{200, 400, 401, 404, 405, 413, 429, 499, 500, 502, 503, 504} {
		m[s] = fmt.Sprint(s)
	}
	return m
}()

func statusLabel(s int) string {
	if l, ok := statusLabels[s]; ok {
		return l
	}
	return fmt.Sprint(s)
}

func (p *Proxy) authorized(r *http.Request) bool {
	if p.cfg.APIKey == "" {
		return true
	}
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(key)), []byte(p.cfg.APIKey)) == 1
}

// writeError answers with e, logging server-side failures.
func (p *Proxy) writeError(w http.ResponseWriter, e *api.Error) {
	if e.Status >= 500 {
		p.log.Warn("request failed", "status", e.Status, "error", e.Message)
	}
	if err := api.WriteError(w, e); err != nil {
		p.log.Debug("writing error response", "error", err)
	}
}

func (p *Proxy) writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(body); err != nil {
		p.log.Debug("writing response", "error", err)
	}
}

func (p *Proxy) handleHealth(w http.ResponseWriter, _ *http.Request) {
	if why := p.notReady(); why != "" {
		p.writeError(w, api.Unavailable("%s", why))
		return
	}
	w.WriteHeader(http.StatusOK)
}

// handleModels lists the configured model, or relays the first context
// server (aggregated mode: generation server) that answers.
func (p *Proxy) handleModels(w http.ResponseWriter, r *http.Request) {
	if p.cfg.Model != "" {
		body, err := json.Marshal(api.ModelList{Object: api.ObjectList, Data: []api.Model{{
			ID: p.cfg.Model, Object: api.ObjectModel, Created: p.created, OwnedBy: "disagg",
		}}})
		if err != nil {
			p.writeError(w, api.Internal("Could not encode the model list."))
			return
		}
		p.writeJSON(w, body)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), p.cfg.requestTimeout())
	defer cancel()
	var last error
	src := p.ctxPool
	if p.cfg.Aggregated() {
		src = p.genPool
	}
	for _, s := range src.snapshot() {
		body, err := p.get(ctx, s, "/v1/models")
		if err == nil {
			var list api.ModelList
			if err = json.Unmarshal(body, &list); err == nil {
				p.writeJSON(w, body)
				return
			}
		}
		last = err
	}
	p.writeError(w, api.NewError(http.StatusBadGateway, api.TypeServer, "",
		fmt.Sprintf("No %s server listed its models: %v.", src.role, last)))
}

// get is a GET to a worker that expects a 200 JSON answer.
func (p *Proxy) get(ctx context.Context, s *Server, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+path, nil)
	if err != nil {
		return nil, err
	}
	if p.workerKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.workerKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &statusError{status: resp.StatusCode}
	}
	return body, nil
}

// readRequest reads and size-checks the body.
func (p *Proxy) readRequest(r *http.Request) ([]byte, *api.Error) {
	return api.ReadBody(r.Body, p.cfg.MaxBodyBytes)
}

// checkModel refuses a model other than the configured one.
func (p *Proxy) checkModel(model string) *api.Error {
	if p.cfg.Model != "" && model != "" && model != p.cfg.Model {
		return api.ModelNotFound(model)
	}
	return nil
}

func (p *Proxy) handleCompletions(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, e := p.readRequest(r)
	if e != nil {
		p.writeError(w, e)
		return
	}
	c, e := newCompletionCall(body)
	if e == nil {
		e = p.checkModel(c.req.Model)
	}
	if e != nil {
		p.writeError(w, e)
		return
	}
	p.serve(w, r, c, body, api.RequestID(r, "cmpl-"), start)
}

func (p *Proxy) handleChat(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, e := p.readRequest(r)
	if e != nil {
		p.writeError(w, e)
		return
	}
	c, e := newChatCall(body)
	if e == nil {
		e = p.checkModel(c.req.Model)
	}
	if e != nil {
		p.writeError(w, e)
		return
	}
	p.serve(w, r, c, body, api.RequestID(r, "chatcmpl-"), start)
}
