//go:build cgo

package ucx

import (
	"os"
	"testing"

	"disagg/transceiver"
)

func TestProbe(t *testing.T) {
	requireUCX(t)
	caps, err := Probe(os.Getenv(transceiver.EnvUCXLib))
	if err != nil {
		t.Fatal(err)
	}
	if caps.Version == "" || len(caps.MemoryTypes) == 0 || caps.MemoryTypes[0] != "host" {
		t.Fatalf("implausible capabilities %+v", caps)
	}
	t.Logf("%+v", caps)
}
