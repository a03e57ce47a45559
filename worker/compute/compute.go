// Package compute defines the model-step seam between the engine and a
// compute backend (the pure-Go CPU reference in compute/cpu, the CUDA
// backend in cuda/). A backend runs one whole model step for a batch of
// sequences in one call: it appends the new tokens' K and V to the paged KV
// pool at the slots named by each sequence's block table and returns the
// logits the engine asked for.
package compute

import (
	"context"
	"errors"
)

// LogitsMode says which logits a sequence wants back from a step.
type LogitsMode uint8

const (
	// LogitsNone: no logits (a prefill chunk that does not end the prompt).
	LogitsNone LogitsMode = iota
	// LogitsLast: one row, for the last token of the step.
	LogitsLast
	// LogitsAll: one row per token of the step (tests, prompt logprobs).
	LogitsAll
)

// Seq is one sequence's part of a step.
type Seq struct {
	// Tokens are the new tokens of this step, at positions Start, Start+1, ...
	Tokens []int32
	// Start is the position of Tokens[0]. The KV of positions [0, Start) is
	// already in the pool, in the blocks named by Blocks.
	Start int
	// Blocks is the sequence's block table: Blocks[i] holds positions
	// [i*TokensPerBlock, (i+1)*TokensPerBlock). It covers at least
	// Start+len(Tokens) positions.
	Blocks []int32
	// Logits says which logits to return for this sequence.
	Logits LogitsMode
}

// Batch is one model step for several sequences.
type Batch struct {
	Seqs []Seq
}

// NumTokens is the total count of new tokens in the batch.
func (b *Batch) NumTokens() int {
	n := 0
	for i := range b.Seqs {
		n += len(b.Seqs[i].Tokens)
	}
	return n
}

// Logits holds the rows a step returned, in the order of the batch's
// sequences: LogitsLast contributes one row, LogitsAll len(Tokens) rows,
// LogitsNone none. Row r is Data[r*Vocab : (r+1)*Vocab].
type Logits struct {
	Vocab int
	Data  []float32
}

// Row returns logits row r.
func (l *Logits) Row(r int) []float32 { return l.Data[r*l.Vocab : (r+1)*l.Vocab] }

// Rows is the number of rows.
func (l *Logits) Rows() int {
	if l.Vocab == 0 {
		return 0
	}
	return len(l.Data) / l.Vocab
}

// Backend runs model steps. Forward is called from one goroutine at a time
// (the engine's step loop); the returned Logits are valid until the next call.
type Backend interface {
	// Forward runs one step for the whole batch.
	Forward(ctx context.Context, b *Batch) (*Logits, error)
	// Name is a short name for logs and metrics ("cpu", "cuda").
	Name() string
	// Close releases the backend's resources (weights, buffers).
	Close() error
}

// ErrBadBatch is returned (wrapped) for a batch that violates the contract
// above: missing blocks, positions past the model's context, bad token ids.
var ErrBadBatch = errors.New("compute: bad batch")

// SampleParams are one logits row's sampling parameters for a Sampler:
// the subset of the host sampler's (worker/sampling) that a backend can run
// where the logits are. The draw is sampling.Uniform(Seed, Step), the same
// counter-based number the host sampler uses, so a seeded sequence's tokens
// do not depend on which side sampled them (up to rounding).
type SampleParams struct {
	// Temperature below sampling.GreedyBelow (1e-5) is greedy: argmax,
	// lowest id on ties, no draw.
	Temperature float32
	// TopK > 0 keeps the k most likely tokens; 0 or less disables.
	TopK int32
	// TopP in (0, 1] keeps the smallest most-likely set whose probability
	// reaches it (after top-k); 1 disables.
	TopP float32
	// MinP in [0, 1] drops tokens less likely than MinP times the most
	// likely one (after top-p); 0 disables.
	MinP float32
	// Seed and Step name the draw: Step is the index of the token being
	// sampled among the sequence's generated tokens.
	Seed, Step uint64
}

// Sampler is an optional ability of a Backend: run a step and sample its
// logits rows on the backend's side (the GPU), so that only token ids come
// back. It is asynchronous so that an engine can prepare and launch step
// n+1 while step n runs (the overlap scheduler); a synchronous caller calls
// Wait at once.
//
// Launch's batch may not use LogitsAll; each LogitsLast sequence has one
// row, sampled with params[row] (len(params) is the row count). A token id
// t < 0 in the batch stands for the id sampled in row -t-1 of the step
// launched just before this one (by Launch; a Forward in between makes such
// ids invalid): step n+1 can feed a decode the token step n is still
// sampling. Launch copies what it needs from the batch and params before
// it returns. Steps run in launch order; Forward runs after every launched
// step. Launch and Forward are called from one goroutine at a time.
type Sampler interface {
	Launch(ctx context.Context, b *Batch, params []SampleParams) (Pending, error)
}

// Pending is a launched step. Wait must be called once per Pending, in
// launch order, with at most two Pendings not yet waited for.
type Pending interface {
	// Wait blocks until the step has run (its KV written: the blocks it
	// used may be freed and reused once Wait returns, error or not) and
	// returns one token id per row, in a slice the caller keeps. An id < 0
	// means no token could be sampled for the row (every logit -inf or
	// NaN); a later step that refers to that row reads token 0. A step whose
	// ctx ends early returns an error wrapping ctx's.
	Wait() ([]int32, error)
}
