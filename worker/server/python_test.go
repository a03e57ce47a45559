package server

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// runPythonSDK runs tests/python/test_openai_sdk.py with the official
// Python SDK against the server at baseURL.
func runPythonSDK(t *testing.T, baseURL, apiKey, model string) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	python := filepath.Join(root, ".venv", "bin", "python")
	if _, err := os.Stat(python); err != nil {
		t.Skipf("no %s: run `make venv`", python)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
		filepath.Join(root, "tests", "python", "test_openai_sdk.py"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "DISAGG_BASE_URL="+baseURL, "DISAGG_API_KEY="+apiKey, "DISAGG_MODEL="+model)
	out, err := cmd.CombinedOutput()
	t.Logf("pytest:\n%s", out)
	if err != nil {
		t.Fatalf("pytest failed: %v", err)
	}
}

// TestPythonOpenAISDK runs the Python SDK suite against the real engine
// serving the tiny-llama2 fixture.
func TestPythonOpenAISDK(t *testing.T) {
	rs := newRealServer(t, func(o *Options) { o.APIKey = "py-key" })
	runPythonSDK(t, rs.ts.URL, "py-key", "tiny-llama2")
	rs.waitBlocksFree(t)
}
