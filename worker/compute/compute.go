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
