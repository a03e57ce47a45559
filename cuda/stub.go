//go:build !cuda

package cuda

import (
	"context"
	"unsafe"

	"disagg/worker/compute"
	"disagg/worker/kvcache"
	"disagg/worker/model"
)

// Device is the owner of one GPU; without the cuda tag it cannot be opened.
// Built is false: this binary has no CUDA backend (build with make cuda).
const Built = false

// Device is a GPU (never, in this build).
type Device struct{}

// OpenDevice returns ErrNotBuilt in a build without the cuda tag.
func OpenDevice(ordinal int) (*Device, error) { return nil, ErrNotBuilt }

// Do returns ErrNotBuilt.
func (d *Device) Do(ctx context.Context, fn func() error) error { return ErrNotBuilt }

// Alloc returns ErrNotBuilt.
func (d *Device) Alloc(size int) (*Memory, error) { return nil, ErrNotBuilt }

// MemInfo returns ErrNotBuilt.
func (d *Device) MemInfo(ctx context.Context) (free, total int64, err error) {
	return 0, 0, ErrNotBuilt
}

// Close does nothing.
func (d *Device) Close() error { return nil }

// NewDevicePool returns ErrNotBuilt in a build without the cuda tag.
func NewDevicePool(dev *Device, layout kvcache.Layout, numBlocks int) (*kvcache.Pool, error) {
	return nil, ErrNotBuilt
}

// Memory is device memory (kvcache.Memory with Device() true).
type Memory struct{}

func (m *Memory) Ptr() unsafe.Pointer { return nil }
func (m *Memory) Size() int           { return 0 }
func (m *Memory) Device() bool        { return true }
func (m *Memory) Close() error        { return nil }

var _ kvcache.Memory = (*Memory)(nil)

// Backend is the CUDA compute backend; without the cuda tag New fails.
type Backend struct{}

var _ compute.Backend = (*Backend)(nil)

// New returns ErrNotBuilt in a build without the cuda tag.
func New(m *model.Model, pool *kvcache.Pool, opts Options) (*Backend, error) {
	return nil, ErrNotBuilt
}

func (b *Backend) Forward(ctx context.Context, batch *compute.Batch) (*compute.Logits, error) {
	return nil, ErrNotBuilt
}
func (b *Backend) Greedy(ctx context.Context, batch *compute.Batch) ([]int32, error) {
	return nil, ErrNotBuilt
}
func (b *Backend) Name() string { return "cuda" }
func (b *Backend) Close() error { return nil }
