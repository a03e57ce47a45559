// Package tokenizer is a pure-Go implementation of Hugging Face's
// tokenizer.json (the `tokenizers` library's format) for the BPE models
// Llama-family checkpoints use: byte-fallback BPE with Metaspace (Llama 2,
// TinyLlama) and byte-level BPE (GPT-2, Llama 3). Encode and Decode give
// the ids and strings Hugging Face gives; components this package does not
// implement are refused by Load with an error naming them.
//
// The pipeline is HF's: the input is first split around added tokens, the
// rest is normalized, pre-tokenized into words, each word is encoded by the
// BPE model, and the post-processor adds special tokens (BOS). Decoding maps
// ids back to token strings and runs the decoder chain.
//
// A Tokenizer is immutable after Load and safe for concurrent use.
package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"unicode/utf8"
)

// ErrUnsupported is wrapped by Load's error for a component (model,
// normalizer, pre-tokenizer, post-processor, decoder) it does not implement.
var ErrUnsupported = errors.New("unsupported tokenizer component")

// Tokenizer encodes text to token ids and decodes ids back to text.
type Tokenizer struct {
	model   *bpe
	added   *addedVocab
	norm    normalizer    // nil when none
	pre     preTokenizer  // nil when none
	post    postProcessor // nil when none
	decoder []decoderStep // empty: tokens joined with " "

	vocabSize int
	// decodeAs[id] is the string the decoder sees for id; skip[id] says
	// whether skip_special_tokens drops it; known[id] whether id exists.
	decodeAs []string
	skip     []bool
	known    []bool
}

// LoadFile reads a tokenizer.json file.
func LoadFile(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := Load(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// LoadFS reads a tokenizer.json file from fsys (an embedded model, say).
func LoadFS(fsys fs.FS, name string) (*Tokenizer, error) {
	data, err := fs.ReadFile(fsys, name)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := Load(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return t, nil
}

type fileJSON struct {
	Version       *string          `json:"version"`
	Truncation    jsonRaw          `json:"truncation"`
	Padding       jsonRaw          `json:"padding"`
	AddedTokens   []addedTokenJSON `json:"added_tokens"`
	Normalizer    jsonRaw          `json:"normalizer"`
	PreTokenizer  jsonRaw          `json:"pre_tokenizer"`
	PostProcessor jsonRaw          `json:"post_processor"`
	Decoder       jsonRaw          `json:"decoder"`
	Model         jsonRaw          `json:"model"`
}

// Load parses the bytes of a tokenizer.json.
//
// Its "truncation" and "padding" settings are not applied: like
// transformers' tokenizers (which turn them off unless a call asks for
// them), Encode returns the whole sequence.
func Load(data []byte) (*Tokenizer, error) {
	t, err := load(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return t, nil
}

func load(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not a tokenizer.json: %w", err)
	}
	if f.Version != nil && *f.Version != "1.0" {
		return nil, fmt.Errorf("unknown tokenizer.json version %q", *f.Version)
	}
	t := &Tokenizer{}
	var err error
	if t.model, err = parseModel(f.Model); err != nil {
		return nil, err
	}
	if !isNull(f.Normalizer) {
		if t.norm, err = parseNormalizer(f.Normalizer); err != nil {
			return nil, err
		}
	}
	if !isNull(f.PreTokenizer) {
		if t.pre, err = parsePreTokenizer(f.PreTokenizer); err != nil {
			return nil, err
		}
	}
	if !isNull(f.PostProcessor) {
		if t.post, err = parsePostProcessor(f.PostProcessor); err != nil {
			return nil, err
		}
	}
	if !isNull(f.Decoder) {
		if t.decoder, err = parseDecoder(f.Decoder); err != nil {
			return nil, err
		}
	}
	if t.added, err = newAddedVocab(f.AddedTokens, t.model, t.norm); err != nil {
		return nil, fmt.Errorf("added_tokens: %w", err)
	}
	if err := t.buildIDTables(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tokenizer) buildIDTables() error {
	maxID := int32(-1)
	for id := range t.model.vocabR {
		maxID = max(maxID, id)
	}
	for id := range t.added.byID {
		maxID = max(maxID, id)
	}
	n := int(maxID) + 1
	// Ids index flat tables; real vocabularies are dense.
	if entries := len(t.model.vocabR) + len(t.added.byID); n > 2*entries+1<<16 {
		return fmt.Errorf("vocabulary ids are too sparse: largest id %d for %d tokens", maxID, entries)
	}
	t.vocabSize = n
	t.decodeAs = make([]string, n)
	t.skip = make([]bool, n)
	t.known = make([]bool, n)
	for id, s := range t.model.vocabR {
		t.decodeAs[id], t.known[id] = s, true
	}
	for id, a := range t.added.byID {
		t.decodeAs[id], t.known[id] = a.pattern, true
	}
	for id := range t.decodeAs {
		t.skip[id] = t.known[id] && t.added.special[t.decodeAs[id]]
	}
	return nil
}

// VocabSize is the largest id plus one, added tokens included.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// TokenID returns the id of a token string (added tokens first, then the
// model's vocabulary).
func (t *Tokenizer) TokenID(token string) (int32, bool) {
	if id, ok := t.added.byContent[token]; ok {
		return id, true
	}
	id, ok := t.model.vocab[token]
	return id, ok
}

// Token returns the string of a token id: an added token's content, or the
// model vocabulary's entry (byte-level or "▁" form, as stored).
func (t *Tokenizer) Token(id int32) (string, bool) {
	if a, ok := t.added.byID[id]; ok {
		return a.content, true
	}
	s, ok := t.model.vocabR[id]
	return s, ok
}

// IsSpecial reports whether id is an added token marked special (BOS, EOS,
// chat markers), the tokens Decode drops when skipSpecialTokens is set.
func (t *Tokenizer) IsSpecial(id int32) bool {
	a, ok := t.added.byID[id]
	return ok && a.special
}

// Encode turns text into token ids. With addSpecialTokens the
// post-processor's special tokens (a BOS, typically) are added. Text that is
// not valid UTF-8 has each invalid byte replaced by U+FFFD first.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) ([]int32, error) {
	if !utf8.ValidString(text) {
		text = sanitizeUTF8(text)
	}
	// 1. Split around added tokens matched in the raw text, normalize the
	//    rest, then split around added tokens matched after normalizing.
	var ps []piece
	if text != "" {
		ps = t.added.split(newPiece(text, true), t.added.raw, nil)
	}
	if t.norm != nil || t.added.norm != nil {
		next := make([]piece, 0, len(ps))
		for _, p := range ps {
			if p.id >= 0 {
				next = append(next, p)
				continue
			}
			if t.norm != nil {
				if err := t.norm.normalize(&p); err != nil {
					return nil, fmt.Errorf("tokenizer: normalizer: %w", err)
				}
			}
			next = t.added.split(p, t.added.norm, next)
		}
		ps = next
	}
	// 2. Pre-tokenize into words.
	if t.pre != nil {
		var err error
		if ps, err = t.pre.preTokenize(ps); err != nil {
			return nil, fmt.Errorf("tokenizer: pre_tokenizer: %w", err)
		}
	}
	// 3. The model.
	ids := make([]int32, 0, len(text)/3+2)
	for _, p := range ps {
		if p.id >= 0 {
			ids = append(ids, p.id)
			continue
		}
		var err error
		if ids, err = t.model.tokenize(ids, p.s); err != nil {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
	}
	// 4. Post-process.
	if t.post == nil {
		return ids, nil
	}
	encs, err := t.post.process([][]int32{ids}, addSpecialTokens)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if len(encs) == 1 {
		return encs[0], nil
	}
	n := 0
	for _, e := range encs {
		n += len(e)
	}
	out := make([]int32, 0, n)
	for _, e := range encs {
		out = append(out, e...)
	}
	return out, nil
}

// sanitizeUTF8 replaces each invalid byte with U+FFFD (as encoding/json
// does when it reads a request body).
func sanitizeUTF8(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 8)
	for _, r := range s {
		b.WriteRune(r)
	}
	return b.String()
}

// Decode turns ids back into text. With skipSpecialTokens, special added
// tokens are left out. An id outside the vocabulary is an error.
func (t *Tokenizer) Decode(ids []int32, skipSpecialTokens bool) (string, error) {
	var out strings.Builder
	p := newPipeline(t.decoder, &out)
	for _, id := range ids {
		s, keep, err := t.decodeToken(id, skipSpecialTokens)
		if err != nil {
			return "", err
		}
		if keep {
			p.token(s)
		}
	}
	p.end()
	return out.String(), nil
}

// decodeToken gives the string the decoder sees for id, and whether it is
// kept.
func (t *Tokenizer) decodeToken(id int32, skipSpecial bool) (string, bool, error) {
	if id < 0 || int(id) >= len(t.known) || !t.known[id] {
		return "", false, fmt.Errorf("tokenizer: token id %d is not in the vocabulary (size %d)", id, t.vocabSize)
	}
	if skipSpecial && t.skip[id] {
		return "", false, nil
	}
	return t.decodeAs[id], true, nil
}

// StreamDecoder decodes a growing sequence of ids one at a time, for
// streaming generated text. It never hands out part of a UTF-8 character,
// and the concatenation of everything Add and Flush return equals Decode of
// all the ids. It is not safe for concurrent use; make one per sequence.
type StreamDecoder struct {
	t    *Tokenizer
	skip bool
	out  strings.Builder
	p    stage
}

// NewStreamDecoder starts decoding a new sequence.
func (t *Tokenizer) NewStreamDecoder(skipSpecialTokens bool) *StreamDecoder {
	d := &StreamDecoder{t: t, skip: skipSpecialTokens}
	d.p = newPipeline(t.decoder, &d.out)
	return d
}

// Add decodes one more id and returns the text that is now final; it may be
// "" while bytes of a character or a strippable tail are held back.
func (d *StreamDecoder) Add(id int32) (string, error) {
	s, keep, err := d.t.decodeToken(id, d.skip)
	if err != nil {
		return "", err
	}
	if keep {
		d.p.token(s)
	}
	return d.take(), nil
}

// Flush ends the sequence and returns what was held back. The decoder then
// starts over, as if new.
func (d *StreamDecoder) Flush() string {
	d.p.end()
	s := d.take()
	d.p = newPipeline(d.t.decoder, &d.out)
	return s
}

func (d *StreamDecoder) take() string {
	if d.out.Len() == 0 {
		return ""
	}
	s := d.out.String()
	d.out.Reset()
	return s
}

// componentType reads the "type" of a component object.
func componentType(raw []byte) (string, error) {
	var c struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return "", err
	}
	if c.Type == nil {
		return "", errors.New("component without a \"type\"")
	}
	return *c.Type, nil
}

func unsupported(kind, typ string) error {
	return fmt.Errorf("%s type %q: %w", kind, typ, ErrUnsupported)
}

func isNull(raw []byte) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}
