package cpu

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"testing"

	"disagg/worker/compute"
	"disagg/worker/kvcache"
	"disagg/worker/model"
	"disagg/worker/safetensors"
)

// BenchmarkMatmul measures the kernel on TinyLlama-1.1B's MLP shape
// (gate+up: 11264 x 2048) at decode batch sizes.
func BenchmarkMatmul(b *testing.B) {
	const N, K = 11264, 2048
	w := make([]float32, N*K)
	for i := range w {
		w[i] = float32(i%7) * 0.01
	}
	p := newWorkers(0 + 2)
	defer p.close()
	for _, T := range []int{1, 8} {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			x := make([]float32, T*K)
			y := make([]float32, T*N)
			for b.Loop() {
				matmul(p, y, x, w, T, N, K)
			}
			s := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(float64(N*K*4)/s/1e9, "weightGB/s")
			b.ReportMetric(float64(2*T*N*K)/s/1e9, "GFLOP/s")
		})
	}
}

// syntheticModel builds an in-memory F32 model of config c with constant
// weights (for benchmarks of shape, not of values).
func syntheticModel(c *model.Config) *model.Model {
	tensor := func(name string, shape ...int) safetensors.Tensor {
		n := 1
		for _, d := range shape {
			n *= d
		}
		data := make([]byte, 4*n)
		for i := 0; i < len(data); i += 4 {
			binary.LittleEndian.PutUint32(data[i:], math.Float32bits(float32(i%13-6)*1e-3))
		}
		return safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: data}
	}
	h, q, kv, ff := c.HiddenSize, c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim, c.IntermediateSize
	w := &model.Weights{Embed: tensor("embed", c.VocabSize, h), Norm: tensor("norm", h)}
	w.LMHead = w.Embed
	for range c.NumLayers {
		w.Layers = append(w.Layers, model.LayerWeights{
			AttnNorm: tensor("an", h), Q: tensor("q", q, h), K: tensor("k", kv, h), V: tensor("v", kv, h), O: tensor("o", h, q),
			MLPNorm: tensor("mn", h), Gate: tensor("g", ff, h), Up: tensor("u", ff, h), Down: tensor("d", h, ff),
		})
	}
	return &model.Model{Config: c, Weights: w}
}

// BenchmarkTinyLlamaShape decodes with TinyLlama-1.1B's shapes (hidden
// 2048, 32 heads, 4 KV heads, MLP 5632, vocab 32000) but only 1 or 2 of its
// 22 layers, to keep memory small: the full model's step time is
// t(1) + 21*(t(2)-t(1)).
func BenchmarkTinyLlamaShape(b *testing.B) {
	for _, layers := range []int{1, 2} {
		c := &model.Config{VocabSize: 32000, HiddenSize: 2048, IntermediateSize: 5632, NumLayers: layers, NumHeads: 32, NumKVHeads: 4,
			HeadDim: 64, MaxPositionEmbeddings: 2048, RMSNormEps: 1e-5, RopeTheta: 10000}
		pool, err := kvcache.NewHostPool(LayoutFor(c, 16), 64)
		if err != nil {
			b.Fatal(err)
		}
		be, err := New(syntheticModel(c), pool, Options{})
		if err != nil {
			b.Fatal(err)
		}
		for _, batch := range []int{1, 8} {
			b.Run(fmt.Sprintf("layers=%d/batch=%d", layers, batch), func(b *testing.B) {
				seqs := make([]compute.Seq, batch)
				for i := range seqs {
					blocks := make([]int32, 7)
					for j := range blocks {
						blocks[j] = int32(7*i + j)
					}
					seqs[i] = compute.Seq{Tokens: []int32{int32(i)}, Start: 100, Blocks: blocks, Logits: compute.LogitsLast}
				}
				ctx := context.Background()
				for b.Loop() {
					if _, err := be.Forward(ctx, &compute.Batch{Seqs: seqs}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		if err := be.Close(); err != nil {
			b.Fatal(err)
		}
		if err := pool.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
