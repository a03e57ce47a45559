// Package disagg is the worker side of disaggregated serving: the context
// role, which runs a request's prefill and first token and parks its KV
// blocks for a generation worker, and the generation role, which pulls
// those blocks into its own pool through the KV transceiver and decodes.
//
// # Context role (disaggregated_params.request_type = context_only)
//
// The engine runs the request as engine.Request.ContextOnly. Unless the
// first token finishes it, the blocks are parked under a worker-unique
// ctx_request_id and the reply carries encoded_opaque_state (see State):
// the transceiver's connection info, the block ids, the token count, the
// KV layout, an expiry and (for host pools) the CRC32C of every block,
// signed with HMAC-SHA256 under the cluster secret. The generation worker
// verifies the received blocks against those checksums and fails closed. Parked blocks are freed when the generation worker notifies that
// it has pulled them (or gave up), or at the deadline:
// kv_transfer_sender_future_timeout_ms (the window in which the transfer
// must start, which is the state's expiry) plus kv_transfer_timeout_ms
// (the most a started transfer may take). The generation side refuses a
// state past its expiry, so as long as the two clocks differ by less than
// kv_transfer_timeout_ms no transfer reads blocks after they were freed.
//
// # Generation role (request_type = generation_only)
//
// The state is verified before anything else (signature, version, expiry,
// layout, token count, every block id against the peer's registered
// region): a forged or tampered state is a 400 and touches no memory.
// Then blocks are allocated and the KV is moved: pulled with the
// transceiver's Reader (a pull needs no endpoint on the context worker),
// or, in push mode (see push.go and Options.TransferMode), written by the
// context worker at the generation worker's request. Then the context
// worker is notified (it frees its blocks at once), and the request runs
// as engine.Request.Resume. On
// any transfer error or timeout the generation side frees its blocks and
// answers 502/504 (the proxy may retry); the context side frees its own at
// its deadline, or at once when the abort notification reaches it.
//
// The generation worker's answer is the whole completion, starting with the
// text of first_gen_tokens, and its usage counts them: TensorRT-LLM does
// the same (its disaggregated server relays the generation server's answer
// as it is, see openai_disagg_service.py), and our proxy relies on it. The
// first tokens' logprobs are not carried over: with logprobs requested they
// are reported as 0 with no alternatives.
//
// # Cluster secret
//
// The HMAC key is cluster_secret in the worker's config, else the
// environment variable WORKER_CLUSTER_SECRET. Every worker of a cluster
// needs the same one. When neither is set, the documented DefaultSecret is
// used and a warning is logged at start: the default lets a fresh checkout
// run context, generation and proxy on one machine as shipped, but anyone
// who can reach a worker can then forge states. Set a secret in any
// deployment that is reachable from untrusted hosts.
package disagg

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"disagg/api"
	"disagg/transceiver"
	"disagg/worker/engine"
	"disagg/worker/kvcache"
)

// DefaultSecret is the cluster secret used when none is configured (with
// a warning): it makes a local cluster work out of the box and protects
// nothing.
const DefaultSecret = "disagg-insecure-default-cluster-secret"

// EnvSecret is the environment variable holding the cluster secret.
const EnvSecret = "WORKER_CLUSTER_SECRET"

// Roles, as in the worker's config.
const (
	RoleBoth       = ""
	RoleContext    = "context"
	RoleGeneration = "generation"
)

// notifyTimeout bounds the notification to the context worker.
const notifyTimeout = 2 * time.Second

// KV is what the roles need of the engine: its pool, and freeing blocks of
// it that the caller owns (engine.Engine).
type KV interface {
	Pool() *kvcache.Pool
	FreeKV(blocks []int32)
}

// The engine is the KV seam's real implementation.
var _ KV = (*engine.Engine)(nil)

// Options configure a Manager.
type Options struct {
	// Role is RoleBoth, RoleContext or RoleGeneration: a context worker
	// refuses generation_only requests and a generation worker
	// context_only ones; a worker without role takes both.
	Role string
	// Secret is the cluster's HMAC key (required, non-empty).
	Secret []byte
	// SenderTimeout is kv_transfer_sender_future_timeout_ms: how long a
	// parked request waits for its transfer to start.
	SenderTimeout time.Duration
	// TransferTimeout is kv_transfer_timeout_ms: the most one transfer
	// may take.
	TransferTimeout time.Duration
	// Transceiver moves the KV; its pool region must be registered. nil
	// when it could not be made: then disaggregated requests get 503 with
	// Unavailable as the reason. The Manager does not close it.
	Transceiver transceiver.Transceiver
	// Unavailable says why Transceiver is nil.
	Unavailable string
	// TransferMode is transceiver.ModeAuto, ModePush or ModePull; empty:
	// DISAGG_KV_TRANSFER_MODE, else auto. Auto pushes when either pool is
	// on a GPU or staged (UCX turns zero-copy GET off over CUDA IPC
	// without NVLink, and a staged pool cannot be read remotely), and
	// between host pools pulls, except a KV of 1 MB or more where the
	// peer's writes travel as messages (transceiver.MessageWriter: UCX
	// over TCP), which is pushed. A staged context worker is always
	// pushed from.
	TransferMode string
	// KV is the engine.
	KV KV
	// Logger receives the logs; nil: slog.Default().
	Logger *slog.Logger
}

// Manager runs both roles over one engine and transceiver. It is safe for
// concurrent use.
type Manager struct {
	opts Options
	log  *slog.Logger
	pool *kvcache.Pool
	fp   Fingerprint
	info []byte
	// pushMin is pushMinBytes (tests lower it)
	pushMin int64

	nextID atomic.Int64

	ctx    context.Context // cancelled by Close: ends the waiters
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	parked map[int64]*parkedKV

	peerMu sync.Mutex
	peers  map[string]*peerConn // by connection info

	metrics metrics
}

// peerConn is a connection to one context worker, made once and shared;
// ready is closed when p or err is set.
type peerConn struct {
	ready chan struct{}
	p     transceiver.Peer
	err   error
}

// parkedKV is one context request's blocks waiting for their transfer.
type parkedKV struct {
	blocks []int32
	timer  *time.Timer
	// busy is true while this worker pushes the blocks; a release then
	// only marks them due (expired or freed), and the push frees them
	// when its write has returned (the backend no longer reads them).
	busy bool
	due  bool
}

type metrics struct {
	bytes    prometheus.Counter
	seconds  prometheus.Histogram
	failures prometheus.Counter
	// transfers counts the generation side's completed transfers by mode
	// (push, pull)
	transfers *prometheus.CounterVec
	expired   prometheus.Counter
	parked    prometheus.GaugeFunc
}

// New makes a Manager. The transceiver, when given, must have registered
// the engine's pool.
func New(opts Options) (*Manager, error) {
	if opts.KV == nil {
		return nil, errors.New("disagg: no engine")
	}
	if len(opts.Secret) == 0 {
		return nil, errors.New("disagg: empty cluster secret")
	}
	if opts.SenderTimeout <= 0 || opts.TransferTimeout <= 0 {
		return nil, fmt.Errorf("disagg: timeouts must be positive (sender %v, transfer %v)", opts.SenderTimeout, opts.TransferTimeout)
	}
	switch opts.Role {
	case RoleBoth, RoleContext, RoleGeneration:
	default:
		return nil, fmt.Errorf("disagg: role %q: want %q, %q or %q", opts.Role, RoleBoth, RoleContext, RoleGeneration)
	}
	switch opts.TransferMode {
	case "":
		mode, err := transceiver.TransferModeFromEnv()
		if err != nil {
			return nil, fmt.Errorf("disagg: %w", err)
		}
		opts.TransferMode = mode
	case transceiver.ModeAuto, transceiver.ModePush, transceiver.ModePull:
	default:
		return nil, fmt.Errorf("disagg: transfer mode %q: want %q, %q or %q", opts.TransferMode, transceiver.ModeAuto, transceiver.ModePush, transceiver.ModePull)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	m := &Manager{
		opts: opts, log: log, pool: opts.KV.Pool(), parked: map[int64]*parkedKV{}, peers: map[string]*peerConn{},
		pushMin: pushMinBytes,
	}
	m.fp = FingerprintOf(m.pool.Layout())
	if opts.Transceiver != nil {
		info, err := opts.Transceiver.LocalInfo()
		if err != nil {
			return nil, fmt.Errorf("disagg: transceiver info: %w", err)
		}
		m.info = info
	}
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("disagg: random request id base: %w", err)
	}
	// Ids start at a random point of [2^40, 2^52) so that two workers (or
	// one restarted) rarely hand out the same id; they stay below 2^53, so
	// JSON readers that hold numbers as doubles read them exactly.
	m.nextID.Store(int64(binary.LittleEndian.Uint64(seed[:])%(1<<52-1<<40) + 1<<40))
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.metrics = metrics{
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "worker_kv_transfer_bytes_total", Help: "KV cache bytes moved from context workers (pushed or pulled).",
		}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "worker_kv_transfer_seconds", Help: "Time of one request's KV transfer (generation side).",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "worker_kv_transfer_failures_total", Help: "KV transfers that failed or timed out (generation side).",
		}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_kv_transfers_total", Help: "KV transfers completed (generation side), by mode: push (the context worker wrote) or pull (this worker read).",
		}, []string{"mode"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "worker_kv_parked_expired_total", Help: "Parked context requests freed at their deadline, never transferred.",
		}),
	}
	m.metrics.parked = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "worker_kv_parked_blocks", Help: "KV blocks held for context requests waiting for their transfer.",
	}, func() float64 { return float64(m.ParkedBlocks()) })
	return m, nil
}

// Collectors are the Manager's Prometheus metrics:
//
//	worker_kv_transfer_bytes_total     counter: KV bytes moved (push or pull)
//	worker_kv_transfer_seconds         histogram: one request's transfer time
//	worker_kv_transfer_failures_total  counter: failed or timed-out transfers
//	worker_kv_transfers_total{mode}    counter: completed transfers, push or pull
//	worker_kv_parked_expired_total     counter: parked requests freed at their deadline
//	worker_kv_parked_blocks            gauge: blocks parked for transfer
func (m *Manager) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.metrics.bytes, m.metrics.seconds, m.metrics.failures, m.metrics.transfers, m.metrics.expired, m.metrics.parked}
}

// ParkedBlocks is the number of blocks parked now.
func (m *Manager) ParkedBlocks() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, p := range m.parked {
		n += len(p.blocks)
	}
	return n
}

// Parked is the number of requests parked now.
func (m *Manager) Parked() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.parked)
}

// Check says whether this worker takes a request of requestType
// (api.RequestContextOnly or api.RequestGenerationOnly): nil, or the
// error to answer with.
func (m *Manager) Check(requestType string) *api.Error {
	const param = "disaggregated_params.request_type"
	switch {
	case requestType == api.RequestContextOnly && m.opts.Role == RoleGeneration:
		return api.InvalidRequest(param, "This worker has the generation role; send context_only requests to a context worker.")
	case requestType == api.RequestGenerationOnly && m.opts.Role == RoleContext:
		return api.InvalidRequest(param, "This worker has the context role; send generation_only requests to a generation worker.")
	case m.opts.Transceiver == nil:
		return api.Unavailable("Disaggregated serving is unavailable on this worker: %s.", m.opts.Unavailable)
	}
	return nil
}

// Free returns blocks the caller owns to the engine.
func (m *Manager) Free(blocks []int32) { m.opts.KV.FreeKV(blocks) }

// Park takes over the KV a context phase handed over and returns the
// reply's disaggregated_params. On error the blocks are freed.
func (m *Manager) Park(kv *engine.KVHandoff, firstTokens []int32, disaggRequestID *int64) (*api.DisaggregatedParams, *api.Error) {
	if kv == nil || len(kv.Blocks) == 0 {
		return nil, api.Internal("The context phase handed over no KV blocks.")
	}
	if e := m.Check(api.RequestContextOnly); e != nil {
		m.Free(kv.Blocks)
		return nil, e
	}
	id := m.nextID.Add(1)
	now := time.Now()
	st := State{
		CtxRequestID: id, Info: m.info, Blocks: kv.Blocks, Tokens: kv.Tokens, Layout: m.fp,
		Expiry: now.Add(m.opts.SenderTimeout).UnixMilli(),
	}
	if !m.pool.Memory().Device() {
		// Host blocks are cheap to checksum (device blocks would need a
		// kernel): the generation worker verifies what it received.
		sums, err := transceiver.Checksums(transceiver.RegionOf(m.pool), kv.Blocks)
		if err != nil {
			m.Free(kv.Blocks)
			return nil, api.Internal("Could not checksum the KV blocks: %v", err)
		}
		st.Sums = sums
	}
	enc, err := Encode(st, m.opts.Secret)
	if err != nil {
		m.Free(kv.Blocks)
		return nil, api.Internal("Could not encode the transfer state: %v", err)
	}
	deadline := m.opts.SenderTimeout + m.opts.TransferTimeout
	p := &parkedKV{blocks: slices.Clone(kv.Blocks)}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.Free(kv.Blocks)
		return nil, api.Unavailable("The worker is shutting down.")
	}
	m.parked[id] = p
	p.timer = time.AfterFunc(deadline, func() {
		if m.release(id) {
			m.metrics.expired.Inc()
			m.log.Warn("parked KV freed at its deadline: no generation worker took it", "ctx_request_id", id, "blocks", len(p.blocks), "deadline", deadline)
		}
	})
	if w, ok := m.opts.Transceiver.(transceiver.Waiter); ok {
		m.wg.Add(1)
		go m.await(w, id, deadline)
	}
	m.mu.Unlock()
	m.log.Debug("KV parked", "ctx_request_id", id, "blocks", len(kv.Blocks), "tokens", kv.Tokens)
	return &api.DisaggregatedParams{
		RequestType: api.RequestContextOnly, FirstGenTokens: slices.Clone(firstTokens), CtxRequestID: &id,
		DisaggRequestID: disaggRequestID, EncodedOpaqueState: enc,
	}, nil
}

// await frees a parked request's blocks when the generation worker's
// notification (done, or gave up) arrives.
func (m *Manager) await(w transceiver.Waiter, id int64, d time.Duration) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(m.ctx, d)
	defer cancel()
	var n transceiver.Notification
	for {
		var err error
		n, err = w.WaitNotification(ctx, uint64(id))
		if err != nil {
			return // the deadline (or Close) frees the blocks
		}
		if n.Push == nil {
			break
		}
		m.servePush(ctx, id, n)
	}
	if m.release(id) {
		if n.Err != "" {
			m.log.Info("generation worker gave up on parked KV; freed", "ctx_request_id", id, "reason", n.Err)
		} else {
			m.log.Debug("parked KV transferred; freed", "ctx_request_id", id)
		}
	}
}

// release frees a parked request's blocks; it reports whether it was
// still parked (each request is released once). While a push reads the
// blocks they are only marked due, and endPush frees them.
func (m *Manager) release(id int64) bool {
	m.mu.Lock()
	p, ok := m.parked[id]
	if ok && p.busy {
		p.due = true
		m.mu.Unlock()
		return true
	}
	delete(m.parked, id)
	m.mu.Unlock()
	if !ok {
		return false
	}
	p.timer.Stop()
	m.Free(p.blocks)
	return true
}

// beginPush marks a parked request busy and returns its blocks, or
// reports that it is no longer parked.
func (m *Manager) beginPush(id int64) ([]int32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.parked[id]
	if !ok || p.due || p.busy {
		return nil, false
	}
	p.busy = true
	return p.blocks, true
}

// endPush ends a push; blocks released meanwhile are freed now.
func (m *Manager) endPush(id int64) {
	m.mu.Lock()
	p, ok := m.parked[id]
	if !ok {
		m.mu.Unlock()
		return
	}
	p.busy = false
	due := p.due
	m.mu.Unlock()
	if due {
		m.release(id)
	}
}

// Close frees every parked request's blocks, ends the waiters and closes
// the cached peers. Call it before closing the engine and the transceiver.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	ids := make([]int64, 0, len(m.parked))
	for id := range m.parked {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	for _, id := range ids {
		m.release(id)
	}
	m.cancel()
	m.wg.Wait()
	m.peerMu.Lock()
	conns := m.peers
	m.peers = map[string]*peerConn{}
	m.peerMu.Unlock()
	var errs []error
	for _, c := range conns {
		<-c.ready // Connect is bounded by TransferTimeout
		if c.p != nil {
			errs = append(errs, c.p.Close())
		}
	}
	return errors.Join(errs...)
}

// Fetch verifies a generation_only request's params, allocates blocks for
// the prompt, pulls the context worker's KV into them, tells the context
// worker it may free its blocks, and returns the engine's Resume. The
// caller owns the returned blocks until engine.Submit succeeds (Free them
// if it fails).
func (m *Manager) Fetch(ctx context.Context, p *api.DisaggregatedParams, prompt []int32) (*engine.Resume, api.KVTransfer, *api.Error) {
	if e := m.Check(api.RequestGenerationOnly); e != nil {
		return nil, api.KVTransfer{}, e
	}
	st, remote, e := m.verify(p, prompt)
	if e != nil {
		if e.Status == http.StatusGatewayTimeout { // the context worker's KV expired
			e = e.WithCode(api.CodeKVTransferFailed)
		}
		return nil, api.KVTransfer{}, e
	}
	local, err := m.pool.Alloc(len(st.Blocks))
	if err != nil {
		return nil, api.KVTransfer{}, api.Unavailable("No free KV cache blocks for a prompt of %d tokens; retry later.", st.Tokens)
	}
	moved, e := m.pull(ctx, st, remote, local)
	if e != nil {
		m.Free(local)
		if e.Status >= 500 {
			e = e.WithCode(api.CodeKVTransferFailed)
		}
		return nil, api.KVTransfer{}, e
	}
	return &engine.Resume{Blocks: local, FirstTokens: slices.Clone(p.FirstGenTokens)}, moved, nil
}

// verify checks everything about a generation_only request before any
// memory is touched.
func (m *Manager) verify(p *api.DisaggregatedParams, prompt []int32) (State, transceiver.Info, *api.Error) {
	const param = "disaggregated_params.encoded_opaque_state"
	fail := func(param, format string, args ...any) (State, transceiver.Info, *api.Error) {
		return State{}, transceiver.Info{}, api.InvalidRequest(param, format, args...)
	}
	if p == nil {
		return fail("disaggregated_params", "A generation_only request needs disaggregated_params.")
	}
	if len(p.FirstGenTokens) == 0 {
		return fail("disaggregated_params.first_gen_tokens", "A generation_only request needs first_gen_tokens.")
	}
	st, err := Decode(p.EncodedOpaqueState, m.opts.Secret, time.Now())
	if errors.Is(err, ErrExpired) {
		return State{}, transceiver.Info{}, api.NewError(http.StatusGatewayTimeout, api.TypeServer, param,
			fmt.Sprintf("The context worker's KV is no longer held: %v.", err))
	}
	if err != nil {
		return fail(param, "%v.", err)
	}
	if p.CtxRequestID != nil && *p.CtxRequestID != st.CtxRequestID {
		return fail("disaggregated_params.ctx_request_id", "ctx_request_id %d does not match the transfer state's %d.", *p.CtxRequestID, st.CtxRequestID)
	}
	if st.Layout != m.fp {
		return fail(param, "The context worker's KV layout %+v differs from this worker's %+v (another model or tokens_per_block).", st.Layout, m.fp)
	}
	if st.Tokens != len(prompt) {
		return fail("prompt", "The prompt has %d tokens but the context worker's KV holds %d.", len(prompt), st.Tokens)
	}
	if need := m.pool.Layout().BlocksFor(st.Tokens); len(st.Blocks) != need {
		return fail(param, "%d tokens need %d KV blocks; the state names %d.", st.Tokens, need, len(st.Blocks))
	}
	remote, err := transceiver.DecodeInfo(st.Info)
	if err != nil {
		return fail(param, "Bad transceiver info: %v.", err)
	}
	if remote.Backend != m.opts.Transceiver.Backend() {
		return fail(param, "The context worker's transceiver is %s, this worker's %s.", remote.Backend, m.opts.Transceiver.Backend())
	}
	if remote.Region.BlockBytes != m.pool.Layout().BlockBytes() {
		return fail(param, "The context worker's blocks are %d bytes, this worker's %d.", remote.Region.BlockBytes, m.pool.Layout().BlockBytes())
	}
	seen := make(map[int32]struct{}, len(st.Blocks))
	for _, b := range st.Blocks {
		// A staged context worker's region is its staging buffer: its
		// pool's blocks are checked by the context worker, which pushes.
		if b < 0 || (!remote.Region.Staged && int(b) >= remote.Region.NumBlocks) {
			return fail(param, "Block %d lies outside the context worker's %d blocks.", b, remote.Region.NumBlocks)
		}
		if _, dup := seen[b]; dup {
			return fail(param, "Block %d appears twice.", b)
		}
		seen[b] = struct{}{}
	}
	return st, remote, nil
}

// pull moves the context worker's blocks into local ones (reading them,
// or having the context worker push them: see push.go) and notifies it.
// A cached connection that turns out to be dead (the context worker
// restarted, or an earlier transfer timed out and the transceiver gave the
// endpoint up) is dropped and the read retried once on a fresh one.
func (m *Manager) pull(ctx context.Context, st State, remote transceiver.Info, local []int32) (api.KVTransfer, *api.Error) {
	t := transceiver.Transfer{RequestID: uint64(st.CtxRequestID), Pairs: make([]transceiver.BlockPair, len(local)),
		LocalBlocks: local, RemoteBlocks: st.Blocks}
	for i := range local {
		t.Pairs[i] = transceiver.BlockPair{Local: local[i], Remote: st.Blocks[i]}
	}
	tctx, cancel := context.WithTimeout(ctx, m.opts.TransferTimeout)
	defer cancel()
	modePush := m.usePush(remote)
	push := modePush
	start := time.Now()
	var peer transceiver.Peer
	var err error
	for attempt := 0; ; attempt++ {
		peer, err = m.peer(tctx, st.Info)
		if err != nil {
			m.metrics.failures.Inc()
			return api.KVTransfer{}, api.NewError(http.StatusBadGateway, api.TypeServer, "",
				fmt.Sprintf("Could not connect to the context worker %q: %v.", remote.Agent, err))
		}
		push = modePush || m.pushLarge(peer, len(local))
		if push {
			err = m.pushFetch(tctx, peer, st, local)
		} else {
			rd, ok := peer.(transceiver.Reader)
			if !ok {
				return api.KVTransfer{}, api.Unavailable("The %s transceiver cannot pull KV blocks.", m.opts.Transceiver.Backend())
			}
			err = rd.Read(tctx, t)
		}
		if err == nil {
			break
		}
		dead := errors.Is(err, transceiver.ErrPeerFailed) || errors.Is(err, transceiver.ErrClosed)
		switch {
		case dead || errors.Is(err, context.DeadlineExceeded):
			// The transceiver may have given this endpoint up: the next
			// transfer connects afresh. A context worker that did not
			// answer in time frees its blocks at its own deadline.
			m.dropPeer(st.Info, peer)
			if dead && attempt == 0 && tctx.Err() == nil {
				m.log.Info("the cached connection to the context worker is dead; reconnecting", "peer", peer.Name(), "err", err)
				continue
			}
		default:
			m.notify(peer, transceiver.Notification{RequestID: uint64(st.CtxRequestID), Err: err.Error()})
		}
		m.metrics.failures.Inc()
		switch {
		case ctx.Err() != nil:
			return api.KVTransfer{}, api.NewError(499, api.TypeInvalidRequest, "", "The request was cancelled during the KV transfer.")
		case errors.Is(err, context.DeadlineExceeded):
			return api.KVTransfer{}, api.NewError(http.StatusGatewayTimeout, api.TypeServer, "",
				fmt.Sprintf("The KV transfer from the context worker did not finish within kv_transfer_timeout_ms (%v).", m.opts.TransferTimeout))
		}
		return api.KVTransfer{}, api.NewError(http.StatusBadGateway, api.TypeServer, "", fmt.Sprintf("The KV transfer from the context worker failed: %v.", err))
	}
	// Device blocks would need a kernel to checksum: then the check is
	// left out.
	if len(st.Sums) != 0 && !m.pool.Memory().Device() {
		if err := transceiver.Verify(transceiver.RegionOf(m.pool), local, st.Sums); err != nil {
			m.metrics.failures.Inc()
			m.notify(peer, transceiver.Notification{RequestID: uint64(st.CtxRequestID), Err: err.Error()})
			return api.KVTransfer{}, api.NewError(http.StatusBadGateway, api.TypeServer, "", fmt.Sprintf("The KV received from the context worker is corrupt: %v.", err))
		}
	}
	moved := api.KVTransfer{Bytes: int64(len(local)) * int64(m.pool.Layout().BlockBytes()), Duration: time.Since(start)}
	m.metrics.seconds.Observe(moved.Duration.Seconds())
	m.metrics.bytes.Add(float64(moved.Bytes))
	if push {
		m.metrics.transfers.WithLabelValues("push").Inc()
	} else {
		m.metrics.transfers.WithLabelValues("pull").Inc()
	}
	m.log.Debug("KV transferred", "ctx_request_id", st.CtxRequestID, "blocks", len(local), "push", push, "duration", moved.Duration)
	m.notify(peer, transceiver.Notification{RequestID: uint64(st.CtxRequestID)})
	return moved, nil
}

// notify tells the context worker (in the background) that it may free a
// request's blocks; if it does not arrive the context worker frees them at
// its deadline.
func (m *Manager) notify(peer transceiver.Peer, n transceiver.Notification) {
	nt, ok := peer.(transceiver.Notifier)
	if !ok {
		return
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1) // under m.mu, ordered before Close's Wait
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(m.ctx, notifyTimeout)
		defer cancel()
		if err := nt.Notify(ctx, n); err != nil {
			m.log.Warn("could not notify the context worker; it frees the KV at its deadline", "ctx_request_id", n.RequestID, "err", err)
		}
	}()
}

// peer returns the cached connection to the agent of info, connecting
// once: concurrent requests for the same context worker wait for one
// Connect, and requests for other workers do not wait at all. A failed
// Connect is forgotten, so the next request tries again.
func (m *Manager) peer(ctx context.Context, info []byte) (transceiver.Peer, error) {
	key := string(info)
	m.peerMu.Lock()
	c, ok := m.peers[key]
	if !ok {
		c = &peerConn{ready: make(chan struct{})}
		m.peers[key] = c
	}
	m.peerMu.Unlock()
	if !ok {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.TransferTimeout)
		c.p, c.err = m.opts.Transceiver.Connect(cctx, info)
		cancel()
		close(c.ready)
		if c.err != nil {
			m.forget(key, c)
		}
	}
	select {
	case <-c.ready:
		return c.p, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// forget removes c from the cache if it is still there.
func (m *Manager) forget(key string, c *peerConn) {
	m.peerMu.Lock()
	if m.peers[key] == c {
		delete(m.peers, key)
	}
	m.peerMu.Unlock()
}

// dropPeer forgets a failed connection so the next request reconnects.
func (m *Manager) dropPeer(info []byte, p transceiver.Peer) {
	key := string(info)
	m.peerMu.Lock()
	if c, ok := m.peers[key]; ok && c.p == p {
		delete(m.peers, key)
	}
	m.peerMu.Unlock()
	if err := p.Close(); err != nil {
		m.log.Debug("closing a failed peer", "peer", p.Name(), "err", err)
	}
}
