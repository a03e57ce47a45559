// Package chat renders Hugging Face chat templates: the Jinja2
// "chat_template" of a model's tokenizer_config.json.
//
// It carries its own interpreter for the subset of Jinja2 that chat
// templates use, configured like transformers' apply_chat_template:
// trim_blocks and lstrip_blocks on, the loopcontrols extension (break,
// continue), the {% generation %} tag, a tojson filter that behaves like
// json.dumps without HTML escaping, and the globals raise_exception and
// strftime_now. Execution is bounded (DefaultLimits) so that a hostile
// template cannot hang or exhaust the server.
//
// Supported: if/elif/else, for (with loop.*, unpacking, an if filter, else,
// break and continue), set (also block set and namespace attributes), macro
// and call blocks, filter blocks, raw, comments and whitespace control;
// Python-like literals, operators, slicing, attribute and item access,
// the common filters, tests, and str and dict methods. Not supported:
// template inheritance and inclusion (extends, block, include, import),
// recursive loops, and autoescaping (transformers does not enable it).
//
// Known differences from Jinja2: filters that Jinja2 evaluates lazily
// (map, select, reject, selectattr, rejectattr, unique, reverse, items)
// return lists, so printing one shows the list rather than a generator
// object, and "items" on a non-mapping fails at once; slicing a value that
// cannot be sliced is an error even where Jinja2 folds a constant
// expression to undefined at compile time.
package chat

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

var (
	// ErrNoTemplate means the model's tokenizer_config.json has no chat template.
	ErrNoTemplate = errors.New("chat: the model has no chat template")
	// ErrRaised marks an error raised by the template itself through
	// raise_exception; the error's message carries the template's text.
	ErrRaised = errors.New("chat: template raised an exception")
	// ErrLimit marks a render stopped by an execution limit.
	ErrLimit = errors.New("chat: template exceeded an execution limit")
	// errInternal marks a bug in this package caught at the API boundary.
	errInternal = errors.New("chat: internal error")
)

// recoverInternal turns a panic into an error wrapping errInternal, so that
// a bug in the interpreter fails one request instead of the server.
func recoverInternal(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: %v", errInternal, r)
	}
}

// SyntaxError is a template that does not parse.
type SyntaxError struct {
	// Pos is where the problem is.
	Pos Pos
	// Msg says what the problem is.
	Msg string
}

// Error reports the position and the problem.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("chat template syntax error at %s: %s", e.Pos, e.Msg)
}

// RenderError is a failure while rendering a template.
type RenderError struct {
	// Pos is the template position being evaluated.
	Pos Pos
	// Msg says what went wrong.
	Msg string
	// Err is the underlying cause (ErrRaised, ErrLimit or another error), if any.
	Err error
}

// Error reports the position and the problem.
func (e *RenderError) Error() string {
	return fmt.Sprintf("chat template error at %s: %s", e.Pos, e.Msg)
}

// Unwrap returns the underlying cause.
func (e *RenderError) Unwrap() error { return e.Err }

// Message is one chat message as the OpenAI API carries it.
type Message struct {
	// Role is "system", "user", "assistant", "tool", ...
	Role string `json:"role"`
	// Content is a string, a list of content parts ([]map[string]any or
	// []any, or a json.RawMessage to keep key order), or nil.
	Content any `json:"content"`
	// Name is the optional participant name.
	Name string `json:"name,omitempty"`
	// ToolCalls are the assistant's tool calls (decoded JSON, or a
	// json.RawMessage to keep key order).
	ToolCalls any `json:"tool_calls,omitempty"`
	// ToolCallID links a tool result to its call.
	ToolCallID string `json:"tool_call_id,omitempty"`
}

// toDict converts a message into the mapping the template sees: role and
// content always, the other fields only when set.
func (m Message) toDict() (*dict, error) {
	d := newDict()
	d.set("role", m.Role)
	c, err := toValue(m.Content)
	if err != nil {
		return nil, fmt.Errorf("message content: %w", err)
	}
	d.set("content", c)
	if m.Name != "" {
		d.set("name", m.Name)
	}
	if m.ToolCalls != nil {
		tc, err := toValue(m.ToolCalls)
		if err != nil {
			return nil, fmt.Errorf("message tool_calls: %w", err)
		}
		d.set("tool_calls", tc)
	}
	if m.ToolCallID != "" {
		d.set("tool_call_id", m.ToolCallID)
	}
	return d, nil
}

// RenderOptions are the variables besides the messages.
type RenderOptions struct {
	// AddGenerationPrompt asks the template to open an assistant turn.
	AddGenerationPrompt bool
	// BOSToken and EOSToken are the model's special tokens; an empty one is
	// left undefined in the template, as transformers does for a tokenizer
	// without that token.
	BOSToken, EOSToken string
	// Tools are the tool schemas; nil renders as none. Elements may be
	// json.RawMessage, which keeps the schema's key order for tojson; Go
	// maps are rendered in sorted key order, structs in field order.
	Tools []any
	// Extra are additional template variables (JSON-decoded values, or
	// json.RawMessage to keep key order). They cannot replace messages,
	// tools, add_generation_prompt, bos_token or eos_token.
	Extra map[string]any
}

// Template is a parsed chat template, safe for concurrent use.
type Template struct {
	body   []node
	limits Limits
}

// Parse parses a chat template.
func Parse(src string) (t *Template, err error) {
	defer recoverInternal(&err)
	body, err := parse(src)
	if err != nil {
		return nil, err
	}
	return &Template{body: body, limits: DefaultLimits}, nil
}

// WithLimits returns a copy of t that renders under the given limits.
func (t *Template) WithLimits(l Limits) *Template {
	c := *t
	c.limits = l
	return &c
}

// Render renders the template for a conversation.
func (t *Template) Render(messages []Message, opts RenderOptions) (string, error) {
	vars := make(map[string]any, len(opts.Extra)+6)
	// transformers always passes documents (None unless given).
	vars["documents"] = nil
	for k, v := range opts.Extra {
		vars[k] = v
	}
	msgs := make([]any, len(messages))
	for i, m := range messages {
		d, err := m.toDict()
		if err != nil {
			return "", fmt.Errorf("chat: message %d: %w", i, err)
		}
		msgs[i] = d
	}
	vars["messages"] = msgs
	vars["add_generation_prompt"] = opts.AddGenerationPrompt
	// Like transformers, a token the tokenizer lacks is left undefined.
	delete(vars, "bos_token")
	delete(vars, "eos_token")
	if opts.BOSToken != "" {
		vars["bos_token"] = opts.BOSToken
	}
	if opts.EOSToken != "" {
		vars["eos_token"] = opts.EOSToken
	}
	if opts.Tools != nil {
		vars["tools"] = opts.Tools
	} else {
		vars["tools"] = nil
	}
	return t.Execute(vars)
}

// Execute renders the template with arbitrary variables. Values may be Go
// scalars, slices, maps (iterated in sorted key order), json.RawMessage
// (decoded keeping key order) or Messages.
func (t *Template) Execute(vars map[string]any) (out string, err error) {
	defer recoverInternal(&err)
	root := newScope(nil)
	for k, v := range globals() {
		root.vars[k] = v
	}
	for k, v := range vars {
		c, err := toValue(v)
		if err != nil {
			return "", fmt.Errorf("chat: variable %s: %w", k, err)
		}
		root.vars[k] = c
	}
	var b strings.Builder
	st := &state{out: &b, limits: t.limits}
	if err := st.execBody(t.body, newScope(root)); err != nil {
		if err == errBreak || err == errContinue {
			return "", fmt.Errorf("chat: loop control outside a loop")
		}
		return "", err
	}
	return b.String(), nil
}

// timeNow is the clock strftime_now reads; tests replace it.
var timeNow = time.Now

func globals() map[string]value {
	return map[string]value{
		"raise_exception": callable(func(_ *state, args []value, _ []kwarg) (value, error) {
			msg := ""
			if len(args) > 0 {
				msg = str(args[0])
			}
			return nil, &raisedError{msg: msg}
		}),
		"strftime_now": callable(func(_ *state, args []value, _ []kwarg) (value, error) {
			if len(args) != 1 {
				return nil, fmt.Errorf("strftime_now takes one argument")
			}
			f, ok := args[0].(string)
			if !ok {
				return nil, fmt.Errorf("strftime_now format must be a string")
			}
			return strftime(timeNow(), f), nil
		}),
		"range":     callable(globalRange),
		"namespace": callable(globalNamespace),
		"dict": callable(func(_ *state, args []value, kwargs []kwarg) (value, error) {
			d := newDict()
			for _, a := range args {
				src, ok := a.(*dict)
				if !ok {
					return nil, fmt.Errorf("dict() positional argument must be a mapping")
				}
				for _, k := range src.keys {
					v, _ := src.get(k)
					d.set(k, v)
				}
			}
			for _, k := range kwargs {
				d.set(k.name, k.val)
			}
			return d, nil
		}),
	}
}

func globalRange(st *state, args []value, kwargs []kwarg) (value, error) {
	if len(kwargs) > 0 || len(args) == 0 || len(args) > 3 {
		return nil, fmt.Errorf("range expected 1 to 3 integer arguments")
	}
	n := make([]int, len(args))
	for i, a := range args {
		v, ok := asInt(a)
		if !ok {
			return nil, fmt.Errorf("'%s' object cannot be interpreted as an integer", typeName(a))
		}
		n[i] = v
	}
	start, stop, step := 0, n[0], 1
	if len(n) > 1 {
		start, stop = n[0], n[1]
	}
	if len(n) > 2 {
		step = n[2]
	}
	if step == 0 {
		return nil, fmt.Errorf("range() arg 3 must not be zero")
	}
	// Count in floating point first so that huge bounds cannot overflow.
	span := (float64(stop) - float64(start)) / float64(step)
	if span > float64(st.limits.MaxSteps) {
		return nil, fmt.Errorf("%w: range of about %.0f items", ErrLimit, span)
	}
	var count int
	if step > 0 && stop > start {
		count = (stop - start + step - 1) / step
	} else if step < 0 && stop < start {
		count = (start - stop + (-step) - 1) / -step
	}
	out := make([]any, count)
	for i := range out {
		out[i] = start + i*step
	}
	return out, nil
}

func globalNamespace(_ *state, args []value, kwargs []kwarg) (value, error) {
	ns := &namespace{attrs: newDict()}
	for _, a := range args {
		d, ok := a.(*dict)
		if !ok {
			return nil, fmt.Errorf("namespace() positional argument must be a mapping")
		}
		for _, k := range d.keys {
			v, _ := d.get(k)
			ns.attrs.set(k, v)
		}
	}
	for _, k := range kwargs {
		ns.attrs.set(k.name, k.val)
	}
	return ns, nil
}

// strftime formats t with C strftime directives, including glibc's "%-d"
// style flag that drops padding.
func strftime(t time.Time, f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c != '%' || i+1 >= len(f) {
			b.WriteByte(c)
			continue
		}
		i++
		noPad := false
		if f[i] == '-' && i+1 < len(f) {
			noPad = true
			i++
		}
		num := func(v, width int) {
			if noPad {
				fmt.Fprintf(&b, "%d", v)
			} else {
				fmt.Fprintf(&b, "%0*d", width, v)
			}
		}
		switch f[i] {
		case 'Y':
			fmt.Fprintf(&b, "%d", t.Year())
		case 'y':
			num(t.Year()%100, 2)
		case 'm':
			num(int(t.Month()), 2)
		case 'd':
			num(t.Day(), 2)
		case 'e':
			fmt.Fprintf(&b, "%2d", t.Day())
		case 'H':
			num(t.Hour(), 2)
		case 'I':
			h := t.Hour() % 12
			if h == 0 {
				h = 12
			}
			num(h, 2)
		case 'M':
			num(t.Minute(), 2)
		case 'S':
			num(t.Second(), 2)
		case 'j':
			num(t.YearDay(), 3)
		case 'p':
			if t.Hour() < 12 {
				b.WriteString("AM")
			} else {
				b.WriteString("PM")
			}
		case 'B':
			b.WriteString(t.Month().String())
		case 'b', 'h':
			b.WriteString(t.Month().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'Z':
			name, _ := t.Zone()
			b.WriteString(name)
		case 'z':
			b.WriteString(t.Format("-0700"))
		case 'F':
			b.WriteString(t.Format("2006-01-02"))
		case 'T':
			b.WriteString(t.Format("15:04:05"))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			if noPad {
				b.WriteByte('-')
			}
			b.WriteByte(f[i])
		}
	}
	return b.String()
}
