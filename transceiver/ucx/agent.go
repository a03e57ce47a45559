package ucx

/*
#include <stdlib.h>
#include "shim.h"

static void *dxu_msg_data(dx_msg *m) { return m->data; }
*/
import "C"

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"disagg/transceiver"
	"disagg/transceiver/internal/cudamem"
	"disagg/transceiver/internal/wakeup"
)

func init() {
	transceiver.Register(transceiver.BackendUCX, func(cfg transceiver.Config) (transceiver.Transceiver, error) {
		return New(cfg)
	})
}

// Compile-time checks of the abilities an Agent and a Peer offer.
var (
	_ transceiver.Transceiver   = (*Agent)(nil)
	_ transceiver.Waiter        = (*Agent)(nil)
	_ transceiver.DeviceMemory  = (*Agent)(nil)
	_ transceiver.Peer          = (*Peer)(nil)
	_ transceiver.Reader        = (*Peer)(nil)
	_ transceiver.Notifier      = (*Peer)(nil)
	_ transceiver.WriteNotifier = (*Peer)(nil)
)

// envWakeup, set to 0, makes the idle loop nap on a timer instead of
// sleeping on the worker's event fd (a tuning and diagnosis knob).
const envWakeup = "DISAGG_UCX_WAKEUP"

// envErrMode, set to "none", creates endpoints without UCX's peer error
// handling. UCX then may use transports that cannot report a dead peer
// (cma, shared memory, cuda_ipc), which are much faster, but a peer that
// dies mid-transfer may hang the transfer or abort this process. For
// measurements and trusted single-host setups only.
const envErrMode = "DISAGG_UCX_ERR_MODE"

// getZcopyKey is transceiver.EnvCUDAIPCGetZcopy without UCX's prefix, as
// ucp_config_modify takes it.
const getZcopyKey = "CUDA_IPC_ENABLE_GET_ZCOPY"

const (
	// amNotify is the active-message id of notifications.
	amNotify = 0x4458
	// idleWait is how long the idle progress loop sleeps between polls.
	idleWait = 500 * time.Microsecond
	// spinAfterActivity keeps the loop polling without sleeping this long
	// after the last event.
	spinAfterActivity = 200 * time.Microsecond
	// maxSleep bounds one sleep of the idle loop on the worker's event fd.
	maxSleep = 100 * time.Millisecond
	// closeTimeout bounds a graceful endpoint close before it is forced.
	closeTimeout = 2 * time.Second
)

// Agent is one UCX transceiver: a context, a worker, one registered
// region, and the progress loop that owns them.
type Agent struct {
	cfg transceiver.Config
	log *slog.Logger

	work     chan func()
	loopDone chan struct{}

	// Owned by the loop goroutine.
	uctx     C.dxucp_context_h
	worker   C.dxucp_worker_h
	queue    *C.dx_queue
	memh     C.dxucp_mem_h
	ops      []*op
	peers    map[*Peer]struct{}
	deadEPs  []*C.dx_ep // closed endpoints' handler state, freed after the worker
	posted   uint64
	stopping bool
	dropped  uint64

	// Writes as active messages (amwrite.go), loop goroutine: the
	// receiving side's region and counters (C memory, the write handler's
	// argument), the queue of acknowledgements to this agent's writes, the
	// ops waiting for them by sequence number, and what was last logged.
	wrecv      *C.dx_wrecv
	acks       *C.dx_queue
	awaiting   map[uint64]*op
	seq        uint64
	maxRuns    int
	amMode     int
	refused    uint64
	unacked    uint64
	ackDropped uint64

	memTypes uint64 // set before the loop serves requests, then read-only
	efd      int    // the worker's event fd (loop goroutine)

	// wake is the eventfd the loop sleeps on beside the worker's, so that
	// handing it work wakes it.
	wake *wakeup.FD

	mu         sync.Mutex
	closed     bool
	registered bool
	region     transceiver.Region
	info       []byte
	// mail matches received notifications with their waiters.
	mail *transceiver.Mailbox
	// hand carries the loop's answers to callers of submit.
	hand transceiver.Handoff
}

// New loads libucp (cfg.UCXLib or DefaultLibrary) and starts an agent:
// a UCP context with RMA and active messages, a worker, and its progress
// loop on a locked OS thread.
func New(cfg transceiver.Config) (*Agent, error) {
	cfg.Complete()
	if err := Load(cfg.UCXLib); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("backend", "UCX", "agent", cfg.Name),
		work:     make(chan func(), 64),
		loopDone: make(chan struct{}),
		peers:    map[*Peer]struct{}{},
		mail:     transceiver.NewMailbox(),
	}
	w, err := wakeup.New()
	if err != nil {
		return nil, fmt.Errorf("ucx: eventfd: %w", err)
	}
	a.wake = w
	ready := make(chan error, 1)
	go a.loop(ready)
	if err := <-ready; err != nil {
		<-a.loopDone
		a.closeWake()
		return nil, err
	}
	a.log.Debug("UCX agent started", "memory_types", memTypeList(a.memTypes))
	if !versionAtLeast(1, 14) {
		maj, min, rel := Version()
		a.log.Warn("this UCX aborts the whole process if a peer dies while their connection is still being set up "+
			"(an assertion on a queued wireup reply, removed upstream by openucx/ucx#8175); use UCX 1.14 or newer, "+
			"e.g. DISAGG_UCX_LIB pointing at the libucp the nixl-cu13 wheel bundles",
			"ucx_version", fmt.Sprintf("%d.%d.%d", maj, min, rel))
	}
	return a, nil
}

// Backend returns "UCX".
func (a *Agent) Backend() string { return transceiver.BackendUCX }

// SupportsDevice reports whether this UCX can register CUDA memory.
func (a *Agent) SupportsDevice() bool { return a.memTypes&(1<<C.DXUCS_MEMORY_TYPE_CUDA) != 0 }

// setup creates the context and worker on the loop's thread.
func (a *Agent) setup() error {
	const features = C.DXUCP_FEATURE_RMA | C.DXUCP_FEATURE_AM | C.DXUCP_FEATURE_WAKEUP
	if err := statusErr(C.dxu_init(features, nil, nil, &a.uctx)); err != nil {
		return fmt.Errorf("ucx: init context: %w", err)
	}
	var types C.uint64_t
	if err := statusErr(C.dxu_memory_types(a.uctx, &types)); err != nil {
		C.dxu_cleanup(a.uctx)
		return fmt.Errorf("ucx: query memory types: %w", err)
	}
	a.memTypes = uint64(types)
	if a.SupportsDevice() && transceiver.SetGetZcopy() {
		// Again with zero-copy GET over cuda_ipc on (see
		// transceiver.EnvCUDAIPCGetZcopy). Only on a UCX that moves CUDA
		// memory: elsewhere the key names no transport and UCX warns.
		C.dxu_cleanup(a.uctx)
		key, val := C.CString(getZcopyKey), C.CString("y")
		err := statusErr(C.dxu_init(features, key, val, &a.uctx))
		C.free(unsafe.Pointer(key))
		C.free(unsafe.Pointer(val))
		if err == nil {
			a.log.Debug("UCX zero-copy GET over cuda_ipc turned on", "env", transceiver.EnvCUDAIPCGetZcopy)
		} else {
			a.log.Warn("UCX refused zero-copy GET over cuda_ipc; reads of GPU memory will be slow (set "+
				transceiver.EnvCUDAIPCGetZcopy+"=auto to leave it to UCX and silence this)", "err", err)
			if err := statusErr(C.dxu_init(features, nil, nil, &a.uctx)); err != nil {
				return fmt.Errorf("ucx: init context: %w", err)
			}
		}
	}
	if err := statusErr(C.dxu_worker_create(a.uctx, &a.worker)); err != nil {
		C.dxu_cleanup(a.uctx)
		return fmt.Errorf("ucx: create worker: %w", err)
	}
	fail := func(err error) error {
		C.dxu_worker_destroy(a.worker)
		a.freeAMWrite()
		if a.queue != nil {
			C.dxu_queue_free(a.queue)
		}
		C.dxu_cleanup(a.uctx)
		return err
	}
	a.queue = C.dxu_queue_new()
	if a.queue == nil {
		return fail(errors.New("ucx: out of memory for the notification queue"))
	}
	if err := statusErr(C.dxu_set_am_handler(a.worker, amNotify, a.queue)); err != nil {
		return fail(fmt.Errorf("ucx: set active message handler: %w", err))
	}
	if err := a.setupAMWrite(); err != nil {
		return fail(err)
	}
	var efd C.int
	if os.Getenv(envWakeup) == "0" {
		a.efd = -1
	} else if err := statusErr(C.dxu_worker_efd(a.worker, &efd)); err != nil {
		a.efd = -1 // no wakeup: the idle loop polls on a timer instead
		a.log.Debug("ucx: worker event fd unavailable; idle loop will poll", "err", err)
	} else {
		a.efd = int(efd)
	}
	return nil
}

// teardown releases everything on the loop's thread, after every op ended.
func (a *Agent) teardown() {
	for p := range a.peers {
		a.closePeerNow(p)
	}
	// Let UCX send what it still has queued (wireup replies, endpoint
	// removal notices) before the worker goes: destroying a worker with
	// wireup messages pending trips an assertion in some UCX releases.
	deadline := time.Now().Add(100 * time.Millisecond)
	for quiet := 0; quiet < 100 && time.Now().Before(deadline); {
		if C.dxu_progress(a.worker) == 0 {
			quiet++
		} else {
			quiet = 0
		}
	}
	if a.memh != nil {
		if err := statusErr(C.dxu_mem_unmap(a.uctx, a.memh)); err != nil {
			a.log.Warn("ucx: unmap region", "err", err)
		}
		a.memh = nil
	}
	C.dxu_worker_destroy(a.worker)
	for _, e := range a.deadEPs {
		C.free(unsafe.Pointer(e))
	}
	a.deadEPs = nil
	a.freeAMWrite()
	C.dxu_queue_free(a.queue)
	C.dxu_cleanup(a.uctx)
}

// loop is the progress loop: the only goroutine that calls into UCX for
// this agent. It runs work handed to it, progresses the worker, delivers
// notifications and completes operations.
func (a *Agent) loop(ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread exits with the loop
	defer close(a.loopDone)
	if err := a.setup(); err != nil {
		ready <- err
		return
	}
	ready <- nil
	timer := time.NewTimer(idleWait)
	lastActive := time.Now()
	for {
		// answered: a caller of submit may wait on something this pass
		// answered; delivered: a notification's waiter may.
		busy, answered, delivered := false, false, false
	drain:
		for i := 0; i < 64; i++ {
			select {
			case f := <-a.work:
				f()
				busy, answered = true, true
			default:
				break drain
			}
		}
		for C.dxu_progress(a.worker) != 0 {
			busy = true
		}
		if a.deliver() {
			busy, delivered = true, true
		}
		if a.deliverAcks() {
			busy = true
		}
		if a.pollOps() {
			busy, answered = true, true
		}
		if (answered && a.hand.Parked()) || (delivered && a.mail.Parked()) {
			transceiver.YieldToWoken()
		}
		if a.stopping {
			if len(a.ops) == 0 {
				a.teardown()
				return
			}
			continue
		}
		if busy || len(a.ops) > 0 {
			lastActive = time.Now()
			continue
		}
		if time.Since(lastActive) < spinAfterActivity {
			continue
		}
		if a.efd >= 0 {
			switch st := C.dxu_worker_arm(a.worker); st {
			case C.DXUCS_OK:
				a.sleep()
				lastActive = time.Now()
				continue
			case C.DXUCS_ERR_BUSY:
				continue // events pending: progress again
			}
		}
		timer.Reset(idleWait)
		select {
		case f := <-a.work:
			f()
			lastActive = time.Now()
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// do runs fn on the loop goroutine and waits for it.
func (a *Agent) do(fn func() error) error {
	errc := make(chan error, 1)
	return a.submit(func() { errc <- fn() }, errc)
}

// submit hands f to the loop and waits for the answer f (or what it
// starts) sends on done; ErrClosed when the agent is closed or closes
// first.
func (a *Agent) submit(f func(), done <-chan error) error {
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return transceiver.ErrClosed
	}
	select {
	case a.work <- f:
		a.wake.Wake()
	case <-a.loopDone:
		return transceiver.ErrClosed
	}
	return a.hand.Wait(done, a.loopDone)
}

// op is a set of outstanding UCX requests that complete together.
type op struct {
	ctx     context.Context
	peer    *Peer
	reqs    []unsafe.Pointer
	err     error
	aborted bool
	done    chan error
	// cleanups run once UCX has released every request of o.
	cleanups []func()
	what     string
	// acks are the sequence numbers of o's write messages whose
	// acknowledgements have not arrived (amwrite.go).
	acks []uint64
	// then, when set, posts the op's next step once every request so far
	// has completed without error (a write's notification after its
	// flush); loop goroutine only.
	then func(o *op)
}

// advance runs o's next step while o has no requests in flight, no
// acknowledgement outstanding and no error, and reports whether o is
// still going. A failed or aborted op stops waiting for acknowledgements
// once UCX has released its requests. Loop goroutine only.
func (o *op) advance() bool {
	for len(o.reqs) == 0 && len(o.acks) == 0 && o.then != nil && o.err == nil && !o.aborted {
		next := o.then
		o.then = nil
		next(o)
	}
	if len(o.reqs) == 0 && len(o.acks) > 0 && (o.err != nil || o.aborted) {
		o.peer.a.forgetAcks(o)
	}
	return len(o.reqs) > 0 || len(o.acks) > 0
}

// onDone has f run when o ends, after UCX has released its requests.
func (o *op) onDone(f func()) { o.cleanups = append(o.cleanups, f) }

// finish runs o's cleanups and answers its caller; loop goroutine only.
func (o *op) finish() {
	for _, f := range o.cleanups {
		f()
	}
	o.cleanups = nil
	o.done <- o.err
}

// add records the status pointer of a posted operation: an immediate
// completion, an error, or a request to poll.
func (o *op) add(p unsafe.Pointer) {
	if C.dxu_is_request(p) != 0 {
		o.reqs = append(o.reqs, p)
		return
	}
	if err := statusErr(C.dxu_ptr_status(p)); err != nil && o.err == nil {
		o.err = err
	}
}

// pollOps completes finished requests, aborts ops past their deadline, and
// reports whether anything changed.
func (a *Agent) pollOps() bool {
	changed := false
	kept := a.ops[:0]
	for _, o := range a.ops {
		if !o.aborted {
			var cause error
			select {
			case <-o.ctx.Done():
				cause = context.Cause(o.ctx)
			default:
				if a.stopping {
					cause = transceiver.ErrClosed
				}
			}
			if cause != nil {
				o.aborted = true
				if o.err == nil {
					o.err = fmt.Errorf("ucx: %s to %s: %w", o.what, o.peer.name, cause)
				}
				// UCX cannot cancel RMA: force-close the endpoint, which
				// completes every request on it with an error. The peer
				// is unusable afterwards.
				a.breakPeer(o.peer, o.err, o)
				changed = true
			}
		}
		live := o.reqs[:0]
		for _, r := range o.reqs {
			st := C.dxu_ptr_status(r)
			if st == C.DXUCS_INPROGRESS {
				live = append(live, r)
				continue
			}
			C.dxu_req_free(r)
			changed = true
			if err := statusErr(st); err != nil && o.err == nil {
				o.err = a.peerErr(o.peer, err)
			}
		}
		o.reqs = live
		if o.advance() {
			kept = append(kept, o)
			continue
		}
		o.finish()
		changed = true
	}
	for i := len(kept); i < len(a.ops); i++ {
		a.ops[i] = nil
	}
	a.ops = kept
	return changed
}

// start runs post on the loop; post fills an op whose requests the loop
// then completes. It waits for completion: when ctx ends, the op is
// aborted and start still waits until UCX has released every request, so
// the caller's memory may be reused once start returns.
func (a *Agent) start(ctx context.Context, p *Peer, what string, post func(o *op)) error {
	o := &op{ctx: ctx, peer: p, done: make(chan error, 1), what: what}
	// One hand-off each way: the loop posts the operation and, when it
	// completes, answers on o.done (no separate wait for the posting).
	return a.submit(func() {
		if a.stopping {
			o.done <- transceiver.ErrClosed
			return
		}
		post(o)
		if !o.advance() {
			o.finish()
			return
		}
		a.ops = append(a.ops, o)
	}, o.done)
}

// Register maps the region with UCX (host or CUDA memory type), packs its
// remote key and builds this agent's connection info.
func (a *Agent) Register(r transceiver.Region) error {
	if err := r.Validate(); err != nil {
		return err
	}
	memType := C.int(C.DXUCS_MEMORY_TYPE_HOST)
	if r.Mem.Device() {
		if !a.SupportsDevice() {
			return fmt.Errorf("%w: %v", transceiver.ErrUnsupported, errNoCUDA)
		}
		memType = C.DXUCS_MEMORY_TYPE_CUDA
	}
	a.mu.Lock()
	if a.registered {
		a.mu.Unlock()
		return errors.New("ucx: a region is already registered")
	}
	a.mu.Unlock()
	var info []byte
	err := a.do(func() error {
		if r.Mem.Device() {
			// the loop thread posts every transfer of this region
			if err := cudamem.BindThread(r.Mem.Ptr()); err != nil {
				a.log.Warn("ucx: the progress loop runs without the region's CUDA context current", "err", err)
			}
		}
		var memh C.dxucp_mem_h
		if err := statusErr(C.dxu_mem_map(a.uctx, r.Mem.Ptr(), C.size_t(r.Bytes()), memType, &memh)); err != nil {
			return fmt.Errorf("ucx: map %d bytes: %w", r.Bytes(), err)
		}
		var rkey unsafe.Pointer
		var rkeyLen C.size_t
		if err := statusErr(C.dxu_rkey_pack(a.uctx, memh, &rkey, &rkeyLen)); err != nil {
			_ = statusErr(C.dxu_mem_unmap(a.uctx, memh))
			return fmt.Errorf("ucx: pack remote key: %w", err)
		}
		defer C.dxu_rkey_buffer_release(rkey)
		var addr unsafe.Pointer
		var addrLen C.size_t
		if err := statusErr(C.dxu_worker_address(a.worker, &addr, &addrLen)); err != nil {
			_ = statusErr(C.dxu_mem_unmap(a.uctx, memh))
			return fmt.Errorf("ucx: worker address: %w", err)
		}
		defer C.dxu_worker_release_address(a.worker, addr)
		payload := encodePayload(C.GoBytes(addr, C.int(addrLen)), C.GoBytes(rkey, C.int(rkeyLen)))
		blob, err := transceiver.EncodeInfo(transceiver.Info{
			Backend: transceiver.BackendUCX,
			Agent:   a.cfg.Name,
			Region: transceiver.RemoteRegion{
				Base:       uint64(uintptr(r.Mem.Ptr())),
				BlockBytes: r.BlockBytes,
				NumBlocks:  r.NumBlocks,
				Device:     r.Mem.Device(),
			},
			Payload: payload,
		})
		if err != nil {
			_ = statusErr(C.dxu_mem_unmap(a.uctx, memh))
			return err
		}
		a.memh = memh
		a.receiveInto(r)
		info = blob
		return nil
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.registered, a.region, a.info = true, r, info
	a.mu.Unlock()
	return nil
}

func encodePayload(addr, rkey []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(addr)))
	b = append(b, addr...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(rkey)))
	return append(b, rkey...)
}

func decodePayload(b []byte) (addr, rkey []byte, err error) {
	next := func() ([]byte, error) {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: UCX payload truncated", transceiver.ErrBadInfo)
		}
		n := binary.LittleEndian.Uint32(b)
		b = b[4:]
		if n == 0 || uint64(n) > uint64(len(b)) {
			return nil, fmt.Errorf("%w: UCX payload field of %d bytes in %d", transceiver.ErrBadInfo, n, len(b))
		}
		out := b[:n]
		b = b[n:]
		return out, nil
	}
	if addr, err = next(); err != nil {
		return nil, nil, err
	}
	if rkey, err = next(); err != nil {
		return nil, nil, err
	}
	if len(b) != 0 {
		return nil, nil, fmt.Errorf("%w: UCX payload has %d trailing bytes", transceiver.ErrBadInfo, len(b))
	}
	return addr, rkey, nil
}

// LocalInfo returns the connection info built by Register.
func (a *Agent) LocalInfo() ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.registered {
		return nil, transceiver.ErrNotRegistered
	}
	return append([]byte(nil), a.info...), nil
}

// Peer is an endpoint to a remote UCX agent and its unpacked remote key.
type Peer struct {
	a      *Agent
	name   string
	remote transceiver.RemoteRegion

	// Owned by the loop goroutine.
	ep     *C.dx_ep
	rkey   C.dxucp_rkey_h
	broken error
	closed bool
	// am: writes from a host region go as active messages (amwrite.go);
	// path says which path writes take and why. Set at Connect.
	am   bool
	path string
}

// Connect creates an endpoint to the agent described by info (error mode
// "peer", so a dead peer fails operations instead of hanging them) and
// unpacks its remote key.
func (a *Agent) Connect(ctx context.Context, info []byte) (transceiver.Peer, error) {
	in, err := transceiver.DecodeInfo(info)
	if err != nil {
		return nil, err
	}
	if in.Backend != transceiver.BackendUCX {
		return nil, fmt.Errorf("%w: peer %q runs backend %q, this agent UCX", transceiver.ErrBadInfo, in.Agent, in.Backend)
	}
	addr, rkey, err := decodePayload(in.Payload)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := &Peer{a: a, name: in.Agent, remote: in.Region}
	err = a.do(func() error {
		caddr := C.CBytes(addr)
		defer C.free(caddr)
		crkey := C.CBytes(rkey)
		defer C.free(crkey)
		e := C.dxu_ep_new()
		if e == nil {
			return errors.New("ucx: out of memory for an endpoint")
		}
		peerErrors := C.int(1)
		if os.Getenv(envErrMode) == "none" {
			peerErrors = 0
		}
		if err := statusErr(C.dxu_ep_create(a.worker, caddr, e, peerErrors)); err != nil {
			C.free(unsafe.Pointer(e))
			return fmt.Errorf("ucx: connect to %s: %w", in.Agent, err)
		}
		p.ep = e
		if err := statusErr(C.dxu_rkey_unpack(e, crkey, &p.rkey)); err != nil {
			a.closePeerNow(p)
			return fmt.Errorf("ucx: unpack remote key of %s: %w", in.Agent, err)
		}
		a.chooseWritePath(p)
		a.peers[p] = struct{}{}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// closePeerNow destroys the rkey and closes the endpoint (flushing a
// healthy one, forcing a failed one), waiting (bounded) for UCX to
// finish; loop goroutine only.
func (a *Agent) closePeerNow(p *Peer) {
	if p.rkey != nil {
		C.dxu_rkey_destroy(p.rkey)
		p.rkey = nil
	}
	if p.ep != nil {
		if p.ep.ep != nil {
			// A healthy endpoint closes in flush mode: forcing it while a
			// wireup message is still queued trips an assertion in UCX
			// 1.13 over TCP. A failed one is forced.
			force := C.int(0)
			if p.broken != nil || p.ep.failed != 0 {
				force = 1
			}
			r := C.dxu_ep_close(p.ep, force)
			a.waitReq(r, closeTimeout)
		}
		// UCX may still call the error handler of a closed endpoint (its
		// argument is p.ep) until the worker is destroyed.
		a.deadEPs = append(a.deadEPs, p.ep)
		p.ep = nil
	}
	p.closed = true
	delete(a.peers, p)
}

// waitReq progresses the worker until the request completes or d passes;
// loop goroutine only.
func (a *Agent) waitReq(r unsafe.Pointer, d time.Duration) {
	if C.dxu_is_request(r) == 0 {
		return
	}
	deadline := time.Now().Add(d)
	for C.dxu_ptr_status(r) == C.DXUCS_INPROGRESS {
		if time.Now().After(deadline) {
			a.log.Warn("ucx: endpoint close did not complete in time; leaving it to worker teardown", "timeout", d)
			return
		}
		C.dxu_progress(a.worker)
	}
	C.dxu_req_free(r)
}

// breakPeer force-closes p's endpoint after a deadline or fatal error; the
// close request joins o so that o completes only when UCX is done.
func (a *Agent) breakPeer(p *Peer, cause error, o *op) {
	if p.broken == nil {
		p.broken = cause
	}
	if p.ep == nil || p.ep.ep == nil {
		return
	}
	// UCX wants the rkey gone before its endpoint; the requests still
	// using it are purged by the forced close right after.
	if p.rkey != nil {
		C.dxu_rkey_destroy(p.rkey)
		p.rkey = nil
	}
	o.add(C.dxu_ep_close(p.ep, 1))
}

// peerErr maps a request error to ErrPeerFailed when the endpoint's
// error handler fired.
func (a *Agent) peerErr(p *Peer, err error) error {
	if p != nil && p.ep != nil && p.ep.failed != 0 {
		return fmt.Errorf("ucx: peer %s failed (%v): %w", p.name, Status(p.ep.failed), transceiver.ErrPeerFailed)
	}
	return err
}

// usable reports why p cannot take new operations; loop goroutine only.
func (p *Peer) usable() error {
	switch {
	case p.closed:
		return fmt.Errorf("ucx: peer %s: %w", p.name, transceiver.ErrClosed)
	case p.broken != nil:
		return fmt.Errorf("ucx: peer %s is unusable after %v: %w", p.name, p.broken, transceiver.ErrPeerFailed)
	case p.ep.failed != 0:
		return fmt.Errorf("ucx: peer %s failed (%v): %w", p.name, Status(p.ep.failed), transceiver.ErrPeerFailed)
	}
	return nil
}

// Name is the peer agent's name.
// WritesAsMessages reports whether writes to p go as active messages
// (transceiver.MessageWriter): chosen at Connect, see chooseWritePath.
func (p *Peer) WritesAsMessages() bool { return p.am }

func (p *Peer) Name() string { return p.name }

// Write pushes blocks to the peer: from host memory over an endpoint
// without RMA, as active messages that the peer acknowledges (see
// amwrite.go); otherwise ucp_put_nbx per coalesced run, then an endpoint
// flush so the data is complete remotely.
func (p *Peer) Write(ctx context.Context, t transceiver.Transfer) error {
	return p.rma(ctx, t, true, nil)
}

// WriteNotify is Write, then n sent as Notify sends it, in one operation
// of the progress loop: the notification leaves when the flush completes
// (or every acknowledgement of an active-message write has arrived),
// without a round trip through the caller.
func (p *Peer) WriteNotify(ctx context.Context, t transceiver.Transfer, n transceiver.Notification) error {
	b, err := transceiver.EncodeNotification(n)
	if err != nil {
		return err
	}
	return p.rma(ctx, t, true, b)
}

// Read pulls the peer's blocks (ucp_get_nbx per coalesced run).
func (p *Peer) Read(ctx context.Context, t transceiver.Transfer) error {
	return p.rma(ctx, t, false, nil)
}

// rma posts t's reads or writes; a write with notif sends it once the
// write is complete at the peer.
func (p *Peer) rma(ctx context.Context, t transceiver.Transfer, write bool, notif []byte) error {
	a := p.a
	a.mu.Lock()
	registered, region := a.registered, a.region
	a.mu.Unlock()
	if !registered {
		return transceiver.ErrNotRegistered
	}
	descs, err := transceiver.Plan(t, region, p.remote)
	if err != nil {
		return err
	}
	ctx, cancel := a.cfg.TransferContext(ctx)
	defer cancel()
	memType := C.int(C.DXUCS_MEMORY_TYPE_HOST)
	if region.Mem.Device() {
		memType = C.DXUCS_MEMORY_TYPE_CUDA
	}
	what := "read"
	if write {
		what = "write"
	}
	base := region.Mem.Ptr()
	am := write && p.am && !region.Mem.Device()
	return a.start(ctx, p, what, func(o *op) {
		if err := p.usable(); err != nil {
			o.err = err
			return
		}
		if am {
			p.postAMWrite(o, base, descs, region.BlockBytes)
		} else {
			p.postRMA(o, base, descs, write, memType, what)
		}
		if o.err != nil {
			return
		}
		if notif != nil {
			buf := C.CBytes(notif)
			o.onDone(func() { C.free(buf) })
			o.then = func(o *op) { p.sendNotification(o, buf, len(notif)) }
		}
	})
}

// postRMA posts a put or get per descriptor into o, and after writes an
// endpoint flush; loop goroutine only.
func (p *Peer) postRMA(o *op, base unsafe.Pointer, descs []transceiver.Descriptor, write bool, memType C.int, what string) {
	a := p.a
	for _, d := range descs {
		if o.err = a.injectFault(what); o.err != nil {
			return // wait for what was posted, flush nothing
		}
		local := unsafe.Add(base, d.LocalOffset)
		raddr := C.uint64_t(p.remote.Base + uint64(d.RemoteOffset))
		var r unsafe.Pointer
		if write {
			r = C.dxu_put(p.ep, local, C.size_t(d.Len), raddr, p.rkey, memType, a.memh)
		} else {
			r = C.dxu_get(p.ep, local, C.size_t(d.Len), raddr, p.rkey, memType, a.memh)
		}
		o.add(r)
		if o.err != nil {
			o.err = a.peerErr(p, o.err)
			return
		}
	}
	if write {
		o.add(C.dxu_ep_flush(p.ep))
	}
}

// injectFault counts a descriptor about to be posted and, with fault
// injection on, fails every FaultEvery-th; loop goroutine only.
func (a *Agent) injectFault(what string) error {
	a.posted++
	if a.cfg.FaultEvery > 0 && a.posted%uint64(a.cfg.FaultEvery) == 0 {
		return fmt.Errorf("ucx: %s descriptor %d: %w", what, a.posted, transceiver.ErrInjected)
	}
	return nil
}

// sendNotification posts an encoded notification as an eager active
// message into o; loop goroutine only.
func (p *Peer) sendNotification(o *op, buf unsafe.Pointer, n int) {
	if err := p.usable(); err != nil {
		o.err = err
		return
	}
	o.add(C.dxu_am_send(p.ep, amNotify, buf, C.size_t(n)))
	if o.err != nil {
		o.err = p.a.peerErr(p, o.err)
	}
}

// Notify sends n to the peer as an eager active message.
func (p *Peer) Notify(ctx context.Context, n transceiver.Notification) error {
	b, err := transceiver.EncodeNotification(n)
	if err != nil {
		return err
	}
	ctx, cancel := p.a.cfg.TransferContext(ctx)
	defer cancel()
	buf := C.CBytes(b)
	posted := false
	err = p.a.start(ctx, p, "notify", func(o *op) {
		posted = true
		o.onDone(func() { C.free(buf) })
		p.sendNotification(o, buf, len(b))
	})
	if !posted {
		C.free(buf)
	}
	return err
}

// Close disconnects from the peer. It waits for UCX to close the endpoint.
func (p *Peer) Close() error {
	err := p.a.do(func() error {
		if p.closed {
			return nil
		}
		for _, o := range p.a.ops {
			if o.peer == p {
				return fmt.Errorf("ucx: peer %s has operations in flight", p.name)
			}
		}
		p.a.closePeerNow(p)
		return nil
	})
	if errors.Is(err, transceiver.ErrClosed) {
		return nil // the agent's Close released it
	}
	return err
}

// deliver moves received notifications from the C queue to waiters;
// loop goroutine only.
func (a *Agent) deliver() bool {
	got := drain(a.queue, func(b []byte) {
		n, err := transceiver.DecodeNotification(b)
		if err != nil {
			a.log.Warn("ucx: dropping malformed notification", "err", err)
			return
		}
		if !a.mail.Deliver(n) {
			a.log.Warn("ucx: too many unclaimed notifications, dropping", "request", n.RequestID)
		}
	})
	a.logCounter("ucx: notifications dropped in the receive handler", uint64(a.queue.dropped), &a.dropped)
	return got
}

// drain pops every message of q, hands each one's bytes to f, and
// reports whether there was any. The handlers fill q inside dxu_progress on
// the loop's own thread, so an empty queue is seen from Go without a cgo
// call: the loop's passes with nothing received make none.
func drain(q *C.dx_queue, f func([]byte)) bool {
	if q.head == nil {
		return false
	}
	got := false
	for {
		m := C.dxu_queue_pop(q)
		if m == nil {
			return got
		}
		got = true
		b := C.GoBytes(C.dxu_msg_data(m), C.int(m.len))
		C.free(unsafe.Pointer(m))
		f(b)
	}
}

// WaitNotification returns requestID's notification once it arrives.
func (a *Agent) WaitNotification(ctx context.Context, requestID uint64) (transceiver.Notification, error) {
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return transceiver.Notification{}, transceiver.ErrClosed
	}
	return a.mail.Wait(ctx, requestID, a.loopDone)
}

// Close aborts operations in flight (waiting for UCX to release them),
// closes every endpoint, unmaps the region and destroys the worker and
// context. It is safe to call more than once.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		<-a.loopDone
		return nil
	}
	a.mu.Unlock()
	err := a.do(func() error {
		a.stopping = true
		return nil
	})
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	<-a.loopDone
	a.closeWake()
	if errors.Is(err, transceiver.ErrClosed) {
		return nil
	}
	return err
}

// sleep blocks the loop until the worker has events, work is handed in,
// or maxSleep passes; the worker must be armed. Loop goroutine only.
func (a *Agent) sleep() {
	if _, err := a.wake.Sleep(a.efd, maxSleep); err != nil {
		a.log.Debug("ucx: poll", "err", err)
	}
}

func (a *Agent) closeWake() {
	if err := a.wake.Close(); err != nil {
		a.log.Debug("ucx: close eventfd", "err", err)
	}
}
