package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"disagg/cuda"
	"disagg/worker/compute"
	"disagg/worker/compute/cpu"
	"disagg/worker/config"
	"disagg/worker/kvcache"
	"disagg/worker/model"
)

// openBackend picks the compute backend (compute_backend: auto, cpu, cuda)
// and makes the KV pool it computes over: device memory sized from free GPU
// memory and free_gpu_memory_fraction for CUDA, host memory for the CPU.
// auto falls back to the CPU, with the reason logged, when this binary has
// no CUDA backend or no GPU is visible.
func (rt *Runtime) openBackend(cfg config.Config, log *slog.Logger) (kvcache.Layout, error) {
	mc := rt.Model.Config
	if cfg.ComputeBackend == "cuda" || cfg.ComputeBackend == "auto" {
		layout, err := rt.openCUDA(cfg, log)
		switch {
		case err == nil:
			return layout, nil
		case cfg.ComputeBackend == "cuda":
			return layout, fmt.Errorf("worker: compute_backend cuda: %w", err)
		case errors.Is(err, cuda.ErrNotBuilt):
			log.Debug("CUDA backend not in this build; using the CPU")
		default:
			log.Info("no usable GPU; using the CPU backend", "reason", err)
		}
	}
	if cfg.DType == "bfloat16" {
		log.Info("the CPU backend computes in float32; dtype bfloat16 applies to the CUDA backend")
	}
	layout := cpu.LayoutFor(mc, cfg.KVCache.TokensPerBlock)
	blocks := poolBlocks(cfg, layout, rt.MaxSeqLen)
	if err := fitsOneSequence(blocks, layout, rt.MaxSeqLen); err != nil {
		return layout, err
	}
	var err error
	if rt.Pool, err = kvcache.NewHostPool(layout, blocks); err != nil {
		return layout, err
	}
	rt.Backend, err = cpu.New(rt.Model, rt.Pool, cpu.Options{Threads: cfg.Threads})
	return layout, err
}

// openCUDA opens the GPU that CUDA_VISIBLE_DEVICES leaves first, sizes a
// device pool from the memory left after the weights (bf16, or fp32 with
// dtype float32), and uploads them.
func (rt *Runtime) openCUDA(cfg config.Config, log *slog.Logger) (kvcache.Layout, error) {
	dt, elem := kvcache.BFloat16, int64(2)
	if cfg.DType == "float32" {
		dt, elem = kvcache.Float32, 4
	}
	layout := cuda.LayoutFor(rt.Model.Config, cfg.KVCache.TokensPerBlock, dt)
	dev, err := cuda.OpenDevice(0)
	if err != nil {
		return layout, err
	}
	free, total, err := dev.MemInfo(context.Background())
	if err != nil {
		_ = dev.Close()
		return layout, err
	}
	// The weights, cuBLAS's workspace and the activations come first: the
	// fraction applies to what is left after them (as trtllm's does after
	// the model is loaded).
	weights := weightBytes(rt.Model.Weights, elem)
	budget := int64(float64(free-weights-gpuReserve) * cfg.KVCache.FreeGPUMemoryFraction)
	blocks := int(budget / int64(layout.BlockBytes()))
	if cfg.KVCache.MaxTokens > 0 {
		blocks = min(blocks, layout.BlocksFor(cfg.KVCache.MaxTokens))
	}
	if err := fitsOneSequence(blocks, layout, rt.MaxSeqLen); err != nil {
		_ = dev.Close()
		return layout, fmt.Errorf("%w (GPU: %d of %d bytes free, weights %d bytes)", err, free, total, weights)
	}
	pool, err := cuda.NewDevicePool(dev, layout, blocks)
	if err != nil {
		_ = dev.Close()
		return layout, err
	}
	backend, err := cuda.New(rt.Model, pool, cuda.Options{Device: dev})
	if err != nil {
		_ = pool.Close()
		_ = dev.Close()
		return layout, err
	}
	rt.Pool, rt.Backend, rt.device = pool, backend, dev
	log.Info("CUDA backend", "dtype", dt, "gpu_free_bytes", free, "gpu_total_bytes", total, "weights_bytes", weights, "kv_blocks", blocks)
	return layout, nil
}

// gpuReserve is kept free of the KV pool for cuBLAS workspaces, activations
// and CUDA graphs.
const gpuReserve = 2 << 30

// weightBytes is the size of the weights once uploaded with elem bytes per
// element.
func weightBytes(w *model.Weights, elem int64) int64 {
	var n int64
	add := func(shape []int) {
		e := int64(1)
		for _, d := range shape {
			e *= int64(d)
		}
		n += elem * e
	}
	add(w.Embed.Shape)
	add(w.Norm.Shape)
	for _, l := range w.Layers {
		for _, t := range []*[]int{&l.AttnNorm.Shape, &l.Q.Shape, &l.K.Shape, &l.V.Shape, &l.O.Shape, &l.MLPNorm.Shape, &l.Gate.Shape, &l.Up.Shape, &l.Down.Shape} {
			add(*t)
		}
	}
	if w.LMHead.Name != w.Embed.Name { // untied
		add(w.LMHead.Shape)
	}
	return n
}

func fitsOneSequence(blocks int, layout kvcache.Layout, maxSeqLen int) error {
	if blocks < layout.BlocksFor(maxSeqLen) {
		return fmt.Errorf("worker: a KV pool of %d blocks cannot hold one sequence of max_seq_len %d; raise kv_cache_config.max_tokens or free_gpu_memory_fraction, or lower max_seq_len", max(blocks, 0), maxSeqLen)
	}
	return nil
}

var _ compute.Backend = (*cuda.Backend)(nil)
