package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Run serves the proxy on cfg's address until ctx ends. It logs its mode
// (disaggregated, or aggregated when there are no context servers) once,
// and health-checks the servers in the background; when no context or no
// generation server (aggregated mode: no generation server) is up within
// server_start_timeout it returns an error (the process exits), as
// trtllm-serve does. meta, when not nil, is the metadata server
// configuration (-m): parsed and validated, not used yet. ready, when not
// nil, is called with the listening address once the proxy accepts
// connections.
func Run(ctx context.Context, cfg Config, meta *MetadataConfig, log *slog.Logger, ready func(addr string)) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if meta != nil && cfg.DisaggCluster != nil {
		return fmt.Errorf("proxy: disagg_cluster and the metadata server file (-m) cannot be used together (as in trtllm-serve); drop one")
	}
	if meta != nil {
		log.Warn("metadata server: discovery through etcd is not implemented yet; serving the static urls",
			"hostname", meta.Hostname, "port", meta.Port)
	}
	p, err := New(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr())
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	if d := cfg.DisaggCluster; d != nil {
		log.Info("proxy cluster", "cluster_uri", d.ClusterURI, "cluster_name", d.ClusterName,
			"minimal_context_servers", d.MinimalInstances.ContextServers, "minimal_generation_servers", d.MinimalInstances.GenerationServers,
			"heartbeat_interval_sec", d.HeartbeatIntervalSec, "inactive_timeout_sec", d.InactiveTimeoutSec,
			"detail", "workers register with POST /set and heartbeat with GET /expire; static urls, if any, stay members")
	}
	if cfg.Aggregated() {
		log.Info("proxy mode", "mode", ModeAggregated,
			"detail", "no context_servers: each request goes whole to a generation server, which must be an aggregated worker (no --role)")
	} else {
		log.Info("proxy mode", "mode", ModeDisaggregated,
			"detail", "each request is prefilled on a context server and decoded on a generation server")
	}
	log.Info("proxy listening", "addr", ln.Addr().String(),
		"context_servers", cfg.ContextServers.URLs, "context_router", cfg.ContextServers.Router.Type,
		"generation_servers", cfg.GenerationServers.URLs, "generation_router", cfg.GenerationServers.Router.Type,
		"max_retries", cfg.MaxRetries, "request_timeout_s", cfg.RequestTimeout, "model", cfg.Model,
		"api_key", cfg.APIKey != "", "stream_first_token_from_context", cfg.firstTokenEarly())
	if ready != nil {
		ready(ln.Addr().String())
	}
	p.Start(ctx)
	startErr := make(chan error, 1)
	go func() { startErr <- p.waitReady(ctx, time.Duration(cfg.ServerStartTimeout)*time.Second) }()

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		runErr = fmt.Errorf("proxy: %w", err)
	case err := <-startErr:
		if err != nil {
			runErr = err
		}
		if runErr == nil {
			select {
			case <-ctx.Done():
			case err := <-serveErr:
				runErr = fmt.Errorf("proxy: %w", err)
			}
		}
	}
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer shutCancel()
	if err := srv.Shutdown(shutCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("proxy shutdown", "error", err)
	}
	return runErr
}

// waitReady waits until a context and a generation server are up; it
// fails after timeout (0: do not wait). The health loop does the checks.
// With disagg_cluster it waits for minimal_instances without a deadline
// (workers may join at any time) and never fails.
func (p *Proxy) waitReady(ctx context.Context, timeout time.Duration) error {
	if p.reg != nil {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for !p.Ready() {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
		p.log.Info("proxy ready")
		return nil
	}
	if timeout <= 0 {
		return nil
	}
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for !p.Ready() {
		if time.Now().After(deadline) {
			var down []string
			for _, pl := range []*pool{p.ctxPool, p.genPool} {
				for _, s := range pl.snapshot() {
					if !s.Up() {
						down = append(down, pl.role+" "+s.URL)
					}
				}
			}
			what := "no context or no generation server"
			if p.cfg.Aggregated() {
				what = "no generation server (aggregated worker)"
			}
			return fmt.Errorf("proxy: %s answered /health within server_start_timeout (%s); down: %v", what, timeout, down)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			p.CheckNow(ctx)
		}
	}
	p.log.Info("proxy ready")
	return nil
}
