//go:build !amd64

package cpu

// dot4x2 returns [a·w0, a·w1, a·w2, a·w3, b·w0, b·w1, b·w2, b·w3].
func dot4x2(a, b, w0, w1, w2, w3 []float32) [8]float32 {
	return dot4x2Generic(a, b, w0, w1, w2, w3)
}

// dot4x1 returns [a·w0, a·w1, a·w2, a·w3].
func dot4x1(a, w0, w1, w2, w3 []float32) [4]float32 {
	return dot4x1Generic(a, w0, w1, w2, w3)
}
