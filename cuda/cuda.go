// Package cuda is the GPU compute backend: CUDA kernels (cuda/kernels/*.cu,
// bf16 storage, fp32 accumulation) and cuBLAS GEMMs behind compute.Backend.
//
// The package is built with the `cuda` build tag (make cuda, which runs
// scripts/cuda/build.sh to compile the kernels into cuda/build/libdcu.a
// first). Without the tag every constructor returns ErrNotBuilt, so the
// default build needs no CUDA toolkit.
//
// One OS-locked goroutine owns the device and its stream (Device.Do);
// Forward and every allocation run there. Resources are freed by Close.
package cuda

import (
	"errors"
	"fmt"
	"math"

	"disagg/worker/kvcache"
	"disagg/worker/model"
)

// LibHash is the SHA-256 of cuda/build/libdcu.a linked into a cuda build
// (set by scripts/cuda/build.sh with -X; it also makes Go relink when only
// the kernels changed).
var LibHash string

// ErrNotBuilt is returned by every constructor of a build without the cuda tag.
var ErrNotBuilt = errors.New("cuda: backend not built (build with -tags cuda: make cuda)")

// ErrClosed is returned for work handed to a closed Device or Backend.
var ErrClosed = errors.New("cuda: closed")

// ErrorKind says which library a native status came from.
type ErrorKind int

const (
	KindCUDA    ErrorKind = 1 // cudaError_t
	KindCUBLAS  ErrorKind = 2 // cublasStatus_t
	KindInvalid ErrorKind = 3 // an argument the library refused before any CUDA call
)

// Error is a CUDA runtime or cuBLAS status: the status' numeric code, its
// name (cudaErrorMemoryAllocation, CUBLAS_STATUS_NOT_SUPPORTED) and message,
// with the call that failed.
type Error struct {
	Kind ErrorKind
	Code int
	Name string
	Msg  string
}

func (e *Error) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("cuda: status %d: %s", e.Code, e.Msg)
	}
	return fmt.Sprintf("cuda: %s (%d): %s", e.Name, e.Code, e.Msg)
}

// Options tune the backend.
type Options struct {
	// Device runs the backend; nil means the device of the pool's memory.
	// The caller owns the Device and closes it after the backend and pool.
	Device *Device
	// NoGraphs launches every kernel of a decode step directly instead of
	// replaying a captured CUDA graph.
	NoGraphs bool
}

// LayoutFor is the KV block layout of a model for the CUDA backend, with
// elements of dtype: kvcache.BFloat16 (the default), or kvcache.Float32 for
// the fp32 mode (New takes the mode from its pool's dtype).
func LayoutFor(cfg *model.Config, tokensPerBlock int, dtype kvcache.DType) kvcache.Layout {
	return kvcache.Layout{
		Layers:         cfg.NumLayers,
		KVHeads:        cfg.NumKVHeads,
		HeadDim:        cfg.HeadDim,
		TokensPerBlock: tokensPerBlock,
		DType:          dtype,
	}
}

// bf16 rounds float32 values to bfloat16 (round to nearest even; NaN kept).
func bf16(dst []uint16, src []float32) {
	for i, f := range src {
		b := math.Float32bits(f)
		if b&0x7fffffff > 0x7f800000 { // NaN
			dst[i] = uint16(b>>16) | 0x40
			continue
		}
		b += 0x7fff + (b>>16)&1
		dst[i] = uint16(b >> 16)
	}
}
