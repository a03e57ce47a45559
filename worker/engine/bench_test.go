package engine

import (
	"context"
	"fmt"
	"testing"

	"disagg/worker/kvcache"
)

// BenchmarkDecodeStep measures the engine's own cost per generated token
// (scheduling, batch building, sampling a 64-token vocabulary, emitting)
// with 256 sequences decoding together on the near-free fake backend.
func BenchmarkDecodeStep(b *testing.B) {
	const seqs, maxTokens = 256, 64
	cfg := Config{MaxBatchSize: seqs, MaxNumTokens: 4096, MaxSeqLen: 256, VocabSize: fakeVocab}
	pool, err := kvcache.NewHostPool(fakeLayout(), seqs*24)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	e, err := New(newFake(b, pool, cfg), pool, cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	e.Start()
	defer e.Close()
	b.ResetTimer()
	tokens := 0
	for b.Loop() {
		chans := make([]<-chan Output, seqs)
		for i := range chans {
			chans[i] = submit(b, e, context.Background(), greedyReq(fmt.Sprint(i), []int32{1, 2, 3, int32(i % fakeVocab)}, maxTokens))
		}
		for _, ch := range chans {
			toks, _ := collect(b, ch)
			tokens += len(toks)
		}
	}
	b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
}
