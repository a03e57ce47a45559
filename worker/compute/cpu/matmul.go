package cpu

// matmul computes y[t][o] = sum_i x[t][i] * w[o][i] for t < T, o < N, with
// x of T rows of K values, w of N rows of K values (Hugging Face [out, in]
// layout) and y of T rows of N values, split by output rows across the
// workers.
func matmul(p *workers, y, x, w []float32, T, N, K int) {
	const rowBlock = 4
	units := (N + rowBlock - 1) / rowBlock
	p.run(units, func(_, lo, hi int) {
		matmulRows(y, x, w, T, N, K, lo*rowBlock, min(hi*rowBlock, N))
	})
}

// matmulRows computes output columns [o0, o1) of y for every token. Four
// weight rows are combined with two token rows at a time: eight independent
// accumulators, each weight value loaded once for two tokens, and the
// block of four weight rows reused across all tokens while it is in cache.
func matmulRows(y, x, w []float32, T, N, K, o0, o1 int) {
	o := o0
	for ; o+4 <= o1; o += 4 {
		w0 := w[o*K : o*K+K]
		w1 := w[(o+1)*K : (o+1)*K+K]
		w2 := w[(o+2)*K : (o+2)*K+K]
		w3 := w[(o+3)*K : (o+3)*K+K]
		t := 0
		for ; t+2 <= T; t += 2 {
			s := dot4x2(x[t*K:t*K+K], x[(t+1)*K:(t+1)*K+K], w0, w1, w2, w3)
			copy(y[t*N+o:t*N+o+4], s[:4])
			copy(y[(t+1)*N+o:(t+1)*N+o+4], s[4:])
		}
		if t < T {
			s := dot4x1(x[t*K:t*K+K], w0, w1, w2, w3)
			copy(y[t*N+o:t*N+o+4], s[:])
		}
	}
	for ; o < o1; o++ {
		w0 := w[o*K : o*K+K]
		for t := 0; t < T; t++ {
			y[t*N+o] = dot(x[t*K:t*K+K], w0)
		}
	}
}

// dot4x2Generic is the portable dot4x2: the products of tokens a and b
// with rows w0..w3, [a·w0, a·w1, a·w2, a·w3, b·w0, b·w1, b·w2, b·w3].
func dot4x2Generic(a, b, w0, w1, w2, w3 []float32) [8]float32 {
	n := len(a)
	b, w0, w1, w2, w3 = b[:n], w0[:n], w1[:n], w2[:n], w3[:n]
	var s00, s01, s02, s03, s10, s11, s12, s13 float32
	for i := 0; i < n; i++ {
		av, bv := a[i], b[i]
		v0, v1, v2, v3 := w0[i], w1[i], w2[i], w3[i]
		s00 += av * v0
		s01 += av * v1
		s02 += av * v2
		s03 += av * v3
		s10 += bv * v0
		s11 += bv * v1
		s12 += bv * v2
		s13 += bv * v3
	}
	return [8]float32{s00, s01, s02, s03, s10, s11, s12, s13}
}

// dot4x1Generic is the portable dot4x1: [a·w0, a·w1, a·w2, a·w3], each
// summed in the same order as dot4x2Generic sums it.
func dot4x1Generic(a, w0, w1, w2, w3 []float32) [4]float32 {
	n := len(a)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	var s0, s1, s2, s3 float32
	for i, av := range a {
		s0 += av * w0[i]
		s1 += av * w1[i]
		s2 += av * w2[i]
		s3 += av * w3[i]
	}
	return [4]float32{s0, s1, s2, s3}
}

// dot is the inner product of two equally long vectors, with four
// accumulators.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}
