package proxy

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"disagg/api"
	cw "disagg/worker/cluster"
)

// registry is the proxy's side of disagg_cluster with an http:// cluster_uri:
// trtllm's HTTP cluster storage, restricted to worker entries. Each entry
// is a member of the context or generation pool until it is deleted or
// not refreshed for inactive_timeout_sec.
type registry struct {
	p       *Proxy
	prefix  string
	timeout time.Duration
	now     func() time.Time

	mu      sync.Mutex
	members map[string]*member // by key
}

// member is one registered worker.
type member struct {
	info    cw.WorkerInfo
	pool    *pool
	server  *Server
	owned   bool // false: the URL is also a static member, which stays
	expires time.Time
}

func newRegistry(p *Proxy, d *cw.Section) *registry {
	return &registry{
		p: p, prefix: cw.KeyPrefix(d.ClusterName), timeout: d.InactiveTimeout(),
		now: time.Now, members: map[string]*member{},
	}
}

// routes adds the registry's endpoints to the proxy's table.
func (g *registry) routes(table map[string]map[string]http.HandlerFunc) {
	table[cw.PathSet] = map[string]http.HandlerFunc{http.MethodPost: g.auth(g.handleSet)}
	table[cw.PathExpire] = map[string]http.HandlerFunc{http.MethodGet: g.auth(g.handleExpire)}
	table[cw.PathDelete] = map[string]http.HandlerFunc{http.MethodDelete: g.auth(g.handleDelete)}
	table[cw.PathGetPrefix] = map[string]http.HandlerFunc{http.MethodGet: g.auth(g.handleGetPrefix)}
	table[cw.PathClusterInfo] = map[string]http.HandlerFunc{http.MethodGet: g.auth(g.handleClusterInfo)}
}

// auth requires the key the proxy sends to workers (worker_api_key, else
// api_key) when one is set: a worker that serves this proxy knows it.
func (g *registry) auth(h http.HandlerFunc) http.HandlerFunc {
	want := g.p.workerKey
	return func(w http.ResponseWriter, r *http.Request) {
		if want != "" {
			key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(key)), []byte(want)) != 1 {
				g.p.log.Warn("cluster request refused: bad API key", "path", r.URL.Path, "remote", r.RemoteAddr)
				g.p.writeError(w, api.Unauthorized())
				return
			}
		}
		h(w, r)
	}
}

func (g *registry) result(w http.ResponseWriter, v any) {
	body, err := json.Marshal(map[string]any{"result": v})
	if err != nil {
		g.p.writeError(w, api.Internal("Could not encode the answer."))
		return
	}
	g.p.writeJSON(w, body)
}

// checkKey refuses a key outside this cluster's worker prefix.
func (g *registry) checkKey(param, key string) *api.Error {
	if key == "" {
		return api.InvalidRequest(param, "`%s` is required.", param)
	}
	if !strings.HasPrefix(key, g.prefix) || len(key) == len(g.prefix) {
		return api.InvalidRequest(param, "Key %q is not a worker key of this cluster: want %s<worker_id> (cluster_name must match the proxy's).", key, g.prefix)
	}
	return nil
}

// parseInfo decodes and checks a registration's value.
func (g *registry) parseInfo(key, value string) (cw.WorkerInfo, *api.Error) {
	var info cw.WorkerInfo
	if e := api.DecodeJSON([]byte(value), &info); e != nil {
		return info, api.InvalidRequest("value", "`value` must be the JSON of {worker_id, host, port, role}: %s", e.Message)
	}
	switch string(info.Role) {
	case cw.RoleContext, cw.RoleGeneration:
	default:
		return info, api.InvalidRequest("value.role", "Role %q is not %q or %q.", info.Role, cw.RoleContext, cw.RoleGeneration)
	}
	if info.Host == "" || strings.ContainsAny(info.Host, "/?#@ ") || net.ParseIP(info.Host) != nil && net.ParseIP(info.Host).IsUnspecified() {
		return info, api.InvalidRequest("value.host", "Host %q is not an address the proxy can reach (want a host name or IP address, not 0.0.0.0).", info.Host)
	}
	if info.Port < 1 || info.Port > 65535 {
		return info, api.InvalidRequest("value.port", "Port %d is not a TCP port (1..65535).", info.Port)
	}
	if _, err := normalizeURL(info.URL()); err != nil {
		return info, api.InvalidRequest("value", "Worker URL %s: %v.", info.URL(), err)
	}
	if info.WorkerID != "" && !strings.HasSuffix(key, "/"+info.WorkerID) {
		return info, api.InvalidRequest("key", "Key %q does not end with the worker_id %q.", key, info.WorkerID)
	}
	return info, nil
}

func (g *registry) handleSet(w http.ResponseWriter, r *http.Request) {
	body, e := api.ReadBody(r.Body, 1<<16)
	if e != nil {
		g.p.writeError(w, e)
		return
	}
	var item cw.StorageItem
	if e := api.DecodeJSON(body, &item); e != nil {
		g.p.writeError(w, e)
		return
	}
	if e := g.checkKey("key", item.Key); e != nil {
		g.p.writeError(w, e)
		return
	}
	info, e := g.parseInfo(item.Key, item.Value)
	if e != nil {
		g.p.log.Warn("cluster registration refused", "key", item.Key, "error", e.Message)
		g.p.writeError(w, e)
		return
	}
	pl := g.p.ctxPool
	if info.Role == cw.RoleGeneration {
		pl = g.p.genPool
	}
	url := info.URL()
	g.mu.Lock()
	defer g.mu.Unlock()
	if old, ok := g.members[item.Key]; ok {
		if !item.OverwriteIfExists {
			g.p.writeError(w, api.NewError(http.StatusConflict, api.TypeInvalidRequest, "key",
				fmt.Sprintf("Key %q is already registered; set overwrite_if_exists to replace it.", item.Key)))
			return
		}
		if old.server.URL == url && old.pool == pl {
			old.info, old.expires = info, g.now().Add(g.timeout)
			g.result(w, true)
			return
		}
		g.dropLocked(item.Key, "registered again with another address")
	}
	// A worker restarted on the same address registers under a new id.
	for k, m := range g.members {
		if m.server.URL == url {
			g.dropLocked(k, "its address registered again as "+item.Key)
		}
	}
	s, added := pl.add(url)
	g.members[item.Key] = &member{info: info, pool: pl, server: s, owned: added, expires: g.now().Add(g.timeout)}
	g.p.log.Info("cluster member registered", "key", item.Key, "role", info.Role, "url", url,
		"context_servers", g.p.ctxPool.countUp(), "generation_servers", g.p.genPool.countUp())
	g.result(w, true)
}

func (g *registry) handleExpire(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	if e := g.checkKey("key", key); e != nil {
		g.p.writeError(w, e)
		return
	}
	if t := r.URL.Query().Get("ttl"); t != "" {
		if _, err := strconv.Atoi(t); err != nil {
			g.p.writeError(w, api.InvalidRequest("ttl", "`ttl` %q is not a whole number of seconds.", t))
			return
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[key]
	if !ok {
		g.p.writeError(w, api.NewError(http.StatusNotFound, api.TypeInvalidRequest, "key",
			fmt.Sprintf("Key %q is not registered (expired or deleted); register again with POST %s.", key, cw.PathSet)))
		return
	}
	m.expires = g.now().Add(g.timeout)
	g.result(w, true)
}

func (g *registry) handleDelete(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	if e := g.checkKey("key", key); e != nil {
		g.p.writeError(w, e)
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.members[key]; !ok {
		g.p.writeError(w, api.NewError(http.StatusNotFound, api.TypeInvalidRequest, "key",
			fmt.Sprintf("Key %q is not registered.", key)))
		return
	}
	g.dropLocked(key, "deregistered")
	g.result(w, true)
}

func (g *registry) handleGetPrefix(w http.ResponseWriter, r *http.Request) {
	prefix := r.URL.Query().Get("key_prefix")
	keysOnly := r.URL.Query().Get("keys_only") == "true"
	out := map[string]string{}
	g.mu.Lock()
	for k, m := range g.members {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		v := ""
		if !keysOnly {
			b, err := json.Marshal(m.info)
			if err != nil {
				g.mu.Unlock()
				g.p.writeError(w, api.Internal("Could not encode the answer."))
				return
			}
			v = string(b)
		}
		out[k] = v
	}
	g.mu.Unlock()
	g.result(w, out)
}

// ClusterInfo is the answer of GET /cluster_info (trtllm's shape, with
// each member's URL and state added).
type ClusterInfo struct {
	CurrentWorkers   ClusterWorkers      `json:"current_workers"`
	MinimalInstances cw.MinimalInstances `json:"minimal_instances"`
	IsReady          bool                `json:"is_ready"`
}

// ClusterWorkers lists the members of each role.
type ClusterWorkers struct {
	ContextServers    []ClusterWorker `json:"context_servers"`
	GenerationServers []ClusterWorker `json:"generation_servers"`
}

// ClusterWorker is one member: registered (with its key) or static.
type ClusterWorker struct {
	cw.WorkerInfo
	URL    string `json:"url"`
	Up     bool   `json:"up"`
	Static bool   `json:"static"`
}

func (g *registry) info() ClusterInfo {
	g.mu.Lock()
	byServer := map[*Server]cw.WorkerInfo{}
	for _, m := range g.members {
		byServer[m.server] = m.info
	}
	g.mu.Unlock()
	list := func(pl *pool) []ClusterWorker {
		out := []ClusterWorker{}
		for _, s := range pl.snapshot() {
			info, ok := byServer[s]
			out = append(out, ClusterWorker{WorkerInfo: info, URL: s.URL, Up: s.Up(), Static: !ok})
		}
		return out
	}
	return ClusterInfo{
		CurrentWorkers:   ClusterWorkers{ContextServers: list(g.p.ctxPool), GenerationServers: list(g.p.genPool)},
		MinimalInstances: g.p.cfg.DisaggCluster.MinimalInstances,
		IsReady:          g.p.Ready(),
	}
}

func (g *registry) handleClusterInfo(w http.ResponseWriter, _ *http.Request) { g.result(w, g.info()) }

// dropLocked removes a member; g.mu is held.
func (g *registry) dropLocked(key, why string) {
	m := g.members[key]
	delete(g.members, key)
	if m.owned {
		m.pool.remove(m.server, why)
	}
	g.p.log.Info("cluster member removed", "key", key, "url", m.server.URL, "reason", why)
}

// expire drops the members whose entry was not refreshed in time.
func (g *registry) expire() {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, m := range g.members {
		if now.After(m.expires) {
			g.dropLocked(k, fmt.Sprintf("no heartbeat for inactive_timeout_sec (%s)", g.timeout))
		}
	}
}
