//go:build !cuda

package cuda

import (
	"errors"
	"testing"
)

func TestNotBuilt(t *testing.T) {
	if _, err := OpenDevice(0); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("OpenDevice: %v, want ErrNotBuilt", err)
	}
	if _, err := New(nil, nil, Options{}); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("New: %v, want ErrNotBuilt", err)
	}
}
