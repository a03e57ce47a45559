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

// pool is the servers of one role and their router.
type pool struct {
	role    string
	servers []*Server
	router  Router
	log     *slog.Logger
	metrics *metrics
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
	for _, s := range p.servers {
		if s.up.Load() && !slices.Contains(exclude, s) {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		for _, s := range p.servers {
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
	for _, s := range p.servers {
		if s.up.Load() {
			return true
		}
	}
	return false
}

// setUp records a server's state, logging and counting changes.
func (p *pool) setUp(s *Server, up bool, why string) {
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
	for _, s := range p.servers {
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
