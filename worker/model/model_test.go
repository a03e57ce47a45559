package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const fixtures = "../../testdata/models"

func fixture(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(fixtures, name)
	if _, err := os.Stat(filepath.Join(dir, ConfigFile)); err != nil {
		t.Skipf("fixture %s not generated yet: %v", name, err)
	}
	return dir
}

func TestLoadFixtures(t *testing.T) {
	for _, name := range []string{"tiny-llama2", "tiny-llama3"} {
		t.Run(name, func(t *testing.T) {
			dir := fixture(t, name)
			var bar bytes.Buffer
			m, err := LoadDir(dir, Options{Progress: &bar})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			c := m.Config
			if len(m.Weights.Layers) != c.NumLayers || c.NumLayers == 0 {
				t.Errorf("%d layers, config says %d", len(m.Weights.Layers), c.NumLayers)
			}
			if len(c.EOSTokenIDs) == 0 {
				t.Error("no EOS token id")
			}
			if !strings.Contains(bar.String(), "100%") {
				t.Errorf("progress output %q lacks 100%%", bar.String())
			}
			if c.TieWordEmbeddings && m.Weights.LMHead.Name != m.Weights.Embed.Name {
				t.Error("tied model: LMHead is not Embed")
			}
			// The same checkpoint through an fs.FS.
			m2, err := LoadFS(os.DirFS(dir), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m2.Close()
			if diff := cmp.Diff(c, m2.Config); diff != "" {
				t.Errorf("LoadFS config differs (-dir +fs):\n%s", diff)
			}
			a, err := m.Weights.Layers[0].Q.Float32()
			if err != nil {
				t.Fatal(err)
			}
			b, err := m2.Weights.Layers[0].Q.Float32()
			if err != nil {
				t.Fatal(err)
			}
			if !cmp.Equal(a, b) {
				t.Error("LoadFS and LoadDir give different q_proj values")
			}
			t.Logf("%s: %+v, %d bytes of weights", name, *c, m.Weights.Bytes())
		})
	}
}

func TestFixtureConfigs(t *testing.T) {
	dir := fixture(t, "tiny-llama2")
	data, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama", VocabSize: 1000, HiddenSize: 64, IntermediateSize: 176,
		NumLayers: 3, NumHeads: 4, NumKVHeads: 2, HeadDim: 16, MaxPositionEmbeddings: 512, RMSNormEps: 1e-5, RopeTheta: 10000,
		BOSTokenID: 1, EOSTokenIDs: []int32{2}, TorchDType: "float32",
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseConfig(t *testing.T) {
	base := func(extra string) string {
		return `{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":12,` +
			`"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":64` + extra + `}`
	}
	tests := []struct {
		name    string
		json    string
		check   func(*Config) string
		wantErr string
	}{
		{name: "defaults", json: base(""), check: func(c *Config) string {
			return cmp.Diff([]any{2, 4, 1e-6, 10000.0, int32(-1), []int32(nil), (*RopeScaling)(nil)},
				[]any{c.NumKVHeads, c.HeadDim, c.RMSNormEps, c.RopeTheta, c.BOSTokenID, c.EOSTokenIDs, c.RopeScaling})
		}},
		{name: "eos list", json: base(`,"eos_token_id":[5,7,5],"bos_token_id":3,"head_dim":6`), check: func(c *Config) string {
			return cmp.Diff([]any{[]int32{5, 7}, int32(3), 6}, []any{c.EOSTokenIDs, c.BOSTokenID, c.HeadDim})
		}},
		{name: "llama3 rope", json: base(`,"rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,"original_max_position_embeddings":8192}`),
			check: func(c *Config) string {
				return cmp.Diff(&RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192}, c.RopeScaling)
			}},
		{name: "rope_parameters", json: base(`,"rope_parameters":{"rope_type":"default","rope_theta":500000}`), check: func(c *Config) string {
			return cmp.Diff(500000.0, c.RopeTheta)
		}},
		{name: "old type key", json: base(`,"rope_scaling":{"type":"default"}`), check: func(c *Config) string { return cmp.Diff((*RopeScaling)(nil), c.RopeScaling) }},
		{name: "architecture", json: strings.Replace(base(""), "LlamaForCausalLM", "MistralForCausalLM", 1), wantErr: "unsupported: architecture [MistralForCausalLM]; supported: LlamaForCausalLM"},
		{name: "attention bias", json: base(`,"attention_bias":true`), wantErr: "attention_bias"},
		{name: "mlp bias", json: base(`,"mlp_bias":true`), wantErr: "mlp_bias"},
		{name: "act", json: base(`,"hidden_act":"gelu"`), wantErr: `hidden_act "gelu"`},
		{name: "rope yarn", json: base(`,"rope_scaling":{"rope_type":"yarn","factor":4}`), wantErr: `rope_scaling type "yarn"; supported: default, llama3`},
		{name: "llama3 incomplete", json: base(`,"rope_scaling":{"rope_type":"llama3","factor":8}`), wantErr: "llama3 needs"},
		{name: "kv heads", json: base(`,"num_key_value_heads":3`), wantErr: "num_key_value_heads 3"},
		{name: "zero hidden", json: strings.Replace(base(""), `"hidden_size":8`, `"hidden_size":0`, 1), wantErr: "hidden_size is 0"},
		{name: "odd head dim", json: base(`,"head_dim":3`), wantErr: "head_dim 3"},
		{name: "bad eos", json: base(`,"eos_token_id":"x"`), wantErr: "eos_token_id"},
		{name: "negative eos", json: base(`,"eos_token_id":[-1]`), wantErr: "eos_token_id -1"},
		{name: "bad json", json: `{`, wantErr: "config.json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.json))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := tc.check(c); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestInvFreq(t *testing.T) {
	c := &Config{HeadDim: 4, RopeTheta: 10000}
	if diff := cmp.Diff([]float64{1, 0.01}, c.InvFreq(), cmpApprox); diff != "" {
		t.Errorf("default (-want +got):\n%s", diff)
	}
	// wavelengths 2π (< 250: kept) and 628.3 (between 250 and 1000: smoothed,
	// value computed independently in Python).
	c.RopeScaling = &RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 1000}
	if diff := cmp.Diff([]float64{1, 0.002975352506846947}, c.InvFreq(), cmpApprox); diff != "" {
		t.Errorf("llama3 medium band (-want +got):\n%s", diff)
	}
	// Long wavelength (> 1000/1 = 1000 when orig is 100... use orig 100):
	// 628.3 > 100 → divided by factor.
	c.RopeScaling.OriginalMaxPositionEmbeddings = 100
	if diff := cmp.Diff([]float64{1, 0.01 / 8}, c.InvFreq(), cmpApprox); diff != "" {
		t.Errorf("llama3 low band (-want +got):\n%s", diff)
	}
}

var cmpApprox = cmp.Comparer(func(a, b float64) bool { return math.Abs(a-b) <= 1e-12*math.Max(1, math.Abs(b)) })

// tinyCheckpoint writes a valid 1-layer checkpoint to a temp folder and
// returns it; edit tweaks the tensor shapes before writing.
func tinyCheckpoint(t *testing.T, config string, edit func(shapes map[string][]int)) string {
	t.Helper()
	dir := t.TempDir()
	if config == "" {
		config = `{"architectures":["LlamaForCausalLM"],"vocab_size":5,"hidden_size":4,"intermediate_size":6,` +
			`"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"max_position_embeddings":16,"eos_token_id":2}`
	}
	write(t, filepath.Join(dir, ConfigFile), []byte(config))
	shapes := map[string][]int{
		"model.embed_tokens.weight":                      {5, 4},
		"model.layers.0.input_layernorm.weight":          {4},
		"model.layers.0.self_attn.q_proj.weight":         {4, 4},
		"model.layers.0.self_attn.k_proj.weight":         {2, 4},
		"model.layers.0.self_attn.v_proj.weight":         {2, 4},
		"model.layers.0.self_attn.o_proj.weight":         {4, 4},
		"model.layers.0.post_attention_layernorm.weight": {4},
		"model.layers.0.mlp.gate_proj.weight":            {6, 4},
		"model.layers.0.mlp.up_proj.weight":              {6, 4},
		"model.layers.0.mlp.down_proj.weight":            {4, 6},
		"model.norm.weight":                              {4},
		"lm_head.weight":                                 {5, 4},
	}
	if edit != nil {
		edit(shapes)
	}
	write(t, filepath.Join(dir, WeightsFile), safetensorsFile(shapes))
	return dir
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// safetensorsFile builds an F32 safetensors file of zero tensors.
func safetensorsFile(shapes map[string][]int) []byte {
	names := make([]string, 0, len(shapes))
	for n := range shapes {
		names = append(names, n)
	}
	sort.Strings(names)
	hdr := map[string]any{}
	off := 0
	for _, n := range names {
		size := 4
		for _, d := range shapes[n] {
			size *= d
		}
		hdr[n] = map[string]any{"dtype": "F32", "shape": shapes[n], "data_offsets": []int{off, off + size}}
		off += size
	}
	h, err := json.Marshal(hdr)
	if err != nil {
		panic(err)
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(out, h...)
	return append(out, make([]byte, off)...)
}

func TestLoadBroken(t *testing.T) {
	t.Run("valid", func(t *testing.T) {
		m, err := LoadDir(tinyCheckpoint(t, "", nil), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("missing config", func(t *testing.T) {
		dir := tinyCheckpoint(t, "", nil)
		if err := os.Remove(filepath.Join(dir, ConfigFile)); err != nil {
			t.Fatal(err)
		}
		_, err := LoadDir(dir, Options{})
		wantErr(t, err, "config.json not found in "+dir)
	})
	t.Run("missing weights", func(t *testing.T) {
		dir := tinyCheckpoint(t, "", nil)
		if err := os.Remove(filepath.Join(dir, WeightsFile)); err != nil {
			t.Fatal(err)
		}
		_, err := LoadDir(dir, Options{})
		wantErr(t, err, "model.safetensors not found in "+dir)
	})
	t.Run("missing shard", func(t *testing.T) {
		dir := tinyCheckpoint(t, "", nil)
		if err := os.Rename(filepath.Join(dir, WeightsFile), filepath.Join(dir, "model-00001-of-00002.safetensors")); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, WeightsIndexFile), []byte(`{"weight_map":{"model.embed_tokens.weight":"model-00001-of-00002.safetensors","lm_head.weight":"model-00002-of-00002.safetensors"}}`))
		_, err := LoadDir(dir, Options{})
		wantErr(t, err, "model-00002-of-00002.safetensors not found in "+dir)
	})
	t.Run("shard path escapes", func(t *testing.T) {
		dir := tinyCheckpoint(t, "", nil)
		write(t, filepath.Join(dir, WeightsIndexFile), []byte(`{"weight_map":{"model.embed_tokens.weight":"../x.safetensors"}}`))
		_, err := LoadDir(dir, Options{})
		wantErr(t, err, `shard "../x.safetensors"`)
	})
	t.Run("unsupported architecture", func(t *testing.T) {
		dir := tinyCheckpoint(t, `{"architectures":["GPT2LMHeadModel"]}`, nil)
		_, err := LoadDir(dir, Options{})
		wantErr(t, err, "architecture [GPT2LMHeadModel]; supported: LlamaForCausalLM")
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("err %v is not ErrUnsupported", err)
		}
	})
	t.Run("wrong shape", func(t *testing.T) {
		dir := tinyCheckpoint(t, "", func(s map[string][]int) { s["model.layers.0.self_attn.k_proj.weight"] = []int{4, 4} })
		_, err := LoadDir(dir, Options{})
		wantErr(t, err, "tensor model.layers.0.self_attn.k_proj.weight has shape [4 4], want [2 4]")
		if !errors.Is(err, ErrBadWeights) {
			t.Errorf("err %v is not ErrBadWeights", err)
		}
	})
	t.Run("missing tensor", func(t *testing.T) {
		dir := tinyCheckpoint(t, "", func(s map[string][]int) { delete(s, "model.layers.0.mlp.up_proj.weight") })
		_, err := LoadDir(dir, Options{})
		wantErr(t, err, "tensor model.layers.0.mlp.up_proj.weight missing")
	})
	t.Run("untied without lm_head", func(t *testing.T) {
		dir := tinyCheckpoint(t, "", func(s map[string][]int) { delete(s, "lm_head.weight") })
		_, err := LoadDir(dir, Options{})
		wantErr(t, err, "tensor lm_head.weight missing")
	})
	t.Run("generation config eos merged", func(t *testing.T) {
		dir := tinyCheckpoint(t, "", nil)
		write(t, filepath.Join(dir, GenerationConfigFile), []byte(`{"eos_token_id":[3,2]}`))
		m, err := LoadDir(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if diff := cmp.Diff([]int32{2, 3}, m.Config.EOSTokenIDs); diff != "" {
			t.Errorf("EOS (-want +got):\n%s", diff)
		}
	})
	t.Run("fs missing config", func(t *testing.T) {
		_, err := LoadFS(os.DirFS(t.TempDir()), Options{})
		wantErr(t, err, fmt.Sprintf("%s not found in fs", ConfigFile))
	})
}

func wantErr(t *testing.T, err error, substr string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), substr) {
		t.Fatalf("err %v, want one containing %q", err, substr)
	}
}
