package tokenizer

import (
	"encoding/json"
	"fmt"
)

// postProcessor adds special tokens around the encoded sequence (HF's
// PostProcessor). It sees the list of encodings HF passes along (one for a
// single sequence) and returns the list to concatenate.
type postProcessor interface {
	process(encs [][]int32, addSpecial bool) ([][]int32, error)
}

type seqPostProcessor []postProcessor

func (s seqPostProcessor) process(encs [][]int32, addSpecial bool) ([][]int32, error) {
	var err error
	for _, p := range s {
		if encs, err = p.process(encs, addSpecial); err != nil {
			return nil, err
		}
	}
	return encs, nil
}

// byteLevelPost only trims offsets in HF; ids are unchanged.
type byteLevelPost struct{}

func (byteLevelPost) process(encs [][]int32, _ bool) ([][]int32, error) { return encs, nil }

type templatePiece struct {
	seq     int    // 0 for $A, 1 for $B; -1 for a special token
	special string // the special token's key in special_tokens
}

type templatePost struct {
	single, pair []templatePiece
	special      map[string][]int32
}

func (t templatePost) process(encs [][]int32, addSpecial bool) ([][]int32, error) {
	tmpl := t.single
	if len(encs) == 2 {
		tmpl = t.pair
	} else if len(encs) != 1 {
		return nil, fmt.Errorf("post_processor TemplateProcessing: %d sequences", len(encs))
	}
	out := make([][]int32, 0, len(tmpl))
	for _, p := range tmpl {
		switch {
		case p.seq >= 0:
			if p.seq >= len(encs) {
				return nil, fmt.Errorf("post_processor TemplateProcessing: template uses $B for a single sequence")
			}
			out = append(out, encs[p.seq])
		case addSpecial:
			out = append(out, t.special[p.special])
		}
	}
	return out, nil
}

// clsSepPost is BertProcessing and RobertaProcessing: [CLS] $A [SEP].
type clsSepPost struct {
	cls, sep int32
}

func (c clsSepPost) process(encs [][]int32, addSpecial bool) ([][]int32, error) {
	if !addSpecial {
		return encs, nil
	}
	if len(encs) != 1 {
		return nil, fmt.Errorf("post_processor: pairs are not supported")
	}
	ids := make([]int32, 0, len(encs[0])+2)
	ids = append(ids, c.cls)
	ids = append(ids, encs[0]...)
	ids = append(ids, c.sep)
	return [][]int32{ids}, nil
}

func parsePostProcessor(raw []byte) (postProcessor, error) {
	typ, err := componentType(raw)
	if err != nil {
		return nil, fmt.Errorf("post_processor: %w", err)
	}
	switch typ {
	case "Sequence":
		var c struct {
			Processors []jsonRaw `json:"processors"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("post_processor Sequence: %w", err)
		}
		var seq seqPostProcessor
		for _, r := range c.Processors {
			p, err := parsePostProcessor(r)
			if err != nil {
				return nil, err
			}
			seq = append(seq, p)
		}
		return seq, nil
	case "ByteLevel":
		return byteLevelPost{}, nil
	case "TemplateProcessing":
		return parseTemplate(raw)
	case "BertProcessing", "RobertaProcessing":
		var c struct {
			Sep [2]any `json:"sep"`
			Cls [2]any `json:"cls"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("post_processor %s: %w", typ, err)
		}
		cls, ok1 := c.Cls[1].(float64)
		sep, ok2 := c.Sep[1].(float64)
		if !ok1 || !ok2 || cls < 0 || sep < 0 || cls != float64(int32(cls)) || sep != float64(int32(sep)) {
			return nil, fmt.Errorf("post_processor %s: cls/sep must be [token, id]", typ)
		}
		return clsSepPost{cls: int32(cls), sep: int32(sep)}, nil
	}
	return nil, unsupported("post_processor", typ)
}

func parseTemplate(raw []byte) (postProcessor, error) {
	type pieceJSON struct {
		Sequence *struct {
			ID string `json:"id"`
		} `json:"Sequence"`
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
	}
	var c struct {
		Single        []pieceJSON `json:"single"`
		Pair          []pieceJSON `json:"pair"`
		SpecialTokens map[string]struct {
			ID  string  `json:"id"`
			IDs []int32 `json:"ids"`
		} `json:"special_tokens"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("post_processor TemplateProcessing: %w", err)
	}
	t := templatePost{special: map[string][]int32{}}
	for k, v := range c.SpecialTokens {
		for _, id := range v.IDs {
			if id < 0 {
				return nil, fmt.Errorf("post_processor TemplateProcessing: special token %q has id %d", k, id)
			}
		}
		t.special[k] = v.IDs
	}
	conv := func(ps []pieceJSON) ([]templatePiece, error) {
		var out []templatePiece
		for _, p := range ps {
			switch {
			case p.Sequence != nil && p.SpecialToken == nil:
				switch p.Sequence.ID {
				case "A":
					out = append(out, templatePiece{seq: 0})
				case "B":
					out = append(out, templatePiece{seq: 1})
				default:
					return nil, fmt.Errorf("unknown sequence %q", p.Sequence.ID)
				}
			case p.SpecialToken != nil && p.Sequence == nil:
				if _, ok := t.special[p.SpecialToken.ID]; !ok {
					return nil, fmt.Errorf("missing special token %q", p.SpecialToken.ID)
				}
				out = append(out, templatePiece{seq: -1, special: p.SpecialToken.ID})
			default:
				return nil, fmt.Errorf("a piece must be a Sequence or a SpecialToken")
			}
		}
		return out, nil
	}
	var err error
	if t.single, err = conv(c.Single); err != nil {
		return nil, fmt.Errorf("post_processor TemplateProcessing: single: %w", err)
	}
	if t.pair, err = conv(c.Pair); err != nil {
		return nil, fmt.Errorf("post_processor TemplateProcessing: pair: %w", err)
	}
	return t, nil
}
