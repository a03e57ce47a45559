package disagg

import (
	"context"
	"net/http"
	"testing"
	"time"

	"disagg/api"
	"disagg/worker/engine"
	"disagg/worker/kvcache"
)

// poolKV is the KV seam over a bare pool: what the engine's FreeKV does,
// without an engine.
type poolKV struct{ p *kvcache.Pool }

func (k poolKV) Pool() *kvcache.Pool   { return k.p }
func (k poolKV) FreeKV(blocks []int32) { k.p.Free(blocks) }

func newManager(t *testing.T, role string) (*Manager, *kvcache.Pool) {
	t.Helper()
	pool, err := kvcache.NewHostPool(kvcache.Layout{Layers: 1, KVHeads: 1, HeadDim: 4, TokensPerBlock: 4, DType: kvcache.Float32}, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Close() })
	m, err := New(Options{Role: role, Secret: []byte("k"), SenderTimeout: time.Second, TransferTimeout: time.Second,
		Unavailable: "no transceiver in this test", KV: poolKV{pool}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m, pool
}

func TestNewValidation(t *testing.T) {
	pool, err := kvcache.NewHostPool(kvcache.Layout{Layers: 1, KVHeads: 1, HeadDim: 4, TokensPerBlock: 4, DType: kvcache.Float32}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	good := Options{Secret: []byte("k"), SenderTimeout: time.Second, TransferTimeout: time.Second, KV: poolKV{pool}}
	for name, edit := range map[string]func(*Options){
		"no secret":  func(o *Options) { o.Secret = nil },
		"no engine":  func(o *Options) { o.KV = nil },
		"no timeout": func(o *Options) { o.TransferTimeout = 0 },
		"bad role":   func(o *Options) { o.Role = "prefill" },
	} {
		o := good
		edit(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

// TestRolesAndUnavailable: the wrong phase for a role is a 400; without a
// transceiver every disaggregated request is a 503 naming why, and a
// context phase's blocks are freed rather than parked.
func TestRolesAndUnavailable(t *testing.T) {
	for _, c := range []struct {
		role, kind string
		status     int
	}{
		{RoleContext, api.RequestGenerationOnly, http.StatusBadRequest},
		{RoleGeneration, api.RequestContextOnly, http.StatusBadRequest},
		{RoleContext, api.RequestContextOnly, http.StatusServiceUnavailable},
		{RoleBoth, api.RequestGenerationOnly, http.StatusServiceUnavailable},
	} {
		m, _ := newManager(t, c.role)
		e := m.Check(c.kind)
		if e == nil || e.Status != c.status {
			t.Errorf("role %q, %s: %v, want status %d", c.role, c.kind, e, c.status)
		}
	}
	m, pool := newManager(t, RoleBoth)
	blocks, err := pool.Alloc(3)
	if err != nil {
		t.Fatal(err)
	}
	if _, e := m.Park(&engine.KVHandoff{Blocks: blocks, Tokens: 10}, []int32{1}, nil); e == nil || e.Status != http.StatusServiceUnavailable {
		t.Fatalf("Park without a transceiver: %v", e)
	}
	if pool.FreeBlocks() != 8 {
		t.Errorf("%d free blocks after a refused Park, want 8", pool.FreeBlocks())
	}
	if _, _, e := m.Fetch(context.Background(), &api.DisaggregatedParams{RequestType: api.RequestGenerationOnly}, []int32{1}); e == nil ||
		e.Status != http.StatusServiceUnavailable {
		t.Fatalf("Fetch without a transceiver: %v", e)
	}
}
