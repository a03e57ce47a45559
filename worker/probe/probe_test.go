package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"
)

func TestCollect(t *testing.T) {
	r := Collect(context.Background())
	if r.GPUs.Devices == nil || (!r.GPUs.Driver.Found && (len(r.GPUs.Devices) != 0 || r.GPUs.Driver.Error == "")) {
		t.Errorf("GPUs without a driver: %+v (want an empty device list and the loader's error)", r.GPUs)
	}
	if r.CPU.Cores < 1 || r.Memory.TotalBytes <= 0 {
		t.Fatalf("implausible report: %+v", r)
	}
	for _, name := range []string{"ucx", "nixl", "cudart"} {
		l, ok := r.Libraries[name]
		if !ok {
			t.Fatalf("library %s missing from the report", name)
		}
		if !l.Found && (l.Error == "" || l.Install == "") {
			t.Errorf("%s not found but no error or install hint: %+v", name, l)
		}
	}
	var buf bytes.Buffer
	if err := Print(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("Print wrote invalid JSON: %v", err)
	}
}

// TestRunErrors: a failing or misbehaving probe subprocess comes back as an
// error, not a hang or a crash of the caller.
func TestRunErrors(t *testing.T) {
	for _, exe := range []string{"/bin/false", "/bin/echo", "/nonexistent/worker"} {
		if _, err := Run(context.Background(), exe, 5*time.Second); err == nil {
			t.Errorf("Run(%s) succeeded", exe)
		}
	}
}
