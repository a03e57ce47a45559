//go:build cuda

package cuda

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand"
	"path/filepath"
	"testing"

	"disagg/worker/compute"
	"disagg/worker/compute/cpu"
	"disagg/worker/kvcache"
	"disagg/worker/model"
	"disagg/worker/safetensors"
)

func toF32(t testing.TB, x safetensors.Tensor) safetensors.Tensor {
	f, err := x.Float32()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4*len(f))
	for i, v := range f {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return safetensors.Tensor{Name: x.Name + ".f32", DType: safetensors.F32, Shape: x.Shape, Data: b}
}

// TestDiag compares the CUDA backend with the CPU reference backend on
// variants of the fixtures (layers cut, tied/untied, weight paths) and
// prompt lengths, to locate a discrepancy.
func TestDiag(t *testing.T) {
	dev := device(t)
	ctx := context.Background()
	for _, fx := range fixtures {
		base, err := model.LoadDir(filepath.Join("..", "testdata", "models", fx), model.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer base.Close()
		variants := map[string]func() *model.Model{
			"full": func() *model.Model { return base },
			"L1": func() *model.Model {
				c := *base.Config
				w := *base.Weights
				c.NumLayers = 1
				w.Layers = w.Layers[:1]
				return &model.Model{Config: &c, Weights: &w}
			},
			"f32": func() *model.Model {
				w := *base.Weights
				w.Embed, w.Norm, w.LMHead = toF32(t, w.Embed), toF32(t, w.Norm), toF32(t, w.LMHead)
				w.Layers = nil
				for _, L := range base.Weights.Layers {
					w.Layers = append(w.Layers, model.LayerWeights{AttnNorm: toF32(t, L.AttnNorm), Q: toF32(t, L.Q), K: toF32(t, L.K), V: toF32(t, L.V), O: toF32(t, L.O), MLPNorm: toF32(t, L.MLPNorm), Gate: toF32(t, L.Gate), Up: toF32(t, L.Up), Down: toF32(t, L.Down)})
				}
				if base.Config.TieWordEmbeddings {
					w.LMHead = w.Embed
				}
				return &model.Model{Config: base.Config, Weights: &w}
			},
			"untied": func() *model.Model {
				c := *base.Config
				c.TieWordEmbeddings = false
				return &model.Model{Config: &c, Weights: base.Weights}
			},
		}
		for _, vn := range []string{"full", "L1", "f32", "untied"} {
			m := variants[vn]()
			for _, nog := range []bool{false, true} {
				if nog && vn != "full" {
					continue
				}
				pool, err := NewDevicePool(dev, LayoutFor(m.Config, tpb, kvcache.BFloat16), 64)
				if err != nil {
					t.Fatal(err)
				}
				be, err := New(m, pool, Options{NoGraphs: nog})
				if err != nil {
					t.Fatal(err)
				}
				hp, err := kvcache.NewHostPool(cpu.LayoutFor(m.Config, tpb), 64)
				if err != nil {
					t.Fatal(err)
				}
				ref, err := cpu.New(m, hp, cpu.Options{})
				if err != nil {
					t.Fatal(err)
				}
				rng := rand.New(rand.NewSource(5))
				line := fmt.Sprintf("DIAG %s %-6s nographs=%v", fx, vn, nog)
				var logRef logitsRef
				readJSON(t, filepath.Join("..", "testdata", "reference", fx, "logits.json"), &logRef)
				prompts := [][]int32{{0}, {5}, {int32(m.Config.VocabSize - 1)}, logRef.Cases[0].IDs, logRef.Cases[1].IDs}
				for _, n := range []int{1, 2, 17, 100, 400} {
					ids := make([]int32, n)
					for i := range ids {
						ids[i] = int32(rng.Intn(m.Config.VocabSize))
					}
					prompts = append(prompts, ids)
				}
				for _, ids := range prompts {
					n := len(ids)
					blocks := make([]int32, (n+tpb-1)/tpb)
					for i := range blocks {
						blocks[i] = int32(i)
					}
					seq := compute.Seq{Tokens: ids, Blocks: blocks, Logits: compute.LogitsLast}
					out, err := be.Forward(ctx, &compute.Batch{Seqs: []compute.Seq{seq}})
					if err != nil {
						t.Fatal(err)
					}
					got := append([]float32(nil), out.Row(0)...)
					want, err := ref.Forward(ctx, &compute.Batch{Seqs: []compute.Seq{seq}})
					if err != nil {
						t.Fatal(err)
					}
					w64 := make([]float64, len(got))
					for i, v := range want.Row(0) {
						w64[i] = float64(v)
					}
					rel, _ := errStats(got, w64)
					line += fmt.Sprintf(" n=%d,t0=%d:%.2e", n, ids[0], rel)
				}
				fmt.Println(line)
				be.Close()
				ref.Close()
				pool.Close()
				hp.Close()
			}
		}
	}
}

// TestDiagShape compares CUDA, the CPU backend and transformers on the
// TinyLlama-shaped model for two prompts.
func TestDiagShape(t *testing.T) {
	dir, ref, bin := loadShape(t)
	dev := device(t)
	ctx := context.Background()
	m, err := model.LoadDir(dir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	fmt.Printf("DIAGSHAPE config %+v invfreq[:4]=%v\n", *m.Config, m.Config.InvFreq()[:4])
	pool, err := NewDevicePool(dev, LayoutFor(m.Config, tpb, kvcache.BFloat16), 256)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	be, err := New(m, pool, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	hp, err := kvcache.NewHostPool(cpu.LayoutFor(m.Config, tpb), 64)
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()
	cb, err := cpu.New(m, hp, cpu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	V := ref.Vocab
	for _, c := range ref.Cases {
		if c.Name != "p100" && c.Name != "p511" && c.Name != "p7" {
			continue
		}
		p := c.Positions[len(c.Positions)-1]
		ids := c.IDs[:p+1]
		blocks := make([]int32, (len(ids)+tpb-1)/tpb)
		for i := range blocks {
			blocks[i] = int32(i)
		}
		seq := compute.Seq{Tokens: ids, Blocks: blocks, Logits: compute.LogitsLast}
		g, err := be.Forward(ctx, &compute.Batch{Seqs: []compute.Seq{seq}})
		if err != nil {
			t.Fatal(err)
		}
		got := append([]float32(nil), g.Row(0)...)
		w, err := cb.Forward(ctx, &compute.Batch{Seqs: []compute.Seq{seq}})
		if err != nil {
			t.Fatal(err)
		}
		k := len(c.Positions) - 1
		r32 := make([]float64, V)
		cpu64 := make([]float64, V)
		for j := 0; j < V; j++ {
			r32[j] = float64(bin[c.Ref32+int64(k*V+j)])
			cpu64[j] = float64(w.Row(0)[j])
		}
		a, _ := errStats(got, r32)
		b, _ := errStats(w.Row(0), r32)
		cc, _ := errStats(got, cpu64)
		fmt.Printf("DIAGSHAPE %s pos=%d cuda-vs-hf32=%.3e cpu-vs-hf32=%.3e cuda-vs-cpu=%.3e\n", c.Name, p, a, b, cc)
	}
}
