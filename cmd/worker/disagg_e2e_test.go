package main

// End-to-end tests of a disaggregated deployment made of real processes on
// port 0: two context workers, one generation worker and the proxy, all
// started from this command's binary. They check that answers through the
// proxy are token-exact with Hugging Face's greedy references (UCX and
// NIXL transceivers), and that failures (a worker killed, frozen or
// stalled, a client going away) end promptly with a full answer or an
// OpenAI-shaped error, and give every KV block back.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const e2eSecret = "e2e-test-cluster-secret"

var (
	proxyAddrRE  = regexp.MustCompile(`msg="proxy listening" addr=(\S+)`)
	proxyReadyRE = regexp.MustCompile(`msg="proxy ready"`)
)

// clusterOpts vary the deployment; the zero value is configs/ as shipped.
type clusterOpts struct {
	// backend replaces cache_transceiver_config.backend ("": as shipped).
	backend string
	// transferMS and senderMS set kv_transfer_timeout_ms and
	// kv_transfer_sender_future_timeout_ms (0: as shipped).
	transferMS, senderMS int
	// requestTimeout is the proxy's request_timeout in seconds (0: 60).
	requestTimeout int
	// model is a checkpoint folder under testdata/models ("": the
	// embedded tiny-llama2).
	model string
}

type cluster struct {
	ctx   []*proc
	gen   *proc
	proxy *proc
	start map[*proc]int // each worker's free KV blocks once started
	dead  map[*proc]bool
}

func (c *cluster) workers() []*proc { return append(append([]*proc{}, c.ctx...), c.gen) }

// workerConfig is configs/<name> with opts applied, written to dir when
// anything changes.
func workerConfig(t *testing.T, dir, name string, o clusterOpts) string {
	t.Helper()
	src := filepath.Join("..", "..", "configs", name)
	if o.backend == "" && o.transferMS == 0 && o.senderMS == 0 {
		return src
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	replace := func(old, new string) {
		if !strings.Contains(s, old) {
			t.Fatalf("%s lacks %q", src, old)
		}
		s = strings.Replace(s, old, new, 1)
	}
	if o.backend != "" {
		replace("  backend: DEFAULT\n", "  backend: "+o.backend+"\n")
	}
	if o.transferMS != 0 {
		replace("  kv_transfer_timeout_ms: 30000\n", fmt.Sprintf("  kv_transfer_timeout_ms: %d\n", o.transferMS))
	}
	if o.senderMS != 0 {
		s = strings.Replace(s, "cache_transceiver_config:\n",
			fmt.Sprintf("cache_transceiver_config:\n  kv_transfer_sender_future_timeout_ms: %d\n", o.senderMS), 1)
	}
	out := filepath.Join(dir, name)
	if err := os.WriteFile(out, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// startCluster starts two context workers, one generation worker, and the
// proxy in front of them, all on port 0.
func startCluster(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	dir := t.TempDir()
	env := []string{"WORKER_CLUSTER_SECRET=" + e2eSecret}
	worker := func(role, cfg string) *proc {
		args := []string{"--host", "127.0.0.1", "--port", "0", "--role", role, "--config", cfg}
		if o.model != "" {
			args = append(args, "--model", filepath.Join("..", "..", "testdata", "models", o.model))
		}
		return startProcess(t, workerExe, env, listenRE, nil, args...)
	}
	ctxCfg := workerConfig(t, dir, "ctx_config.yaml", o)
	genCfg := workerConfig(t, dir, "gen_config.yaml", o)
	c := &cluster{start: map[*proc]int{}, dead: map[*proc]bool{}}
	// One at a time: the machine may have few cores, and each loads the model.
	c.ctx = []*proc{worker("context", ctxCfg), worker("context", ctxCfg)}
	c.gen = worker("generation", genCfg)

	rt := o.requestTimeout
	if rt == 0 {
		rt = 60
	}
	hostPort := func(p *proc) string { return strings.TrimPrefix(p.URL, "http://") }
	proxyCfg := fmt.Sprintf(`hostname: localhost
port: 8000
max_retries: 1
request_timeout: %d
server_start_timeout: 60
health_check_interval_sec: 0.2
context_servers:
  num_instances: 2
  urls:
    - %q
    - %q
  router:
    type: round_robin
generation_servers:
  num_instances: 1
  urls:
    - %q
`, rt, hostPort(c.ctx[0]), hostPort(c.ctx[1]), hostPort(c.gen))
	cfgFile := filepath.Join(dir, "disagg_config.yaml")
	if err := os.WriteFile(cfgFile, []byte(proxyCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.proxy = startProcess(t, workerExe, nil, proxyAddrRE, proxyReadyRE,
		"disaggregated", "-c", cfgFile, "--port", "0", "--host", "127.0.0.1")
	for _, w := range c.workers() {
		c.start[w] = freeBlocks(t, w)
	}
	return c
}

// freeBlocks reads worker_kv_blocks_free from a worker's /metrics.
func freeBlocks(t *testing.T, w *proc) int {
	t.Helper()
	n, err := metric(w.URL, "worker_kv_blocks_free")
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// metric reads one unlabelled sample from a /metrics page.
func metric(base, name string) (float64, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s/metrics has no %s", base, name)
}

// waitBlocksFree waits (bounded) until every live worker's free KV blocks
// are back at their start value.
func (c *cluster) waitBlocksFree(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var bad []string
		for i, w := range c.workers() {
			if c.dead[w] {
				continue
			}
			n, err := metric(w.URL, "worker_kv_blocks_free")
			if err != nil || int(n) != c.start[w] {
				bad = append(bad, fmt.Sprintf("worker %d (%s): %v free, %d at start (%v)", i, w.URL, n, c.start[w], err))
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("KV blocks not back within %v: %s", within, strings.Join(bad, "; "))
		}
		time.Sleep(50 * time.Millisecond) // polling a gauge: no event to wait on
	}
}

// signal sends sig to w and waits (bounded) until the kernel shows the
// process in the state that follows: Z (dead, not reaped) for SIGKILL, T
// (stopped) for SIGSTOP, anything else for SIGCONT.
func (c *cluster) signal(t *testing.T, w *proc, sig syscall.Signal) {
	t.Helper()
	if err := w.Cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if sig == syscall.SIGKILL {
		c.dead[w] = true
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := procState(w.Cmd.Process.Pid)
		switch {
		case sig == syscall.SIGKILL && (st == "Z" || st == "X" || st == ""),
			sig == syscall.SIGSTOP && (st == "T" || st == "t"),
			sig == syscall.SIGCONT && st != "T" && st != "t":
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d in state %q 10s after %v", w.Cmd.Process.Pid, st, sig)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// procState is the state letter of /proc/PID/stat ("" when gone).
func procState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

type greedyCase struct {
	Prompt     string  `json:"prompt"`
	PromptIDs  []int32 `json:"prompt_ids"`
	OutputIDs  []int32 `json:"output_ids"`
	OutputText string  `json:"output_text"`
}

func loadGreedyCases(t *testing.T, model string) []greedyCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "reference", model, "greedy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var refs []greedyCase
	if err := json.Unmarshal(data, &refs); err != nil {
		t.Fatal(err)
	}
	if len(refs) == 0 {
		t.Fatal("greedy.json has no cases")
	}
	return refs
}

// answer is what a client got: a JSON body or a stream's events.
type answer struct {
	status  int
	body    []byte   // non-streamed body, or the whole stream
	text    string   // the completion's text (joined across events)
	tokens  int      // usage.completion_tokens (non-streamed)
	finish  string   // the last finish_reason seen
	errs    []string // error objects: the body's, or error events
	done    bool     // the stream ended with data: [DONE]
	elapsed time.Duration
}

type openAIError struct {
	Error *struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    any     `json:"code"`
	} `json:"error"`
}

// checkOpenAIError reports whether data is {"error": {"message", "type", ...}}.
func checkOpenAIError(data []byte) (string, bool) {
	var e openAIError
	if err := json.Unmarshal(data, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
		return "", false
	}
	return e.Error.Message, true
}

type choice struct {
	Text         string  `json:"text"`
	FinishReason *string `json:"finish_reason"`
	Delta        struct {
		Content string `json:"content"`
	} `json:"delta"`
	Message struct {
		Content string `json:"content"`
	} `json:"message"`
}

// do sends body to base+path and reads the whole answer. onEvent, when
// set, is called with each stream event's index before the next is read.
func do(ctx context.Context, base, path string, body any, onEvent func(i int)) (*answer, error) {
	data, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	a := &answer{status: resp.StatusCode}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		if a.body, err = io.ReadAll(resp.Body); err != nil {
			return a, err
		}
		a.elapsed = time.Since(start)
		if msg, ok := checkOpenAIError(a.body); ok {
			a.errs = append(a.errs, msg)
			return a, nil
		}
		var r struct {
			Choices []choice `json:"choices"`
			Usage   struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(a.body, &r); err != nil {
			return a, fmt.Errorf("answer %d %q: %w", a.status, a.body, err)
		}
		for _, c := range r.Choices {
			a.text += c.Text + c.Message.Content
			if c.FinishReason != nil {
				a.finish = *c.FinishReason
			}
		}
		a.tokens = r.Usage.CompletionTokens
		return a, nil
	}
	var all bytes.Buffer
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 4<<20)
	events := 0
	for s.Scan() {
		line := s.Text()
		all.WriteString(line + "\n")
		ev, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue
		}
		ev = strings.TrimSpace(ev)
		if ev == "[DONE]" {
			a.done = true
			continue
		}
		if a.done {
			return a, fmt.Errorf("event after [DONE]: %s", ev)
		}
		if msg, ok := checkOpenAIError([]byte(ev)); ok {
			a.errs = append(a.errs, msg)
		} else {
			var ch struct {
				Choices []choice `json:"choices"`
			}
			if err := json.Unmarshal([]byte(ev), &ch); err != nil {
				return a, fmt.Errorf("stream event %q: %w", ev, err)
			}
			for _, c := range ch.Choices {
				a.text += c.Text + c.Delta.Content
				if c.FinishReason != nil {
					a.finish = *c.FinishReason
				}
			}
		}
		if onEvent != nil {
			onEvent(events)
		}
		events++
	}
	a.body = all.Bytes()
	a.elapsed = time.Since(start)
	return a, s.Err()
}

func completionReq(prompt any, maxTokens int, stream bool) map[string]any {
	return map[string]any{"model": "tiny-llama2", "prompt": prompt, "max_tokens": maxTokens, "temperature": 0,
		"ignore_eos": true, "skip_special_tokens": false, "stream": stream}
}

// TestDisaggE2EGreedy sends every greedy.json prompt through the proxy, as
// token ids and as text, streamed and not, all at once, and checks the
// answers against Hugging Face's: for both fixtures, over the UCX and the
// NIXL transceiver.
func TestDisaggE2EGreedy(t *testing.T) {
	for _, tc := range []struct{ model, backend string }{
		{"tiny-llama2", "UCX"}, {"tiny-llama2", "NIXL"}, {"tiny-llama3", "UCX"}, {"tiny-llama3", "NIXL"},
	} {
		refs := loadGreedyCases(t, tc.model)
		model := tc.model
		if model == "tiny-llama2" {
			model = "" // the embedded default
		}
		t.Run(tc.model+"/"+tc.backend, func(t *testing.T) {
			c := startCluster(t, clusterOpts{backend: tc.backend, model: model})
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			for i, ref := range refs {
				for _, prompt := range []any{ref.PromptIDs, ref.Prompt} {
					for _, stream := range []bool{false, true} {
						name := fmt.Sprintf("case %d (%T prompt, stream %v)", i, prompt, stream)
						wg.Add(1)
						go func() {
							defer wg.Done()
							req := completionReq(prompt, len(ref.OutputIDs), stream)
							req["model"] = tc.model
							a, err := do(ctx, c.proxy.URL, "/v1/completions", req, nil)
							if err != nil {
								t.Errorf("%s: %v", name, err)
								return
							}
							if s, ok := prompt.(string); ok && s == "" {
								// An empty text prompt is a 400, in the OpenAI shape.
								if a.status != http.StatusBadRequest || len(a.errs) != 1 {
									t.Errorf("%s: %d %s, want a 400 error", name, a.status, a.body)
								}
								return
							}
							if a.status != 200 || len(a.errs) != 0 || a.text != ref.OutputText || a.finish != "length" ||
								(!stream && a.tokens != len(ref.OutputIDs)) || (stream && !a.done) {
								t.Errorf("%s: status %d finish %q tokens %d done %v errors %q\n got %q\nwant %q",
									name, a.status, a.finish, a.tokens, a.done, a.errs, a.text, ref.OutputText)
							}
						}()
					}
				}
			}
			wg.Wait()
			c.waitBlocksFree(t, 20*time.Second)
			moved, err := metric(c.gen.URL, "worker_kv_transfer_bytes_total")
			if err != nil || moved == 0 {
				t.Errorf("the generation worker moved %v KV bytes (%v)", moved, err)
			}
		})
	}
}

// contextOnly sends a context_only request straight to a context worker
// and returns the generation_only request the proxy would make of it.
func contextOnly(t *testing.T, w *proc, prompt []int32, maxTokens int) map[string]any {
	t.Helper()
	req := completionReq(prompt, maxTokens, false)
	req["disaggregated_params"] = map[string]any{"request_type": "context_only", "disagg_request_id": 7}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := do(ctx, w.URL, "/v1/completions", req, nil)
	if err != nil || a.status != 200 {
		t.Fatalf("context_only: %v %+v", err, a)
	}
	var r struct {
		Choices []struct {
			DisaggregatedParams map[string]any `json:"disaggregated_params"`
		} `json:"choices"`
		PromptTokenIDs []int32 `json:"prompt_token_ids"`
	}
	if err := json.Unmarshal(a.body, &r); err != nil || len(r.Choices) != 1 || r.Choices[0].DisaggregatedParams == nil {
		t.Fatalf("context reply %s: %v", a.body, err)
	}
	p := r.Choices[0].DisaggregatedParams
	p["request_type"] = "generation_only"
	gen := completionReq(r.PromptTokenIDs, maxTokens, false)
	gen["disaggregated_params"] = p
	return gen
}

// failureOpts are short transfer deadlines, so that failures end quickly.
func failureOpts(backend string) clusterOpts {
	return clusterOpts{backend: backend, transferMS: 1500, senderMS: 1500, requestTimeout: 30}
}

// eachBackend runs f as a subtest for each KV transceiver backend.
func eachBackend(t *testing.T, f func(t *testing.T, backend string)) {
	for _, b := range []string{"UCX", "NIXL"} {
		t.Run(b, func(t *testing.T) { f(t, b) })
	}
}

// The bound on a failure's answer: the transfer deadlines plus slack for a
// loaded machine.
const failBound = 15 * time.Second

// wantError checks that a is a prompt OpenAI-shaped error answer.
func wantError(t *testing.T, what string, a *answer, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if a.status < 400 || len(a.errs) != 1 || a.elapsed > failBound {
		t.Fatalf("%s: status %d after %v, want an OpenAI error within %v: %s", what, a.status, a.elapsed, failBound, a.body)
	}
	t.Logf("%s: %d after %v: %s", what, a.status, a.elapsed.Round(time.Millisecond), a.errs[0])
}

// checkServes sends a few requests through the proxy, streamed and not,
// and checks the answers against the reference.
func checkServes(t *testing.T, c *cluster, n int) {
	t.Helper()
	refs := loadGreedyCases(t, "tiny-llama2")
	cases := []int{1, 2, 3, 4, 5, 6, 7} // not 0: its text prompt is empty
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i < n; i++ {
		ref := refs[cases[i%len(cases)]]
		a, err := do(ctx, c.proxy.URL, "/v1/completions", completionReq(ref.PromptIDs, len(ref.OutputIDs), i%2 == 1), nil)
		if err != nil {
			t.Fatalf("request %d after the failure: %v", i, err)
		}
		if a.status != 200 || a.text != ref.OutputText || len(a.errs) != 0 {
			t.Fatalf("request %d after the failure: status %d, errors %q, text %q, want %q", i, a.status, a.errs, a.text, ref.OutputText)
		}
	}
}

// TestDisaggE2EContextKilledBeforeTransfer kills a context worker between
// its reply and the generation worker's pull: the generation request fails
// promptly with an OpenAI error and frees its blocks, and the proxy routes
// around the dead worker.
func TestDisaggE2EContextKilledBeforeTransfer(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		c := startCluster(t, failureOpts(backend))
		ref := loadGreedyCases(t, "tiny-llama2")[7]
		gen := contextOnly(t, c.ctx[0], ref.PromptIDs, 32)
		c.signal(t, c.ctx[0], syscall.SIGKILL)

		ctx, cancel := context.WithTimeout(context.Background(), 2*failBound)
		defer cancel()
		a, err := do(ctx, c.gen.URL, "/v1/completions", gen, nil)
		wantError(t, "generation_only from a dead context worker", a, err)
		c.waitBlocksFree(t, failBound)

		checkServes(t, c, 4) // round robin: some go to the dead worker first and are retried
		c.waitBlocksFree(t, failBound)
	})
}

// TestDisaggE2EGenerationKilledMidStream kills the generation worker while
// clients' streams are running: every stream ends promptly with [DONE],
// either whole or with an error event, and the context workers' blocks
// come back.
func TestDisaggE2EGenerationKilledMidStream(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		ref := loadGreedyCases(t, "tiny-llama2")[3] // 18 prompt tokens: 480 more fit in 512
		const maxTokens = 480

		// Killed while it holds the request (frozen), after the client got
		// the first token from the context worker: deterministic.
		t.Run("first-token", func(t *testing.T) {
			c := startCluster(t, failureOpts(backend))
			c.signal(t, c.gen, syscall.SIGSTOP)
			ctx, cancel := context.WithTimeout(context.Background(), 2*failBound)
			defer cancel()
			a, err := do(ctx, c.proxy.URL, "/v1/completions", completionReq(ref.PromptIDs, maxTokens, true), func(i int) {
				if i == 0 {
					c.signal(t, c.gen, syscall.SIGKILL)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if a.status != 200 || len(a.errs) != 1 || !a.done || a.elapsed > failBound || !strings.HasPrefix(ref.OutputText, a.text) || a.text == "" {
				t.Fatalf("stream: status %d after %v, errors %q, done %v, text %q:\n%s", a.status, a.elapsed, a.errs, a.done, a.text, a.body)
			}
			t.Logf("stream ended after %v with %q", a.elapsed.Round(time.Millisecond), a.errs[0])
			c.waitBlocksFree(t, failBound)
		})

		// Killed while decoding several streams: the kill comes after the
		// third event of one of them. One request per context worker goes
		// first, so every connection between the workers is up before the
		// kill: a kill during a connection's setup is another case, and
		// with UCX 1.13 (Debian's) it aborts the context worker inside UCX
		// (see the warning in transceiver/ucx.New).
		t.Run("decoding", func(t *testing.T) {
			c := startCluster(t, failureOpts(backend))
			const streams = 8
			ctx, cancel := context.WithTimeout(context.Background(), 2*failBound)
			defer cancel()
			for range c.ctx {
				a, err := do(ctx, c.proxy.URL, "/v1/completions", completionReq(ref.PromptIDs, 2, false), nil)
				if err != nil || a.status != 200 || len(a.errs) > 0 {
					t.Fatalf("warm-up request: %v (answer %+v)", err, a)
				}
			}
			answers := make([]*answer, streams)
			errs := make([]error, streams)
			killed := make(chan struct{})
			var once sync.Once
			var wg sync.WaitGroup
			for k := 0; k < streams; k++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					answers[k], errs[k] = do(ctx, c.proxy.URL, "/v1/completions", completionReq(ref.PromptIDs, maxTokens, true), func(i int) {
						if i == 2 {
							once.Do(func() {
								_ = c.gen.Cmd.Process.Signal(syscall.SIGKILL)
								close(killed)
							})
						}
					})
				}()
			}
			wg.Wait()
			select {
			case <-killed:
			default:
				t.Fatal("no stream got three events")
			}
			c.signal(t, c.gen, syscall.SIGKILL) // waits until it is dead
			cut := 0
			for k, a := range answers {
				switch {
				case errs[k] != nil:
					t.Errorf("stream %d: %v", k, errs[k])
				case a.status != 200 || !a.done || a.elapsed > failBound:
					t.Errorf("stream %d: status %d after %v, done %v:\n%s", k, a.status, a.elapsed, a.done, a.body)
				case len(a.errs) == 1:
					cut++
				case len(a.errs) == 0 && a.finish == "length" && strings.HasPrefix(a.text, ref.OutputText):
				default:
					t.Errorf("stream %d: errors %q, finish %q, text %q", k, a.errs, a.finish, a.text)
				}
			}
			t.Logf("%d of %d streams were cut by the kill", cut, streams)
			c.waitBlocksFree(t, failBound)
		})
	})
}

// TestDisaggE2ETransferStall freezes the context worker between its reply
// and the generation request: the generation worker answers within
// kv_transfer_timeout_ms plus slack (an error, or the whole answer where
// the transport reads the frozen process's memory without it), and once the
// context worker resumes every block comes back.
func TestDisaggE2ETransferStall(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		c := startCluster(t, failureOpts(backend))
		ref := loadGreedyCases(t, "tiny-llama2")[6]
		gen := contextOnly(t, c.ctx[0], ref.PromptIDs, 32)
		c.signal(t, c.ctx[0], syscall.SIGSTOP)
		ctx, cancel := context.WithTimeout(context.Background(), 2*failBound)
		defer cancel()
		a, err := do(ctx, c.gen.URL, "/v1/completions", gen, nil)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case a.elapsed > failBound:
			t.Fatalf("generation_only answered after %v: %d %s", a.elapsed, a.status, a.body)
		case a.status == 200:
			if a.text != ref.OutputText {
				t.Fatalf("generation_only: %q, want %q", a.text, ref.OutputText)
			}
			t.Logf("the transfer did not need the frozen context worker (answered after %v)", a.elapsed)
		default:
			wantError(t, "generation_only from a frozen context worker", a, nil)
		}
		c.signal(t, c.ctx[0], syscall.SIGCONT)
		c.waitBlocksFree(t, failBound)
		checkServes(t, c, 4)
		c.waitBlocksFree(t, failBound)
	})
}

// TestDisaggE2EClientDisconnect has the client go away during each phase;
// every block comes back and the deployment keeps serving.
func TestDisaggE2EClientDisconnect(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		c := startCluster(t, failureOpts(backend))
		ref := loadGreedyCases(t, "tiny-llama2")[7]

		t.Run("prefill", func(t *testing.T) {
			// Both context workers frozen: the proxy's context call waits in
			// their sockets while the client goes away.
			for _, w := range c.ctx {
				c.signal(t, w, syscall.SIGSTOP)
			}
			before, err := metric(c.proxy.URL, "disagg_proxy_requests_in_flight")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				_, err := do(ctx, c.proxy.URL, "/v1/completions", completionReq(ref.PromptIDs, 32, false), nil)
				errc <- err
			}()
			waitMetric(t, c.proxy.URL, "disagg_proxy_requests_in_flight", before+1)
			cancel()
			if err := <-errc; err == nil {
				t.Error("the cancelled request got an answer")
			}
			for _, w := range c.ctx {
				c.signal(t, w, syscall.SIGCONT)
			}
			c.waitBlocksFree(t, failBound)
		})

		t.Run("decode", func(t *testing.T) {
			// The tiny model decodes fast: many long streams at once, each
			// dropped after its second event (the first from the generation
			// worker), so that most are dropped mid-decode.
			const streams, maxTokens = 16, 480
			short := loadGreedyCases(t, "tiny-llama2")[3] // 18 prompt tokens: 480 more fit in 512
			before, err := metric(c.gen.URL, "worker_generation_tokens_total")
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for i := 0; i < streams; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), failBound)
					defer cancel()
					dropped := false
					a, _ := do(ctx, c.proxy.URL, "/v1/completions", completionReq(short.PromptIDs, maxTokens, true), func(i int) {
						if i == 1 {
							dropped = true
							cancel()
						}
					})
					if !dropped || len(a.errs) != 0 {
						t.Errorf("a stream ended before its second event: %s", a.body)
					}
				}()
			}
			wg.Wait()
			c.waitBlocksFree(t, failBound)
			after, err := metric(c.gen.URL, "worker_generation_tokens_total")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("the generation worker decoded %v of the %d tokens asked for", after-before, streams*maxTokens)
		})

		t.Run("transfer", func(t *testing.T) {
			gen := contextOnly(t, c.ctx[0], ref.PromptIDs, 32)
			c.signal(t, c.ctx[0], syscall.SIGSTOP)
			before, err := metric(c.gen.URL, "worker_http_requests_in_flight")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				_, err := do(ctx, c.gen.URL, "/v1/completions", gen, nil)
				errc <- err
			}()
			waitMetric(t, c.gen.URL, "worker_http_requests_in_flight", before+1)
			cancel()
			if err := <-errc; err == nil {
				// The transport read the frozen process's memory without it
				// (an endpoint made earlier, over shared memory).
				t.Log("the transfer finished before the client went away")
			}
			c.signal(t, c.ctx[0], syscall.SIGCONT)
			c.waitBlocksFree(t, failBound)
		})

		checkServes(t, c, 4)
		c.waitBlocksFree(t, failBound)
	})
}

// waitMetric waits (bounded) until a gauge reaches at least want. The
// gauge counts the /metrics request itself where the server counts every
// request, which want allows for by being relative to a reading.
func waitMetric(t *testing.T, base, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := metric(base, name)
		if err == nil && v >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s at %s: %v (%v), want %v within 10s", name, base, v, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDisaggE2EFrozenWorker freezes workers longer than the timeouts, then
// resumes them: requests meanwhile fail promptly, and afterwards the
// workers serve again with every block back.
func TestDisaggE2EFrozenWorker(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		o := failureOpts(backend)
		o.requestTimeout = 3
		c := startCluster(t, o)
		ref := loadGreedyCases(t, "tiny-llama2")[5]

		t.Run("generation", func(t *testing.T) {
			c.signal(t, c.gen, syscall.SIGSTOP)
			ctx, cancel := context.WithTimeout(context.Background(), 2*failBound)
			defer cancel()
			a, err := do(ctx, c.proxy.URL, "/v1/completions", completionReq(ref.PromptIDs, 32, false), nil)
			wantError(t, "request while the generation worker is frozen", a, err)
			c.signal(t, c.gen, syscall.SIGCONT)
			c.waitBlocksFree(t, failBound)
			checkServes(t, c, 2)
		})

		t.Run("context", func(t *testing.T) {
			gen := contextOnly(t, c.ctx[0], ref.PromptIDs, 32)
			c.signal(t, c.ctx[0], syscall.SIGSTOP)
			// Past the parked KV's deadline (sender + transfer timeouts).
			time.Sleep(time.Duration(o.senderMS+o.transferMS)*time.Millisecond + 500*time.Millisecond)
			c.signal(t, c.ctx[0], syscall.SIGCONT)
			c.waitBlocksFree(t, failBound)
			ctx, cancel := context.WithTimeout(context.Background(), 2*failBound)
			defer cancel()
			a, err := do(ctx, c.gen.URL, "/v1/completions", gen, nil)
			wantError(t, "generation_only with an expired state", a, err)
			checkServes(t, c, 4)
			c.waitBlocksFree(t, failBound)
		})
	})
}

// TestDisaggLaunchDryRun checks the commands scripts/launch.sh prints for
// configs/disagg_config.yaml, without GPUs and with four (a stand-in
// nvidia-smi on PATH).
func TestDisaggLaunchDryRun(t *testing.T) {
	fakeBin := t.TempDir()
	smi := "#!/bin/sh\nfor i in 0 1 2 3; do echo \"GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)\"; done\n"
	if err := os.WriteFile(filepath.Join(fakeBin, "nvidia-smi"), []byte(smi), 0o755); err != nil {
		t.Fatal(err)
	}
	noGPU := t.TempDir() // a PATH with bash and friends but no nvidia-smi
	for _, tool := range []string{"bash", "awk", "grep", "sed", "od", "tr", "env", "dirname"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(noGPU, tool)); err != nil {
			t.Fatal(err)
		}
	}
	const nvls = "env NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 "
	for _, tc := range []struct {
		path string
		want []string
	}{
		{noGPU, []string{
			nvls + "bin/worker --role context --config configs/ctx_config.yaml --host localhost --port 8001\n",
			nvls + "bin/worker --role context --config configs/ctx_config.yaml --host localhost --port 8002\n",
			nvls + "bin/worker --role generation --config configs/gen_config.yaml --host localhost --port 8003\n",
			nvls + "bin/worker disaggregated -c configs/disagg_config.yaml\n",
		}},
		{fakeBin + string(os.PathListSeparator) + noGPU, []string{
			nvls + "CUDA_VISIBLE_DEVICES=0 bin/worker --role context --config configs/ctx_config.yaml --host localhost --port 8001\n",
			nvls + "CUDA_VISIBLE_DEVICES=1 bin/worker --role context --config configs/ctx_config.yaml --host localhost --port 8002\n",
			nvls + "CUDA_VISIBLE_DEVICES=2 bin/worker --role generation --config configs/gen_config.yaml --host localhost --port 8003\n",
			nvls + "bin/worker disaggregated -c configs/disagg_config.yaml\n",
		}},
	} {
		cmd := exec.Command(filepath.Join(noGPU, "bash"), filepath.Join("..", "..", "scripts", "launch.sh"), "--dry-run")
		cmd.Env = []string{"PATH=" + tc.path}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("launch.sh --dry-run: %v\n%s", err, out)
		}
		for _, want := range tc.want {
			if !strings.Contains(string(out), want) {
				t.Errorf("launch.sh --dry-run (PATH=%s) output lacks %q:\n%s", tc.path, want, out)
			}
		}
	}
}

// TestDisaggClientScript runs scripts/disagg_client.py against a
// deployment, reading the proxy's address from a disagg_config.yaml.
func TestDisaggClientScript(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed for scripts/disagg_client.py:", err)
	}
	c := startCluster(t, clusterOpts{})
	host, port, ok := strings.Cut(strings.TrimPrefix(c.proxy.URL, "http://"), ":")
	if !ok {
		t.Fatal(c.proxy.URL)
	}
	cfg := filepath.Join(t.TempDir(), "disagg_config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("hostname: %s   # the proxy\nport: %s\ncontext_servers:\n  urls:\n    - \"localhost:1\"\n", host, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-e", "completions"},
		{"-e", "chat", "--streaming"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, python, append([]string{filepath.Join("..", "..", "scripts", "disagg_client.py"),
			"-c", cfg, "-p", filepath.Join("..", "..", "scripts", "prompts.json"), "--max-tokens", "8"}, args...)...)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("disagg_client.py %v: %v\n%s", args, err, out)
		}
		var prompts []string
		data, err := os.ReadFile(filepath.Join("..", "..", "scripts", "prompts.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, &prompts); err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(string(out), "\nAnswer "); got != len(prompts) || strings.Contains(string(out), "Error ") {
			t.Errorf("disagg_client.py %v: %d answers for %d prompts:\n%s", args, got, len(prompts), out)
		}
	}
	c.waitBlocksFree(t, 20*time.Second)
}
