// Package worker assembles the engine from its parts: the model folder,
// the tokenizer and chat template, the compute backend, the paged KV pool,
// the scheduler and the OpenAI server. Serve runs it until its context ends.
package worker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"disagg"
	"disagg/cuda"
	"disagg/transceiver"
	// The KV transceiver backends register themselves by name; each loads
	// its native library only when chosen.
	_ "disagg/transceiver/nixl"
	_ "disagg/transceiver/ucx"
	"disagg/worker/chat"
	"disagg/worker/compute"
	"disagg/worker/config"
	roles "disagg/worker/disagg"
	"disagg/worker/engine"
	"disagg/worker/kvcache"
	"disagg/worker/model"
	"disagg/worker/tokenizer"
)

// Runtime is a loaded model ready to serve: everything the HTTP server needs.
type Runtime struct {
	Config    config.Config
	ModelName string
	Model     *model.Model
	Tokenizer *tokenizer.Tokenizer
	Chat      *chat.Config
	Pool      *kvcache.Pool
	Backend   compute.Backend
	device    *cuda.Device // the GPU, when the CUDA backend runs
	Engine    *engine.Engine
	MaxSeqLen int
	// Transceiver moves KV between workers; nil when it could not be
	// started (DisaggUnavailable says why).
	Transceiver transceiver.Transceiver
	// Disagg runs context_only and generation_only requests.
	Disagg *roles.Manager
	// DisaggUnavailable is why disaggregated requests are refused ("" when
	// they are served).
	DisaggUnavailable string
}

// Open loads the model named by cfg (or the embedded one) and starts its
// engine. Close releases everything.
func Open(cfg config.Config, log *slog.Logger) (*Runtime, error) {
	rt := &Runtime{Config: cfg}
	ok := false
	defer func() {
		if !ok {
			_ = rt.Close()
		}
	}()
	var fsys fs.FS
	var opts model.Options
	if term.IsTerminal(int(os.Stderr.Fd())) {
		opts.Progress = os.Stderr
	}
	var err error
	if cfg.Model == "" {
		fsys = disagg.TinyModel()
		rt.ModelName = disagg.TinyModelName
		log.Info("no --model given: serving the embedded tiny model", "name", rt.ModelName)
		rt.Model, err = model.LoadFS(fsys, opts)
	} else {
		fsys = os.DirFS(cfg.Model)
		rt.ModelName = filepath.Base(filepath.Clean(cfg.Model))
		rt.Model, err = model.LoadDir(cfg.Model, opts)
	}
	if err != nil {
		return nil, err
	}
	if cfg.ServedModelName != "" {
		rt.ModelName = cfg.ServedModelName
	}
	mc := rt.Model.Config

	tokData, err := fs.ReadFile(fsys, "tokenizer.json")
	if err != nil {
		return nil, fmt.Errorf("worker: the model folder needs tokenizer.json: %w", err)
	}
	if rt.Tokenizer, err = tokenizer.Load(tokData); err != nil {
		return nil, fmt.Errorf("worker: tokenizer.json: %w", err)
	}
	if data, err := fs.ReadFile(fsys, "tokenizer_config.json"); err == nil {
		if rt.Chat, err = chat.FromTokenizerConfig(data); err != nil {
			return nil, fmt.Errorf("worker: tokenizer_config.json: %w", err)
		}
	} else {
		log.Warn("no tokenizer_config.json: chat requests will be refused", "err", err)
	}

	rt.MaxSeqLen = mc.MaxPositionEmbeddings
	if cfg.MaxSeqLen > 0 {
		if cfg.MaxSeqLen > mc.MaxPositionEmbeddings {
			return nil, fmt.Errorf("worker: max_seq_len %d exceeds the model's max_position_embeddings %d", cfg.MaxSeqLen, mc.MaxPositionEmbeddings)
		}
		rt.MaxSeqLen = cfg.MaxSeqLen
	}

	layout, err := rt.openBackend(cfg, log)
	if err != nil {
		return nil, err
	}
	blocks := rt.Pool.NumBlocks()
	rt.Engine, err = engine.New(rt.Backend, rt.Pool, engine.Config{
		MaxBatchSize: cfg.MaxBatchSize,
		MaxNumTokens: cfg.MaxNumTokens,
		MaxSeqLen:    rt.MaxSeqLen,
		EOSTokenIDs:  mc.EOSTokenIDs,
		VocabSize:    mc.VocabSize,
		// Both backends sample on their side (compute.Sampler), so the
		// overlap scheduler applies to either.
		DisableOverlap: cfg.DisableOverlapScheduler,
	}, log)
	if err != nil {
		return nil, err
	}
	rt.Engine.Start()
	if err := rt.openDisagg(log); err != nil {
		return nil, err
	}
	log.Info("model ready", "model", rt.ModelName, "backend", rt.Backend.Name(),
		"layers", mc.NumLayers, "hidden", mc.HiddenSize, "vocab", mc.VocabSize,
		"max_seq_len", rt.MaxSeqLen, "kv_blocks", blocks, "tokens_per_block", layout.TokensPerBlock,
		"kv_bytes_per_token", layout.BytesPerToken())
	ok = true
	return rt, nil
}

// openDisagg starts the KV transceiver named by
// cache_transceiver_config.backend, registers the pool with it, and makes
// the disaggregated roles. A transceiver that cannot start (its native
// library missing, say) is not fatal: the worker serves whole requests
// and answers disaggregated ones with 503 naming what is missing.
func (rt *Runtime) openDisagg(log *slog.Logger) error {
	cfg := rt.Config
	ct := cfg.CacheTransceiver
	tr, err := transceiver.New(ct.Backend, transceiver.Config{
		MaxTokensInBuffer:               ct.MaxTokensInBuffer,
		KVTransferTimeoutMs:             ct.KVTransferTimeoutMS,
		KVTransferSenderFutureTimeoutMs: ct.KVTransferSenderFutureTimeoutMS,
		Logger:                          log,
	})
	if err == nil {
		if err = tr.Register(transceiver.RegionOf(rt.Pool)); err != nil {
			if cerr := tr.Close(); cerr != nil {
				log.Warn("closing the KV transceiver", "err", cerr)
			}
			err = fmt.Errorf("registering the KV pool: %w", err)
		}
	}
	if err != nil {
		rt.DisaggUnavailable = fmt.Sprintf("the %s KV transceiver (cache_transceiver_config.backend) could not start: %v", ct.Backend, err)
		lvl := slog.LevelWarn
		if cfg.Role != config.RoleAggregated {
			lvl = slog.LevelError
		}
		log.Log(context.Background(), lvl, "KV transceiver unavailable: context_only and generation_only requests will get 503",
			"role", roleName(cfg.Role), "backend", ct.Backend, "err", err)
	} else {
		rt.Transceiver = tr
		log.Info("KV transceiver ready", "backend", tr.Backend(), "configured", ct.Backend,
			"kv_transfer_timeout_ms", ct.KVTransferTimeoutMS, "kv_transfer_sender_future_timeout_ms", ct.KVTransferSenderFutureTimeoutMS,
			"max_tokens_in_buffer", ct.MaxTokensInBuffer)
	}
	secret := cfg.ClusterSecret
	if secret == "" {
		secret = os.Getenv(roles.EnvSecret)
	}
	if secret == "" {
		secret = roles.DefaultSecret
		log.Warn("no cluster secret set (cluster_secret or "+roles.EnvSecret+"): KV transfer states are signed with the public default key, "+
			"so anyone who can reach this worker can forge them; set the same secret on every worker", "role", roleName(cfg.Role))
	}
	rt.Disagg, err = roles.New(roles.Options{
		Role:            cfg.Role,
		Secret:          []byte(secret),
		SenderTimeout:   time.Duration(ct.KVTransferSenderFutureTimeoutMS) * time.Millisecond,
		TransferTimeout: time.Duration(ct.KVTransferTimeoutMS) * time.Millisecond,
		Transceiver:     rt.Transceiver,
		Unavailable:     rt.DisaggUnavailable,
		KV:              rt.Engine,
		Logger:          log,
	})
	return err
}

// poolBlocks sizes the host KV pool: kv_cache_config.max_tokens when set,
// else room for max_batch_size full sequences, capped by a quarter of the
// available host memory scaled by free_gpu_memory_fraction.
func poolBlocks(cfg config.Config, l kvcache.Layout, maxSeqLen int) int {
	if cfg.KVCache.MaxTokens > 0 {
		return l.BlocksFor(cfg.KVCache.MaxTokens)
	}
	want := cfg.MaxBatchSize * l.BlocksFor(maxSeqLen)
	budget := int64(float64(memAvailable()/4) * cfg.KVCache.FreeGPUMemoryFraction)
	if limit := int(budget / int64(l.BlockBytes())); limit < want {
		want = max(limit, l.BlocksFor(maxSeqLen))
	}
	return want
}

// memAvailable reads MemAvailable from /proc/meminfo (4 GiB if unknown).
func memAvailable() int64 {
	const fallback = 4 << 30
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return fallback
	}
	defer f.Close()
	return parseMemAvailable(f, fallback)
}

func parseMemAvailable(r io.Reader, fallback int64) int64 {
	s := bufio.NewScanner(r)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == "MemAvailable:" {
			if kb, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
				return kb << 10
			}
		}
	}
	return fallback
}

// Close stops the engine and frees the pool, the backend and the weights.
func (rt *Runtime) Close() error {
	var errs []error
	if rt.Disagg != nil {
		errs = append(errs, rt.Disagg.Close())
	}
	if rt.Engine != nil {
		errs = append(errs, rt.Engine.Close())
	}
	if rt.Transceiver != nil {
		errs = append(errs, rt.Transceiver.Close())
	}
	if rt.Backend != nil {
		errs = append(errs, rt.Backend.Close())
	}
	if rt.Pool != nil {
		errs = append(errs, rt.Pool.Close())
	}
	if rt.device != nil {
		errs = append(errs, rt.device.Close())
	}
	if rt.Model != nil {
		errs = append(errs, rt.Model.Close())
	}
	return errors.Join(errs...)
}
