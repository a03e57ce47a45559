// Package strictyaml decodes YAML into a struct and refuses keys that name
// no field, suggesting the closest valid one, so that a typo in a config
// file is an error rather than a silently ignored setting. Keys that a
// caller knows but does not implement (options of TensorRT-LLM that we
// accept for compatibility) are dropped with a warning instead.
package strictyaml

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Ignore reports whether the dotted key full (e.g. "kv_cache_config.dtype")
// is a known key to drop, and why (the warning's text).
type Ignore func(full string) (reason string, ok bool)

// Decode decodes data over v, a pointer to a struct holding the defaults.
// An unknown key is an error naming it, its line, the closest valid key and
// all valid keys at that level; keys that ignore accepts are dropped and
// come back as warnings.
func Decode(data []byte, v any, ignore Ignore) (warnings []string, err error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	if len(root.Content) == 0 { // an empty file
		return nil, nil
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, errors.New("the top level must be a mapping of keys to values")
	}
	t := reflect.TypeOf(v)
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("strictyaml: decode into %s, want a pointer to a struct", t)
	}
	if err := check(doc, t.Elem(), "", ignore, &warnings); err != nil {
		return warnings, err
	}
	if err := doc.Decode(v); err != nil {
		return warnings, err
	}
	return warnings, nil
}

// check walks mapping node n against struct type t, dropping ignored keys
// from n and failing on unknown ones.
func check(n *yaml.Node, t reflect.Type, prefix string, ignore Ignore, warnings *[]string) error {
	fields := Fields(t)
	kept := n.Content[:0:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		full := prefix + k.Value
		if f, ok := fields[k.Value]; ok {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && v.Tag != "!!null" {
				if v.Kind != yaml.MappingNode {
					return fmt.Errorf("%s (line %d) must be a mapping", full, k.Line)
				}
				if err := check(v, ft, full+".", ignore, warnings); err != nil {
					return err
				}
			}
			kept = append(kept, k, v)
			continue
		}
		if ignore != nil {
			if reason, ok := ignore(full); ok {
				*warnings = append(*warnings, fmt.Sprintf("%s (line %d): %s", full, k.Line, reason))
				continue
			}
		}
		names := make([]string, 0, len(fields))
		for name := range fields {
			names = append(names, name)
		}
		sort.Strings(names)
		msg := fmt.Sprintf("unknown key %q (line %d)", full, k.Line)
		if s := Closest(k.Value, names); s != "" {
			msg += fmt.Sprintf("; did you mean %q?", prefix+s)
		}
		return fmt.Errorf("%s; valid keys here: %s", msg, strings.Join(names, ", "))
	}
	n.Content = kept
	return nil
}

// Fields maps the yaml names of struct type t to its fields.
func Fields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			out[name] = f
		}
	}
	return out
}

// Closest returns the candidate nearest to s by edit distance, or "" when
// none is near enough to be a likely typo.
func Closest(s string, candidates []string) string {
	best, bestD := "", len(s)/2+2
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
