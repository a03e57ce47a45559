package cluster

import (
	"errors"
	"strings"
	"testing"
)

func TestSectionCheck(t *testing.T) {
	s := Section{ClusterURI: "http://proxy:8000"}
	if errs := s.Check(); len(errs) != 0 {
		t.Fatalf("errors %q", errs)
	}
	if s.ClusterName != DefaultClusterName || s.HeartbeatIntervalSec != 5 || s.InactiveTimeoutSec != 10 {
		t.Errorf("defaults not filled: %+v", s)
	}
	if s.Etcd() || !(&Section{ClusterURI: "etcd://h:2379"}).Etcd() {
		t.Error("Etcd misreads the scheme")
	}
	for _, c := range []struct {
		s    Section
		want string
	}{
		{Section{}, "disagg_cluster.cluster_uri: required"},
		{Section{ClusterURI: "ftp://proxy:21"}, `disagg_cluster.cluster_uri: scheme "ftp" is not one of http, https, etcd`},
		{Section{ClusterURI: "http://"}, `disagg_cluster.cluster_uri: "http://" has no host`},
		{Section{ClusterURI: "http://p:1", ClusterName: "a/b"}, `disagg_cluster.cluster_name: "a/b" must not contain`},
		{Section{ClusterURI: "http://p:1", HeartbeatIntervalSec: -1}, "disagg_cluster.heartbeat_interval_sec: -1 must be positive"},
		{Section{ClusterURI: "http://p:1", HeartbeatIntervalSec: 10, InactiveTimeoutSec: 10}, "disagg_cluster.inactive_timeout_sec: 10 must exceed heartbeat_interval_sec (10)"},
	} {
		errs := c.s.Check()
		if len(errs) != 1 || !strings.Contains(errs[0], c.want) {
			t.Errorf("%+v: errors %q, want one containing %q", c.s, errs, c.want)
		}
	}
}

func TestNewRefusesEtcd(t *testing.T) {
	_, err := New(Config{Section: Section{ClusterURI: "etcd://h:2379", HeartbeatIntervalSec: 1, InactiveTimeoutSec: 3}, Role: RoleContext}, nil)
	if !errors.Is(err, ErrEtcdNotImplemented) {
		t.Fatalf("err %v, want ErrEtcdNotImplemented", err)
	}
}
