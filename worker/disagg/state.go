package disagg

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"disagg/worker/kvcache"
)

// StateVersion is the version of encoded_opaque_state this build writes
// and the only one it reads.
const StateVersion = 1

// maxEncodedState bounds encoded_opaque_state before it is decoded, so a
// forged value cannot make the worker allocate much.
const maxEncodedState = 1 << 20

// ErrBadState is wrapped by the errors of a forged, tampered, expired or
// incompatible encoded_opaque_state.
var ErrBadState = errors.New("disagg: bad encoded_opaque_state")

// ErrExpired is wrapped by Decode's error for a genuine state whose
// transfer window has passed: the context worker has freed (or is about to
// free) the KV.
var ErrExpired = errors.New("disagg: encoded_opaque_state expired")

// Fingerprint is what both workers' KV layouts must agree on for the bytes
// of one block to mean the same thing on both sides.
type Fingerprint struct {
	Layers         int    `json:"layers"`
	KVHeads        int    `json:"kv_heads"`
	HeadDim        int    `json:"head_dim"`
	TokensPerBlock int    `json:"tokens_per_block"`
	DType          string `json:"dtype"`
}

// FingerprintOf describes a pool layout.
func FingerprintOf(l kvcache.Layout) Fingerprint {
	return Fingerprint{Layers: l.Layers, KVHeads: l.KVHeads, HeadDim: l.HeadDim, TokensPerBlock: l.TokensPerBlock, DType: l.DType.String()}
}

// State is what a context worker tells the generation worker about a
// parked request, inside encoded_opaque_state.
type State struct {
	// Version is StateVersion.
	Version int `json:"v"`
	// CtxRequestID is the context worker's id of the parked request.
	CtxRequestID int64 `json:"ctx_request_id"`
	// Info is the context worker's transceiver connection info
	// (Transceiver.LocalInfo).
	Info []byte `json:"info"`
	// Blocks are the context worker's blocks holding the prompt's KV, in
	// block-table order.
	Blocks []int32 `json:"blocks"`
	// Tokens is the number of tokens whose KV the blocks hold.
	Tokens int `json:"tokens"`
	// Layout is the context worker's KV layout.
	Layout Fingerprint `json:"layout"`
	// Expiry (Unix milliseconds) is when the context worker stops waiting
	// for the transfer to start.
	Expiry int64 `json:"expiry_ms"`
	// Sums, when present, are the CRC32C of each block as the context
	// worker parked it; the generation worker verifies the blocks it
	// received and fails closed on a mismatch.
	Sums []uint32 `json:"sums,omitempty"`
}

// Encode signs st with secret and returns encoded_opaque_state: base64 of
// [version byte][HMAC-SHA256 of version byte and JSON][JSON].
func Encode(st State, secret []byte) (string, error) {
	st.Version = StateVersion
	body, err := json.Marshal(st)
	if err != nil {
		return "", fmt.Errorf("disagg: encode state: %w", err)
	}
	buf := make([]byte, 0, 1+sha256.Size+len(body))
	buf = append(buf, StateVersion)
	buf = append(buf, mac(secret, StateVersion, body)...)
	buf = append(buf, body...)
	return base64.StdEncoding.EncodeToString(buf), nil
}

func mac(secret []byte, version byte, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte{version})
	h.Write(body)
	return h.Sum(nil)
}

// Decode verifies and parses encoded_opaque_state. Every failure wraps
// ErrBadState; the signature is checked before the JSON is parsed.
func Decode(encoded string, secret []byte, now time.Time) (State, error) {
	bad := func(format string, args ...any) (State, error) {
		return State{}, fmt.Errorf("%w: %s", ErrBadState, fmt.Sprintf(format, args...))
	}
	if encoded == "" {
		return bad("it is missing")
	}
	if len(encoded) > maxEncodedState {
		return bad("%d bytes, more than the limit of %d", len(encoded), maxEncodedState)
	}
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return bad("not base64: %v", err)
	}
	if len(raw) < 1+sha256.Size {
		return bad("%d bytes is too short", len(raw))
	}
	if raw[0] != StateVersion {
		return bad("version %d, this worker reads version %d", raw[0], StateVersion)
	}
	sig, body := raw[1:1+sha256.Size], raw[1+sha256.Size:]
	if !hmac.Equal(sig, mac(secret, raw[0], body)) {
		return bad("the signature does not match (forged, tampered with, or signed with another cluster secret)")
	}
	var st State
	if err := json.Unmarshal(body, &st); err != nil {
		return bad("%v", err)
	}
	if st.Version != StateVersion {
		return bad("body version %d, want %d", st.Version, StateVersion)
	}
	if st.Tokens < 1 || len(st.Blocks) == 0 || len(st.Info) == 0 || st.CtxRequestID <= 0 {
		return bad("%d tokens in %d blocks, %d bytes of connection info, request id %d", st.Tokens, len(st.Blocks), len(st.Info), st.CtxRequestID)
	}
	if len(st.Sums) != 0 && len(st.Sums) != len(st.Blocks) {
		return bad("%d checksums for %d blocks", len(st.Sums), len(st.Blocks))
	}
	if !now.Before(time.UnixMilli(st.Expiry)) {
		return State{}, fmt.Errorf("%w at %s", ErrExpired, time.UnixMilli(st.Expiry).UTC().Format(time.RFC3339Nano))
	}
	return st, nil
}
