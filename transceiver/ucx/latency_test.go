//go:build cgo

package ucx

import "testing"

// BenchmarkLatency is the fixed cost of a one-block write and read, a
// notification's round trip and a push on request's round trip between
// two UCX agents of one process (transceivertest.Suite.BenchLatency).
func BenchmarkLatency(b *testing.B) { suite.BenchLatency(b) }

// BenchmarkBandwidth is write bandwidth from a UCX agent to one in a peer
// process against block size and count (transceivertest.Suite.BenchBandwidth).
func BenchmarkBandwidth(b *testing.B) { suite.BenchBandwidth(b) }

// BenchmarkReadBandwidth is BenchmarkBandwidth with reads (pull).
func BenchmarkReadBandwidth(b *testing.B) { suite.BenchReadBandwidth(b) }

// BenchmarkPushBandwidth is BenchmarkBandwidth with the blocks pushed on
// request, as a generation worker asks for a request's KV; with
// DISAGG_KV_STAGING=force both sides gather the blocks into their staging
// buffers (transceivertest.Suite.BenchPushBandwidth).
func BenchmarkPushBandwidth(b *testing.B) { suite.BenchPushBandwidth(b) }
