//go:build cuda

package cuda

/*
#include "sample.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"unsafe"

	"disagg/worker/compute"
)

var _ compute.Sampler = (*Backend)(nil)

// Launch enqueues the step (dcu_forward_async, logits left on the device)
// and its sampling (dcu_sample_async: cuda/kernels/sample.cu) on the
// model's stream and returns; only the token ids come back, when the
// Pending is waited for. Token ids < 0 name rows of the step launched just
// before (see compute.Sampler), which the device reads from its ids buffer:
// step n+1 can be enqueued before step n's ids reach the host.
func (b *Backend) Launch(ctx context.Context, batch *compute.Batch, params []compute.SampleParams) (compute.Pending, error) {
	if b.closed {
		return nil, ErrClosed
	}
	for i := range batch.Seqs {
		if batch.Seqs[i].Logits == compute.LogitsAll {
			return nil, fmt.Errorf("%w: sequence %d: Launch samples the last token only (LogitsAll)", compute.ErrBadBatch, i)
		}
	}
	cb, err := b.pack(batch, b.launchedRows)
	if err != nil {
		return nil, err
	}
	R := int(cb.num_rows)
	if len(params) != R {
		return nil, fmt.Errorf("%w: %d sampling parameters for %d rows", compute.ErrBadBatch, len(params), R)
	}
	cp := make([]C.dcu_sample_params, max(R, 1))
	for r, p := range params {
		cp[r] = C.dcu_sample_params{temperature: C.float(p.Temperature), top_k: C.int32_t(p.TopK),
			top_p: C.float(p.TopP), min_p: C.float(p.MinP), seed: C.uint64_t(p.Seed), step: C.uint64_t(p.Step)}
	}
	var slot C.int
	err = b.dev.Do(ctx, func() error {
		if b.smp == nil {
			if err := call(func(st *C.dcu_status) C.int { return C.dcu_sampler_create(b.m, &b.smp, st) }); err != nil {
				return err
			}
		}
		var pin runtime.Pinner
		defer pin.Unpin()
		pin.Pin(&b.ints[0])
		pin.Pin(&cp[0])
		cb.ints = (*C.int32_t)(unsafe.Pointer(&b.ints[0]))
		// logits and argmax NULL: the logits stay on the device, the
		// sampler writes the ids.
		if err := call(func(st *C.dcu_status) C.int { return C.dcu_forward_async(b.m, &cb, st) }); err != nil {
			return err
		}
		return call(func(st *C.dcu_status) C.int { return C.dcu_sample_async(b.smp, &cp[0], C.int(R), &slot, st) })
	})
	if err != nil {
		b.launchedRows = -1
		return nil, err
	}
	b.launchedRows = R
	return &launched{b: b, slot: slot, rows: R}, nil
}

// launched is a step Launch enqueued.
type launched struct {
	b      *Backend
	slot   C.int
	rows   int
	waited bool
}

// Wait waits for the step's event on the device goroutine and returns its
// ids. It ignores the Launch context: the blocks the step writes may be
// freed only once it has run.
func (l *launched) Wait() ([]int32, error) {
	if l.waited {
		return nil, fmt.Errorf("cuda: a launched step was waited for twice")
	}
	l.waited = true
	ids := make([]int32, l.rows)
	err := l.b.dev.Do(context.Background(), func() error {
		if l.b.smp == nil {
			return ErrClosed
		}
		var p *C.int32_t
		var pin runtime.Pinner
		defer pin.Unpin()
		if l.rows > 0 {
			pin.Pin(&ids[0])
			p = (*C.int32_t)(unsafe.Pointer(&ids[0]))
		}
		return call(func(st *C.dcu_status) C.int { return C.dcu_sample_wait(l.b.smp, l.slot, p, C.int(l.rows), st) })
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// closeSampler frees the sampler's buffers; on the device goroutine.
func (b *Backend) closeSampler() error {
	if b.smp == nil {
		return nil
	}
	s := b.smp
	b.smp = nil
	return call(func(st *C.dcu_status) C.int { return C.dcu_sampler_destroy(s, st) })
}

// sampleLogits samples rows of host logits on the device with the kernel
// of Launch (a test hook: sample_test.go). With one row of logits, every
// params[r] samples that row.
func sampleLogits(dev *Device, logits []float32, vocab int, params []compute.SampleParams) ([]int32, error) {
	rows := len(params)
	if rows == 0 || vocab <= 0 || len(logits)%vocab != 0 || (len(logits) != vocab && len(logits) != rows*vocab) {
		return nil, fmt.Errorf("cuda: %d logits of vocab %d for %d rows", len(logits), vocab, rows)
	}
	shared := C.int(0)
	if len(logits) == vocab && rows > 1 {
		shared = 1
	}
	cp := make([]C.dcu_sample_params, rows)
	for r, p := range params {
		cp[r] = C.dcu_sample_params{temperature: C.float(p.Temperature), top_k: C.int32_t(p.TopK),
			top_p: C.float(p.TopP), min_p: C.float(p.MinP), seed: C.uint64_t(p.Seed), step: C.uint64_t(p.Step)}
	}
	ids := make([]int32, rows)
	err := dev.Do(context.Background(), func() error {
		var pin runtime.Pinner
		defer pin.Unpin()
		pin.Pin(&logits[0])
		pin.Pin(&cp[0])
		pin.Pin(&ids[0])
		return call(func(st *C.dcu_status) C.int {
			return C.dcu_sample_logits((*C.float)(unsafe.Pointer(&logits[0])), C.int(rows), C.int(vocab), shared,
				&cp[0], (*C.int32_t)(unsafe.Pointer(&ids[0])), st)
		})
	})
	return ids, err
}

// sampleUniform is the device's counter-based draw (a test hook).
func sampleUniform(seed, step uint64) float64 {
	return float64(C.dcu_sample_uniform(C.uint64_t(seed), C.uint64_t(step)))
}
