package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"

	"disagg/worker/safetensors"
)

// File names of a Hugging Face checkpoint folder.
const (
	ConfigFile           = "config.json"
	GenerationConfigFile = "generation_config.json"
	WeightsFile          = "model.safetensors"
	WeightsIndexFile     = "model.safetensors.index.json"
)

// LayerWeights are one decoder layer's tensors, in Hugging Face layout
// ([out, in] for projections).
type LayerWeights struct {
	AttnNorm, Q, K, V, O, MLPNorm, Gate, Up, Down safetensors.Tensor
}

// Weights are every tensor of the model. Their Data aliases the checkpoint
// files and is valid until Model.Close.
type Weights struct {
	Embed  safetensors.Tensor
	Layers []LayerWeights
	Norm   safetensors.Tensor
	// LMHead is the output projection; equal to Embed when tied.
	LMHead safetensors.Tensor
}

// Options tune loading.
type Options struct {
	// Progress receives a text progress bar (bytes loaded / total); nil
	// means none. Pass os.Stderr only when it is a terminal.
	Progress io.Writer
}

// Model is a loaded checkpoint.
type Model struct {
	// Config is the validated config.json (with generation_config.json's
	// EOS ids merged in).
	Config *Config
	// Weights are the validated tensors.
	Weights *Weights
	// Source names where the model came from (a folder, or "fs").
	Source string

	files []*safetensors.File
}

// Close releases the checkpoint files. Weights must not be used afterwards.
func (m *Model) Close() error {
	var errs []error
	for _, f := range m.files {
		errs = append(errs, f.Close())
	}
	m.files = nil
	return errors.Join(errs...)
}

// source abstracts a folder (files mapped) and an fs.FS (files read).
type source struct {
	where    string
	readFile func(name string) ([]byte, error)
	openST   func(name string) (*safetensors.File, error)
}

// LoadDir loads the checkpoint in folder dir; weight files are mapped.
func LoadDir(dir string, opts Options) (*Model, error) {
	src := source{
		where:    dir,
		readFile: func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) },
		openST:   func(name string) (*safetensors.File, error) { return safetensors.Open(filepath.Join(dir, name)) },
	}
	return load(src, opts)
}

// LoadFS loads the checkpoint at the root of fsys (an embedded model, say);
// weight files are read into memory.
func LoadFS(fsys fs.FS, opts Options) (*Model, error) {
	src := source{
		where:    "fs",
		readFile: func(name string) ([]byte, error) { return fs.ReadFile(fsys, name) },
		openST: func(name string) (*safetensors.File, error) {
			data, err := fs.ReadFile(fsys, name)
			if err != nil {
				return nil, err
			}
			return safetensors.Parse(data)
		},
	}
	return load(src, opts)
}

func (s source) missing(name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("model: %s not found in %s: %w", name, s.where, err)
	}
	return fmt.Errorf("model: %s in %s: %w", name, s.where, err)
}

func load(src source, opts Options) (_ *Model, err error) {
	data, err := src.readFile(ConfigFile)
	if err != nil {
		return nil, src.missing(ConfigFile, err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src.where, err)
	}
	if gen, err := src.readFile(GenerationConfigFile); err == nil {
		if err := cfg.mergeGenerationConfig(gen); err != nil {
			return nil, fmt.Errorf("%s: %w", src.where, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, src.missing(GenerationConfigFile, err)
	}

	m := &Model{Config: cfg, Source: src.where}
	defer func() {
		if err != nil {
			_ = m.Close()
		}
	}()
	lookup, err := openWeights(src, m)
	if err != nil {
		return nil, err
	}
	w, err := collect(cfg, lookup)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src.where, err)
	}
	m.Weights = w
	if opts.Progress != nil {
		touch(w, opts.Progress)
	}
	return m, nil
}

// openWeights opens the single weight file or every shard named by the
// index, and returns a function that finds a tensor by name.
func openWeights(src source, m *Model) (func(name string) (safetensors.Tensor, error), error) {
	idx, err := src.readFile(WeightsIndexFile)
	if errors.Is(err, fs.ErrNotExist) {
		f, err := src.openST(WeightsFile)
		if err != nil {
			return nil, src.missing(WeightsFile, err)
		}
		m.files = append(m.files, f)
		return func(name string) (safetensors.Tensor, error) {
			t, err := f.Tensor(name)
			if err != nil {
				return t, fmt.Errorf("%w: tensor %s missing from %s", ErrBadWeights, name, WeightsFile)
			}
			return t, nil
		}, nil
	}
	if err != nil {
		return nil, src.missing(WeightsIndexFile, err)
	}
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(idx, &index); err != nil {
		return nil, fmt.Errorf("%w: %s in %s: %v", ErrBadWeights, WeightsIndexFile, src.where, err)
	}
	if len(index.WeightMap) == 0 {
		return nil, fmt.Errorf("%w: %s in %s has an empty weight_map", ErrBadWeights, WeightsIndexFile, src.where)
	}
	shards := map[string]*safetensors.File{}
	var names []string
	for _, file := range index.WeightMap {
		if !slices.Contains(names, file) {
			names = append(names, file)
		}
	}
	slices.Sort(names)
	for _, file := range names {
		if !fs.ValidPath(file) || path.Base(file) != file {
			return nil, fmt.Errorf("%w: %s in %s names shard %q, not a plain file name", ErrBadWeights, WeightsIndexFile, src.where, file)
		}
		f, err := src.openST(file)
		if err != nil {
			return nil, src.missing(file, err)
		}
		m.files = append(m.files, f)
		shards[file] = f
	}
	return func(name string) (safetensors.Tensor, error) {
		file, ok := index.WeightMap[name]
		if !ok {
			return safetensors.Tensor{}, fmt.Errorf("%w: tensor %s missing from %s", ErrBadWeights, name, WeightsIndexFile)
		}
		t, err := shards[file].Tensor(name)
		if err != nil {
			return t, fmt.Errorf("%w: tensor %s missing from shard %s named by %s", ErrBadWeights, name, file, WeightsIndexFile)
		}
		return t, nil
	}, nil
}

// collect finds and validates every tensor the config calls for.
func collect(c *Config, lookup func(string) (safetensors.Tensor, error)) (*Weights, error) {
	get := func(name string, shape ...int) (safetensors.Tensor, error) {
		t, err := lookup(name)
		if err != nil {
			return t, err
		}
		if !slices.Equal(t.Shape, shape) {
			return t, fmt.Errorf("%w: tensor %s has shape %v, want %v", ErrBadWeights, name, t.Shape, shape)
		}
		if !t.DType.Float() {
			return t, fmt.Errorf("%w: tensor %s has dtype %s; supported: F32, F16, BF16", ErrBadWeights, name, t.DType)
		}
		return t, nil
	}
	h, q, kv, ff := c.HiddenSize, c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim, c.IntermediateSize
	w := &Weights{Layers: make([]LayerWeights, c.NumLayers)}
	var err error
	if w.Embed, err = get("model.embed_tokens.weight", c.VocabSize, h); err != nil {
		return nil, err
	}
	for i := range w.Layers {
		l := &w.Layers[i]
		p := fmt.Sprintf("model.layers.%d.", i)
		for _, s := range []struct {
			dst   *safetensors.Tensor
			name  string
			shape []int
		}{
			{&l.AttnNorm, "input_layernorm.weight", []int{h}},
			{&l.Q, "self_attn.q_proj.weight", []int{q, h}},
			{&l.K, "self_attn.k_proj.weight", []int{kv, h}},
			{&l.V, "self_attn.v_proj.weight", []int{kv, h}},
			{&l.O, "self_attn.o_proj.weight", []int{h, q}},
			{&l.MLPNorm, "post_attention_layernorm.weight", []int{h}},
			{&l.Gate, "mlp.gate_proj.weight", []int{ff, h}},
			{&l.Up, "mlp.up_proj.weight", []int{ff, h}},
			{&l.Down, "mlp.down_proj.weight", []int{h, ff}},
		} {
			if *s.dst, err = get(p+s.name, s.shape...); err != nil {
				return nil, err
			}
		}
	}
	if w.Norm, err = get("model.norm.weight", h); err != nil {
		return nil, err
	}
	if c.TieWordEmbeddings {
		w.LMHead = w.Embed
	} else if w.LMHead, err = get("lm_head.weight", c.VocabSize, h); err != nil {
		return nil, err
	}
	return w, nil
}

// tensors lists every distinct tensor of w once.
func (w *Weights) tensors() []safetensors.Tensor {
	out := []safetensors.Tensor{w.Embed}
	for _, l := range w.Layers {
		out = append(out, l.AttnNorm, l.Q, l.K, l.V, l.O, l.MLPNorm, l.Gate, l.Up, l.Down)
	}
	out = append(out, w.Norm)
	if w.LMHead.Name != w.Embed.Name {
		out = append(out, w.LMHead)
	}
	return out
}

// Bytes is the total size of the weights as stored.
func (w *Weights) Bytes() int64 {
	var n int64
	for _, t := range w.tensors() {
		n += int64(len(t.Data))
	}
	return n
}

// touch reads one byte of every page of every tensor, so that mapped
// weights are paged in while a progress bar shows how far it got.
func touch(w *Weights, out io.Writer) {
	bar := newProgress(out, "loading weights", w.Bytes())
	var sink byte
	for _, t := range w.tensors() {
		for i := 0; i < len(t.Data); i += 4096 {
			sink ^= t.Data[i]
		}
		bar.add(int64(len(t.Data)))
	}
	bar.finish()
	_ = sink
}
