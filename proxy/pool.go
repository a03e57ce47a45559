package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Roles of upstream servers: the "role" label of the proxy's metrics.
// RoleAggregated is the generation_servers of a configuration without
// context servers: whole requests on workers started without a role.
const (
	RoleContext    = "context"
	RoleGeneration = "generation"
	RoleAggregated = "aggregated"
)

// article is "an" before "aggregated", else "a".
func article(role string) string {
	if role == RoleAggregated {
		return "an"
	}
	return "a"
}

// pool is the servers of one role and their router. Its members change
// when disagg_cluster is set: workers register and expire while requests
// are routed, so every reader takes a snapshot under mu.
type pool struct {
	role    string
	router  Router
	log     *slog.Logger
	metrics *metrics

	mu      sync.RWMutex
	servers []*Server
}

// snapshot is the current members; the slice is not modified afterwards.
func (p *pool) snapshot() []*Server {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.servers
}

// add makes url a member (marked up: a worker registers once it serves)
// and reports true, or returns the existing member with that URL and false.
func (p *pool) add(url string) (*Server, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.servers {
		if s.URL == url {
			return s, false
		}
	}
	s := &Server{URL: url, Role: p.role, calls: p.metrics.upstream.WithLabelValues(p.role, url)}
	s.up.Store(true)
	p.servers = append(slices.Clone(p.servers), s)
	p.metrics.serverUp.WithLabelValues(p.role, url).Set(1)
	p.log.Info("server joined", "role", p.role, "server", url, "servers", len(p.servers))
	return s, true
}

// remove drops the member s; requests already on it finish.
func (p *pool) remove(s *Server, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.Index(p.servers, s)
	if i < 0 {
		return
	}
	p.servers = slices.Delete(slices.Clone(p.servers), i, i+1)
	s.up.Store(false)
	p.metrics.serverUp.DeleteLabelValues(p.role, s.URL)
	p.log.Warn("server left", "role", p.role, "server", s.URL, "reason", why, "servers", len(p.servers))
}

// countUp is the number of members up.
func (p *pool) countUp() int {
	n := 0
	for _, s := range p.snapshot() {
		if s.up.Load() {
			n++
		}
	}
	return n
}

func newPool(role string, g ServerGroup, m *metrics, log *slog.Logger) (*pool, error) {
	r, err := NewRouter(g.Router)
	if err != nil {
		return nil, err
	}
	p := &pool{role: role, router: r, log: log, metrics: m}
	for _, u := range g.URLs {
		p.servers = append(p.servers, &Server{URL: u, Role: role, calls: m.upstream.WithLabelValues(role, u)})
	}
	return p, nil
}

// acquire picks a server, preferring those up and not in exclude (servers
// already tried for this request); when every such server is down it tries
// one anyway, since the last health check may be stale. It returns nil when
// every server was excluded. release must be called when the call ends.
func (p *pool) acquire(info *routeInfo, exclude []*Server) (s *Server, release func()) {
	var buf [8]*Server
	cands := buf[:0]
	servers := p.snapshot()
	for _, s := range servers {
		if s.up.Load() && !slices.Contains(exclude, s) {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		for _, s := range servers {
			if !slices.Contains(exclude, s) {
				cands = append(cands, s)
			}
		}
	}
	if len(cands) == 0 {
		return nil, nil
	}
	s = p.router.Pick(cands, info)
	tokens := int64(info.tokens)
	s.active.Add(1)
	s.tokens.Add(tokens)
	return s, func() {
		s.active.Add(-1)
		s.tokens.Add(-tokens)
	}
}

// anyUp reports whether a server of the pool is up.
func (p *pool) anyUp() bool {
	for _, s := range p.snapshot() {
		if s.up.Load() {
			return true
		}
	}
	return false
}

// setUp records a server's state, logging and counting changes.
func (p *pool) setUp(s *Server, up bool, why string) {
	if !slices.Contains(p.snapshot(), s) {
		return // left the pool (disagg_cluster) while a call or check ran
	}
	if s.up.Swap(up) == up {
		return
	}
	if up {
		p.log.Info("server up", "role", p.role, "server", s.URL)
		p.metrics.serverUp.WithLabelValues(p.role, s.URL).Set(1)
		return
	}
	p.log.Warn("server marked down", "role", p.role, "server", s.URL, "reason", why)
	p.metrics.serverUp.WithLabelValues(p.role, s.URL).Set(0)
}

// checkAll probes every server's /health once, concurrently.
func (p *pool) checkAll(ctx context.Context, client *http.Client, apiKey string, timeout time.Duration) {
	var wg sync.WaitGroup
	for _, s := range p.snapshot() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := probe(ctx, client, s.URL, apiKey, timeout)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				p.setUp(s, false, err.Error())
				return
			}
			p.setUp(s, true, "")
		}()
	}
	wg.Wait()
}

// probe is one GET /health; nil when it answers 200.
func probe(ctx context.Context, client *http.Client, base, apiKey string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/health", nil)
	if err != nil {
		return err
	}
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16)); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &statusError{status: resp.StatusCode}
	}
	return nil
}

// statusError is an upstream answer with an unexpected status.
type statusError struct{ status int }

func (e *statusError) Error() string { return "status " + http.StatusText(e.status) }
