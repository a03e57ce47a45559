//go:build !cuda

package cuda

import (
	"context"

	"disagg/worker/compute"
)

var _ compute.Sampler = (*Backend)(nil)

// Launch returns ErrNotBuilt.
func (b *Backend) Launch(ctx context.Context, batch *compute.Batch, params []compute.SampleParams) (compute.Pending, error) {
	return nil, ErrNotBuilt
}
