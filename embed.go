// Package disagg holds what the whole module shares at its root: the
// embedded default model. It is the first test fixture (a tiny Llama with a
// trained byte-fallback BPE tokenizer and a chat template, built and
// referenced with Hugging Face transformers by scripts/make_fixtures.py),
// compiled into the binary so that `worker` serves something on any machine
// without a --model.
package disagg

import (
	"embed"
	"io/fs"
)

// TinyModelName is the served name of the embedded model.
const TinyModelName = "tiny-llama2"

//go:embed testdata/models/tiny-llama2/*.json testdata/models/tiny-llama2/*.safetensors
var tinyModel embed.FS

// TinyModel returns the embedded checkpoint folder.
func TinyModel() fs.FS {
	sub, err := fs.Sub(tinyModel, "testdata/models/tiny-llama2")
	if err != nil { // the path is a compile-time constant: cannot fail
		panic(err)
	}
	return sub
}
