package tokenizer

import (
	"encoding/json"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpe is HF's BPE model.
type bpe struct {
	vocab  map[string]int32
	vocabR map[int32]string
	merges map[uint64]merge // key: left id << 32 | right id

	unk          string
	hasUnk       bool
	prefix       string // continuing_subword_prefix
	suffix       string // end_of_word_suffix
	fuseUnk      bool
	byteFallback bool
	ignoreMerges bool
	byteIDs      [256]int32 // id of "<0xNN>", or -1
	hasAllBytes  bool

	cache wordCache
}

type merge struct {
	rank int32
	id   int32
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

type bpeJSON struct {
	Type                    string           `json:"type"`
	Dropout                 *float64         `json:"dropout"`
	UnkToken                *string          `json:"unk_token"`
	ContinuingSubwordPrefix *string          `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string          `json:"end_of_word_suffix"`
	FuseUnk                 *bool            `json:"fuse_unk"`
	ByteFallback            *bool            `json:"byte_fallback"`
	IgnoreMerges            *bool            `json:"ignore_merges"`
	Vocab                   map[string]int32 `json:"vocab"`
	Merges                  json.RawMessage  `json:"merges"`
}

func parseModel(raw []byte) (*bpe, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, fmt.Errorf("model: missing")
	}
	if typ, err := componentType(raw); err == nil && typ != "BPE" {
		return nil, unsupported("model", typ)
	}
	var c bpeJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if c.Type == "" && c.Merges == nil {
		// An untyped (legacy) model is a BPE only if it has merges.
		return nil, fmt.Errorf("model: missing \"type\"")
	}
	if c.Vocab == nil || c.Merges == nil {
		return nil, fmt.Errorf("model BPE: missing vocab/merges")
	}
	if c.Dropout != nil && *c.Dropout != 0 {
		// Dropout makes encoding random; no inference tokenizer uses it.
		return nil, fmt.Errorf("model BPE: dropout %v is not supported", *c.Dropout)
	}
	m := &bpe{
		vocab:        c.Vocab,
		vocabR:       make(map[int32]string, len(c.Vocab)),
		fuseUnk:      boolOr(c.FuseUnk, false),
		byteFallback: boolOr(c.ByteFallback, false),
		ignoreMerges: boolOr(c.IgnoreMerges, false),
	}
	if c.UnkToken != nil {
		m.unk, m.hasUnk = *c.UnkToken, true
	}
	if c.ContinuingSubwordPrefix != nil {
		m.prefix = *c.ContinuingSubwordPrefix
	}
	if c.EndOfWordSuffix != nil {
		m.suffix = *c.EndOfWordSuffix
	}
	for tok, id := range c.Vocab {
		if id < 0 {
			return nil, fmt.Errorf("model BPE: token %q has negative id %d", tok, id)
		}
		// Several tokens may share an id; keep a deterministic one.
		if old, ok := m.vocabR[id]; !ok || tok < old {
			m.vocabR[id] = tok
		}
	}
	m.hasAllBytes = true
	for b := range 256 {
		id, ok := c.Vocab[fmt.Sprintf("<0x%02X>", b)]
		if !ok {
			id = -1
			m.hasAllBytes = false
		}
		m.byteIDs[b] = id
	}
	pairs, err := parseMerges(c.Merges)
	if err != nil {
		return nil, fmt.Errorf("model BPE: %w", err)
	}
	m.merges = make(map[uint64]merge, len(pairs))
	for rank, p := range pairs {
		a, ok := c.Vocab[p[0]]
		if !ok {
			return nil, fmt.Errorf("model BPE: merge %d: token %q not in vocab", rank, p[0])
		}
		b, ok := c.Vocab[p[1]]
		if !ok {
			return nil, fmt.Errorf("model BPE: merge %d: token %q not in vocab", rank, p[1])
		}
		right := p[1]
		if m.prefix != "" {
			if !strings.HasPrefix(right, m.prefix) {
				return nil, fmt.Errorf("model BPE: merge %d: %q lacks the continuing_subword_prefix", rank, right)
			}
			right = right[len(m.prefix):]
		}
		id, ok := c.Vocab[p[0]+right]
		if !ok {
			return nil, fmt.Errorf("model BPE: merge %d: token %q not in vocab", rank, p[0]+right)
		}
		// A repeated pair keeps its last rank, as in HF.
		m.merges[pairKey(a, b)] = merge{rank: int32(rank), id: id}
	}
	m.cache.init()
	return m, nil
}

// parseMerges accepts both ["a b", ...] and [["a", "b"], ...].
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	var lines []string
	if err := json.Unmarshal(raw, &lines); err == nil {
		out := make([][2]string, 0, len(lines))
		for _, l := range lines {
			if strings.HasPrefix(l, "#version") {
				continue
			}
			a, b, ok := strings.Cut(l, " ")
			if !ok || strings.Contains(b, " ") {
				return nil, fmt.Errorf("merges: line %d: %q is not two tokens separated by a space", len(out)+1, l)
			}
			out = append(out, [2]string{a, b})
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("merges: neither a list of strings nor a list of pairs: %w", err)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("merges: entry %d has %d tokens, want 2", i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

// maxCachedWord matches HF: words this long or longer are not cached.
const maxCachedWord = 256

// tokenize appends the ids of one pre-tokenized word.
func (m *bpe) tokenize(dst []int32, w string) ([]int32, error) {
	if w == "" {
		return dst, nil
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[w]; ok {
			return append(dst, id), nil
		}
	}
	if len(w) < maxCachedWord {
		if ids, ok := m.cache.get(w); ok {
			return append(dst, ids...), nil
		}
	}
	start := len(dst)
	dst, err := m.mergeWord(dst, w)
	if err != nil {
		return nil, err
	}
	if len(w) < maxCachedWord {
		m.cache.put(w, dst[start:])
	}
	return dst, nil
}

type symbol struct {
	id         int32
	prev, next int32
	size       int32 // bytes covered; 0 once merged into its left neighbour
}

// mergeWord is HF's BPE::merge_word followed by Word::merge_all.
func (m *bpe) mergeWord(dst []int32, w string) ([]int32, error) {
	syms := make([]symbol, 0, len(w))
	add := func(id int32, size int) {
		n := int32(len(syms))
		if n > 0 {
			syms[n-1].next = n
		}
		syms = append(syms, symbol{id: id, prev: n - 1, next: -1, size: int32(size)})
	}
	unkID, unkSize := int32(-1), 0
	var buf []byte
	for i := 0; i < len(w); {
		_, n := utf8.DecodeRuneInString(w[i:])
		s := w[i : i+n]
		if m.prefix != "" || m.suffix != "" {
			buf = buf[:0]
			if i > 0 {
				buf = append(buf, m.prefix...)
			}
			buf = append(buf, s...)
			if i+n == len(w) {
				buf = append(buf, m.suffix...)
			}
			s = string(buf)
		}
		i += n
		if id, ok := m.vocab[s]; ok {
			if unkID >= 0 {
				add(unkID, unkSize)
				unkID = -1
			}
			add(id, n)
			continue
		}
		if m.byteFallback && m.allBytesKnown(s) {
			for j := 0; j < len(s); j++ {
				add(m.byteIDs[s[j]], 1)
			}
			continue
		}
		if !m.hasUnk {
			continue
		}
		id, ok := m.vocab[m.unk]
		if !ok {
			return nil, fmt.Errorf("unk_token %q is not in the vocabulary", m.unk)
		}
		switch {
		case unkID >= 0 && m.fuseUnk:
			unkSize += n
		case unkID >= 0:
			add(unkID, unkSize)
			unkID, unkSize = id, n
		default:
			unkID, unkSize = id, n
		}
	}
	if unkID >= 0 {
		add(unkID, unkSize)
	}
	m.mergeAll(syms)
	for _, s := range syms {
		if s.size != 0 {
			dst = append(dst, s.id)
		}
	}
	return dst, nil
}

func (m *bpe) allBytesKnown(s string) bool {
	if m.hasAllBytes {
		return true
	}
	for j := 0; j < len(s); j++ {
		if m.byteIDs[s[j]] < 0 {
			return false
		}
	}
	return true
}

// mergeAll applies merges lowest rank first (leftmost on ties) with a heap
// of candidate pairs over the symbol list: O(n log n) for an n-symbol word.
// Stale heap entries are skipped exactly as HF's Word::merge_all does.
func (m *bpe) mergeAll(syms []symbol) {
	if len(syms) < 2 {
		return
	}
	h := mergeHeap(make([]heapItem, 0, len(syms)))
	for i := 0; i+1 < len(syms); i++ {
		if mg, ok := m.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			h = append(h, heapItem{rank: mg.rank, pos: int32(i), id: mg.id})
		}
	}
	h.init()
	for len(h) > 0 {
		top := h.pop()
		cur := &syms[top.pos]
		if cur.size == 0 || cur.next == -1 {
			continue
		}
		nextPos := cur.next
		right := syms[nextPos]
		if mg, ok := m.merges[pairKey(cur.id, right.id)]; !ok || mg.id != top.id {
			continue
		}
		cur.id = top.id
		cur.size += right.size
		cur.next = right.next
		syms[nextPos].size = 0
		if right.next >= 0 {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if mg, ok := m.merges[pairKey(syms[cur.prev].id, cur.id)]; ok {
				h.push(heapItem{rank: mg.rank, pos: cur.prev, id: mg.id})
			}
		}
		if cur.next >= 0 {
			if mg, ok := m.merges[pairKey(cur.id, syms[cur.next].id)]; ok {
				h.push(heapItem{rank: mg.rank, pos: top.pos, id: mg.id})
			}
		}
	}
}

type heapItem struct {
	rank, pos, id int32
}

func (a heapItem) less(b heapItem) bool {
	if a.rank != b.rank {
		return a.rank < b.rank
	}
	return a.pos < b.pos
}

// mergeHeap is a binary min-heap ordered by (rank, pos).
type mergeHeap []heapItem

func (h mergeHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *mergeHeap) push(x heapItem) {
	*h = append(*h, x)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s[i].less(s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *mergeHeap) pop() heapItem {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	*h = s[:last]
	h.down(0)
	return top
}

func (h mergeHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && h[r].less(h[l]) {
			c = r
		}
		if !h[c].less(h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// wordCache maps short words to their ids. It is sharded to keep lock
// contention low when many goroutines encode at once, and bounded: a full
// shard is emptied and starts over.
type wordCache struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard
}

const (
	cacheShards   = 32
	cacheShardCap = 10000 / cacheShards * 4
)

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int32
}

func (c *wordCache) init() {
	c.seed = maphash.MakeSeed()
	for i := range c.shards {
		c.shards[i].m = make(map[string][]int32)
	}
}

func (c *wordCache) shard(w string) *cacheShard {
	return &c.shards[maphash.String(c.seed, w)%cacheShards]
}

func (c *wordCache) get(w string) ([]int32, bool) {
	s := c.shard(w)
	s.mu.RLock()
	ids, ok := s.m[w]
	s.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []int32) {
	s := c.shard(w)
	cp := append([]int32(nil), ids...)
	s.mu.Lock()
	if len(s.m) >= cacheShardCap {
		clear(s.m)
	}
	s.m[w] = cp
	s.mu.Unlock()
}
