package proxy

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	cw "disagg/worker/cluster"
)

const clusterKey = "cluster-key"

// newClusterProxy is a proxy with disagg_cluster over http and the given
// static urls, with a clock the test moves.
func newClusterProxy(t *testing.T, ctxURLs, genURLs []string, minCtx, minGen int) (*testProxy, *fakeClock) {
	t.Helper()
	tp := newTestProxy(t, ctxURLs, genURLs, func(c *Config) {
		c.APIKey = clusterKey
		c.DisaggCluster = &cw.Section{
			ClusterURI: "http://localhost:8000", ClusterName: "c1",
			MinimalInstances:     cw.MinimalInstances{ContextServers: minCtx, GenerationServers: minGen},
			HeartbeatIntervalSec: 1, InactiveTimeoutSec: 3,
		}
	})
	clock := &fakeClock{t: time.Unix(1000, 0)}
	tp.p.reg.now = clock.now
	return tp, clock
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// joinClient is the worker-side client for a fake worker.
func joinClient(t *testing.T, tp *testProxy, f *fakeWorker, role, key string) *cw.Client {
	t.Helper()
	u, err := url.Parse(f.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cw.New(cw.Config{Section: cw.Section{ClusterURI: tp.srv.URL, ClusterName: "c1",
		HeartbeatIntervalSec: 1, InactiveTimeoutSec: 3}, Role: role, Host: host, Port: p, APIKey: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// health is the proxy's /health status and error message.
func health(t *testing.T, tp *testProxy) (int, string) {
	t.Helper()
	status, body := send(t, http.MethodGet, tp.srv.URL+"/health", "", "")
	if status != http.StatusOK {
		return status, openAIError(t, status, body).Message
	}
	return status, ""
}

func urls(ss []*Server) []string {
	out := []string{}
	for _, s := range ss {
		out = append(out, s.URL)
	}
	return out
}

func complete(t *testing.T, tp *testProxy) int {
	t.Helper()
	status, _ := send(t, http.MethodPost, tp.srv.URL+"/v1/completions", `{"model":"`+fakeModel+`","prompt":"hello","max_tokens":4}`, clusterKey)
	return status
}

// TestClusterMembership: /health is 503 until minimal_instances of each
// role registered; registered workers serve requests; a worker whose
// heartbeats stop is dropped after inactive_timeout_sec while the others
// keep serving; deregistration removes a worker at once.
func TestClusterMembership(t *testing.T) {
	tp, clock := newClusterProxy(t, nil, nil, 1, 2)
	ctx := context.Background()
	ctx1, gen1, gen2 := newFakeWorker(t, RoleContext), newFakeWorker(t, RoleGeneration), newFakeWorker(t, RoleGeneration)

	if st, msg := health(t, tp); st != http.StatusServiceUnavailable || !strings.Contains(msg, "0 of 1 context servers and 0 of 2 generation servers") {
		t.Fatalf("/health before registration = %d %q", st, msg)
	}
	if st := complete(t, tp); st != http.StatusServiceUnavailable {
		t.Errorf("completion with no members = %d, want 503", st)
	}
	cctx1 := joinClient(t, tp, ctx1, cw.RoleContext, clusterKey)
	cgen1 := joinClient(t, tp, gen1, cw.RoleGeneration, clusterKey)
	cgen2 := joinClient(t, tp, gen2, cw.RoleGeneration, clusterKey)
	for _, c := range []*cw.Client{cctx1, cgen1} {
		if err := c.Register(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st, msg := health(t, tp); st != http.StatusServiceUnavailable || !strings.Contains(msg, "1 of 2 generation servers") {
		t.Fatalf("/health with one generation server = %d %q", st, msg)
	}
	if err := cgen2.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if st, msg := health(t, tp); st != http.StatusOK {
		t.Fatalf("/health with minimal_instances registered = %d %q", st, msg)
	}
	if diff := cmp.Diff([]string{gen1.srv.URL, gen2.srv.URL}, urls(tp.p.Servers(RoleGeneration))); diff != "" {
		t.Errorf("generation servers (-want +got):\n%s", diff)
	}
	for range 4 {
		if st := complete(t, tp); st != http.StatusOK {
			t.Fatalf("completion = %d", st)
		}
	}
	if ctx1.calls() != 4 || gen1.calls() != 2 || gen2.calls() != 2 {
		t.Errorf("calls: context %d, generation %d and %d; want 4, 2, 2 (round robin)", ctx1.calls(), gen1.calls(), gen2.calls())
	}

	// gen1 and ctx1 heartbeat; gen2 stops.
	clock.advance(2 * time.Second)
	for _, c := range []*cw.Client{cctx1, cgen1} {
		heartbeat(t, tp, c.Key(), http.StatusOK)
	}
	clock.advance(2 * time.Second)
	tp.p.reg.expire()
	if diff := cmp.Diff([]string{gen1.srv.URL}, urls(tp.p.Servers(RoleGeneration))); diff != "" {
		t.Errorf("generation servers after gen2 expired (-want +got):\n%s", diff)
	}
	heartbeat(t, tp, cgen2.Key(), http.StatusNotFound)
	if st, _ := health(t, tp); st != http.StatusServiceUnavailable {
		t.Errorf("/health below minimal_instances = %d, want 503", st)
	}
	before := gen1.calls()
	for range 3 {
		if st := complete(t, tp); st != http.StatusOK {
			t.Fatalf("completion after expiry = %d", st)
		}
	}
	if gen1.calls() != before+3 || gen2.calls() != 2 {
		t.Errorf("after expiry: gen1 %d calls (want %d), gen2 %d (want 2)", gen1.calls(), before+3, gen2.calls())
	}
	// It comes back by registering again.
	if err := cgen2.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := health(t, tp); st != http.StatusOK {
		t.Errorf("/health after gen2 registered again = %d", st)
	}
	if err := cctx1.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if got := urls(tp.p.Servers(RoleContext)); len(got) != 0 {
		t.Errorf("context servers after deregistration = %v", got)
	}
	if err := cctx1.Deregister(ctx); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("second deregistration: %v", err)
	}
}

func heartbeat(t *testing.T, tp *testProxy, key string, want int) {
	t.Helper()
	if status, _ := send(t, http.MethodGet, tp.srv.URL+cw.PathExpire+"?ttl=3&key="+url.QueryEscape(key), "", clusterKey); status != want {
		t.Errorf("heartbeat %s = %d, want %d", key, status, want)
	}
}

// TestClusterStaticURLs: static urls next to disagg_cluster stay members;
// a registration of the same URL does not take them away when it expires.
func TestClusterStaticURLs(t *testing.T) {
	ctx1, gen1 := newFakeWorker(t, RoleContext), newFakeWorker(t, RoleGeneration)
	tp, clock := newClusterProxy(t, []string{ctx1.srv.URL}, nil, 1, 1)
	if st, _ := health(t, tp); st != http.StatusServiceUnavailable {
		t.Fatalf("/health without a generation server = %d", st)
	}
	if err := joinClient(t, tp, gen1, cw.RoleGeneration, clusterKey).Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := joinClient(t, tp, ctx1, cw.RoleContext, clusterKey).Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := complete(t, tp); st != http.StatusOK {
		t.Fatalf("completion = %d", st)
	}
	clock.advance(10 * time.Second)
	tp.p.reg.expire()
	if diff := cmp.Diff([]string{ctx1.srv.URL}, urls(tp.p.Servers(RoleContext))); diff != "" {
		t.Errorf("context servers after expiry (-want +got):\n%s", diff)
	}
	if got := urls(tp.p.Servers(RoleGeneration)); len(got) != 0 {
		t.Errorf("generation servers after expiry = %v", got)
	}
}

// TestClusterBadRegistrations: each bad request gets a clear OpenAI error.
func TestClusterBadRegistrations(t *testing.T) {
	tp, _ := newClusterProxy(t, nil, nil, 1, 1)
	value := func(host string, port int, role any) string {
		b, err := json.Marshal(map[string]any{"worker_id": "w1", "host": host, "port": port, "role": role})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	item := func(key, value string) string {
		b, err := json.Marshal(cw.StorageItem{Key: key, Value: value, TTL: 3})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	key := cw.KeyPrefix("c1") + "w1"
	tests := []struct {
		name, method, path, auth, body string
		status                         int
		param, msg                     string
	}{
		{"no key", "POST", cw.PathSet, "", item(key, value("127.0.0.1", 9, "context")), 401, "", "API key"},
		{"wrong key", "POST", cw.PathSet, "nope", item(key, value("127.0.0.1", 9, "context")), 401, "", "API key"},
		{"unknown role", "POST", cw.PathSet, clusterKey, item(key, value("127.0.0.1", 9, "prefill")), 400, "value.role", `"prefill" is not "context" or "generation"`},
		{"bad port", "POST", cw.PathSet, clusterKey, item(key, value("127.0.0.1", 0, "context")), 400, "value.port", "not a TCP port"},
		{"bad host", "POST", cw.PathSet, clusterKey, item(key, value("h/x", 9, "context")), 400, "value.host", "not an address"},
		{"unspecified host", "POST", cw.PathSet, clusterKey, item(key, value("0.0.0.0", 9, 1)), 400, "value.host", "not 0.0.0.0"},
		{"value not json", "POST", cw.PathSet, clusterKey, item(key, "x"), 400, "value", "JSON of {worker_id, host, port, role}"},
		{"other cluster", "POST", cw.PathSet, clusterKey, item(cw.KeyPrefix("c2")+"w1", value("127.0.0.1", 9, "context")), 400, "key", "cluster_name must match"},
		{"id mismatch", "POST", cw.PathSet, clusterKey, item(cw.KeyPrefix("c1")+"w2", value("127.0.0.1", 9, "context")), 400, "key", "does not end with the worker_id"},
		{"body not json", "POST", cw.PathSet, clusterKey, "[", 400, "", "JSON object"},
		{"expire unknown", "GET", cw.PathExpire + "?key=" + url.QueryEscape(key), clusterKey, "", 404, "key", "register again"},
		{"expire no key", "GET", cw.PathExpire, clusterKey, "", 400, "key", "required"},
		{"delete unknown", "DELETE", cw.PathDelete + "?key=" + url.QueryEscape(key), clusterKey, "", 404, "key", "not registered"},
		{"wrong method", "GET", cw.PathSet, clusterKey, "", 405, "", "not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := send(t, tc.method, tp.srv.URL+tc.path, tc.body, tc.auth)
			e := openAIError(t, status, body)
			if param := deref(e.Param); status != tc.status || param != tc.param || !strings.Contains(e.Message, tc.msg) {
				t.Errorf("got %d param %q %q; want %d param %q containing %q", status, param, e.Message, tc.status, tc.param, tc.msg)
			}
		})
	}
	if n := len(tp.p.Servers(RoleContext)) + len(tp.p.Servers(RoleGeneration)); n != 0 {
		t.Errorf("%d servers joined through bad registrations", n)
	}
}

// TestClusterTrtllmValue: a value as trtllm's worker writes it (the role
// as its enum number) registers, and /get_prefix and /cluster_info list it.
func TestClusterTrtllmValue(t *testing.T) {
	tp, _ := newClusterProxy(t, nil, nil, 1, 1)
	key := cw.KeyPrefix("c1") + "GENERATION-127.0.0.1:9-1"
	body := `{"key":"` + key + `","value":"{\"worker_id\": \"GENERATION-127.0.0.1:9-1\", \"host\": \"127.0.0.1\", \"port\": 9, \"role\": 1}","expire_time":-1,"ttl":3,"overwrite_if_exists":false}`
	do := func(method, path, body string, want int) []byte {
		t.Helper()
		status, b := send(t, method, tp.srv.URL+path, body, clusterKey)
		if status != want {
			t.Fatalf("%s %s = %d %s, want %d", method, path, status, b, want)
		}
		return b
	}
	if got := string(do("POST", cw.PathSet, body, 200)); got != `{"result":true}` {
		t.Errorf("/set answered %s", got)
	}
	do("POST", cw.PathSet, body, http.StatusConflict) // overwrite_if_exists false
	var prefix struct{ Result map[string]string }
	if err := json.Unmarshal(do("GET", cw.PathGetPrefix+"?key_prefix="+url.QueryEscape(cw.KeyPrefix("c1")), "", 200), &prefix); err != nil {
		t.Fatal(err)
	}
	var info cw.WorkerInfo
	if err := json.Unmarshal([]byte(prefix.Result[key]), &info); err != nil {
		t.Fatalf("get_prefix %v: %v", prefix.Result, err)
	}
	if diff := cmp.Diff(cw.WorkerInfo{WorkerID: "GENERATION-127.0.0.1:9-1", Host: "127.0.0.1", Port: 9, Role: cw.RoleGeneration}, info); diff != "" {
		t.Errorf("get_prefix value (-want +got):\n%s", diff)
	}
	var ci struct{ Result ClusterInfo }
	if err := json.Unmarshal(do("GET", cw.PathClusterInfo, "", 200), &ci); err != nil {
		t.Fatal(err)
	}
	if g := ci.Result.CurrentWorkers.GenerationServers; len(g) != 1 || g[0].URL != "http://127.0.0.1:9" || g[0].Static || ci.Result.IsReady {
		t.Errorf("cluster_info = %+v", ci.Result)
	}
}

// TestClusterWorkerRun: Client.Run registers, and registers again after
// the proxy forgot the worker (a proxy restart or an expiry).
func TestClusterWorkerRun(t *testing.T) {
	tp, clock := newClusterProxy(t, nil, nil, 1, 1)
	gen := newFakeWorker(t, RoleGeneration)
	c := joinClient(t, tp, gen, cw.RoleGeneration, clusterKey)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "registration", func() bool { return len(tp.p.Servers(RoleGeneration)) == 1 })
	clock.advance(time.Minute)
	tp.p.reg.expire()
	if len(tp.p.Servers(RoleGeneration)) != 0 {
		t.Fatal("not expired")
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(tp.p.Servers(RoleGeneration)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not register again")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClusterConfig: etcd is refused clearly; http is accepted; the
// metadata server file cannot go with disagg_cluster.
func TestClusterConfig(t *testing.T) {
	cfg, _, err := loadString(t, "disagg_cluster: {cluster_uri: \"etcd://h:2379\"}\n")
	if err == nil || !strings.Contains(err.Error(), "not implemented yet; use http://") {
		t.Errorf("etcd: %v", err)
	}
	cfg, _, err = loadString(t, "disagg_cluster: {cluster_uri: \"http://localhost:8000\"}\n")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Aggregated() || cfg.DisaggCluster.ClusterName != cw.DefaultClusterName {
		t.Errorf("http cluster config: aggregated %v, name %q", cfg.Aggregated(), cfg.DisaggCluster.ClusterName)
	}
	meta := DefaultMetadata()
	if err := Run(context.Background(), cfg, &meta, nil, nil); err == nil || !strings.Contains(err.Error(), "cannot be used together") {
		t.Errorf("Run with -m and disagg_cluster: %v", err)
	}
}
