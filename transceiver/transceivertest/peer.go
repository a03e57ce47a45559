package transceivertest

// Two-process tests: the test binary re-executes itself as the peer
// (os.Args[0] with DISAGG_UCX_PEER set), and the two exchange connection
// blobs and commands as lines over the child's stdin and stdout.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"disagg/transceiver"
	"disagg/transceiver/internal/cudamem"
	"disagg/worker/kvcache"
)

const envPeer = "DISAGG_TRANSCEIVER_PEER"

// EnvPeerGPU, set to a device ordinal, runs the peer process of the GPU
// tests on that GPU alone (CUDA_VISIBLE_DEVICES) while this process uses
// device 0: transfers between two GPUs, beside a peer-to-peer copy.
const EnvPeerGPU = "DISAGG_TEST_PEER_GPU"

// peerSpec is what the child needs to build its side, passed as JSON in
// DISAGG_UCX_PEER.
type peerSpec struct {
	Layout    kvcache.Layout
	NumBlocks int
	Seed      uint64
	// Device puts the child's pool in CUDA device memory.
	Device bool
	// Staging and MaxTokens configure the child's Staging wrapper
	// (DISAGG_KV_STAGING, max_tokens_in_buffer).
	Staging   string
	MaxTokens int
}

// Main is the TestMain of a backend's test package: in the child role it
// runs the peer and exits, otherwise it runs the tests.
func (s Suite) Main(m *testing.M) {
	code := 0
	if spec := os.Getenv(envPeer); spec != "" {
		code = s.runPeer(spec)
	} else {
		code = m.Run()
	}
	if s.SkipExitHooks {
		syscall.Exit(code)
	}
	os.Exit(code)
}

func encInts(ids []int32) string {
	b := make([]byte, 0, 4*len(ids))
	for _, id := range ids {
		b = binary.LittleEndian.AppendUint32(b, uint32(id))
	}
	return base64.StdEncoding.EncodeToString(b)
}

func decInts(s string) ([]int32, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b)%4 != 0 {
		return nil, fmt.Errorf("bad id list %q: %v", s, err)
	}
	out := make([]int32, len(b)/4)
	for i := range out {
		out[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

func encPairs(ps []transceiver.BlockPair) string {
	ids := make([]int32, 0, 2*len(ps))
	for _, p := range ps {
		ids = append(ids, p.Local, p.Remote)
	}
	return encInts(ids)
}

func decPairs(s string) ([]transceiver.BlockPair, error) {
	ids, err := decInts(s)
	if err != nil || len(ids)%2 != 0 {
		return nil, fmt.Errorf("bad pair list: %v", err)
	}
	out := make([]transceiver.BlockPair, len(ids)/2)
	for i := range out {
		out[i] = transceiver.BlockPair{Local: ids[2*i], Remote: ids[2*i+1]}
	}
	return out, nil
}

// runPeer is the child's main: build a pool, register it, print its info,
// then serve commands until EXIT or end of input.
func (s Suite) runPeer(specJSON string) int {
	var spec peerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "peer: bad spec:", err)
		return 2
	}
	var pool *kvcache.Pool
	var err error
	if spec.Device {
		var mem *cudamem.Memory
		if mem, err = cudamem.Alloc(spec.NumBlocks * spec.Layout.BlockBytes()); err == nil {
			if pool, err = kvcache.NewPool(spec.Layout, spec.NumBlocks, mem); err != nil {
				_ = mem.Close()
			}
		}
	} else {
		pool, err = kvcache.NewHostPool(spec.Layout, spec.NumBlocks)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 2
	}
	defer func() { _ = pool.Close() }()
	region := transceiver.RegionOf(pool)
	FillRandom(region, spec.Seed)
	cfg := transceiver.Config{Name: fmt.Sprintf("peer-%d", os.Getpid()), KVTransferTimeoutMs: 10000,
		Staging: spec.Staging, MaxTokensInBuffer: spec.MaxTokens}
	inner, err := s.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 2
	}
	a := transceiver.Stage(inner, cfg)
	defer func() { _ = a.Close() }()
	if err := a.Register(region); err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 2
	}
	info, err := a.LocalInfo()
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 2
	}
	out := bufio.NewWriter(os.Stdout)
	reply := func(format string, args ...any) {
		fmt.Fprintf(out, format+"\n", args...)
		_ = out.Flush()
	}
	reply("INFO %s", base64.StdEncoding.EncodeToString(info))
	var peer transceiver.Peer
	pushPeers := map[string]transceiver.Peer{} // by connection info, for SERVE
	defer func() {
		for _, p := range pushPeers {
			_ = p.Close()
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<26)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "CONNECT":
			blob, err := base64.StdEncoding.DecodeString(f[1])
			if err == nil {
				peer, err = a.Connect(context.Background(), blob)
			}
			replyErr(reply, err)
		case "ALLOC": // ALLOC n -> ids
			n, _ := strconv.Atoi(f[1])
			ids, err := pool.Alloc(n)
			if err != nil {
				replyErr(reply, err)
				continue
			}
			reply("OK %s", encInts(ids))
		case "FREECOUNT":
			reply("OK %d", pool.FreeBlocks())
		case "WAIT": // WAIT id timeout_ms ids: await, verify, free the ids
			id, _ := strconv.ParseUint(f[1], 10, 64)
			ms, _ := strconv.Atoi(f[2])
			var ids []int32 // "-": any block, nothing to free
			if f[3] != "-" {
				if ids, err = decInts(f[3]); err != nil {
					replyErr(reply, err)
					continue
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(ms)*time.Millisecond)
			_, err = transceiver.Await(ctx, a, region, id, ids, true)
			cancel()
			// Success or not, the request is over: its blocks go back.
			pool.Free(ids)
			replyErr(reply, err)
		case "DUMP": // DUMP ids -> bytes of those blocks
			ids, err := decInts(f[1])
			if err != nil {
				replyErr(reply, err)
				continue
			}
			var b []byte
			for _, id := range ids {
				b = append(b, Block(region, id)...)
			}
			reply("OK %s", base64.StdEncoding.EncodeToString(b))
		case "PUSH": // PUSH id pairs: this side writes to the parent
			id, _ := strconv.ParseUint(f[1], 10, 64)
			pairs, err := decPairs(f[2])
			if err == nil {
				err = transceiver.Push(context.Background(), peer, region, transceiver.Transfer{RequestID: id, Pairs: pairs}, true)
			}
			replyErr(reply, err)
		case "SERVE": // SERVE id timeout_ms: answer one push request for id
			id, _ := strconv.ParseUint(f[1], 10, 64)
			ms, _ := strconv.Atoi(f[2])
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(ms)*time.Millisecond)
			err := servePush(ctx, a, region, id, pushPeers)
			cancel()
			replyErr(reply, err)
		case "SERVEN": // SERVEN first timeout_ms: answer push requests first, first+1, ... until one is not a push request; reply once
			first, _ := strconv.ParseUint(f[1], 10, 64)
			ms, _ := strconv.Atoi(f[2])
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(ms)*time.Millisecond)
			var err error
			for id := first; err == nil; id++ {
				err = servePush(ctx, a, region, id, pushPeers)
			}
			cancel()
			if errors.Is(err, errNotPush) {
				err = nil
			}
			replyErr(reply, err)
		case "STATS": // STATS -> chunks staged so far
			reply("OK %d", a.Stats().Chunks)
		case "FILL":
			seed, _ := strconv.ParseUint(f[1], 10, 64)
			FillRandom(region, seed)
			reply("OK")
		case "EXIT":
			if peer != nil {
				_ = peer.Close()
			}
			reply("OK")
			return 0
		default:
			reply("ERR unknown command %q", f[0])
		}
	}
	return 0
}

var errNotPush = errors.New("got a notification that is not a push request")

// servePush waits for a push request for id and answers it: a write of
// the named blocks into the asker's, then a notification with checksums
// (transceiver.Push), as a context worker does.
func servePush(ctx context.Context, a transceiver.Transceiver, region transceiver.Region, id uint64, peers map[string]transceiver.Peer) error {
	n, err := a.(transceiver.Waiter).WaitNotification(ctx, id)
	if err != nil {
		return err
	}
	if n.Push == nil {
		return fmt.Errorf("request %d: %w", id, errNotPush)
	}
	peer, ok := peers[string(n.Push.Info)]
	if !ok {
		if peer, err = a.Connect(ctx, n.Push.Info); err != nil {
			return err
		}
		peers[string(n.Push.Info)] = peer
	}
	t := transceiver.Transfer{RequestID: id, Pairs: make([]transceiver.BlockPair, len(n.Blocks)), RemoteBlocks: n.Blocks}
	for i := range n.Blocks {
		t.Pairs[i] = transceiver.BlockPair{Local: n.Push.Src[i], Remote: n.Blocks[i]}
	}
	wctx, cancel := context.WithTimeout(ctx, n.Push.Budget)
	defer cancel()
	return transceiver.Push(wctx, peer, region, t, true)
}

func replyErr(reply func(string, ...any), err error) {
	if err != nil {
		reply("ERR %s", strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	reply("OK")
}

// child is the parent's handle on a peer process.
type child struct {
	t     testing.TB
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	info  []byte

	done    chan struct{} // closed when the process has been waited for
	waitErr error
}

// exit asks the child to exit and checks that it did so cleanly (a native
// crash while closing shows up here).
func (c *child) exit() {
	c.t.Helper()
	c.mustCall("EXIT")
	select {
	case <-c.done:
		if c.waitErr != nil {
			c.t.Fatalf("child exited with %v", c.waitErr)
		}
	case <-time.After(20 * time.Second):
		c.t.Fatal("child did not exit in 20s")
	}
}

func startChild(t testing.TB, spec peerSpec) *child {
	t.Helper()
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envPeer+"="+string(js))
	if g := os.Getenv(EnvPeerGPU); g != "" {
		// the peer on its own GPU (two-GPU runs): it sees only that one
		cmd.Env = append(cmd.Env, "CUDA_VISIBLE_DEVICES="+g)
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<28)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	c.done = make(chan struct{})
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = in.Close()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	line := c.read(30 * time.Second)
	blob, ok := strings.CutPrefix(line, "INFO ")
	if !ok {
		t.Fatalf("child said %q, want INFO", line)
	}
	if c.info, err = base64.StdEncoding.DecodeString(blob); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *child) read(d time.Duration) string {
	c.t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			c.t.Fatal("child exited")
		}
		return l
	case <-time.After(d):
		c.t.Fatalf("child did not answer in %v", d)
	}
	return ""
}

// send writes a command without waiting for the reply.
func (c *child) send(format string, args ...any) {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.in, format+"\n", args...); err != nil {
		c.t.Fatalf("write to child: %v", err)
	}
}

// reply reads the answer to a command sent with send.
func (c *child) reply() (string, error) {
	c.t.Helper()
	l := c.read(60 * time.Second)
	if rest, ok := strings.CutPrefix(l, "ERR "); ok {
		return "", errors.New(rest)
	}
	if l == "OK" {
		return "", nil
	}
	rest, ok := strings.CutPrefix(l, "OK ")
	if !ok {
		c.t.Fatalf("child said %q", l)
	}
	return rest, nil
}

// call sends a command and returns the reply after "OK", or an error
// carrying the child's "ERR" text.
func (c *child) call(format string, args ...any) (string, error) {
	c.t.Helper()
	c.send(format, args...)
	return c.reply()
}

func (c *child) mustCall(format string, args ...any) string {
	c.t.Helper()
	s, err := c.call(format, args...)
	if err != nil {
		c.t.Fatalf("child %s: %v", strings.Fields(format)[0], err)
	}
	return s
}

func (c *child) dump(ids []int32) []byte {
	c.t.Helper()
	b, err := base64.StdEncoding.DecodeString(c.mustCall("DUMP %s", encInts(ids)))
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func (c *child) alloc(n int) []int32 {
	c.t.Helper()
	ids, err := decInts(c.mustCall("ALLOC %d", n))
	if err != nil {
		c.t.Fatal(err)
	}
	return ids
}

func (c *child) freeCount() int {
	c.t.Helper()
	n, err := strconv.Atoi(c.mustCall("FREECOUNT"))
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}
