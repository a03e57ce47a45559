package cpu

import "golang.org/x/sys/cpu"

// useAVX2 selects the AVX2+FMA kernels when the processor has them.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

//go:noescape
func dot4x2AVX(a, b, w0, w1, w2, w3 *float32, n int, out *[64]float32)

//go:noescape
func dot4x1AVX(a, w0, w1, w2, w3 *float32, n int, out *[32]float32)

// dot4x2 returns [a·w0, a·w1, a·w2, a·w3, b·w0, b·w1, b·w2, b·w3]. Each
// product is computed exactly as dot4x1 computes it, so a token's result
// does not depend on whether it was paired with another.
func dot4x2(a, b, w0, w1, w2, w3 []float32) [8]float32 {
	n := len(a)
	b, w0, w1, w2, w3 = b[:n], w0[:n], w1[:n], w2[:n], w3[:n]
	if !useAVX2 || n < 8 {
		return dot4x2Generic(a, b, w0, w1, w2, w3)
	}
	n8 := n &^ 7
	var part [64]float32
	dot4x2AVX(&a[0], &b[0], &w0[0], &w1[0], &w2[0], &w3[0], n8, &part)
	var out [8]float32
	ws := [4][]float32{w0, w1, w2, w3}
	for k := range out {
		x := a
		if k >= 4 {
			x = b
		}
		out[k] = reduceLanes(part[8*k:8*k+8], x[n8:], ws[k%4][n8:])
	}
	return out
}

// dot4x1 returns [a·w0, a·w1, a·w2, a·w3].
func dot4x1(a, w0, w1, w2, w3 []float32) [4]float32 {
	n := len(a)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	if !useAVX2 || n < 8 {
		return dot4x1Generic(a, w0, w1, w2, w3)
	}
	n8 := n &^ 7
	var part [32]float32
	dot4x1AVX(&a[0], &w0[0], &w1[0], &w2[0], &w3[0], n8, &part)
	ws := [4][]float32{w0, w1, w2, w3}
	var out [4]float32
	for k := range out {
		out[k] = reduceLanes(part[8*k:8*k+8], a[n8:], ws[k][n8:])
	}
	return out
}

// reduceLanes sums eight lane partials in a fixed order, then the tail
// products x[i]*w[i].
func reduceLanes(p []float32, x, w []float32) float32 {
	p = p[:8]
	s := ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]))
	w = w[:len(x)]
	for i := range x {
		s += x[i] * w[i]
	}
	return s
}
