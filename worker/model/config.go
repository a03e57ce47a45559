// Package model loads Hugging Face Llama checkpoints (config.json,
// generation_config.json and single-file or sharded safetensors weights)
// from a folder or an fs.FS, and validates every tensor against the config.
package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
)

// SupportedArchitecture is the only architecture this package loads.
const SupportedArchitecture = "LlamaForCausalLM"

// Sentinel errors, returned wrapped with the offending key, file or tensor.
var (
	// ErrBadConfig: config.json is malformed or inconsistent.
	ErrBadConfig = errors.New("model: bad config")
	// ErrUnsupported: the checkpoint uses a feature this loader does not
	// implement (architecture, biases, rope scaling type, activation).
	ErrUnsupported = errors.New("model: unsupported")
	// ErrBadWeights: a tensor is missing or has the wrong shape or dtype.
	ErrBadWeights = errors.New("model: bad weights")
)

// Config is the part of a Llama config.json this package uses.
type Config struct {
	// Architectures as listed in config.json (must include LlamaForCausalLM).
	Architectures []string
	// ModelType is config.json's model_type ("llama").
	ModelType string
	// VocabSize is the number of token ids (rows of the embedding).
	VocabSize int
	// HiddenSize is the model width.
	HiddenSize int
	// IntermediateSize is the MLP width.
	IntermediateSize int
	// NumLayers is num_hidden_layers.
	NumLayers int
	// NumHeads is num_attention_heads (query heads).
	NumHeads int
	// NumKVHeads is num_key_value_heads (defaults to NumHeads).
	NumKVHeads int
	// HeadDim is the per-head width (defaults to HiddenSize/NumHeads).
	HeadDim int
	// MaxPositionEmbeddings is the longest context the model supports.
	MaxPositionEmbeddings int
	// RMSNormEps is the epsilon of every RMSNorm.
	RMSNormEps float64
	// RopeTheta is the RoPE base.
	RopeTheta float64
	// RopeScaling is the RoPE frequency scaling; nil means none.
	RopeScaling *RopeScaling
	// TieWordEmbeddings: the LM head reuses the embedding matrix.
	TieWordEmbeddings bool
	// BOSTokenID is the beginning-of-sequence id, -1 when there is none.
	BOSTokenID int32
	// EOSTokenIDs are every end-of-sequence id of config.json and
	// generation_config.json, without duplicates, in order of appearance.
	EOSTokenIDs []int32
	// TorchDType is the checkpoint's declared dtype ("bfloat16", ...).
	TorchDType string
}

// RopeScaling is config.json's rope_scaling (or rope_parameters) object.
type RopeScaling struct {
	// Type is the scaling kind; only "llama3" is supported.
	Type string
	// Factor divides the low frequencies.
	Factor float64
	// LowFreqFactor and HighFreqFactor bound the smoothly scaled band.
	LowFreqFactor, HighFreqFactor float64
	// OriginalMaxPositionEmbeddings is the pre-extension context length.
	OriginalMaxPositionEmbeddings int
}

// Sanity bounds on dimensions, far above any real model, so that products
// of dimensions cannot overflow.
const (
	maxDim     = 1 << 24
	maxHeadDim = 1 << 12
)

// rawConfig mirrors config.json; pointers tell absent keys from zeros.
type rawConfig struct {
	Architectures         []string        `json:"architectures"`
	ModelType             string          `json:"model_type"`
	VocabSize             int             `json:"vocab_size"`
	HiddenSize            int             `json:"hidden_size"`
	IntermediateSize      int             `json:"intermediate_size"`
	NumLayers             int             `json:"num_hidden_layers"`
	NumHeads              int             `json:"num_attention_heads"`
	NumKVHeads            *int            `json:"num_key_value_heads"`
	HeadDim               *int            `json:"head_dim"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	RMSNormEps            *float64        `json:"rms_norm_eps"`
	RopeTheta             *float64        `json:"rope_theta"`
	RopeScaling           json.RawMessage `json:"rope_scaling"`
	RopeParameters        json.RawMessage `json:"rope_parameters"`
	TieWordEmbeddings     bool            `json:"tie_word_embeddings"`
	BOSTokenID            json.RawMessage `json:"bos_token_id"`
	EOSTokenID            json.RawMessage `json:"eos_token_id"`
	TorchDType            string          `json:"torch_dtype"`
	DType                 string          `json:"dtype"`
	HiddenAct             string          `json:"hidden_act"`
	AttentionBias         bool            `json:"attention_bias"`
	MLPBias               bool            `json:"mlp_bias"`
}

type rawRope struct {
	RopeType                      string   `json:"rope_type"`
	Type                          string   `json:"type"`
	RopeTheta                     *float64 `json:"rope_theta"`
	Factor                        float64  `json:"factor"`
	LowFreqFactor                 float64  `json:"low_freq_factor"`
	HighFreqFactor                float64  `json:"high_freq_factor"`
	OriginalMaxPositionEmbeddings int      `json:"original_max_position_embeddings"`
}

// ParseConfig parses and validates a Llama config.json.
func ParseConfig(data []byte) (*Config, error) {
	var r rawConfig
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%w: config.json: %v", ErrBadConfig, err)
	}
	if !slices.Contains(r.Architectures, SupportedArchitecture) {
		return nil, fmt.Errorf("%w: architecture %v; supported: %s", ErrUnsupported, r.Architectures, SupportedArchitecture)
	}
	if r.HiddenAct != "" && r.HiddenAct != "silu" {
		return nil, fmt.Errorf("%w: hidden_act %q; supported: silu", ErrUnsupported, r.HiddenAct)
	}
	if r.AttentionBias {
		return nil, fmt.Errorf("%w: attention_bias true; only bias-free attention is supported", ErrUnsupported)
	}
	if r.MLPBias {
		return nil, fmt.Errorf("%w: mlp_bias true; only bias-free MLPs are supported", ErrUnsupported)
	}
	c := &Config{
		Architectures:         r.Architectures,
		ModelType:             r.ModelType,
		VocabSize:             r.VocabSize,
		HiddenSize:            r.HiddenSize,
		IntermediateSize:      r.IntermediateSize,
		NumLayers:             r.NumLayers,
		NumHeads:              r.NumHeads,
		MaxPositionEmbeddings: r.MaxPositionEmbeddings,
		RMSNormEps:            1e-6,
		RopeTheta:             10000,
		TieWordEmbeddings:     r.TieWordEmbeddings,
		TorchDType:            r.TorchDType,
		BOSTokenID:            -1,
	}
	if c.TorchDType == "" {
		c.TorchDType = r.DType
	}
	for _, f := range []struct {
		key string
		v   int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumLayers}, {"num_attention_heads", c.NumHeads}, {"max_position_embeddings", c.MaxPositionEmbeddings},
	} {
		if f.v <= 0 || f.v > maxDim {
			return nil, fmt.Errorf("%w: %s is %d, must be in [1, %d]", ErrBadConfig, f.key, f.v, maxDim)
		}
	}
	c.NumKVHeads = c.NumHeads
	if r.NumKVHeads != nil {
		c.NumKVHeads = *r.NumKVHeads
	}
	if c.NumKVHeads <= 0 || c.NumKVHeads > c.NumHeads || c.NumHeads%c.NumKVHeads != 0 {
		return nil, fmt.Errorf("%w: num_key_value_heads %d must be positive and divide num_attention_heads %d", ErrBadConfig, c.NumKVHeads, c.NumHeads)
	}
	if r.HeadDim != nil {
		c.HeadDim = *r.HeadDim
	} else {
		if c.HiddenSize%c.NumHeads != 0 {
			return nil, fmt.Errorf("%w: hidden_size %d is not a multiple of num_attention_heads %d and head_dim is absent", ErrBadConfig, c.HiddenSize, c.NumHeads)
		}
		c.HeadDim = c.HiddenSize / c.NumHeads
	}
	if c.HeadDim <= 0 || c.HeadDim%2 != 0 || c.HeadDim > maxHeadDim {
		return nil, fmt.Errorf("%w: head_dim %d must be even and in [2, %d]", ErrBadConfig, c.HeadDim, maxHeadDim)
	}
	if r.RMSNormEps != nil {
		c.RMSNormEps = *r.RMSNormEps
	}
	if !(c.RMSNormEps > 0) {
		return nil, fmt.Errorf("%w: rms_norm_eps %g must be positive", ErrBadConfig, c.RMSNormEps)
	}
	if r.RopeTheta != nil {
		c.RopeTheta = *r.RopeTheta
	}
	for _, rs := range []struct {
		key string
		raw json.RawMessage
	}{{"rope_scaling", r.RopeScaling}, {"rope_parameters", r.RopeParameters}} {
		sc, theta, err := parseRope(rs.key, rs.raw)
		if err != nil {
			return nil, err
		}
		if theta != nil {
			c.RopeTheta = *theta
		}
		if sc != nil {
			c.RopeScaling = sc
		}
	}
	if !(c.RopeTheta > 1) || math.IsInf(c.RopeTheta, 0) {
		return nil, fmt.Errorf("%w: rope_theta %g must be a finite number above 1", ErrBadConfig, c.RopeTheta)
	}
	bos, err := tokenIDs("bos_token_id", r.BOSTokenID)
	if err != nil {
		return nil, err
	}
	if len(bos) > 0 {
		c.BOSTokenID = bos[0]
	}
	if c.EOSTokenIDs, err = tokenIDs("eos_token_id", r.EOSTokenID); err != nil {
		return nil, err
	}
	return c, nil
}

// parseRope reads a rope_scaling / rope_parameters object: the scaling (nil
// for none or "default") and, for rope_parameters, the rope_theta inside.
func parseRope(key string, raw json.RawMessage) (*RopeScaling, *float64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil, nil
	}
	var r rawRope
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrBadConfig, key, err)
	}
	typ := r.RopeType
	if typ == "" {
		typ = r.Type
	}
	switch typ {
	case "", "default":
		return nil, r.RopeTheta, nil
	case "llama3":
	default:
		return nil, nil, fmt.Errorf("%w: %s type %q; supported: default, llama3", ErrUnsupported, key, typ)
	}
	s := &RopeScaling{Type: typ, Factor: r.Factor, LowFreqFactor: r.LowFreqFactor, HighFreqFactor: r.HighFreqFactor,
		OriginalMaxPositionEmbeddings: r.OriginalMaxPositionEmbeddings}
	if !(s.Factor > 0) || !(s.LowFreqFactor > 0) || !(s.HighFreqFactor > s.LowFreqFactor) || s.OriginalMaxPositionEmbeddings <= 0 {
		return nil, nil, fmt.Errorf("%w: %s llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0; got %+v", ErrBadConfig, key, *s)
	}
	return s, r.RopeTheta, nil
}

// tokenIDs reads a token id field that may be null, an int or a list.
func tokenIDs(key string, raw json.RawMessage) ([]int32, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	var ids []int64
	if raw[0] == '[' {
		if err := json.Unmarshal(raw, &ids); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrBadConfig, key, err)
		}
	} else {
		var id int64
		if err := json.Unmarshal(raw, &id); err != nil {
			return nil, fmt.Errorf("%w: %s must be an integer or a list of integers: %v", ErrBadConfig, key, err)
		}
		ids = []int64{id}
	}
	out := make([]int32, 0, len(ids))
	for _, id := range ids {
		if id < 0 || id > math.MaxInt32 {
			return nil, fmt.Errorf("%w: %s %d out of range", ErrBadConfig, key, id)
		}
		if !slices.Contains(out, int32(id)) {
			out = append(out, int32(id))
		}
	}
	return out, nil
}

// mergeGenerationConfig adds generation_config.json's eos_token_id (and its
// bos_token_id where config.json has none) to c.
func (c *Config) mergeGenerationConfig(data []byte) error {
	var g struct {
		BOSTokenID json.RawMessage `json:"bos_token_id"`
		EOSTokenID json.RawMessage `json:"eos_token_id"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		return fmt.Errorf("%w: generation_config.json: %v", ErrBadConfig, err)
	}
	eos, err := tokenIDs("generation_config.json eos_token_id", g.EOSTokenID)
	if err != nil {
		return err
	}
	for _, id := range eos {
		if !slices.Contains(c.EOSTokenIDs, id) {
			c.EOSTokenIDs = append(c.EOSTokenIDs, id)
		}
	}
	if c.BOSTokenID < 0 {
		bos, err := tokenIDs("generation_config.json bos_token_id", g.BOSTokenID)
		if err != nil {
			return err
		}
		if len(bos) > 0 {
			c.BOSTokenID = bos[0]
		}
	}
	return nil
}

// InvFreq returns the RoPE inverse frequencies, one per pair of rotated
// dimensions (HeadDim/2 values): theta^(-2i/HeadDim), with the llama3
// scaling applied when configured: wavelengths longer than
// original_max_position_embeddings/low_freq_factor are divided by factor,
// those shorter than original/high_freq_factor are kept, and the band in
// between is interpolated linearly in original/wavelength.
func (c *Config) InvFreq() []float64 {
	half := c.HeadDim / 2
	out := make([]float64, half)
	for i := range out {
		out[i] = 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
	}
	s := c.RopeScaling
	if s == nil || s.Type != "llama3" {
		return out
	}
	orig := float64(s.OriginalMaxPositionEmbeddings)
	lowWavelen := orig / s.LowFreqFactor
	highWavelen := orig / s.HighFreqFactor
	for i, f := range out {
		wavelen := 2 * math.Pi / f
		switch {
		case wavelen < highWavelen:
			// high frequency: unchanged
		case wavelen > lowWavelen:
			out[i] = f / s.Factor
		default:
			smooth := (orig/wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
			out[i] = (1-smooth)*f/s.Factor + smooth*f
		}
	}
	return out
}
