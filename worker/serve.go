package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"disagg/api"
	"disagg/worker/cluster"
	"disagg/worker/config"
)

// Serve listens first (so /health answers 503 while the model loads), then
// loads the model, then serves the OpenAI API until ctx ends, and shuts
// down gracefully.
func Serve(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	log.Info("starting worker", "role", roleName(cfg.Role), "config", fmt.Sprintf("%+v", redacted(cfg)), "env", config.EnvMap())
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("worker: listen: %w", err)
	}
	var handler atomic.Pointer[http.Handler]
	var loading http.Handler = http.HandlerFunc(notReady)
	handler.Store(&loading)
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*handler.Load()).ServeHTTP(w, r) }),
		ReadHeaderTimeout: 30 * time.Second,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())

	rt, err := Open(cfg, log)
	if err != nil {
		_ = srv.Close()
		return err
	}
	defer func() {
		if err := rt.Close(); err != nil {
			log.Warn("close", "err", err)
		}
	}()
	h := NewHandler(rt, log)
	handler.Store(&h)
	log.Info("ready", "addr", ln.Addr().String(), "model", rt.ModelName)
	deregister, err := joinCluster(ctx, cfg, ln.Addr(), log)
	if err != nil {
		_ = srv.Close()
		return err
	}
	defer deregister()

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("worker: serve: %w", err)
	}
	log.Info("shutting down")
	deregister()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// joinCluster registers the worker with the proxy when
// disagg_cluster.cluster_uri is set, and keeps it registered until ctx
// ends. The returned function deregisters (once; later calls do nothing).
func joinCluster(ctx context.Context, cfg config.Config, addr net.Addr, log *slog.Logger) (func(), error) {
	d := cfg.DisaggCluster
	if d.ClusterURI == "" {
		return func() {}, nil
	}
	host := d.AdvertiseHost
	if host == "" {
		host = cfg.Host
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			h, err := os.Hostname()
			if err != nil {
				return nil, fmt.Errorf("worker: disagg_cluster: host %q is not an address the proxy can call, and the host name is unknown (%w); set disagg_cluster.advertise_host", cfg.Host, err)
			}
			host = h
		}
	}
	port := 0
	if a, ok := addr.(*net.TCPAddr); ok {
		port = a.Port
	}
	c, err := cluster.New(cluster.Config{Section: d, Role: cfg.Role, Host: host, Port: port, APIKey: cfg.APIKey}, log)
	if err != nil {
		return nil, fmt.Errorf("worker: disagg_cluster: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(runCtx) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
			dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer dcancel()
			if err := c.Deregister(dctx); err != nil {
				log.Warn("cluster deregistration failed; the proxy drops the worker after inactive_timeout_sec", "error", err)
				return
			}
			log.Info("deregistered from the cluster", "key", c.Key())
		})
	}, nil
}

// notReady answers every request while the model loads.
func notReady(w http.ResponseWriter, r *http.Request) {
	_ = api.WriteError(w, api.Unavailable("the model is still loading"))
}

func roleName(r string) string {
	if r == "" {
		return "aggregated"
	}
	return r
}

func redacted(c config.Config) config.Config {
	if c.APIKey != "" {
		c.APIKey = "(set)"
	}
	if c.ClusterSecret != "" {
		c.ClusterSecret = "(set)"
	}
	return c
}
