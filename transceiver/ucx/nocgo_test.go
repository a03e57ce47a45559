//go:build !cgo

package ucx

import (
	"errors"
	"testing"

	"disagg/transceiver"
)

func TestNoCgoSaysWhy(t *testing.T) {
	if _, err := transceiver.New("UCX", transceiver.Config{}); !errors.Is(err, transceiver.ErrNotLoaded) {
		t.Fatalf("New without cgo: %v", err)
	}
}
