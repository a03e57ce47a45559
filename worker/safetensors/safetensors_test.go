package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// build assembles a safetensors file from a header and a data section.
func build(header string, data []byte) []byte {
	out := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(out, uint64(len(header)))
	out = append(out, header...)
	return append(out, data...)
}

func le32(vals ...float32) []byte {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func le16(vals ...uint16) []byte {
	b := make([]byte, 2*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint16(b[2*i:], v)
	}
	return b
}

func TestParseValid(t *testing.T) {
	data := append(le32(1, -2, 3.5, 0), le16(0x3c00, 0xc000)...) // f16 1, -2
	data = append(data, le16(0x3f80, 0x4040)...)                 // bf16 1, 3
	hdr := `{"__metadata__":{"format":"pt"},` +
		`"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},` +
		`"b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},` +
		`"c":{"dtype":"BF16","shape":[2],"data_offsets":[20,24]},` +
		`"e":{"dtype":"F32","shape":[0,7],"data_offsets":[24,24]}}   `
	f, err := Parse(build(hdr, data))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if diff := cmp.Diff([]string{"a", "b", "c", "e"}, f.Names()); diff != "" {
		t.Errorf("Names (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"format": "pt"}, f.Metadata()); diff != "" {
		t.Errorf("Metadata (-want +got):\n%s", diff)
	}
	tests := []struct {
		name  string
		dtype DType
		shape []int
		want  []float32
	}{
		{"a", F32, []int{2, 2}, []float32{1, -2, 3.5, 0}},
		{"b", F16, []int{2}, []float32{1, -2}},
		{"c", BF16, []int{2}, []float32{1, 3}},
		{"e", F32, []int{0, 7}, []float32{}},
	}
	for _, tc := range tests {
		tn, err := f.Tensor(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if tn.DType != tc.dtype || !cmp.Equal(tn.Shape, tc.shape) {
			t.Errorf("%s: dtype %s shape %v, want %s %v", tc.name, tn.DType, tn.Shape, tc.dtype, tc.shape)
		}
		got, err := tn.Float32()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s values (-want +got):\n%s", tc.name, diff)
		}
		into := make([]float32, len(tc.want))
		if err := tn.Float32Into(into); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, into); diff != "" {
			t.Errorf("%s Float32Into (-want +got):\n%s", tc.name, diff)
		}
	}
	tn, _ := f.Tensor("a")
	if err := tn.Float32Into(make([]float32, 3)); err == nil {
		t.Error("Float32Into with a short destination: no error")
	}
	if _, err := f.Tensor("zzz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tensor: err %v, want ErrNotFound", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Tensor("a"); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err %v, want ErrClosed", err)
	}
}

func TestParseErrors(t *testing.T) {
	f32x2 := le32(1, 2)
	tests := []struct {
		name string
		file []byte
		want string // substring of the error
	}{
		{"empty", nil, "shorter than the 8-byte"},
		{"header past end", func() []byte { b := build(`{}`, nil); b[0] = 200; return b }(), "exceeds the 2 bytes"},
		{"huge header length", func() []byte { b := build(`{}`, nil); b[7] = 0xff; return b }(), "exceeds the limit"},
		{"not an object", build(`[1,2]`, nil), "JSON object"},
		{"bad json", build(`{"a":`, nil), "header JSON"},
		{"unknown dtype", build(`{"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}`, f32x2), `tensor "w": safetensors: unknown dtype: "F33"`},
		{"offsets past end", build(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}`, f32x2), `tensor "w": data_offsets [0, 16] outside`},
		{"offsets reversed", build(`{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, f32x2), `data_offsets [8, 0]`},
		{"offsets arity", build(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}}`, f32x2), `must be [begin, end]`},
		{"negative offset", build(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}}`, f32x2), `tensor "w"`},
		{"size mismatch", build(`{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, f32x2), `tensor "w": 8 bytes in data_offsets, shape [3] of F32 needs 12`},
		{"negative dim", build(`{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, f32x2), "negative dimension"},
		{"overflowing shape", build(`{"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}}`, f32x2), "larger than the"},
		{"overlap", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32x2), "overlap"},
		{"bad metadata", build(`{"__metadata__":{"x":1}}`, nil), "__metadata__"},
		{"bad entry", build(`{"w":3}`, nil), `tensor "w"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.file)
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestUnsupportedDType(t *testing.T) {
	f, err := Parse(build(`{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, make([]byte, 8)))
	if err != nil {
		t.Fatal(err)
	}
	tn, err := f.Tensor("ids")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tn.Float32()
	if !errors.Is(err, ErrUnsupportedDType) || !strings.Contains(err.Error(), `"ids" has dtype I64`) {
		t.Errorf("err %v, want ErrUnsupportedDType naming the tensor and dtype", err)
	}
}

func TestFloat16(t *testing.T) {
	tests := []struct {
		h    uint16
		want float32
	}{
		{0x0000, 0},
		{0x3c00, 1},
		{0xc000, -2},
		{0x7bff, 65504},
		{0x0400, float32(math.Ldexp(1, -14))},           // smallest normal
		{0x0001, float32(math.Ldexp(1, -24))},           // smallest subnormal
		{0x03ff, float32(math.Ldexp(1023, -24))},        // largest subnormal
		{0x8200, -float32(math.Ldexp(512, -24))},        // negative subnormal
		{0x3555, float32(math.Ldexp(1+341.0/1024, -2))}, // ~1/3
		{0x7c00, float32(math.Inf(1))},
		{0xfc00, float32(math.Inf(-1))},
	}
	for _, tc := range tests {
		if got := Float16ToFloat32(tc.h); got != tc.want {
			t.Errorf("Float16ToFloat32(%#04x) = %g, want %g", tc.h, got, tc.want)
		}
	}
	if got := Float16ToFloat32(0x8000); math.Float32bits(got) != 0x80000000 {
		t.Errorf("-0: got bits %#x", math.Float32bits(got))
	}
	for _, h := range []uint16{0x7e00, 0x7c01, 0xfe00} {
		got := Float16ToFloat32(h)
		if !math.IsNaN(float64(got)) {
			t.Errorf("Float16ToFloat32(%#04x) = %g, want NaN", h, got)
		}
	}
	// Every finite half converts to the value 2^(e-15)*(1+m/1024) or
	// 2^-14*(m/1024): check all of them against that formula.
	for h := 0; h < 1<<16; h++ {
		e, m := (h>>10)&0x1f, h&0x3ff
		if e == 0x1f {
			continue
		}
		var v float64
		if e == 0 {
			v = math.Ldexp(float64(m), -24)
		} else {
			v = math.Ldexp(1+float64(m)/1024, e-15)
		}
		if h&0x8000 != 0 {
			v = -v
		}
		if got := Float16ToFloat32(uint16(h)); got != float32(v) {
			t.Fatalf("Float16ToFloat32(%#04x) = %g, want %g", h, got, v)
		}
	}
}

func TestOpenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := os.WriteFile(path, build(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, le32(5, 6)), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := f.Tensor("w")
	if err != nil {
		t.Fatal(err)
	}
	got, err := tn.Float32()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]float32{5, 6}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "absent.safetensors")); err == nil || !strings.Contains(err.Error(), "absent.safetensors") {
		t.Errorf("Open of a missing file: err %v, want one naming it", err)
	}
	if _, err := Open(t.TempDir()); !errors.Is(err, ErrInvalid) {
		t.Errorf("Open of a folder: err %v, want ErrInvalid", err)
	}
	short := filepath.Join(t.TempDir(), "short.safetensors")
	if err := os.WriteFile(short, []byte{1, 2}, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(short); !errors.Is(err, ErrInvalid) {
		t.Errorf("Open of a 2-byte file: err %v, want ErrInvalid", err)
	}
}

// TestFixture checks conversion against values computed by the Python
// safetensors/torch reference (testdata/safetensors).
func TestFixture(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "safetensors")
	raw, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("testdata/safetensors not generated yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]json.RawMessage
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	f, err := Open(filepath.Join(dir, "dtypes.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var shape []int
	if err := json.Unmarshal(want["shape"], &shape); err != nil {
		t.Fatalf("expected.json shape: %v", err)
	}
	checked := 0
	for _, name := range f.Names() {
		msg, ok := want[name]
		if !ok {
			continue
		}
		var vals []float32
		if err := json.Unmarshal(msg, &vals); err != nil {
			t.Fatalf("expected.json %q: %v", name, err)
		}
		tn, err := f.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(shape, tn.Shape); diff != "" {
			t.Errorf("%s shape (-want +got):\n%s", name, diff)
		}
		got, err := tn.Float32()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(vals) {
			t.Fatalf("%s: %d values, want %d", name, len(got), len(vals))
		}
		for i := range got {
			if math.Float32bits(got[i]) != math.Float32bits(vals[i]) && !(math.IsNaN(float64(got[i])) && math.IsNaN(float64(vals[i]))) {
				t.Errorf("%s[%d] = %g, want %g", name, i, got[i], vals[i])
			}
		}
		checked++
	}
	if checked == 0 {
		t.Fatalf("no tensor of %v matched a key of expected.json", f.Names())
	}
	t.Logf("checked %d tensors", checked)
}
