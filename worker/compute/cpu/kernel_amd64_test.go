package cpu

import "testing"

// TestMatmulGeneric runs TestMatmul on the portable kernels as well.
func TestMatmulGeneric(t *testing.T) {
	if !useAVX2 {
		t.Skip("AVX2 kernels not in use: TestMatmul already covers the portable ones")
	}
	useAVX2 = false
	defer func() { useAVX2 = true }()
	TestMatmul(t)
}
