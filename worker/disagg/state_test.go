package disagg

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"disagg/worker/kvcache"
)

func testState(now time.Time) State {
	return State{
		CtxRequestID: 1 << 41, Info: []byte("connection info"), Blocks: []int32{4, 5, 9}, Tokens: 70,
		Layout: FingerprintOf(kvcache.Layout{Layers: 2, KVHeads: 4, HeadDim: 16, TokensPerBlock: 32, DType: kvcache.Float32}),
		Expiry: now.Add(time.Minute).UnixMilli(),
	}
}

func TestStateRoundTrip(t *testing.T) {
	now := time.Now()
	secret := []byte("s3cret")
	st := testState(now)
	enc, err := Encode(st, secret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(enc, secret, now)
	if err != nil {
		t.Fatal(err)
	}
	st.Version = StateVersion
	if diff := cmp.Diff(st, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestStateRejects(t *testing.T) {
	now := time.Now()
	secret := []byte("s3cret")
	enc, err := Encode(testState(now), secret)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte)) string {
		b := append([]byte(nil), raw...)
		f(b)
		return base64.StdEncoding.EncodeToString(b)
	}
	wrongKey, err := Encode(testState(now), []byte("other"))
	if err != nil {
		t.Fatal(err)
	}
	empty := testState(now)
	empty.Blocks = nil
	noBlocks, err := Encode(empty, secret)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{
		"empty":         "",
		"not base64":    "%%%",
		"short":         base64.StdEncoding.EncodeToString(raw[:20]),
		"other version": mutate(func(b []byte) { b[0] = 2 }),
		"body byte":     mutate(func(b []byte) { b[len(b)-5] ^= 0x20 }),
		"mac byte":      mutate(func(b []byte) { b[3] ^= 1 }),
		"other key":     wrongKey,
		"no blocks":     noBlocks,
		"oversize":      strings.Repeat("A", maxEncodedState+4),
	} {
		if _, err := Decode(s, secret, now); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: Decode error %v, want ErrBadState", name, err)
		}
	}
	if _, err := Decode(enc, secret, now.Add(2*time.Minute)); !errors.Is(err, ErrExpired) {
		t.Errorf("expired: Decode error %v, want ErrExpired", err)
	}
}

func FuzzDecode(f *testing.F) {
	enc, err := Encode(testState(time.Now()), []byte("k"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(enc)
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := Decode(s, []byte("k"), time.Now())
		if err == nil && (st.Tokens < 1 || len(st.Blocks) == 0) {
			t.Fatalf("accepted a state with %d tokens in %d blocks", st.Tokens, len(st.Blocks))
		}
	})
}
