package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of tokenizer.json's added_tokens.
type addedToken struct {
	content    string
	id         int32
	special    bool
	normalized bool
	lstrip     bool
	rstrip     bool
	singleWord bool
	// pattern is what the input is matched against, and what Decode shows:
	// the normalizer's output for a normalized token, else content (HF
	// 0.23's normalized_cache).
	pattern string
}

type addedTokenJSON struct {
	ID         *int32 `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	Lstrip     bool   `json:"lstrip"`
	Rstrip     bool   `json:"rstrip"`
	Normalized *bool  `json:"normalized"`
	Special    bool   `json:"special"`
}

// addedVocab is HF's AddedVocabulary: tokens matched in the raw text before
// the normalizer (normalized: false) or in the normalized text (true).
type addedVocab struct {
	byContent map[string]int32
	byID      map[int32]*addedToken
	special   map[string]bool // contents of special tokens
	raw       *trie           // tokens with normalized: false
	norm      *trie           // tokens with normalized: true
}

// newAddedVocab assigns ids the way HF's deserializer does: the id of the
// same content in the model's vocabulary, else the next id after the
// model's (the ids written in the file are not read).
func newAddedVocab(list []addedTokenJSON, model *bpe, n normalizer) (*addedVocab, error) {
	v := &addedVocab{
		byContent: map[string]int32{},
		byID:      map[int32]*addedToken{},
		special:   map[string]bool{},
	}
	next := int32(len(model.vocab))
	for _, j := range list {
		if j.Content == "" {
			continue
		}
		t := &addedToken{
			content:    j.Content,
			special:    j.Special,
			normalized: boolOr(j.Normalized, !j.Special),
			lstrip:     j.Lstrip,
			rstrip:     j.Rstrip,
			singleWord: j.SingleWord,
			pattern:    j.Content,
		}
		if id, ok := v.byContent[t.content]; ok {
			if old := v.byID[id]; old != nil && sameFlags(old, t) {
				continue
			}
		}
		if id, ok := v.byContent[t.content]; ok {
			t.id = id
		} else if id, ok := model.vocab[t.content]; ok {
			t.id = id
		} else {
			t.id = next
			next++
		}
		if t.normalized && n != nil {
			p := newPiece(t.content, true)
			if err := n.normalize(&p); err != nil {
				return nil, err
			}
			t.pattern = p.s
		}
		v.byContent[t.content] = t.id
		if t.special {
			v.special[t.content] = true
		}
		v.byID[t.id] = t
	}
	raw, norm := &trie{}, &trie{}
	for _, t := range v.byID {
		if t.pattern == "" {
			continue
		}
		if t.normalized {
			norm.add(t.pattern, t.id)
		} else {
			raw.add(t.pattern, t.id)
		}
	}
	if len(raw.val) > 0 {
		v.raw = raw
	}
	if len(norm.val) > 0 {
		v.norm = norm
	}
	return v, nil
}

func sameFlags(a, b *addedToken) bool {
	return a.content == b.content && a.special == b.special && a.normalized == b.normalized &&
		a.lstrip == b.lstrip && a.rstrip == b.rstrip && a.singleWord == b.singleWord
}

// split cuts p around the added tokens of t (HF's split_with_indices over
// find_matches), appending the pieces to out.
func (v *addedVocab) split(p piece, t *trie, out []piece) []piece {
	s := p.s
	if t == nil || s == "" {
		if s != "" {
			out = append(out, p.slice(0, len(s)))
		}
		return out
	}
	emit := func(a, b int, id int32) {
		if a == b {
			return
		}
		q := p.slice(a, b)
		q.id = id
		out = append(out, q)
	}
	startOffset := 0
	for i := 0; i < len(s); {
		if !t.first[s[i]] {
			i++
			continue
		}
		end, id := t.longest(s, i)
		if id < 0 {
			i++
			continue
		}
		start, stop := i, end
		i = end
		tok := v.byID[id]
		if tok.singleWord {
			startSpace := start == 0 || !endsWithWord(s[:start])
			stopSpace := stop == len(s) || !startsWithWord(s[stop:])
			if !startSpace || !stopSpace {
				continue
			}
		}
		if tok.lstrip {
			start = max(len(trimRightSpace(s[:start])), startOffset)
		}
		if tok.rstrip {
			stop = len(s) - len(trimLeftSpace(s[stop:]))
		}
		if startOffset < start {
			emit(startOffset, start, -1)
		}
		emit(start, stop, id)
		startOffset = stop
	}
	if startOffset != len(s) {
		emit(startOffset, len(s), -1)
	}
	return out
}

func trimRightSpace(s string) string {
	for len(s) > 0 {
		r, n := utf8.DecodeLastRuneInString(s)
		if !unicode.IsSpace(r) {
			break
		}
		s = s[:len(s)-n]
	}
	return s
}

func trimLeftSpace(s string) string {
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		if !unicode.IsSpace(r) {
			break
		}
		s = s[n:]
	}
	return s
}

func endsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordChar(r)
}

func startsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordChar(r)
}

// trie is a byte trie over the added tokens' patterns, for leftmost-longest
// matching.
type trie struct {
	edges map[uint64]int32 // node<<8 | byte -> child node
	val   []int32          // per node: token id ending here, or -1
	first [256]bool        // bytes that start some pattern
}

func (t *trie) add(pattern string, id int32) {
	if t.val == nil {
		t.val = []int32{-1}
		t.edges = map[uint64]int32{}
	}
	t.first[pattern[0]] = true
	node := int32(0)
	for i := 0; i < len(pattern); i++ {
		k := uint64(node)<<8 | uint64(pattern[i])
		child, ok := t.edges[k]
		if !ok {
			child = int32(len(t.val))
			t.val = append(t.val, -1)
			t.edges[k] = child
		}
		node = child
	}
	// Two tokens with the same pattern: keep the lower id.
	if old := t.val[node]; old < 0 || id < old {
		t.val[node] = id
	}
}

// longest returns the end and id of the longest pattern starting at s[i:],
// or id -1.
func (t *trie) longest(s string, i int) (end int, id int32) {
	id = -1
	node := int32(0)
	for j := i; j < len(s); j++ {
		child, ok := t.edges[uint64(node)<<8|uint64(s[j])]
		if !ok {
			break
		}
		node = child
		if v := t.val[node]; v >= 0 {
			end, id = j+1, v
		}
	}
	return end, id
}
