package cluster

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Section is trtllm's disagg_cluster section, one type for both configs:
// the proxy's (which serves the store) and each worker's (which registers
// in it), so that an operator can paste the same block into both. A key
// that only one side uses is accepted, and ignored, on the other.
type Section struct {
	// ClusterURI is the store: http(s)://<proxy host>:<port>, the proxy's
	// own. etcd://host:2379 parses but is not implemented yet (each side
	// says so).
	ClusterURI string `yaml:"cluster_uri"`
	// ClusterName namespaces the workers' keys (default "default"); the
	// proxy and its workers must use the same one.
	ClusterName string `yaml:"cluster_name"`
	// MinimalInstances is how many servers of each role must be up before
	// the proxy is ready (proxy only; default 1 each).
	MinimalInstances MinimalInstances `yaml:"minimal_instances"`
	// HeartbeatIntervalSec is how often a worker refreshes its entry
	// (default 5).
	HeartbeatIntervalSec int `yaml:"heartbeat_interval_sec"`
	// InactiveTimeoutSec is an entry's lifetime without heartbeats
	// (default 10; the proxy's value is the one applied).
	InactiveTimeoutSec int `yaml:"inactive_timeout_sec"`
	// AdvertiseHost is the host the proxy should call (worker only).
	// Empty: the worker's host, or its machine's host name when host is
	// 0.0.0.0 or ::.
	AdvertiseHost string `yaml:"advertise_host"`
}

// MinimalInstances is disagg_cluster.minimal_instances.
type MinimalInstances struct {
	// ContextServers is the least number of context servers.
	ContextServers int `yaml:"context_servers" json:"context_servers"`
	// GenerationServers is the least number of generation servers.
	GenerationServers int `yaml:"generation_servers" json:"generation_servers"`
}

// Check fills the defaults (cluster_name, heartbeat_interval_sec,
// inactive_timeout_sec) and returns what is wrong with the keys both sides
// read, each message naming its key. An etcd:// cluster_uri passes: the
// caller decides what to say about it.
func (s *Section) Check() []string {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if s.ClusterURI == "" {
		bad("disagg_cluster.cluster_uri: required (http://<proxy host>:<port>)")
	} else if _, err := parseURI(s.ClusterURI); err != nil {
		bad("disagg_cluster.cluster_uri: %v", err)
	}
	if s.ClusterName == "" {
		s.ClusterName = DefaultClusterName
	}
	if strings.ContainsAny(s.ClusterName, "/ ") {
		bad("disagg_cluster.cluster_name: %q must not contain '/' or spaces", s.ClusterName)
	}
	if s.HeartbeatIntervalSec == 0 {
		s.HeartbeatIntervalSec = 5
	}
	if s.InactiveTimeoutSec == 0 {
		s.InactiveTimeoutSec = 10
	}
	if s.HeartbeatIntervalSec < 1 {
		bad("disagg_cluster.heartbeat_interval_sec: %d must be positive", s.HeartbeatIntervalSec)
	}
	if s.InactiveTimeoutSec <= s.HeartbeatIntervalSec {
		bad("disagg_cluster.inactive_timeout_sec: %d must exceed heartbeat_interval_sec (%d)", s.InactiveTimeoutSec, s.HeartbeatIntervalSec)
	}
	return errs
}

// Etcd reports an etcd:// cluster_uri.
func (s *Section) Etcd() bool { return strings.HasPrefix(s.ClusterURI, "etcd://") }

// Heartbeat is heartbeat_interval_sec as a duration.
func (s *Section) Heartbeat() time.Duration {
	return time.Duration(s.HeartbeatIntervalSec) * time.Second
}

// InactiveTimeout is inactive_timeout_sec as a duration.
func (s *Section) InactiveTimeout() time.Duration {
	return time.Duration(s.InactiveTimeoutSec) * time.Second
}

// parseURI checks a cluster_uri: http, https or etcd, with a host.
func parseURI(uri string) (*url.URL, error) {
	u, err := url.Parse(uri)
	switch {
	case err != nil:
		return nil, err
	case u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "etcd":
		return nil, fmt.Errorf("scheme %q is not one of http, https, etcd (http://<proxy host>:<port>)", u.Scheme)
	case u.Host == "":
		return nil, fmt.Errorf("%q has no host", uri)
	}
	return u, nil
}
