package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var workerExe string

// TestMain compiles this command once for every test here.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "worker-test")
	if err != nil {
		panic(err)
	}
	workerExe = filepath.Join(dir, "worker")
	if out, err := exec.Command("go", "build", "-o", workerExe, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildWorker(t *testing.T) string { return workerExe }

var listenRE = regexp.MustCompile(`msg=ready addr=(\S+)`)

// startWorker runs the real binary on port 0 and waits until it is ready.
func startWorker(t *testing.T, exe string, args ...string) string {
	t.Helper()
	return startProcess(t, exe, nil, listenRE, nil, append([]string{"--host", "127.0.0.1", "--port", "0"}, args...)...).URL
}

// proc is a process started by startProcess.
type proc struct {
	URL string
	Cmd *exec.Cmd
}

// crashRE matches what a dying process prints first: Go fatal errors and
// panics, signals, and native assertion failures.
var crashRE = regexp.MustCompile(`^(panic:|fatal error:|SIG[A-Z]+:|PC=|goroutine \d+ \[running\]|.*Assertion|.*(ucs|uct|ucp)[a-z_]*\.c:\d+ .*Fatal)`)

// startProcess runs exe with args (and env added to the environment) and
// waits until its stderr has matched addrRE (whose first group is the
// listening address) and then readyRE (nil: addrRE is enough). Cleanup
// resumes it if stopped, interrupts it, and kills it after 10 s.
func startProcess(t *testing.T, exe string, env []string, addrRE, readyRE *regexp.Regexp, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, exe, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		logMu sync.Mutex
		tail  []string // the last lines of stderr, shown when the test failed
		crash []string // lines that say why a process died (kept apart: a crash dump pushes them out of tail)
	)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cancel()
			t.Errorf("%s did not exit within 10s of SIGINT", filepath.Base(exe))
		}
		cancel()
		if t.Failed() {
			logMu.Lock()
			if len(crash) > 0 {
				t.Logf("%s %v: crash lines of stderr:\n%s", filepath.Base(exe), args, strings.Join(crash, "\n"))
			}
			t.Logf("%s %v: last lines of stderr:\n%s", filepath.Base(exe), args, strings.Join(tail, "\n"))
			logMu.Unlock()
		}
	})
	addr := make(chan string, 1)
	ready := make(chan struct{})
	if readyRE == nil {
		close(ready)
	}
	go func(readyRE *regexp.Regexp) {
		s := bufio.NewScanner(stderr)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		got := ""
		for s.Scan() {
			line := s.Text()
			logMu.Lock()
			if tail = append(tail, line); len(tail) > 40 {
				tail = tail[1:]
			}
			if crashRE.MatchString(line) && len(crash) < 40 {
				crash = append(crash, line)
			}
			logMu.Unlock()
			if got == "" {
				if m := addrRE.FindStringSubmatch(line); m != nil {
					got = m[1]
					addr <- got
				}
			}
			if got != "" && readyRE != nil && readyRE.MatchString(line) {
				close(ready)
				readyRE = nil
			}
		}
		_, _ = io.Copy(io.Discard, stderr) // keep draining after a long line
	}(readyRE)
	deadline := time.After(60 * time.Second)
	var a string
	select {
	case a = <-addr:
	case <-deadline:
		t.Fatalf("%s %v: no address logged within 60s", filepath.Base(exe), args)
	}
	select {
	case <-ready:
	case <-deadline:
		t.Fatalf("%s %v: not ready within 60s", filepath.Base(exe), args)
	}
	return &proc{URL: "http://" + a, Cmd: cmd}
}

func TestWorkerServesEmbeddedModel(t *testing.T) {
	exe := buildWorker(t)
	base := startWorker(t, exe, "--config", "../../configs/ctx_config.yaml")

	resp, err := http.Get(base + "/health")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/health: %v %v", resp, err)
	}
	resp.Body.Close()

	body := `{"model":"tiny-llama2","prompt":"Hello","max_tokens":5,"temperature":0}`
	resp, err = http.Post(base+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Choices []struct {
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("completion: %d %s (%v)", resp.StatusCode, data, err)
	}
	if len(out.Choices) != 1 || out.Choices[0].FinishReason != "length" || out.Usage.CompletionTokens != 5 {
		t.Fatalf("completion: %s", data)
	}
}

func TestBadConfigExitsWithClearError(t *testing.T) {
	exe := buildWorker(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("max_batch_sise: 8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", bad}, `did you mean "max_batch_size"?`},
		{[]string{"--role", "decoder"}, `role: "decoder" is not one of`},
		{[]string{"--model", filepath.Join(dir, "nope")}, "nope"},
		{[]string{"serve-please"}, `unexpected argument "serve-please"`},
		{[]string{"--role", "context", "--disagg_cluster_uri", "etcd://h:2379"}, "etcd:// is not implemented yet; use http://"},
		{[]string{"--disagg_cluster_uri", "http://127.0.0.1:1"}, "disagg_cluster: needs role context or generation"},
	} {
		cmd := exec.Command(exe, append([]string{"--port", "0", "--host", "127.0.0.1"}, tc.args...)...)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("%v: exit 0, want an error", tc.args)
			continue
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: output %q does not contain %q", tc.args, out, tc.want)
		}
	}
}

func TestProbePrintsJSON(t *testing.T) {
	exe := buildWorker(t)
	out, err := exec.Command(exe, "probe").Output()
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("probe output is not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"cpu", "memory", "gpus", "libraries", "build"} {
		if _, ok := r[k]; !ok {
			t.Errorf("probe JSON lacks %q", k)
		}
	}
}
