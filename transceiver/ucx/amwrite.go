package ucx

// Writes as active messages. UCX 1.13 has no transport doing RMA over TCP:
// it emulates every put with an active message answered by a completion
// message, and each of our writes ends in a flush. Over such endpoints a
// write to host memory goes as a few active messages instead, each
// carrying many blocks: gathered from this side's blocks (IOV datatype),
// checked by the receiver against its own registered region, scattered
// into its blocks (by the receiver's handler for small eager messages, by
// UCX's rendezvous for the rest) and acknowledged with the message's
// sequence number. A write completes when every message's send request
// has completed and every acknowledgement has come back without error.

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"disagg/transceiver"
)

// envAMWrite chooses how a peer's writes to host memory travel: "0" as
// RMA puts always, "1" as active messages always (where both regions are
// host memory), anything else (the default) as active messages where the
// endpoint has no RMA lane, so UCX would emulate the puts.
const envAMWrite = "DISAGG_UCX_AM_WRITE"

const (
	// amWrite is the active-message id of writes, amWriteAck of their
	// acknowledgements.
	amWrite    = 0x4459
	amWriteAck = 0x445A
	// amAlone: a descriptor (a run contiguous on both sides) of at least
	// this many bytes is a message of its own, which UCX moves without
	// copying; smaller ones are gathered into messages of at most amGather
	// bytes, which UCX copies through its buffers. Over TCP on two cores
	// (docs/PERFORMANCE.md, 2026-12-06) gathering 4 KB blocks beat one
	// message each 2x, alone beat gathering from 16 KB on, 8 KB was even;
	// cutting large runs into messages of 0.5-16 MB, or gathered ones
	// into 128 KB-16 MB, changed nothing measurable.
	amAlone  = 8 << 10
	amGather = 4 << 20
	// amDefaultMaxRuns bounds the runs of one message's header where UCX
	// does not say how large a header may be.
	amDefaultMaxRuns = 64
)

// writeMagic opens every write message's header.
const writeMagic uint32 = C.DX_WRITE_MAGIC

// Sizes of the C wire structs (shim.h): a header, then one run per
// destination run; the acknowledgement.
const (
	whdrSize = int(C.sizeof_dx_whdr)
	wrunSize = int(C.sizeof_dx_wrun)
	wackSize = int(C.sizeof_dx_wack)
)

// amWriteMode reads DISAGG_UCX_AM_WRITE: -1 never, 1 always, 0 auto.
func amWriteMode() int {
	switch os.Getenv(envAMWrite) {
	case "0":
		return -1
	case "1":
		return 1
	}
	return 0
}

// setupAMWrite registers the write and acknowledgement handlers and sizes
// messages' headers; loop goroutine, during setup.
func (a *Agent) setupAMWrite() error {
	a.acks = C.dxu_queue_new()
	a.wrecv = (*C.dx_wrecv)(C.calloc(1, C.sizeof_dx_wrecv))
	if a.acks == nil || a.wrecv == nil {
		return fmt.Errorf("ucx: out of memory for the write handlers")
	}
	a.wrecv.worker = a.worker
	a.wrecv.ack_id = amWriteAck
	if err := statusErr(C.dxu_set_write_handler(a.worker, amWrite, a.wrecv)); err != nil {
		return fmt.Errorf("ucx: set write handler: %w", err)
	}
	if err := statusErr(C.dxu_set_am_handler(a.worker, amWriteAck, a.acks)); err != nil {
		return fmt.Errorf("ucx: set write acknowledgement handler: %w", err)
	}
	a.maxRuns = amDefaultMaxRuns
	if h := int(C.dxu_worker_max_am_header(a.worker)); h > whdrSize+wrunSize {
		a.maxRuns = (h - whdrSize) / wrunSize
	}
	a.awaiting = map[uint64]*op{}
	a.amMode = amWriteMode()
	return nil
}

// freeAMWrite releases the handlers' C state once the worker is gone.
func (a *Agent) freeAMWrite() {
	if a.acks != nil {
		C.dxu_queue_free(a.acks)
		a.acks = nil
	}
	C.free(unsafe.Pointer(a.wrecv))
	a.wrecv = nil
}

// receiveInto lets peers write into a host region (the write handler
// refuses everything before); loop goroutine.
func (a *Agent) receiveInto(r transceiver.Region) {
	if r.Mem.Device() {
		return // device regions are written with RMA only
	}
	a.wrecv.base = (*C.uchar)(r.Mem.Ptr())
	a.wrecv.block_bytes = C.uint64_t(r.BlockBytes)
	a.wrecv.nblocks = C.uint64_t(r.NumBlocks)
}

// chooseWritePath decides once, at Connect, whether writes to p go as
// active messages (when both regions are host memory); loop goroutine.
func (a *Agent) chooseWritePath(p *Peer) {
	rma := C.dxu_ep_has_rma(p.ep)
	switch {
	case p.remote.Device:
		p.am, p.path = false, "RMA (the peer's region is device memory)"
	case a.amMode < 0:
		p.am, p.path = false, "RMA ("+envAMWrite+"=0)"
	case a.amMode > 0:
		p.am, p.path = true, "active messages ("+envAMWrite+"=1)"
	case rma == 0:
		p.am, p.path = true, "active messages (no RMA lane: UCX would emulate puts)"
	case rma > 0:
		p.am, p.path = false, "RMA (the endpoint has an RMA lane)"
	default:
		p.am, p.path = false, "RMA (the endpoint's lanes are unknown)"
	}
	a.log.Debug("ucx: write path", "peer", p.name, "path", p.path)
}

// wrun is one destination run of a write message.
type wrun struct{ block, count uint32 }

// writeHeader is a write message's header as the receiver reads it.
type writeHeader struct {
	magic      uint32
	seq        uint64
	blockBytes uint64
	runs       []wrun
	// extraRuns is added to the run count the header states (tests only:
	// a count that disagrees with the header's length).
	extraRuns uint32
}

// encode lays the header out as shim.h's dx_whdr and dx_wrun, in this
// machine's byte order, into b (whdrSize + len(runs)*wrunSize bytes).
func (h writeHeader) encode(b []byte) {
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], h.magic)
	ne.PutUint32(b[4:], uint32(len(h.runs))+h.extraRuns)
	ne.PutUint64(b[8:], h.seq)
	ne.PutUint64(b[16:], h.blockBytes)
	for i, r := range h.runs {
		o := whdrSize + i*wrunSize
		ne.PutUint32(b[o:], r.block)
		ne.PutUint32(b[o+4:], r.count)
	}
}

// wmsg is one write message: its destination runs and its source pieces
// (offsets from the local region's base).
type wmsg struct {
	runs  []wrun
	iov   []transceiver.Descriptor // LocalOffset and Len only
	bytes int64
}

// add appends a piece, merging it with the previous one where either
// side continues it.
func (m *wmsg) add(d transceiver.Descriptor, blockBytes int64) {
	blk, cnt := uint32(d.RemoteOffset/blockBytes), uint32(d.Len/blockBytes)
	if n := len(m.runs); n > 0 && m.runs[n-1].block+m.runs[n-1].count == blk {
		m.runs[n-1].count += cnt
	} else {
		m.runs = append(m.runs, wrun{blk, cnt})
	}
	if n := len(m.iov); n > 0 && m.iov[n-1].LocalOffset+m.iov[n-1].Len == d.LocalOffset {
		m.iov[n-1].Len += d.Len
	} else {
		m.iov = append(m.iov, transceiver.Descriptor{LocalOffset: d.LocalOffset, Len: d.Len})
	}
	m.bytes += d.Len
}

// splitMessages packs descriptors into write messages: one of at least
// alone bytes goes by itself, contiguous on both sides, which lets UCX
// use its zero-copy protocols; smaller ones are gathered into messages of
// at most gather bytes and maxRuns runs.
func splitMessages(descs []transceiver.Descriptor, blockBytes, gather, alone int64, maxRuns int) []wmsg {
	var out []wmsg
	cur := wmsg{}
	for _, d := range descs {
		if d.Len >= alone {
			m := wmsg{}
			m.add(d, blockBytes)
			out = append(out, m)
			continue
		}
		if cur.bytes > 0 && (cur.bytes+d.Len > gather || len(cur.runs) >= maxRuns || len(cur.iov) >= maxRuns) {
			out = append(out, cur)
			cur = wmsg{}
		}
		cur.add(d, blockBytes)
	}
	if cur.bytes > 0 {
		out = append(out, cur)
	}
	return out
}

// postAMWrite posts descs as write messages into o, each expecting its
// acknowledgement; loop goroutine. Fault injection counts a message's
// destination runs as the RMA path counts descriptors; the message
// holding the failing one is not posted.
func (p *Peer) postAMWrite(o *op, base unsafe.Pointer, descs []transceiver.Descriptor, blockBytes int) {
	a := p.a
	bb := int64(blockBytes)
	for _, m := range splitMessages(descs, bb, amGather, amAlone, a.maxRuns) {
		for range m.runs {
			if o.err = a.injectFault("write"); o.err != nil {
				return // wait for what was posted
			}
		}
		h := writeHeader{magic: writeMagic, seq: a.nextSeq(), blockBytes: uint64(bb), runs: m.runs}
		p.postMessage(o, h, base, m.iov)
		if o.err != nil {
			return
		}
	}
}

// postMessage posts one write message with header h and source pieces iov
// into o and records the acknowledgement it waits for; loop goroutine.
func (p *Peer) postMessage(o *op, h writeHeader, base unsafe.Pointer, iov []transceiver.Descriptor) {
	a := p.a
	hlen := whdrSize + len(h.runs)*wrunSize
	// header, then the IOV (hlen is a multiple of 8, the IOV's alignment)
	buf := C.malloc(C.size_t(hlen + len(iov)*int(C.sizeof_dxucp_dt_iov_t)))
	if buf == nil {
		o.err = fmt.Errorf("ucx: out of memory for a write to %s", p.name)
		return
	}
	o.onDone(func() { C.free(buf) })
	h.encode(unsafe.Slice((*byte)(buf), hlen))
	civ := unsafe.Slice((*C.dxucp_dt_iov_t)(unsafe.Add(buf, hlen)), len(iov))
	for i, d := range iov {
		civ[i].buffer = unsafe.Add(base, d.LocalOffset)
		civ[i].length = C.size_t(d.Len)
	}
	var iovp *C.dxucp_dt_iov_t
	if len(iov) > 0 {
		iovp = &civ[0]
	}
	o.add(C.dxu_am_write(p.ep, amWrite, buf, C.size_t(hlen), iovp, C.size_t(len(iov))))
	if o.err != nil {
		o.err = a.peerErr(p, o.err)
		return
	}
	a.awaiting[h.seq] = o
	o.acks = append(o.acks, h.seq)
}

// nextSeq numbers write messages; loop goroutine.
func (a *Agent) nextSeq() uint64 {
	a.seq++
	return a.seq
}

// forgetAcks stops waiting for o's acknowledgements (o failed or was
// aborted and UCX has released its requests): ones that come later are
// ignored; loop goroutine.
func (a *Agent) forgetAcks(o *op) {
	for _, s := range o.acks {
		delete(a.awaiting, s)
	}
	o.acks = nil
}

// deliverAcks matches received acknowledgements with their ops and logs
// changes of the write handler's counters; loop goroutine.
func (a *Agent) deliverAcks() bool {
	got := drain(a.acks, func(b []byte) {
		if len(b) != wackSize {
			a.log.Warn("ucx: dropping a malformed write acknowledgement", "bytes", len(b))
			return
		}
		seq, st := binary.NativeEndian.Uint64(b), int64(binary.NativeEndian.Uint64(b[8:]))
		o := a.awaiting[seq]
		if o == nil {
			a.log.Debug("ucx: write acknowledgement for no write in flight (aborted)", "seq", seq)
			return
		}
		delete(a.awaiting, seq)
		for i, s := range o.acks {
			if s == seq {
				o.acks = append(o.acks[:i], o.acks[i+1:]...)
				break
			}
		}
		if st != C.DXUCS_OK && o.err == nil {
			o.err = refusedErr(o.peer.name, Status(st))
		}
	})
	a.logCounter("ucx: acknowledgements dropped in the receive handler", uint64(a.acks.dropped), &a.ackDropped)
	a.logCounter("ucx: writes from peers refused (malformed, outside the region, or not received)", uint64(a.wrecv.refused), &a.refused)
	a.logCounter("ucx: write acknowledgements that could not be sent", uint64(a.wrecv.unacked), &a.unacked)
	return got
}

// logCounter warns when a C-side counter moved since last seen.
func (a *Agent) logCounter(msg string, now uint64, seen *uint64) {
	if now != *seen {
		a.log.Warn(msg, "count", now-*seen)
		*seen = now
	}
}

// refusedErr is the error of a write the peer acknowledged with st.
func refusedErr(peer string, st Status) error {
	if st == C.DXUCS_ERR_INVALID_PARAM {
		return fmt.Errorf("ucx: %s refused a write (%v): %w", peer, st, transceiver.ErrBadDescriptor)
	}
	return fmt.Errorf("ucx: a write failed at %s: %w", peer, st)
}

// rawWrite posts one write message with header h (numbered here) and the
// local region's bytes [off, off+n) as its data, and waits for it as
// Write does. It lets tests forge what a write's checks on this side
// would never send, to check the receiver's.
func (p *Peer) rawWrite(ctx context.Context, h writeHeader, off, n int64) error {
	a := p.a
	a.mu.Lock()
	registered, base := a.registered, a.region.Mem
	a.mu.Unlock()
	if !registered {
		return transceiver.ErrNotRegistered
	}
	return a.start(ctx, p, "write", func(o *op) {
		if err := p.usable(); err != nil {
			o.err = err
			return
		}
		h.seq = a.nextSeq()
		p.postMessage(o, h, base.Ptr(), []transceiver.Descriptor{{LocalOffset: off, Len: n}})
	})
}
