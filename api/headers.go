package api

import "time"

// Headers of the disaggregated flow. A generation worker reports the KV
// transfer of a generation_only request in its response headers; the proxy
// passes them to the client beside its own per-phase timings.
const (
	// HeaderRequestID names a request across the proxy and both workers.
	HeaderRequestID = "X-Request-Id"
	// HeaderContextQueueMs is how long a context_only request waited in the
	// context worker's queue, and HeaderPrefillMs how long its prefill and
	// first token then took, in milliseconds.
	HeaderContextQueueMs = "X-Disagg-Context-Queue-Ms"
	HeaderPrefillMs      = "X-Disagg-Prefill-Ms"
	// HeaderKVBytes is the size of the KV the generation worker pulled.
	HeaderKVBytes = "X-Disagg-KV-Bytes"
	// HeaderKVTransferMs is how long that pull took, in milliseconds.
	HeaderKVTransferMs = "X-Disagg-KV-Transfer-Ms"
)

// KVTransfer describes one request's KV move into a generation worker.
type KVTransfer struct {
	// Bytes moved.
	Bytes int64
	// Duration of the move, the transfer alone (not the verification).
	Duration time.Duration
}
