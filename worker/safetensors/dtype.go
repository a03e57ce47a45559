package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
)

// DType is a tensor element type as named in a safetensors header.
type DType uint8

// The element types of the safetensors format. Only F32, F16 and BF16 can
// be converted to float32; the others are recognised so that a file holding
// them still parses and its sizes are still checked.
const (
	DTypeInvalid DType = iota
	F32
	F16
	BF16
	F64
	I64
	I32
	I16
	I8
	U64
	U32
	U16
	U8
	Bool
	F8E4M3
	F8E5M2
)

var dtypeInfo = [...]struct {
	name string
	size int
}{
	DTypeInvalid: {"INVALID", 0},
	F32:          {"F32", 4},
	F16:          {"F16", 2},
	BF16:         {"BF16", 2},
	F64:          {"F64", 8},
	I64:          {"I64", 8},
	I32:          {"I32", 4},
	I16:          {"I16", 2},
	I8:           {"I8", 1},
	U64:          {"U64", 8},
	U32:          {"U32", 4},
	U16:          {"U16", 2},
	U8:           {"U8", 1},
	Bool:         {"BOOL", 1},
	F8E4M3:       {"F8_E4M3", 1},
	F8E5M2:       {"F8_E5M2", 1},
}

// ParseDType maps a header dtype name ("F32", "BF16", ...) to a DType.
func ParseDType(s string) (DType, error) {
	for i := F32; int(i) < len(dtypeInfo); i++ {
		if dtypeInfo[i].name == s {
			return i, nil
		}
	}
	return DTypeInvalid, fmt.Errorf("%w: %q", ErrUnknownDType, s)
}

// String is the dtype's name as written in a safetensors header.
func (d DType) String() string {
	if int(d) < len(dtypeInfo) {
		return dtypeInfo[d].name
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Size is the size of one element in bytes (0 for an invalid dtype).
func (d DType) Size() int {
	if int(d) < len(dtypeInfo) {
		return dtypeInfo[d].size
	}
	return 0
}

// Float reports whether values of this dtype convert to float32 (F32, F16,
// BF16).
func (d DType) Float() bool { return d == F32 || d == F16 || d == BF16 }

// Float16ToFloat32 converts an IEEE 754 half-precision value to float32
// exactly, including subnormals, infinities and NaN payloads.
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf or nan: keep the payload.
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0: // normal: rebias 15 -> 127.
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0: // signed zero.
		return math.Float32frombits(sign)
	}
	// Subnormal half: mant * 2^-24, a normal float32. Shift the mantissa
	// up until its leading one reaches the implicit bit.
	e := uint32(113) // exponent of 2^-14, biased by 127
	for mant&0x400 == 0 {
		mant <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
}

// BFloat16ToFloat32 converts a bfloat16 value to float32 exactly.
func BFloat16ToFloat32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// convert decodes little-endian src of dtype d into dst; len(dst) elements.
func convert(dst []float32, src []byte, d DType) {
	switch d {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = Float16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = BFloat16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	}
}
