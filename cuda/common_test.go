package cuda

import (
	"errors"
	"math"
	"testing"

	"disagg/worker/kvcache"
	"disagg/worker/model"
)

func TestBF16Rounding(t *testing.T) {
	in := []float32{0, 1, -2.5, 1.00390625, 1.01171875, 3.0e38, float32(math.Inf(1)), float32(math.NaN())}
	// 1.00390625 is halfway between 1 and 1.0078125 (ties to even: 1);
	// 1.01171875 is halfway between 1.0078125 and 1.015625 (to even: 1.015625).
	want := []uint16{0x0000, 0x3f80, 0xc020, 0x3f80, 0x3f82, 0x7f62, 0x7f80}
	out := make([]uint16, len(in))
	bf16(out, in)
	for i, w := range want {
		if out[i] != w {
			t.Errorf("bf16(%g) = %#04x, want %#04x", in[i], out[i], w)
		}
	}
	if out[7]&0x7f80 != 0x7f80 || out[7]&0x7f == 0 {
		t.Errorf("bf16(NaN) = %#04x, not a NaN", out[7])
	}
}

func TestLayoutFor(t *testing.T) {
	cfg := &model.Config{NumLayers: 22, NumKVHeads: 4, HeadDim: 64}
	l := LayoutFor(cfg, 16, kvcache.BFloat16)
	if l.DType != kvcache.BFloat16 || l.BytesPerToken() != 22528 {
		t.Fatalf("layout %+v: %d bytes per token, want bf16 and 22528 (TinyLlama)", l, l.BytesPerToken())
	}
}

func TestErrorString(t *testing.T) {
	e := &Error{Kind: KindCUDA, Code: 2, Name: "cudaErrorMemoryAllocation", Msg: "out of memory (cudaMalloc at dcu.cu:1)"}
	if got := e.Error(); got != "cuda: cudaErrorMemoryAllocation (2): out of memory (cudaMalloc at dcu.cu:1)" {
		t.Fatalf("Error() = %q", got)
	}
	var err error = e
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != 2 {
		t.Fatal("errors.As")
	}
}
