//go:build !cgo

package nixl

import (
	"errors"
	"testing"

	"disagg/transceiver"
)

func TestNoCgoSaysWhy(t *testing.T) {
	if _, err := transceiver.New("NIXL", transceiver.Config{}); !errors.Is(err, transceiver.ErrNotLoaded) {
		t.Fatalf("New without cgo: %v", err)
	}
}
