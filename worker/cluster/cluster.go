// Package cluster is dynamic membership over HTTP, as TensorRT-LLM's
// trtllm-serve does it with `disagg_cluster.cluster_uri: http://<proxy>`:
// the proxy keeps a small store of worker entries, and each worker puts its
// own entry there at start, refreshes it every heartbeat_interval_sec, and
// deletes it on graceful shutdown. An entry that is not refreshed for
// inactive_timeout_sec expires and the proxy stops routing to the worker.
//
// The wire is trtllm's cluster storage (tensorrt_llm/serve/cluster_storage.py):
//
//	POST   /set          StorageItem {key, value, ttl, overwrite_if_exists}
//	GET    /expire       ?key=K&ttl=SECONDS   (the heartbeat)
//	DELETE /delete       ?key=K
//	GET    /get_prefix   ?key_prefix=P        -> {"result": {key: value}}
//	GET    /cluster_info                      -> the current members
//
// A worker's key is /trtllm-disagg/<cluster_name>/workers/<worker_id> and
// its value is the JSON of WorkerInfo {worker_id, host, port, role}.
// Successful answers are {"result": ...} with status 200; failures are
// OpenAI-style error bodies. Requests carry `Authorization: Bearer <key>`
// when the deployment has an API key.
//
// This package holds the wire types (the proxy imports them) and Client,
// the worker side.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Endpoints the proxy serves when disagg_cluster is set (trtllm's names).
const (
	PathSet         = "/set"
	PathExpire      = "/expire"
	PathDelete      = "/delete"
	PathGetPrefix   = "/get_prefix"
	PathClusterInfo = "/cluster_info"
)

// Roles a member may register with (trtllm's ServerRole names, lower case).
const (
	RoleContext    = "context"
	RoleGeneration = "generation"
)

// DefaultClusterName is the cluster_name when none is configured (ours).
const DefaultClusterName = "default"

// ErrEtcdNotImplemented is returned for an etcd:// cluster_uri.
var ErrEtcdNotImplemented = errors.New("etcd:// cluster_uri is not implemented yet; use http://<proxy host>:<port>")

// KeyPrefix is the store prefix of a cluster's workers (trtllm's).
func KeyPrefix(clusterName string) string { return "/trtllm-disagg/" + clusterName + "/workers/" }

// StorageItem is the body of POST /set (trtllm's StorageItem).
type StorageItem struct {
	// Key is KeyPrefix(cluster_name) + worker_id.
	Key string `json:"key"`
	// Value is the JSON of a WorkerInfo.
	Value string `json:"value"`
	// TTL is the worker's inactive_timeout_sec; the proxy applies its own
	// inactive_timeout_sec, which wins.
	TTL int `json:"ttl"`
	// OverwriteIfExists replaces an existing entry under Key; without it a
	// second /set of a live key is a 409.
	OverwriteIfExists bool `json:"overwrite_if_exists"`
}

// WorkerInfo is a member's entry (trtllm's WorkerInfo).
type WorkerInfo struct {
	// WorkerID is unique per worker process.
	WorkerID string `json:"worker_id"`
	// Host and Port are where the proxy reaches the worker's OpenAI API.
	Host string `json:"host"`
	Port int    `json:"port"`
	// Role is "context" or "generation". trtllm encodes its ServerRole
	// enum as 0 (context) or 1 (generation); both forms are accepted.
	Role Role `json:"role"`
}

// Role is a member role that decodes from trtllm's enum numbers too.
type Role string

// UnmarshalJSON accepts "context", "generation" (any case) or 0, 1.
func (r *Role) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		switch n {
		case 0:
			*r = RoleContext
		case 1:
			*r = RoleGeneration
		default:
			*r = Role(strconv.Itoa(n))
		}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("role: want a string or 0/1, got %s", b)
	}
	*r = Role(strings.ToLower(s))
	return nil
}

// URL is the member's base URL, http://host:port.
func (w WorkerInfo) URL() string {
	return "http://" + net.JoinHostPort(w.Host, strconv.Itoa(w.Port))
}

// Config is what a worker needs to join a cluster.
type Config struct {
	// Section is the worker's disagg_cluster section; Check has filled
	// its defaults.
	Section
	// Role is RoleContext or RoleGeneration.
	Role string
	// Host and Port are the worker's advertised address.
	Host string
	Port int
	// APIKey is sent as `Authorization: Bearer` when not empty.
	APIKey string
}

// Client registers one worker with the proxy and keeps its entry alive.
type Client struct {
	cfg  Config
	base string
	info WorkerInfo
	key  string
	http *http.Client
	log  *slog.Logger
}

// New checks cfg and builds a client. An etcd:// URI is
// ErrEtcdNotImplemented.
func New(cfg Config, log *slog.Logger) (*Client, error) {
	u, err := parseURI(cfg.ClusterURI)
	switch {
	case err != nil:
		return nil, fmt.Errorf("cluster_uri: %w", err)
	case u.Scheme == "etcd":
		return nil, ErrEtcdNotImplemented
	}
	if cfg.Role != RoleContext && cfg.Role != RoleGeneration {
		return nil, fmt.Errorf("role: %q is not %q or %q", cfg.Role, RoleContext, RoleGeneration)
	}
	if cfg.Heartbeat() <= 0 || cfg.InactiveTimeout() <= cfg.Heartbeat() {
		return nil, fmt.Errorf("heartbeat %s must be positive and below the inactive timeout %s", cfg.Heartbeat(), cfg.InactiveTimeout())
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = DefaultClusterName
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id := fmt.Sprintf("%s-%s-%d-%d-%03d", cfg.Role, net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)),
		time.Now().UnixMilli(), os.Getpid(), rand.IntN(1000))
	return &Client{
		cfg: cfg, base: strings.TrimSuffix(u.Scheme+"://"+u.Host+u.Path, "/"),
		info: WorkerInfo{WorkerID: id, Host: cfg.Host, Port: cfg.Port, Role: Role(cfg.Role)},
		key:  KeyPrefix(cfg.ClusterName) + id,
		http: &http.Client{Timeout: 5 * time.Second},
		log:  log.With("cluster_uri", cfg.ClusterURI, "worker_id", id),
	}, nil
}

// Key is the worker's store key.
func (c *Client) Key() string { return c.key }

// Run registers the worker, retrying every heartbeat until it succeeds,
// then refreshes the entry every heartbeat (registering again when the
// proxy no longer knows it, e.g. after a proxy restart) until ctx ends.
// It does not deregister: call Deregister on graceful shutdown.
func (c *Client) Run(ctx context.Context) {
	registered := false
	t := time.NewTicker(c.cfg.Heartbeat())
	defer t.Stop()
	for {
		var err error
		if registered {
			err = c.heartbeat(ctx)
			if err != nil {
				c.log.Warn("cluster heartbeat failed; registering again", "error", err)
				registered = false
			}
		}
		if !registered {
			if err = c.Register(ctx); err == nil {
				registered = true
				c.log.Info("registered with the cluster", "role", c.cfg.Role, "url", c.info.URL())
			} else if ctx.Err() == nil {
				c.log.Warn("cluster registration failed; retrying", "error", err, "retry_in", c.cfg.Heartbeat())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Register puts the worker's entry in the store once.
func (c *Client) Register(ctx context.Context) error {
	value, err := json.Marshal(c.info)
	if err != nil {
		return err
	}
	body, err := json.Marshal(StorageItem{Key: c.key, Value: string(value), TTL: c.ttl(), OverwriteIfExists: true})
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, PathSet, nil, body)
}

// Deregister deletes the worker's entry.
func (c *Client) Deregister(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, PathDelete, url.Values{"key": {c.key}}, nil)
}

func (c *Client) heartbeat(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, PathExpire, url.Values{"key": {c.key}, "ttl": {strconv.Itoa(c.ttl())}}, nil)
}

func (c *Client) ttl() int { return int((c.cfg.InactiveTimeout() + time.Second - 1) / time.Second) }

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body []byte) error {
	u := c.base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.APIKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	return nil
}
