package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"disagg/api"
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

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("worker: serve: %w", err)
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
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
