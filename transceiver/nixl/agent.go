package nixl

/*
#include <dlfcn.h>
#include <stdlib.h>
#include "shim.h"

// dlopen a plugin only to read why it cannot load; closed at once.
static const char *dxn_probe_plugin(const char *path) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		return dlerror();
	}
	dlclose(h);
	return NULL;
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"disagg/transceiver"
	"disagg/transceiver/internal/cudamem"
	"disagg/transceiver/internal/wakeup"
)

func init() {
	transceiver.Register(transceiver.BackendNIXL, func(cfg transceiver.Config) (transceiver.Transceiver, error) {
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

// envProgressThread, set to 1, gives each agent NIXL's own progress
// thread as well. By default there is none: this agent's loop drives every
// transfer and notification through its status and notification polls,
// and no thread of NIXL's keeps a core busy (a tuning and diagnosis knob).
const envProgressThread = "DISAGG_NIXL_PROGRESS_THREAD"

// envTrace, set to 1, logs the phases of every transfer (hand-off to the
// loop, request creation, post, completion, release) at info level (a
// diagnosis knob).
const envTrace = "DISAGG_NIXL_TRACE"

const (
	// idleWait is the loop's nap when nothing is expected: no transfer in
	// flight, nobody waiting for a notification, no recent activity.
	idleWait = 500 * time.Microsecond
	// pollGap is the loop's nap while something is expected. It is a
	// ppoll on the agent's wake-up eventfd (with the thread's timer slack
	// cut to timerSlack), which work handed to the loop ends at once: a
	// Go timer this short often sleeps a millisecond, and NIXL offers no
	// event to sleep on, so each of a push's three hops through a loop
	// would wait that long.
	pollGap    = 20 * time.Microsecond
	timerSlack = time.Microsecond
	// spinAfterActivity keeps polling at pollGap this long after the last
	// event.
	spinAfterActivity = 200 * time.Microsecond
	// releaseGiveUp bounds how long an aborted request is retried for
	// release before it is abandoned (and logged).
	releaseGiveUp = 10 * time.Second
)

// Agent is one NIXL agent with one backend (plugin), one registered
// region and the goroutine, locked to an OS thread, that makes every call
// into NIXL.
type Agent struct {
	cfg    transceiver.Config
	log    *slog.Logger
	plugin string
	lib    string

	work     chan func()
	loopDone chan struct{}

	// Owned by the loop goroutine.
	agent    C.dxnixl_agent_t
	backend  C.dxnixl_backend_t
	opt      C.dxnixl_opt_args_t
	notifs   C.dxnixl_notif_map_t
	regList  C.dxnixl_reg_dlist_t
	localH   C.dxnixl_xfer_dlist_handle_t // every local block, prepared once
	ops      []*op
	posted   uint64
	stopping bool
	peers    map[*Peer]struct{}

	mu         sync.Mutex
	closed     bool
	registered bool
	region     transceiver.Region
	info       []byte
	// mail matches received notifications with their waiters.
	mail *transceiver.Mailbox
	// hand carries the loop's answers to callers of do and transfers.
	hand transceiver.Handoff
	// trace: log every transfer's phases (DISAGG_NIXL_TRACE=1)
	trace bool
	// wake cuts the loop's nap short when work is handed to it.
	wake *wakeup.FD
}

// New loads libnixl_capi.so, creates an agent named cfg.Name and a backend
// of cfg.NIXLPlugin (UCX or LIBFABRIC).
func New(cfg transceiver.Config) (*Agent, error) {
	cfg.Complete()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lib, err := Load(cfg.NIXLLibDir, cfg.NIXLPluginsDir)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("backend", "NIXL", "plugin", cfg.NIXLPlugin, "agent", cfg.Name),
		plugin:   cfg.NIXLPlugin,
		lib:      lib,
		work:     make(chan func(), 64),
		loopDone: make(chan struct{}),
		peers:    map[*Peer]struct{}{},
		mail:     transceiver.NewMailbox(),
	}
	w, err := wakeup.New()
	if err != nil {
		return nil, fmt.Errorf("nixl: eventfd: %w", err)
	}
	a.wake = w
	ready := make(chan error, 1)
	go a.loop(ready)
	if err := <-ready; err != nil {
		<-a.loopDone
		_ = a.wake.Close()
		return nil, err
	}
	return a, nil
}

// Backend returns "NIXL".
func (a *Agent) Backend() string { return transceiver.BackendNIXL }

// Plugin is the NIXL transfer plugin in use.
func (a *Agent) Plugin() string { return a.plugin }

// SupportsDevice reports whether VRAM may be registered. NIXL accepts
// VRAM registrations when its plugin was built with CUDA; whether the GPU
// path works is known only on a GPU machine, so this reports true and
// Register returns NIXL's error otherwise.
func (a *Agent) SupportsDevice() bool { return true }

func (a *Agent) pluginsDir() string {
	if a.cfg.NIXLPluginsDir != "" {
		return a.cfg.NIXLPluginsDir
	}
	if d := os.Getenv("NIXL_PLUGIN_DIR"); d != "" {
		return d
	}
	return filepath.Join(filepath.Dir(a.lib), "plugins")
}

// explainPlugin says why a plugin could not be created: what NIXL lists,
// and the loader's reason for the plugin file.
func (a *Agent) explainPlugin() string {
	var buf [1024]C.char
	var listed string
	if C.dxn_plugins(a.agent, &buf[0], C.size_t(len(buf))) == C.DXNIXL_SUCCESS {
		listed = C.GoString(&buf[0])
	}
	file := filepath.Join(a.pluginsDir(), "libplugin_"+a.plugin+".so")
	msg := fmt.Sprintf("plugins NIXL found: [%s]", listed)
	if _, err := os.Stat(file); err != nil {
		return msg + "; " + file + " does not exist (set NIXL_PLUGINS_DIR)"
	}
	cfile := C.CString(file)
	defer C.free(unsafe.Pointer(cfile))
	if why := C.dxn_probe_plugin(cfile); why != nil {
		msg += "; " + file + " cannot load: " + C.GoString(why)
		if a.plugin == transceiver.PluginLIBFABRIC {
			msg += " (the nixl-cu13 1.5.1 LIBFABRIC plugin needs a libfabric.so.1 with symbol version FABRIC_1.10, newer than 2.1.0: Debian bookworm and Ubuntu 24.04 ship 1.17.0 (FABRIC_1.3), trixie and sid 2.1.0 (FABRIC_1.8); it also needs libhwloc.so.15, CUDA's libcudart.so.13 and the driver's libcuda.so.1; use TRTLLM_NIXL_KVCACHE_BACKEND=UCX where they are missing)"
		}
	}
	return msg
}

func (a *Agent) setup() error {
	a.trace = os.Getenv(envTrace) == "1"
	name := C.CString(a.cfg.Name)
	defer C.free(unsafe.Pointer(name))
	want := C.int(0)
	if os.Getenv(envProgressThread) == "1" {
		want = 1
	}
	var threaded C.int
	if err := statusErr(C.dxn_create_agent_threads(name, want, &a.agent, &threaded)); err != nil {
		return fmt.Errorf("nixl: create agent %q: %w", a.cfg.Name, err)
	}
	if threaded != want {
		a.log.Info("NIXL's progress thread is on: this libnixl_capi cannot create an agent without it", "symbol", "nixl_capi_create_configured_agent")
	}
	getZcopy()
	plugin := C.CString(a.plugin)
	defer C.free(unsafe.Pointer(plugin))
	if err := statusErr(C.dxn_create_backend(a.agent, plugin, &a.backend)); err != nil {
		why := a.explainPlugin()
		if a.plugin == transceiver.PluginUCX {
			_ = statusErr(C.dxn_destroy_agent(a.agent))
			return fmt.Errorf("nixl: create %s backend: %w; %s", a.plugin, err, why)
		}
		// Another plugin (LIBFABRIC) that cannot load here: say exactly
		// why, once, and fall back to NIXL's UCX plugin. Every worker of a
		// deployment must end up on the same plugin; on machines installed
		// alike they all fall back together.
		wanted := a.plugin
		a.log.Warn("NIXL plugin unavailable, falling back to the UCX plugin (every worker must use the same plugin)",
			"wanted", wanted, "err", err, "why", why)
		a.plugin = transceiver.PluginUCX
		a.log = a.cfg.Logger.With("backend", "NIXL", "plugin", a.plugin, "agent", a.cfg.Name)
		ucx := C.CString(a.plugin)
		defer C.free(unsafe.Pointer(ucx))
		if err2 := statusErr(C.dxn_create_backend(a.agent, ucx, &a.backend)); err2 != nil {
			_ = statusErr(C.dxn_destroy_agent(a.agent))
			return fmt.Errorf("nixl: create %s backend: %w; %s; the UCX fallback failed too: %v", wanted, err, why, err2)
		}
	}
	if err := statusErr(C.dxn_opt_args(a.backend, &a.opt)); err != nil {
		a.destroyAgent()
		return fmt.Errorf("nixl: optional arguments: %w", err)
	}
	if err := statusErr(C.dxn_notif_map(&a.notifs)); err != nil {
		a.destroyAgent()
		return fmt.Errorf("nixl: notification map: %w", err)
	}
	return nil
}

// getZcopy turns on UCX's zero-copy GET over cuda_ipc for the UCX that
// NIXL's UCX plugin creates next, unless the environment says otherwise
// (see transceiver.EnvCUDAIPCGetZcopy). The plugin reads UCX's
// configuration only from the environment, so the value goes there; the
// LIBFABRIC plugin ignores it. Only where a CUDA device is present: a UCX
// without its CUDA transports warns about every UCX_ variable it does not
// know.
func getZcopy() {
	if transceiver.SetGetZcopy() && cudamem.Available() == nil {
		_ = os.Setenv(transceiver.EnvCUDAIPCGetZcopy, "y")
	}
}

func (a *Agent) destroyAgent() {
	if a.notifs != nil {
		_ = statusErr(C.dxn_destroy_notif_map(a.notifs))
		a.notifs = nil
	}
	if a.opt != nil {
		_ = statusErr(C.dxn_destroy_opt_args(a.opt))
		a.opt = nil
	}
	// The agent owns the backend; the C handle is only a wrapper.
	if err := statusErr(C.dxn_destroy_agent(a.agent)); err != nil {
		a.log.Warn("nixl: destroy agent", "err", err)
	}
	if a.backend != nil {
		_ = statusErr(C.dxn_destroy_backend(a.backend))
		a.backend = nil
	}
}

func (a *Agent) teardown() {
	for p := range a.peers {
		a.forgetPeer(p)
	}
	if a.localH != nil {
		if err := statusErr(C.dxn_release_dlist(a.agent, a.localH)); err != nil {
			a.log.Warn("nixl: release prepared local blocks", "err", err)
		}
		a.localH = nil
	}
	if a.regList != nil {
		if err := statusErr(C.dxn_deregister(a.agent, a.regList, a.opt)); err != nil {
			a.log.Warn("nixl: deregister region", "err", err)
		}
		a.regList = nil
	}
	a.destroyAgent()
}

func (a *Agent) loop(ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread exits with the loop
	defer close(a.loopDone)
	if err := a.setup(); err != nil {
		ready <- err
		return
	}
	ready <- nil
	// Only this thread runs the loop (it is locked), so the setting stays
	// with it.
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(timerSlack/time.Nanosecond), 0, 0, 0); err != nil {
		a.log.Debug("nixl: timer slack unchanged", "err", err)
	}
	timer := time.NewTimer(idleWait)
	lastActive := time.Now()
	for {
		busy := false
	drain:
		for i := 0; i < 64; i++ {
			select {
			case f := <-a.work:
				f()
				busy = true
			default:
				break drain
			}
		}
		notified := a.pollNotifs()
		if a.pollOps() {
			busy = true
		}
		// each of these answers a waiting goroutine, which may be blocked
		if notified {
			busy = true
		}
		if (notified && a.mail.Parked()) || (busy && a.hand.Parked()) {
			transceiver.YieldToWoken()
		}
		if a.stopping {
			if len(a.ops) == 0 {
				a.teardown()
				return
			}
			continue
		}
		if busy {
			lastActive = time.Now()
			continue
		}
		// These polls are what progresses NIXL (unless its own progress
		// thread runs: DISAGG_NIXL_PROGRESS_THREAD=1), also for data a peer
		// moves to or from here over a transport that needs this side's
		// progress (TCP): without a pause while a transfer of this agent's
		// is in flight (a pause of pollGap between polls added about 17 µs
		// to a 46 MB GPU write of about 95), every pollGap while a
		// notification is expected, as on the receiving side of a KV
		// transfer, or while aborted transfers wait for their release (as
		// before: NIXL 1.5.1 once crashed in getNotifs when such a peer
		// came back and exited, with the loop polling without a pause),
		// else every idleWait.
		if a.transferring() {
			continue
		}
		if recent := time.Since(lastActive) < spinAfterActivity; recent || len(a.ops) > 0 || a.mail.Waiting() {
			a.nap(recent)
			continue
		}
		timer.Reset(idleWait)
		select {
		case f := <-a.work:
			f()
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

// nap waits pollGap between the loop's polls of NIXL, or less when work
// is handed over. With spin, where a loop may spin
// (transceiver.LoopMaySpin: four threads or more), it watches the work
// queue instead of sleeping, so that a transfer handed to the loop right
// after another (the next request's, or the next layer's) is posted at
// once rather than once the thread, woken from ppoll, is scheduled again.
// The loop spins only within spinAfterActivity of its last event, not
// while aborted transfers wait for their release or for a mere
// notification wait, which can last as long as a context worker serves.
// Either way NIXL itself is polled every pollGap, as before.
// On the H100 it took a one-block GPU write from 22 to 14 µs and the
// 46 MB write from 61 to 53 µs (docs/PERFORMANCE.md).
func (a *Agent) nap(spin bool) {
	if !spin || !transceiver.LoopMaySpin() {
		if _, err := a.wake.Sleep(-1, pollGap); err != nil {
			a.log.Debug("nixl: poll", "err", err)
		}
		return
	}
	start := time.Now()
	for i := 1; len(a.work) == 0; i++ {
		if i%64 == 0 && time.Since(start) >= pollGap {
			return
		}
	}
}

func (a *Agent) do(fn func() error) error {
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return transceiver.ErrClosed
	}
	errc := make(chan error, 1)
	select {
	case a.work <- func() { errc <- fn() }:
		a.wake.Wake()
	case <-a.loopDone:
		return transceiver.ErrClosed
	}
	return a.hand.Wait(errc, a.loopDone)
}

// transferring reports whether a transfer is in flight and not aborted;
// loop goroutine only.
func (a *Agent) transferring() bool {
	for _, o := range a.ops {
		if !o.finished && o.aborted.IsZero() {
			return true
		}
	}
	return false
}

// op is one posted NIXL transfer request.
type op struct {
	ctx      context.Context
	peer     *Peer
	req      C.dxnixl_xfer_req_t
	opt      C.dxnixl_opt_args_t // per-request arguments (notification), or nil
	err      error
	aborted  time.Time // when the deadline hit, zero before
	finished bool      // NIXL reported completion or failure
	done     chan error
	what     string
	trace    *opTrace // DISAGG_NIXL_TRACE=1
}

// opTrace is when each phase of a transfer ended.
type opTrace struct {
	start, inLoop, made, posted, complete time.Time
}

// log writes t's phases, the last one (release) ending now.
func (t *opTrace) log(l *slog.Logger, what string) {
	now := time.Now()
	if t.complete.IsZero() { // completed by the post itself
		t.complete = t.posted
	}
	l.Info("nixl: transfer phases", "what", what, "to_loop", t.inLoop.Sub(t.start), "make", t.made.Sub(t.inLoop),
		"post", t.posted.Sub(t.made), "complete", t.complete.Sub(t.posted), "release", now.Sub(t.complete))
}

// release frees the request; it reports false while NIXL refuses (an
// active transfer it cannot abort yet).
func (a *Agent) release(o *op) bool {
	if o.req != nil {
		if err := statusErr(C.dxn_release(a.agent, o.req)); err != nil {
			return false
		}
		o.req = nil
	}
	if o.opt != nil {
		_ = statusErr(C.dxn_destroy_opt_args(o.opt))
		o.opt = nil
	}
	return true
}

func (a *Agent) pollOps() bool {
	changed := false
	kept := a.ops[:0]
	for _, o := range a.ops {
		if !o.finished {
			st := C.dxn_status(a.agent, o.req)
			switch {
			case st == C.DXNIXL_IN_PROG:
			case st == C.DXNIXL_SUCCESS:
				o.finished = true
				if o.trace != nil {
					o.trace.complete = time.Now()
				}
			default:
				o.finished = true
				if o.err == nil {
					o.err = fmt.Errorf("nixl: %s to %s: %w (%w)", o.what, o.peer.name, Status(st), transceiver.ErrPeerFailed)
				}
			}
		}
		if !o.finished && o.aborted.IsZero() {
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
				o.aborted = time.Now()
				o.err = fmt.Errorf("nixl: %s to %s: %w", o.what, o.peer.name, cause)
				changed = true
			}
		}
		if !o.finished && !o.aborted.IsZero() {
			// Drop the peer's metadata first (NIXL disconnects, failing
			// what is in flight), so nothing lands in our blocks after
			// they are freed; then release, retrying while NIXL refuses.
			if !o.peer.broken {
				o.peer.broken = true
				a.invalidate(o.peer)
			}
			if !a.release(o) {
				if time.Since(o.aborted) < releaseGiveUp {
					kept = append(kept, o)
					continue
				}
				a.log.Error("nixl: transfer could not be released; its memory may still be accessed", "peer", o.peer.name, "request", o.what)
			}
			o.done <- o.err
			changed = true
			continue
		}
		if !o.finished {
			kept = append(kept, o)
			continue
		}
		if !a.release(o) {
			a.log.Warn("nixl: release of a finished transfer failed", "peer", o.peer.name)
		}
		if o.trace != nil {
			o.trace.log(a.log, o.what)
		}
		o.done <- o.err
		changed = true
	}
	for i := len(kept); i < len(a.ops); i++ {
		a.ops[i] = nil
	}
	a.ops = kept
	return changed
}

func (a *Agent) pollNotifs() bool {
	if err := statusErr(C.dxn_get_notifs(a.agent, a.notifs)); err != nil {
		return false
	}
	var nAgents C.size_t
	if C.dxn_notif_map_size(a.notifs, &nAgents) != C.DXNIXL_SUCCESS || nAgents == 0 {
		return false
	}
	got := false
	for i := C.size_t(0); i < nAgents; i++ {
		var name *C.char
		if C.dxn_notif_agent(a.notifs, i, &name) != C.DXNIXL_SUCCESS {
			continue
		}
		var cnt C.size_t
		if C.dxn_notif_count(a.notifs, name, &cnt) != C.DXNIXL_SUCCESS {
			continue
		}
		for j := C.size_t(0); j < cnt; j++ {
			var data unsafe.Pointer
			var l C.size_t
			if C.dxn_notif_get(a.notifs, name, j, &data, &l) != C.DXNIXL_SUCCESS {
				continue
			}
			a.deliver(C.GoString(name), C.GoBytes(data, C.int(l)))
			got = true
		}
	}
	_ = statusErr(C.dxn_notif_clear(a.notifs))
	return got
}

func (a *Agent) deliver(from string, b []byte) {
	n, err := transceiver.DecodeNotification(b)
	if err != nil {
		a.log.Warn("nixl: dropping malformed notification", "from", from, "err", err)
		return
	}
	if !a.mail.Deliver(n) {
		a.log.Warn("nixl: too many unclaimed notifications, dropping", "request", n.RequestID)
	}
}

// Register registers the region with NIXL (DRAM, or VRAM for device
// memory) and builds the connection info from NIXL's local metadata.
func (a *Agent) Register(r transceiver.Region) error {
	if err := r.Validate(); err != nil {
		return err
	}
	a.mu.Lock()
	if a.registered {
		a.mu.Unlock()
		return errors.New("nixl: a region is already registered")
	}
	a.mu.Unlock()
	mt := C.dxnixl_mem_type_t(C.DXNIXL_MEM_DRAM)
	if r.Mem.Device() {
		mt = C.DXNIXL_MEM_VRAM
	}
	var info []byte
	err := a.do(func() error {
		var dl C.dxnixl_reg_dlist_t
		if err := statusErr(C.dxn_register(a.agent, mt, r.Mem.Ptr(), C.size_t(r.Bytes()), a.opt, &dl)); err != nil {
			return fmt.Errorf("nixl: register %d bytes: %w", r.Bytes(), err)
		}
		var md unsafe.Pointer
		var mdLen C.size_t
		if err := statusErr(C.dxn_get_local_md(a.agent, &md, &mdLen)); err != nil {
			_ = statusErr(C.dxn_deregister(a.agent, dl, a.opt))
			return fmt.Errorf("nixl: local metadata: %w", err)
		}
		payload := C.GoBytes(md, C.int(mdLen))
		C.free(md)
		// Prepare every block once: a transfer then names blocks by index.
		var h C.dxnixl_xfer_dlist_handle_t
		if err := statusErr(C.dxn_prep_blocks(a.agent, nil, mt, C.uintptr_t(uintptr(r.Mem.Ptr())), C.size_t(r.BlockBytes), C.size_t(r.NumBlocks), a.opt, &h)); err != nil {
			_ = statusErr(C.dxn_deregister(a.agent, dl, a.opt))
			return fmt.Errorf("nixl: prepare %d local blocks: %w", r.NumBlocks, err)
		}
		blob, err := transceiver.EncodeInfo(transceiver.Info{
			Backend: transceiver.BackendNIXL,
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
			_ = statusErr(C.dxn_release_dlist(a.agent, h))
			_ = statusErr(C.dxn_deregister(a.agent, dl, a.opt))
			return err
		}
		a.regList, a.localH = dl, h
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

// LocalInfo returns the connection info built by Register.
func (a *Agent) LocalInfo() ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.registered {
		return nil, transceiver.ErrNotRegistered
	}
	return append([]byte(nil), a.info...), nil
}

// Peer is a remote NIXL agent whose metadata this agent has loaded.
type Peer struct {
	a      *Agent
	name   string
	cname  *C.char
	remote transceiver.RemoteRegion

	// Owned by the loop goroutine.
	remoteH C.dxnixl_xfer_dlist_handle_t // every remote block, prepared once
	broken  bool
	closed  bool
}

// Connect loads the peer's NIXL metadata from its connection info.
func (a *Agent) Connect(ctx context.Context, info []byte) (transceiver.Peer, error) {
	in, err := transceiver.DecodeInfo(info)
	if err != nil {
		return nil, err
	}
	if in.Backend != transceiver.BackendNIXL {
		return nil, fmt.Errorf("%w: peer %q runs backend %q, this agent NIXL", transceiver.ErrBadInfo, in.Agent, in.Backend)
	}
	if len(in.Payload) == 0 {
		return nil, fmt.Errorf("%w: NIXL metadata is empty", transceiver.ErrBadInfo)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := &Peer{a: a, remote: in.Region}
	err = a.do(func() error {
		md := C.CBytes(in.Payload)
		defer C.free(md)
		var name *C.char
		if err := statusErr(C.dxn_load_remote_md(a.agent, md, C.size_t(len(in.Payload)), &name)); err != nil {
			return fmt.Errorf("%w: NIXL could not load %s's metadata: %v", transceiver.ErrBadInfo, in.Agent, err)
		}
		p.name = C.GoString(name)
		p.cname = name // malloc'ed by NIXL; freed by forgetPeer
		if p.name != in.Agent {
			a.forgetPeer(p)
			return fmt.Errorf("%w: metadata names agent %q, info says %q", transceiver.ErrBadInfo, p.name, in.Agent)
		}
		if err := statusErr(C.dxn_make_connection(a.agent, p.cname, a.opt)); err != nil {
			a.forgetPeer(p)
			return fmt.Errorf("nixl: connect to %s: %w", in.Agent, err)
		}
		rmt := C.dxnixl_mem_type_t(C.DXNIXL_MEM_DRAM)
		if in.Region.Device {
			rmt = C.DXNIXL_MEM_VRAM
		}
		// NIXL checks these against the metadata the peer registered, so
		// an info blob claiming more than the peer registered fails here.
		if err := statusErr(C.dxn_prep_blocks(a.agent, p.cname, rmt, C.uintptr_t(in.Region.Base), C.size_t(in.Region.BlockBytes), C.size_t(in.Region.NumBlocks), a.opt, &p.remoteH)); err != nil {
			a.forgetPeer(p)
			return fmt.Errorf("%w: NIXL rejected %s's %d blocks of %d bytes at %#x: %v", transceiver.ErrBadInfo, in.Agent, in.Region.NumBlocks, in.Region.BlockBytes, in.Region.Base, err)
		}
		a.peers[p] = struct{}{}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (a *Agent) invalidate(p *Peer) {
	if p.cname == nil {
		return
	}
	if err := statusErr(C.dxn_invalidate_remote_md(a.agent, p.cname)); err != nil {
		a.log.Debug("nixl: invalidate remote metadata", "peer", p.name, "err", err)
	}
}

// forgetPeer drops the peer's metadata; loop goroutine only.
func (a *Agent) forgetPeer(p *Peer) {
	if p.remoteH != nil {
		if err := statusErr(C.dxn_release_dlist(a.agent, p.remoteH)); err != nil {
			a.log.Debug("nixl: release prepared remote blocks", "peer", p.name, "err", err)
		}
		p.remoteH = nil
	}
	if !p.broken {
		a.invalidate(p)
	}
	if p.cname != nil {
		C.free(unsafe.Pointer(p.cname))
		p.cname = nil
	}
	p.closed = true
	delete(a.peers, p)
}

func (p *Peer) usable() error {
	switch {
	case p.closed:
		return fmt.Errorf("nixl: peer %s: %w", p.name, transceiver.ErrClosed)
	case p.broken:
		return fmt.Errorf("nixl: peer %s is unusable after an aborted transfer: %w", p.name, transceiver.ErrPeerFailed)
	}
	return nil
}

// Name is the peer agent's name.
func (p *Peer) Name() string { return p.name }

// Write pushes blocks to the peer (one NIXL WRITE request).
func (p *Peer) Write(ctx context.Context, t transceiver.Transfer) error {
	return p.xfer(ctx, t, true, nil)
}

// WriteNotify pushes blocks and has NIXL deliver n after the data.
func (p *Peer) WriteNotify(ctx context.Context, t transceiver.Transfer, n transceiver.Notification) error {
	b, err := transceiver.EncodeNotification(n)
	if err != nil {
		return err
	}
	return p.xfer(ctx, t, true, b)
}

// Read pulls the peer's blocks (one NIXL READ request).
func (p *Peer) Read(ctx context.Context, t transceiver.Transfer) error {
	return p.xfer(ctx, t, false, nil)
}

func (p *Peer) xfer(ctx context.Context, t transceiver.Transfer, write bool, notif []byte) error {
	a := p.a
	a.mu.Lock()
	registered, region := a.registered, a.region
	a.mu.Unlock()
	if !registered {
		return transceiver.ErrNotRegistered
	}
	// Plan checks every pair against both regions and the request; NIXL
	// merges adjacent blocks of the prepared lists itself.
	if _, err := transceiver.Plan(t, region, p.remote); err != nil {
		return err
	}
	ctx, cancel := a.cfg.TransferContext(ctx)
	defer cancel()
	opCode, what := C.dxnixl_xfer_op_t(C.DXNIXL_XFER_OP_READ), "read"
	if write {
		opCode, what = C.DXNIXL_XFER_OP_WRITE, "write"
	}
	pairs := slices.Clone(t.Pairs)
	slices.SortFunc(pairs, func(x, y transceiver.BlockPair) int { return int(x.Local) - int(y.Local) })
	np := len(pairs)
	idx := (*[1 << 28]C.int)(C.malloc(C.size_t(2 * np * int(unsafe.Sizeof(C.int(0))))))[: 2*np : 2*np]
	defer C.free(unsafe.Pointer(&idx[0]))
	for i, pr := range pairs {
		idx[i], idx[np+i] = C.int(pr.Local), C.int(pr.Remote)
	}
	o := &op{ctx: ctx, peer: p, done: make(chan error, 1), what: what}
	if a.trace {
		o.trace = &opTrace{start: time.Now()}
	}
	err := a.do(func() error {
		if a.stopping {
			return transceiver.ErrClosed
		}
		if err := p.usable(); err != nil {
			return err
		}
		if o.trace != nil {
			o.trace.inLoop = time.Now()
		}
		a.posted++
		if a.cfg.FaultEvery > 0 && a.posted%uint64(a.cfg.FaultEvery) == 0 {
			return fmt.Errorf("nixl: %s request %d: %w", what, a.posted, transceiver.ErrInjected)
		}
		args := a.opt
		if notif != nil {
			if err := statusErr(C.dxn_opt_args(a.backend, &o.opt)); err != nil {
				return fmt.Errorf("nixl: optional arguments: %w", err)
			}
			cn := C.CBytes(notif)
			st := C.dxn_opt_args_notif(o.opt, cn, C.size_t(len(notif)))
			C.free(cn)
			if err := statusErr(st); err != nil {
				a.release(o)
				return fmt.Errorf("nixl: attach notification: %w", err)
			}
			args = o.opt
		}
		st := C.dxn_make_xfer(a.agent, opCode, a.localH, &idx[0], p.remoteH, &idx[np], C.size_t(np), args, &o.req)
		if err := statusErr(st); err != nil {
			o.req = nil
			a.release(o)
			return fmt.Errorf("nixl: create %s request to %s: %w", what, p.name, err)
		}
		if o.trace != nil {
			o.trace.made = time.Now()
		}
		switch st := C.dxn_post(a.agent, o.req, args); {
		case st == C.DXNIXL_SUCCESS:
			o.finished = true
		case st == C.DXNIXL_IN_PROG:
		default:
			o.finished = true
			o.err = fmt.Errorf("nixl: post %s to %s: %w", what, p.name, Status(st))
		}
		if o.trace != nil {
			o.trace.posted = time.Now()
		}
		a.ops = append(a.ops, o)
		return nil
	})
	if err != nil {
		return err
	}
	// the loop answers every op before it ends
	return a.hand.Wait(o.done, a.loopDone)
}

// Notify sends n to the peer as a NIXL notification.
func (p *Peer) Notify(ctx context.Context, n transceiver.Notification) error {
	b, err := transceiver.EncodeNotification(n)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return p.a.do(func() error {
		if err := p.usable(); err != nil {
			return err
		}
		cb := C.CBytes(b)
		defer C.free(cb)
		if err := statusErr(C.dxn_gen_notif(p.a.agent, p.cname, cb, C.size_t(len(b)), p.a.opt)); err != nil {
			return fmt.Errorf("nixl: notify %s: %w", p.name, err)
		}
		return nil
	})
}

// Close forgets the peer's metadata.
func (p *Peer) Close() error {
	err := p.a.do(func() error {
		if p.closed {
			return nil
		}
		for _, o := range p.a.ops {
			if o.peer == p {
				return fmt.Errorf("nixl: peer %s has transfers in flight", p.name)
			}
		}
		p.a.forgetPeer(p)
		return nil
	})
	if errors.Is(err, transceiver.ErrClosed) {
		return nil
	}
	return err
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

// Close aborts transfers in flight, deregisters the region and destroys
// the agent. It is safe to call more than once.
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
	if err := a.wake.Close(); err != nil {
		a.log.Debug("nixl: close eventfd", "err", err)
	}
	if errors.Is(err, transceiver.ErrClosed) {
		return nil
	}
	return err
}

// PluginList returns the plugins NIXL discovers, for `worker probe`.
func PluginList(cfg transceiver.Config) ([]string, error) {
	cfg.Complete()
	if _, err := Load(cfg.NIXLLibDir, cfg.NIXLPluginsDir); err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	name := C.CString(cfg.Name + "-probe")
	defer C.free(unsafe.Pointer(name))
	var ag C.dxnixl_agent_t
	if err := statusErr(C.dxn_create_agent(name, &ag)); err != nil {
		return nil, fmt.Errorf("nixl: create agent: %w", err)
	}
	defer func() { _ = statusErr(C.dxn_destroy_agent(ag)) }()
	var buf [2048]C.char
	if err := statusErr(C.dxn_plugins(ag, &buf[0], C.size_t(len(buf)))); err != nil {
		return nil, fmt.Errorf("nixl: list plugins: %w", err)
	}
	s := C.GoString(&buf[0])
	if s == "" {
		return nil, nil
	}
	return strings.Split(s, ","), nil
}
