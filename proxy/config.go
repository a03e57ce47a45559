package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	cw "disagg/worker/cluster"
)

// Router types accepted in context_servers.router.type and
// generation_servers.router.type. The names are trtllm-serve's; "prefix" is
// our alias of "kv_cache_aware".
const (
	RouterRoundRobin    = "round_robin"
	RouterLoadBalancing = "load_balancing"
	RouterKVCacheAware  = "kv_cache_aware"
	RouterPrefix        = "prefix"
)

// Config is the proxy's configuration, read from trtllm-serve's
// disagg_config.yaml. Keys follow TensorRT-LLM's disaggregated server where
// it has them; the rest are ours and say so.
type Config struct {
	// Hostname to listen on (trtllm default "localhost").
	Hostname string `yaml:"hostname"`
	// Port to listen on (trtllm default 8000); 0 picks a free one.
	Port int `yaml:"port"`
	// Backend is the workers' runtime flavour; "pytorch" is accepted for
	// trtllm compatibility (the proxy does not use it).
	Backend string `yaml:"backend"`
	// Model is the served model name: what /v1/models lists and what
	// requests may name. Empty: the first context server's /v1/models
	// (aggregated mode: the first generation server's).
	Model string `yaml:"model"`
	// ContextServers are the prefill workers. None (the key left out, or
	// num_instances 0 and no urls) is aggregated mode: the generation
	// servers are then plain aggregated workers (started without --role)
	// and each request goes whole to one of them (ours; trtllm-serve
	// requires context servers, see the package documentation).
	ContextServers ServerGroup `yaml:"context_servers"`
	// GenerationServers are the decode workers, or the aggregated workers
	// when there are no context servers.
	GenerationServers ServerGroup `yaml:"generation_servers"`
	// MaxRetries is how many times a failed upstream call is retried on
	// another server of the same role before anything reached the client
	// (trtllm default 1).
	MaxRetries int `yaml:"max_retries"`
	// RequestTimeout bounds each upstream call, in seconds (trtllm's
	// --request_timeout, default 180). For a stream it bounds the whole
	// stream.
	RequestTimeout int `yaml:"request_timeout"`
	// ServerStartTimeout is how long, in seconds, the proxy waits at start
	// for at least one context and one generation server (aggregated mode:
	// one generation server) to answer /health
	// (trtllm's --server_start_timeout, default 180).
	ServerStartTimeout int `yaml:"server_start_timeout"`
	// HealthCheckIntervalSec is the period of the background /health probe
	// of servers marked down (ours; default 3, as trtllm's internal one).
	HealthCheckIntervalSec float64 `yaml:"health_check_interval_sec"`
	// ConnectTimeoutSec bounds dialing a worker (ours; default 5).
	ConnectTimeoutSec float64 `yaml:"connect_timeout_sec"`
	// StreamFirstTokenFromContext sends a streaming client the first token
	// as soon as the context server has it, before the generation server
	// answers (ours; default true). See the package documentation.
	StreamFirstTokenFromContext *bool `yaml:"stream_first_token_from_context"`
	// MaxBodyBytes bounds request bodies (413 beyond; ours, default 32 MiB).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// APIKey, when set, is required from clients as `Authorization: Bearer
	// <key>` and sent to the workers the same way (ours; also
	// DISAGG_API_KEY or --api-key).
	APIKey string `yaml:"api_key"`
	// WorkerAPIKey, when set, is sent to the workers instead of APIKey
	// (ours).
	WorkerAPIKey string `yaml:"worker_api_key"`
	// ClusterSecret signs encoded_opaque_state between workers (ours; read
	// here so one file configures the deployment; the proxy does not use it
	// yet).
	ClusterSecret string `yaml:"cluster_secret"`
	// DisaggCluster configures dynamic membership (trtllm's
	// disagg_cluster): with an http:// cluster_uri the proxy accepts worker
	// registrations itself (see the package documentation); etcd:// is not
	// implemented yet.
	DisaggCluster *cw.Section `yaml:"disagg_cluster"`
	// NodeID (trtllm, 0..255) is the high byte of disagg_request_id.
	NodeID *int `yaml:"node_id"`
	// LogLevel is debug, info, warn or error (ours; --log_level wins).
	LogLevel string `yaml:"log_level"`
}

// ServerGroup is context_servers or generation_servers.
type ServerGroup struct {
	// NumInstances is the number of servers; it must equal len(URLs).
	NumInstances int `yaml:"num_instances"`
	// URLs are the servers as "host:port" (trtllm's form) or
	// "http://host:port".
	URLs []string `yaml:"urls"`
	// Router picks a server per request.
	Router RouterConfig `yaml:"router"`
	// Backend, as the top-level key; accepted and unused.
	Backend string `yaml:"backend"`
	// MaxBatchSize of the group's workers (trtllm carries it into the
	// router's arguments); used by kv_cache_aware to weigh load.
	MaxBatchSize int `yaml:"max_batch_size"`
	// MaxNumTokens of the group's workers; accepted and unused.
	MaxNumTokens int `yaml:"max_num_tokens"`
}

// RouterConfig is a group's router section.
type RouterConfig struct {
	// Type is round_robin (default), load_balancing, or kv_cache_aware
	// (alias prefix; context servers only).
	Type string `yaml:"type"`
	// UseTokens makes load_balancing count prompt tokens (estimated from
	// the prompt's length) instead of requests.
	UseTokens bool `yaml:"use_tokens"`
	// TokensPerBlock is kv_cache_aware's block size in tokens (default 32;
	// text prompts count 4 bytes a token).
	TokensPerBlock int `yaml:"tokens_per_block"`
	// MaxBatchSize weighs load in kv_cache_aware scores (default: the
	// group's max_batch_size, else 64).
	MaxBatchSize int `yaml:"max_batch_size"`
	// CacheEntries bounds kv_cache_aware's table of block hashes (ours;
	// default 100000).
	CacheEntries int `yaml:"cache_entries"`
}

// MetadataConfig is trtllm's metadata server file (-m): the etcd server
// where workers publish themselves.
type MetadataConfig struct {
	// ServerType is "etcd", the one kind.
	ServerType string `yaml:"server_type"`
	// Hostname of the etcd server (default localhost).
	Hostname string `yaml:"hostname"`
	// Port of the etcd server (default 2379).
	Port int `yaml:"port"`
	// HealthCheckTimeout in seconds (default 5).
	HealthCheckTimeout float64 `yaml:"health_check_timeout"`
	// RefreshInterval in seconds between reads of the server list
	// (default 10).
	RefreshInterval float64 `yaml:"refresh_interval"`
}

// ErrNotImplemented is wrapped by errors about configured features the
// proxy does not have yet (dynamic discovery).
var ErrNotImplemented = errors.New("not implemented yet")

// Default is the configuration before the file: trtllm's defaults.
func Default() Config {
	t := true
	return Config{
		Hostname:                    "localhost",
		Port:                        8000,
		MaxRetries:                  1,
		RequestTimeout:              180,
		ServerStartTimeout:          180,
		HealthCheckIntervalSec:      3,
		ConnectTimeoutSec:           5,
		StreamFirstTokenFromContext: &t,
		MaxBodyBytes:                32 << 20,
		LogLevel:                    "info",
	}
}

// DefaultMetadata is the metadata server file's defaults (trtllm's).
func DefaultMetadata() MetadataConfig {
	return MetadataConfig{ServerType: "etcd", Hostname: "localhost", Port: 2379, HealthCheckTimeout: 5, RefreshInterval: 10}
}

// LoadFile reads disagg_config.yaml over c (which holds the defaults).
// Unknown keys are errors naming the closest valid key; worker options that
// trtllm's launcher reads from the same file are warnings.
func LoadFile(path string, c *Config) (warnings []string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	w, err := decodeStrict(data, c, workerKeys)
	if err != nil {
		return w, fmt.Errorf("%s: %w", path, err)
	}
	return w, nil
}

// LoadMetadataFile reads metadata_config.yaml over m.
func LoadMetadataFile(path string, m *MetadataConfig) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("metadata config: %w", err)
	}
	if _, err := decodeStrict(data, m, nil); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// Validate checks the metadata server settings.
func (m *MetadataConfig) Validate() error {
	var errs []string
	if m.ServerType != "etcd" {
		errs = append(errs, fmt.Sprintf("server_type: %q is not supported; the one kind is \"etcd\"", m.ServerType))
	}
	if m.Hostname == "" {
		errs = append(errs, "hostname: must not be empty")
	}
	if m.Port < 1 || m.Port > 65535 {
		errs = append(errs, fmt.Sprintf("port: %d is not a TCP port (1..65535)", m.Port))
	}
	if !(m.HealthCheckTimeout > 0) {
		errs = append(errs, fmt.Sprintf("health_check_timeout: %v must be positive (seconds)", m.HealthCheckTimeout))
	}
	if !(m.RefreshInterval > 0) {
		errs = append(errs, fmt.Sprintf("refresh_interval: %v must be positive (seconds)", m.RefreshInterval))
	}
	if len(errs) > 0 {
		return fmt.Errorf("metadata config: %s", strings.Join(errs, "; "))
	}
	return nil
}

// Validate checks the configuration and fills defaults that depend on other
// keys (router block size, normalized URLs). Every problem is named with
// its key and what is allowed.
func (c *Config) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if c.Port < 0 || c.Port > 65535 {
		bad("port: %d is not a TCP port (0..65535)", c.Port)
	}
	for _, b := range []struct{ key, v string }{
		{"backend", c.Backend},
		{"context_servers.backend", c.ContextServers.Backend},
		{"generation_servers.backend", c.GenerationServers.Backend},
	} {
		if b.v != "" && !strings.EqualFold(b.v, "pytorch") {
			bad("%s: %q is not supported; use \"pytorch\" (or leave it out)", b.key, b.v)
		}
	}
	if c.MaxRetries < 0 {
		bad("max_retries: %d must be 0 or more", c.MaxRetries)
	}
	if c.RequestTimeout < 1 {
		bad("request_timeout: %d must be at least 1 (seconds)", c.RequestTimeout)
	}
	if c.ServerStartTimeout < 0 {
		bad("server_start_timeout: %d must be 0 (do not wait) or more (seconds)", c.ServerStartTimeout)
	}
	if !(c.HealthCheckIntervalSec > 0) {
		bad("health_check_interval_sec: %v must be positive", c.HealthCheckIntervalSec)
	}
	if !(c.ConnectTimeoutSec > 0) {
		bad("connect_timeout_sec: %v must be positive", c.ConnectTimeoutSec)
	}
	if c.MaxBodyBytes < 1024 {
		bad("max_body_bytes: %d must be at least 1024", c.MaxBodyBytes)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		bad("log_level: %q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.NodeID != nil && (*c.NodeID < 0 || *c.NodeID > 255) {
		bad("node_id: %d must be in [0, 255]", *c.NodeID)
	}
	if c.DisaggCluster != nil {
		errs = append(errs, checkCluster(c.DisaggCluster)...)
		// Static urls next to disagg_cluster are permanent members (trtllm
		// ignores them; we honour them, see the package documentation).
		for _, g := range []struct {
			key     string
			g       *ServerGroup
			context bool
		}{{"context_servers", &c.ContextServers, true}, {"generation_servers", &c.GenerationServers, false}} {
			if len(g.g.URLs) > 0 || g.g.NumInstances != 0 {
				errs = append(errs, g.g.validate(g.key, g.context)...)
			} else {
				g.g.validateRouter(g.key, g.context, &errs)
			}
		}
	} else {
		ctxEmpty := len(c.ContextServers.URLs) == 0 && c.ContextServers.NumInstances == 0
		genEmpty := len(c.GenerationServers.URLs) == 0 && c.GenerationServers.NumInstances == 0
		switch {
		case ctxEmpty && genEmpty:
			bad("context_servers.urls and generation_servers.urls: no servers are listed; list generation_servers.urls " +
				"(with context_servers.urls for disaggregated serving, without them for aggregated workers)")
		case genEmpty:
			bad("generation_servers.urls: at least one server is needed (context servers only prefill; " +
				"a deployment without generation servers cannot decode)")
			errs = append(errs, c.ContextServers.validate("context_servers", true)...)
		default:
			if !ctxEmpty {
				errs = append(errs, c.ContextServers.validate("context_servers", true)...)
			} else {
				c.ContextServers.validateRouter("context_servers", true, &errs)
			}
			errs = append(errs, c.GenerationServers.validate("generation_servers", false)...)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("config: %s", strings.Join(errs, "; "))
	}
	if c.DisaggCluster != nil && c.DisaggCluster.Etcd() {
		return fmt.Errorf("config: disagg_cluster.cluster_uri: %s: etcd discovery is %w; use http://<this proxy's host>:<port> "+
			"(the proxy then keeps the cluster itself), or list the servers in context_servers.urls and generation_servers.urls",
			c.DisaggCluster.ClusterURI, ErrNotImplemented)
	}
	return nil
}

func (g *ServerGroup) validate(key string, context bool) []string {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if len(g.URLs) == 0 {
		bad("%s.urls: at least one server is needed", key)
	}
	if g.NumInstances < 0 {
		bad("%s.num_instances: %d must not be negative", key, g.NumInstances)
	}
	if g.NumInstances == 0 {
		g.NumInstances = len(g.URLs)
	}
	if g.NumInstances != len(g.URLs) {
		bad("%s.num_instances: %d does not match the %d urls", key, g.NumInstances, len(g.URLs))
	}
	seen := map[string]bool{}
	for i, u := range g.URLs {
		n, err := normalizeURL(u)
		if err != nil {
			bad("%s.urls[%d]: %v", key, i, err)
			continue
		}
		if seen[n] {
			bad("%s.urls[%d]: %q is listed twice", key, i, u)
		}
		seen[n] = true
		g.URLs[i] = n
	}
	g.validateRouter(key, context, &errs)
	return errs
}

// validateRouter checks the group's router section and fills its defaults.
func (g *ServerGroup) validateRouter(key string, context bool, out *[]string) {
	bad := func(format string, a ...any) { *out = append(*out, fmt.Sprintf(format, a...)) }
	r := &g.Router
	switch r.Type {
	case "":
		r.Type = RouterRoundRobin
	case RouterRoundRobin, RouterLoadBalancing:
	case RouterKVCacheAware, RouterPrefix:
		if !context {
			bad("%s.router.type: %q routes by prompt prefix, which only helps context servers; use round_robin or load_balancing", key, r.Type)
		}
	default:
		bad("%s.router.type: %q is not one of round_robin, load_balancing, kv_cache_aware (alias prefix)", key, r.Type)
	}
	if r.TokensPerBlock == 0 {
		r.TokensPerBlock = 32
	}
	if r.TokensPerBlock < 1 {
		bad("%s.router.tokens_per_block: %d must be positive", key, r.TokensPerBlock)
	}
	if r.MaxBatchSize == 0 {
		r.MaxBatchSize = g.MaxBatchSize
	}
	if r.MaxBatchSize == 0 {
		r.MaxBatchSize = 64
	}
	if r.MaxBatchSize < 1 {
		bad("%s.router.max_batch_size: %d must be positive", key, r.MaxBatchSize)
	}
	if r.CacheEntries == 0 {
		r.CacheEntries = 100000
	}
	if r.CacheEntries < 1 {
		bad("%s.router.cache_entries: %d must be positive", key, r.CacheEntries)
	}
}

// checkCluster checks the proxy's disagg_cluster section: the keys both
// sides read, then minimal_instances (default 1 each).
func checkCluster(d *cw.Section) []string {
	errs := d.Check()
	if d.MinimalInstances.ContextServers == 0 {
		d.MinimalInstances.ContextServers = 1
	}
	if d.MinimalInstances.GenerationServers == 0 {
		d.MinimalInstances.GenerationServers = 1
	}
	if d.MinimalInstances.ContextServers < 1 || d.MinimalInstances.GenerationServers < 1 {
		errs = append(errs, "disagg_cluster.minimal_instances: context_servers and generation_servers must be at least 1")
	}
	return errs
}

// normalizeURL turns "host:port" or "http://host:port[/]" into
// "http://host:port".
func normalizeURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port or http://host:port", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q is not http or https", u.Scheme)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return "", fmt.Errorf("%q must not have a path or query", s)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return "", fmt.Errorf("%q must be host:port", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("%q has a bad port", s)
	}
	return u.Scheme + "://" + u.Host, nil
}

// Aggregated reports whether the configuration lists no context servers:
// the generation servers are then aggregated workers (no role), and every
// request goes whole to one of them. Meaningful after Validate.
// With disagg_cluster the proxy is always disaggregated: members register
// as context or generation servers.
func (c *Config) Aggregated() bool { return c.DisaggCluster == nil && len(c.ContextServers.URLs) == 0 }

// Mode is "aggregated" or "disaggregated" (see Aggregated).
func (c *Config) Mode() string {
	if c.Aggregated() {
		return ModeAggregated
	}
	return ModeDisaggregated
}

// Proxy modes, as Config.Mode names them.
const (
	ModeDisaggregated = "disaggregated"
	ModeAggregated    = "aggregated"
)

// Addr is the listen address, host:port.
func (c *Config) Addr() string { return net.JoinHostPort(c.Hostname, strconv.Itoa(c.Port)) }

// requestTimeout is RequestTimeout as a duration.
func (c *Config) requestTimeout() time.Duration { return time.Duration(c.RequestTimeout) * time.Second }

// firstTokenEarly reports StreamFirstTokenFromContext, default true.
func (c *Config) firstTokenEarly() bool {
	return c.StreamFirstTokenFromContext == nil || *c.StreamFirstTokenFromContext
}

// workerAPIKey is the key sent to workers.
func (c *Config) workerAPIKey() string {
	if c.WorkerAPIKey != "" {
		return c.WorkerAPIKey
	}
	return c.APIKey
}

// secs converts seconds to a duration.
func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
