package tokenizer

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// benchText is about 100 KB of mixed prose and code.
func benchText(b *testing.B) string {
	b.Helper()
	src, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "src", "strings", "strings.go"))
	if err != nil {
		b.Skip(err)
	}
	return strings.Repeat(string(src), 100_000/len(src)+1)[:100_000]
}

func benchEncode(b *testing.B, dir string) {
	tok, err := LoadFile(filepath.Join("testdata", dir, "tokenizer.json"))
	if err != nil {
		b.Fatal(err)
	}
	text := benchText(b)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := tok.Encode(text, true); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeLlama3(b *testing.B) { benchEncode(b, "llama3") }
func BenchmarkEncodeGPT2(b *testing.B)   { benchEncode(b, "gpt2") }
func BenchmarkEncodeLlama2(b *testing.B) { benchEncode(b, "llama2-metaspace") }
func BenchmarkEncodeLegacy(b *testing.B) { benchEncode(b, "llama2-legacy") }
