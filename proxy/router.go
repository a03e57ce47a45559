package proxy

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Server is one upstream worker: its base URL, whether it is up, and the
// work the proxy has in flight on it.
type Server struct {
	// URL is the base URL, http://host:port.
	URL string
	// Role is "context" or "generation".
	Role string

	up     atomic.Bool
	active atomic.Int64 // requests in flight
	tokens atomic.Int64 // estimated prompt tokens in flight

	calls prometheus.Counter // disagg_proxy_upstream_requests_total of this server
}

// Up reports whether the server answered its last health check or call.
func (s *Server) Up() bool { return s.up.Load() }

// Active is the number of requests in flight on the server.
func (s *Server) Active() int64 { return s.active.Load() }

// routeInfo is what a router may look at in a request.
type routeInfo struct {
	// tokens is the prompt's length in tokens, estimated for text.
	tokens int
	// textKey is the text prompt (or rendered messages) for prefix routing.
	textKey string
	// tokenKey is the token-id prompt for prefix routing.
	tokenKey []int32
}

// Router picks one of the candidate servers (never empty) for a request.
type Router interface {
	Pick(cands []*Server, info *routeInfo) *Server
}

// NewRouter builds the router named by c.Type.
func NewRouter(c RouterConfig) (Router, error) {
	switch c.Type {
	case "", RouterRoundRobin:
		return &RoundRobin{}, nil
	case RouterLoadBalancing:
		return &LoadBalancing{UseTokens: c.UseTokens}, nil
	case RouterKVCacheAware, RouterPrefix:
		return NewPrefixAware(c.TokensPerBlock, c.MaxBatchSize, c.CacheEntries), nil
	}
	return nil, fmt.Errorf("router: unknown type %q", c.Type)
}

// RoundRobin cycles through the candidates.
type RoundRobin struct{ next atomic.Uint64 }

var _ Router = (*RoundRobin)(nil)

// Pick returns the next candidate in turn.
func (r *RoundRobin) Pick(cands []*Server, _ *routeInfo) *Server {
	n := r.next.Add(1) - 1
	return cands[n%uint64(len(cands))]
}

// LoadBalancing picks the candidate with the fewest requests in flight, or
// the fewest prompt tokens in flight when UseTokens; ties go round robin.
type LoadBalancing struct {
	// UseTokens weighs load by prompt tokens rather than requests.
	UseTokens bool
	next      atomic.Uint64
}

var _ Router = (*LoadBalancing)(nil)

// Pick returns the least loaded candidate.
func (r *LoadBalancing) Pick(cands []*Server, _ *routeInfo) *Server {
	start := int(r.next.Add(1) % uint64(len(cands)))
	var best *Server
	var bestLoad int64
	for i := range cands {
		s := cands[(start+i)%len(cands)]
		load := s.active.Load()
		if r.UseTokens {
			load = s.tokens.Load()
		}
		if best == nil || load < bestLoad {
			best, bestLoad = s, load
		}
	}
	return best
}

// PrefixAware (kv_cache_aware) sends a request to the server that most
// recently prefilled the longest run of its leading blocks, so that a worker
// with prefix reuse finds them in its cache, weighed against load as
// TensorRT-LLM's KV-cache-aware router does: score = matched blocks / blocks
// - requests in flight / max batch size. Blocks are TokensPerBlock token ids,
// or 4*TokensPerBlock bytes of a text prompt; each block's hash chains the
// previous one, so equal hashes mean equal prefixes. The table of hashes is
// bounded (two generations of at most half the entries each).
type PrefixAware struct {
	tokensPerBlock int
	maxBatch       int
	limit          int
	seed           maphash.Seed

	mu       sync.Mutex
	cur, old map[uint64]*Server
	next     atomic.Uint64
}

var _ Router = (*PrefixAware)(nil)

// NewPrefixAware builds a prefix-aware router.
func NewPrefixAware(tokensPerBlock, maxBatch, entries int) *PrefixAware {
	return &PrefixAware{
		tokensPerBlock: max(tokensPerBlock, 1), maxBatch: max(maxBatch, 1), limit: max(entries/2, 1),
		seed: maphash.MakeSeed(), cur: map[uint64]*Server{}, old: map[uint64]*Server{},
	}
}

// blockHashes chains the hashes of the prompt's full blocks, and of the last
// partial one.
func (r *PrefixAware) blockHashes(info *routeInfo) []uint64 {
	var out []uint64
	var prev uint64
	var buf [8]byte
	add := func(b []byte) {
		var h maphash.Hash
		h.SetSeed(r.seed)
		binary.LittleEndian.PutUint64(buf[:], prev)
		h.Write(buf[:])
		h.Write(b)
		prev = h.Sum64()
		out = append(out, prev)
	}
	if len(info.tokenKey) > 0 {
		block := make([]byte, 0, 4*r.tokensPerBlock)
		for i := 0; i < len(info.tokenKey); i += r.tokensPerBlock {
			block = block[:0]
			for _, t := range info.tokenKey[i:min(i+r.tokensPerBlock, len(info.tokenKey))] {
				block = binary.LittleEndian.AppendUint32(block, uint32(t))
			}
			add(block)
		}
		return out
	}
	size := 4 * r.tokensPerBlock
	for i := 0; i < len(info.textKey); i += size {
		add([]byte(info.textKey[i:min(i+size, len(info.textKey))]))
	}
	return out
}

func (r *PrefixAware) owner(h uint64) *Server {
	if s, ok := r.cur[h]; ok {
		return s
	}
	return r.old[h]
}

// Pick returns the best scored candidate and records the request's blocks
// as held by it.
func (r *PrefixAware) Pick(cands []*Server, info *routeInfo) *Server {
	hashes := r.blockHashes(info)
	r.mu.Lock()
	defer r.mu.Unlock()
	matched := make(map[*Server]int, len(cands))
	if len(hashes) > 0 {
		first := r.owner(hashes[0])
		n := 0
		for _, h := range hashes {
			if r.owner(h) != first {
				break
			}
			n++
		}
		if first != nil {
			matched[first] = n
		}
	}
	start := int(r.next.Add(1) % uint64(len(cands)))
	var best *Server
	bestScore := 0.0
	for i := range cands {
		s := cands[(start+i)%len(cands)]
		score := -float64(s.active.Load()) / float64(r.maxBatch)
		if len(hashes) > 0 {
			score += float64(matched[s]) / float64(len(hashes))
		}
		if best == nil || score > bestScore {
			best, bestScore = s, score
		}
	}
	for _, h := range hashes {
		if len(r.cur) >= r.limit {
			r.old, r.cur = r.cur, make(map[uint64]*Server, r.limit)
		}
		r.cur[h] = best
	}
	return best
}
