package transceiver

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"disagg/transceiver/internal/cudamem"
	"disagg/worker/kvcache"
)

// Staging wraps a backend. When the KV region is device memory that the
// backend cannot register (a UCX built without CUDA), or when
// DISAGG_KV_STAGING=force, it registers a host staging buffer with the
// backend instead of the region, and moves blocks chunk by chunk: device
// (or, forced, host) -> staging -> network on the way out, network ->
// staging -> region on the way in. Otherwise every call goes straight to
// the backend.
//
// The buffer holds two halves of max_tokens_in_buffer tokens each (in
// blocks of the region's layout): the outbound half serves Write, the
// inbound half serves Read and Land (blocks a peer pushes). Keeping them
// apart means a transfer in one direction never waits for one in the
// other. Each half serves one chunk at a time; a chunk holds it until the
// backend has released every operation on it.
//
// A staged agent's connection info describes its staging buffer (flag
// Staged), so a peer can write into its inbound half but cannot reach its
// pool: its blocks must be pushed (see PushRequest). Staged memory is
// pinned (cudaHostAlloc) for device regions and plain host memory for
// forced host regions, whose copies are plain memory copies: the same
// code path, testable without a GPU.
type Staging struct {
	inner Transceiver
	cfg   Config
	log   *slog.Logger

	mu       sync.Mutex
	active   bool
	pool     Region
	stage    Region // registered with inner: inbound slots [0, slots), outbound [slots, 2*slots)
	stageMem kvcache.Memory
	slots    int
	copyFn   func(dst, src unsafe.Pointer, n int) error
	info     []byte

	in, out chan struct{} // one-slot semaphores of the two halves

	chunks atomic.Int64
	moved  atomic.Int64
}

// Compile-time checks of the abilities of Staging and its peers.
var (
	_ Transceiver    = (*Staging)(nil)
	_ Waiter         = (*Staging)(nil)
	_ DeviceMemory   = (*Staging)(nil)
	_ Peer           = (*stagedPeer)(nil)
	_ Reader         = (*stagedPeer)(nil)
	_ Notifier       = (*stagedPeer)(nil)
	_ ChecksumWriter = (*stagedPeer)(nil)
)

// StagingStats counts the chunks a Staging agent moved through its buffer.
type StagingStats struct {
	// Chunks is the number of chunks copied through the staging buffer,
	// in either direction.
	Chunks int64
	// Bytes is the number of bytes those chunks held.
	Bytes int64
}

var stagingLogOnce sync.Once

// Stage wraps inner; cfg is inner's configuration (MaxTokensInBuffer and
// Staging are read from it).
func Stage(inner Transceiver, cfg Config) *Staging {
	cfg.Complete()
	return &Staging{inner: inner, cfg: cfg, log: cfg.Logger, in: make(chan struct{}, 1), out: make(chan struct{}, 1)}
}

// Unwrap returns the backend.
func (s *Staging) Unwrap() Transceiver { return s.inner }

// Backend names the backend.
func (s *Staging) Backend() string { return s.inner.Backend() }

// SupportsDevice reports whether the backend registers device memory
// directly.
func (s *Staging) SupportsDevice() bool { return supportsDevice(s.inner) }

func supportsDevice(t Transceiver) bool {
	dm, ok := t.(DeviceMemory)
	return ok && dm.SupportsDevice()
}

// Staged reports whether Register chose to stage.
func (s *Staging) Staged() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// ChunkBlocks is the number of blocks one chunk moves (each half of the
// staging buffer), 0 when not staged.
func (s *Staging) ChunkBlocks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		return 0
	}
	return s.slots
}

// Stats returns the chunks moved so far.
func (s *Staging) Stats() StagingStats {
	return StagingStats{Chunks: s.chunks.Load(), Bytes: s.moved.Load()}
}

// StagingBlocks converts max_tokens_in_buffer (0: the default) into blocks
// of tokensPerBlock tokens (0: one token per block), at least one.
func StagingBlocks(maxTokens, tokensPerBlock int) int {
	if maxTokens <= 0 {
		maxTokens = DefaultMaxTokensInBuffer
	}
	tokensPerBlock = max(1, tokensPerBlock)
	return max(1, (maxTokens+tokensPerBlock-1)/tokensPerBlock)
}

// Register registers r directly, or, when staging, a staging buffer.
func (s *Staging) Register(r Region) error {
	if err := r.Validate(); err != nil {
		return err
	}
	reason := ""
	switch {
	case s.cfg.Staging == StagingForce:
		reason = EnvStaging + "=" + StagingForce
	case r.Mem.Device() && !supportsDevice(s.inner):
		reason = "the " + s.inner.Backend() + " backend cannot register device memory (for UCX: its memory types lack cuda)"
	}
	if reason == "" {
		return s.inner.Register(r)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active {
		return errors.New("transceiver: a region is already registered")
	}
	copyFn := hostCopy
	alloc := kvcache.AllocHost
	if r.Mem.Device() {
		if err := cudamem.Available(); err != nil {
			return fmt.Errorf("transceiver: staging device memory (%s) needs the CUDA runtime: %w", reason, err)
		}
		copyFn = cudamem.Copy
		alloc = func(n int) (kvcache.Memory, error) { return cudamem.AllocPinned(n) }
	}
	slots := min(StagingBlocks(s.cfg.MaxTokensInBuffer, r.TokensPerBlock), r.NumBlocks)
	mem, err := alloc(2 * slots * r.BlockBytes)
	if err != nil {
		return fmt.Errorf("transceiver: staging buffer of 2 x %d blocks: %w", slots, err)
	}
	stage := Region{Mem: mem, BlockBytes: r.BlockBytes, NumBlocks: 2 * slots, TokensPerBlock: r.TokensPerBlock}
	info, err := s.registerStage(stage)
	if err != nil {
		if cerr := mem.Close(); cerr != nil {
			s.log.Warn("freeing the staging buffer", "err", cerr)
		}
		return err
	}
	s.active, s.pool, s.stage, s.stageMem, s.slots, s.copyFn, s.info = true, r, stage, mem, slots, copyFn, info
	stagingLogOnce.Do(func() {
		s.log.Info("KV transfers stage through host buffers", "why", reason, "pinned", r.Mem.Device(),
			"max_tokens_in_buffer", s.cfg.MaxTokensInBuffer, "blocks_per_chunk", slots, "buffer_bytes", stage.Bytes())
	})
	return nil
}

// registerStage registers the staging region with the backend and marks
// its connection info as staged.
func (s *Staging) registerStage(stage Region) ([]byte, error) {
	if err := s.inner.Register(stage); err != nil {
		return nil, err
	}
	blob, err := s.inner.LocalInfo()
	if err != nil {
		return nil, err
	}
	in, err := DecodeInfo(blob)
	if err != nil {
		return nil, err
	}
	in.Region.Staged = true
	return EncodeInfo(in)
}

// LocalInfo is the backend's connection info (marked Staged when staging).
func (s *Staging) LocalInfo() ([]byte, error) {
	s.mu.Lock()
	active, info := s.active, s.info
	s.mu.Unlock()
	if !active {
		return s.inner.LocalInfo()
	}
	return slices.Clone(info), nil
}

// Connect connects through the backend; a staged agent's peer moves
// blocks through the staging buffer.
func (s *Staging) Connect(ctx context.Context, info []byte) (Peer, error) {
	if !s.Staged() {
		return s.inner.Connect(ctx, info)
	}
	in, err := DecodeInfo(info)
	if err != nil {
		return nil, err
	}
	p, err := s.inner.Connect(ctx, info)
	if err != nil {
		return nil, err
	}
	return &stagedPeer{s: s, inner: p, remote: in.Region}, nil
}

// WaitNotification waits through the backend.
func (s *Staging) WaitNotification(ctx context.Context, requestID uint64) (Notification, error) {
	w, ok := s.inner.(Waiter)
	if !ok {
		return Notification{}, fmt.Errorf("%w: %s cannot receive notifications", ErrUnsupported, s.inner.Backend())
	}
	return w.WaitNotification(ctx, requestID)
}

// Close closes the backend, then frees the staging buffer (no operation
// can touch it once the backend is closed).
func (s *Staging) Close() error {
	err := s.inner.Close()
	s.mu.Lock()
	mem := s.stageMem
	s.stageMem = nil
	s.mu.Unlock()
	if mem != nil {
		err = errors.Join(err, mem.Close())
	}
	return err
}

// Land receives blocks a peer writes into this agent's local blocks (in
// order). It calls fetch once per chunk with dst, the block ids the peer
// must write (staging slots when staged, else local[from:to] itself), and
// the chunk's range of local; fetch has the peer write them and returns
// the peer's checksums (or none). fetch must not return before the peer
// can no longer write into dst. Each chunk is verified against its
// checksums in host memory (staging, or a host region) before it is
// copied into local; device regions reached directly are not verified.
func (s *Staging) Land(ctx context.Context, local []int32, fetch func(ctx context.Context, dst []int32, from, to int) ([]uint32, error)) error {
	s.mu.Lock()
	active, pool, stage, slots := s.active, s.pool, s.stage, s.slots
	s.mu.Unlock()
	if !active {
		sums, err := fetch(ctx, local, 0, len(local))
		if err != nil {
			return err
		}
		if len(sums) != 0 && pool.Mem != nil && !pool.Mem.Device() {
			return Verify(pool, local, sums)
		}
		return nil
	}
	if err := checkOwn(local, pool.NumBlocks); err != nil {
		return err
	}
	for from := 0; from < len(local); from += slots {
		to := min(from+slots, len(local))
		dst := make([]int32, to-from)
		for j := range dst {
			dst[j] = int32(j)
		}
		if err := acquire(ctx, s.in); err != nil {
			return err
		}
		sums, err := fetch(ctx, dst, from, to)
		if err == nil && len(sums) != 0 {
			err = Verify(stage, dst, sums)
		}
		if err == nil {
			err = s.copyRuns(local[from:to], 0, false)
		}
		<-s.in
		if err != nil {
			return err
		}
	}
	return nil
}

func checkOwn(ids []int32, n int) error {
	seen := make(map[int32]struct{}, len(ids))
	for _, b := range ids {
		if b < 0 || int(b) >= n {
			return fmt.Errorf("%w: local block %d outside the registered %d blocks", ErrBadDescriptor, b, n)
		}
		if _, dup := seen[b]; dup {
			return fmt.Errorf("%w: local block %d appears twice", ErrBadDescriptor, b)
		}
		seen[b] = struct{}{}
	}
	return nil
}

func acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("transceiver: waiting for the staging buffer: %w", context.Cause(ctx))
	}
}

// copyRuns copies pool blocks ids[j] to or from staging slot first+j,
// one copy per run of consecutive ids, and counts the chunk.
func (s *Staging) copyRuns(ids []int32, first int, toStage bool) error {
	bb := s.pool.BlockBytes
	for j := 0; j < len(ids); {
		k := j + 1
		for k < len(ids) && ids[k] == ids[k-1]+1 {
			k++
		}
		poolPtr := unsafe.Add(s.pool.Mem.Ptr(), int(ids[j])*bb)
		stagePtr := unsafe.Add(s.stage.Mem.Ptr(), (first+j)*bb)
		var err error
		if toStage {
			err = s.copyFn(stagePtr, poolPtr, (k-j)*bb)
		} else {
			err = s.copyFn(poolPtr, stagePtr, (k-j)*bb)
		}
		if err != nil {
			return fmt.Errorf("transceiver: staging copy: %w", err)
		}
		j = k
	}
	s.chunks.Add(1)
	s.moved.Add(int64(len(ids) * bb))
	return nil
}

func hostCopy(dst, src unsafe.Pointer, n int) error {
	copy(unsafe.Slice((*byte)(dst), n), unsafe.Slice((*byte)(src), n))
	return nil
}

// stagedPeer moves a staged agent's blocks through its staging buffer.
type stagedPeer struct {
	s      *Staging
	inner  Peer
	remote RemoteRegion
}

func (p *stagedPeer) Name() string { return p.inner.Name() }

func (p *stagedPeer) Close() error { return p.inner.Close() }

// Notify sends n through the backend.
func (p *stagedPeer) Notify(ctx context.Context, n Notification) error {
	nt, ok := p.inner.(Notifier)
	if !ok {
		return fmt.Errorf("%w: peer cannot be notified", ErrUnsupported)
	}
	return nt.Notify(ctx, n)
}

// Write pushes local blocks to the peer chunk by chunk.
func (p *stagedPeer) Write(ctx context.Context, t Transfer) error {
	_, err := p.write(ctx, t, false)
	return err
}

// WriteSums is Write that also returns each block's CRC32C, computed in
// the staging buffer.
func (p *stagedPeer) WriteSums(ctx context.Context, t Transfer) ([]uint32, error) {
	return p.write(ctx, t, true)
}

// plan checks t against both regions before anything is staged or
// posted, then returns the indices of t.Pairs sorted by local block (so
// that adjacent blocks copy at once) and a context bounded by
// kv_transfer_timeout_ms when ctx has no deadline.
func (p *stagedPeer) plan(ctx context.Context, t Transfer) ([]int, context.Context, context.CancelFunc, error) {
	if p.s.pool.BlockBytes != p.remote.BlockBytes {
		return nil, nil, nil, fmt.Errorf("%w: local blocks are %d bytes, the peer's %d", ErrBadDescriptor, p.s.pool.BlockBytes, p.remote.BlockBytes)
	}
	if err := CheckPairs(t, p.s.pool.NumBlocks, p.remote.NumBlocks); err != nil {
		return nil, nil, nil, err
	}
	order := make([]int, len(t.Pairs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return int(t.Pairs[a].Local) - int(t.Pairs[b].Local) })
	ctx, cancel := p.s.cfg.TransferContext(ctx)
	return order, ctx, cancel, nil
}

func (p *stagedPeer) write(ctx context.Context, t Transfer, wantSums bool) ([]uint32, error) {
	s := p.s
	order, ctx, cancel, err := p.plan(ctx, t)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var sums []uint32
	if wantSums {
		sums = make([]uint32, len(t.Pairs))
	}
	for from := 0; from < len(order); from += s.slots {
		chunk := order[from:min(from+s.slots, len(order))]
		ids := make([]int32, len(chunk))
		inner := Transfer{RequestID: t.RequestID, Pairs: make([]BlockPair, len(chunk)), RemoteBlocks: t.RemoteBlocks}
		for j, i := range chunk {
			ids[j] = t.Pairs[i].Local
			inner.Pairs[j] = BlockPair{Local: int32(s.slots + j), Remote: t.Pairs[i].Remote}
		}
		if err := acquire(ctx, s.out); err != nil {
			return nil, err
		}
		err := s.copyRuns(ids, s.slots, true)
		if err == nil && wantSums {
			for j, i := range chunk {
				b, berr := blockBytes(s.stage, int32(s.slots+j))
				if berr != nil {
					err = berr
					break
				}
				sums[i] = crc32.Checksum(b, castagnoli)
			}
		}
		if err == nil {
			err = p.inner.Write(ctx, inner)
		}
		<-s.out
		if err != nil {
			return nil, err
		}
	}
	return sums, nil
}

// Read pulls the peer's blocks into local ones chunk by chunk.
func (p *stagedPeer) Read(ctx context.Context, t Transfer) error {
	s := p.s
	rd, ok := p.inner.(Reader)
	if !ok {
		return fmt.Errorf("%w: %s cannot pull", ErrUnsupported, s.inner.Backend())
	}
	order, ctx, cancel, err := p.plan(ctx, t)
	if err != nil {
		return err
	}
	defer cancel()
	for from := 0; from < len(order); from += s.slots {
		chunk := order[from:min(from+s.slots, len(order))]
		ids := make([]int32, len(chunk))
		inner := Transfer{RequestID: t.RequestID, Pairs: make([]BlockPair, len(chunk)), RemoteBlocks: t.RemoteBlocks}
		for j, i := range chunk {
			ids[j] = t.Pairs[i].Local
			inner.Pairs[j] = BlockPair{Local: int32(j), Remote: t.Pairs[i].Remote}
		}
		if err := acquire(ctx, s.in); err != nil {
			return err
		}
		err := rd.Read(ctx, inner)
		if err == nil {
			err = s.copyRuns(ids, 0, false)
		}
		<-s.in
		if err != nil {
			return err
		}
	}
	return nil
}
