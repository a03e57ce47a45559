// Package safetensors reads tensors from files in the safetensors format:
// an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the raw little-endian data. Files are
// mapped into memory read-only; embedded data is parsed in place. Every
// header field is validated before any tensor is handed out.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// MaxHeaderSize bounds the JSON header (the format's own limit is 100 MB).
const MaxHeaderSize = 100 << 20

// Sentinel errors, returned wrapped with the file, tensor and value at fault.
var (
	// ErrInvalid: the bytes are not a well-formed safetensors file.
	ErrInvalid = errors.New("safetensors: invalid file")
	// ErrUnknownDType: the header names a dtype the format does not define.
	ErrUnknownDType = errors.New("safetensors: unknown dtype")
	// ErrUnsupportedDType: the tensor's dtype cannot be converted to float32.
	ErrUnsupportedDType = errors.New("safetensors: unsupported dtype")
	// ErrNotFound: no tensor of that name.
	ErrNotFound = errors.New("safetensors: tensor not found")
	// ErrClosed: the file was closed.
	ErrClosed = errors.New("safetensors: file closed")
)

// Tensor is one tensor of a file. Data aliases the file's memory: it is
// valid until the File is closed and must not be written.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// NumElements is the product of the shape (1 for a scalar).
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Float32 returns the tensor's values converted to float32.
func (t Tensor) Float32() ([]float32, error) {
	if err := t.checkFloat(); err != nil {
		return nil, err
	}
	dst := make([]float32, t.NumElements())
	convert(dst, t.Data, t.DType)
	return dst, nil
}

// Float32Into converts the tensor's values into dst, which must hold
// exactly NumElements values.
func (t Tensor) Float32Into(dst []float32) error {
	if err := t.checkFloat(); err != nil {
		return err
	}
	if n := t.NumElements(); len(dst) != n {
		return fmt.Errorf("safetensors: tensor %q has %d elements, destination holds %d", t.Name, n, len(dst))
	}
	convert(dst, t.Data, t.DType)
	return nil
}

func (t Tensor) checkFloat() error {
	if !t.DType.Float() {
		return fmt.Errorf("%w: tensor %q has dtype %s; supported: F32, F16, BF16", ErrUnsupportedDType, t.Name, t.DType)
	}
	if want := t.NumElements() * t.DType.Size(); len(t.Data) != want {
		return fmt.Errorf("%w: tensor %q holds %d bytes, shape %v of %s needs %d", ErrInvalid, t.Name, len(t.Data), t.Shape, t.DType, want)
	}
	return nil
}

// File is a parsed safetensors file. Its methods are safe for concurrent
// use; tensors must not be used after Close.
type File struct {
	mu       sync.RWMutex
	data     []byte // whole file
	mapped   bool   // data is an mmap to release on Close
	closed   bool
	name     string // for error messages
	tensors  map[string]Tensor
	names    []string
	metadata map[string]string
}

// Open maps the file at path read-only and parses it.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrInvalid, path)
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("%w: %s: %d bytes, shorter than the 8-byte header length", ErrInvalid, path, size)
	}
	if size > math.MaxInt {
		return nil, fmt.Errorf("%w: %s: %d bytes is too large to map", ErrInvalid, path, size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("safetensors: mmap %s: %w", path, err)
	}
	sf, err := parse(data, path)
	if err != nil {
		_ = unix.Munmap(data)
		return nil, err
	}
	sf.mapped = true
	return sf, nil
}

// Parse parses a safetensors file held in memory (an embedded file, say).
// The tensors alias data, which must not change while the File is in use.
func Parse(data []byte) (*File, error) { return parse(data, "<memory>") }

// headerEntry is one tensor's header record.
type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets []uint64 `json:"data_offsets"`
}

func parse(data []byte, name string) (*File, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalid, name, fmt.Sprintf(format, args...))
	}
	if len(data) < 8 {
		return nil, bad("%d bytes, shorter than the 8-byte header length", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > MaxHeaderSize {
		return nil, bad("header length %d exceeds the limit of %d", n, MaxHeaderSize)
	}
	if n > uint64(len(data)-8) {
		return nil, bad("header length %d exceeds the %d bytes after the length field", n, len(data)-8)
	}
	if n < 2 || data[8] != '{' {
		return nil, bad("header does not start with a JSON object")
	}
	header := data[8 : 8+n]
	body := data[8+n:]

	var raw map[string]json.RawMessage
	if err := json.Unmarshal(header, &raw); err != nil {
		return nil, bad("header JSON: %v", err)
	}
	sf := &File{data: data, name: name, tensors: make(map[string]Tensor, len(raw))}
	type span struct {
		begin, end uint64
		name       string
	}
	spans := make([]span, 0, len(raw))
	for key, msg := range raw {
		if key == "__metadata__" {
			if err := json.Unmarshal(msg, &sf.metadata); err != nil {
				return nil, bad("__metadata__ must map strings to strings: %v", err)
			}
			continue
		}
		var e headerEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, bad("tensor %q: %v", key, err)
		}
		dt, err := ParseDType(e.DType)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: tensor %q: %w", ErrInvalid, name, key, err)
		}
		if len(e.DataOffsets) != 2 {
			return nil, bad("tensor %q: data_offsets must be [begin, end], got %v", key, e.DataOffsets)
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin > end || end > uint64(len(body)) {
			return nil, bad("tensor %q: data_offsets [%d, %d] outside the %d-byte data section", key, begin, end, len(body))
		}
		// Element count, bounded by the data section so it cannot overflow.
		shape := make([]int, len(e.Shape))
		elems := uint64(1)
		for _, d := range e.Shape {
			if d < 0 {
				return nil, bad("tensor %q: negative dimension %d in shape %v", key, d, e.Shape)
			}
			if d == 0 {
				elems = 0
			}
		}
		for i, d := range e.Shape {
			if elems != 0 {
				if uint64(d) > uint64(len(body)) || elems > uint64(len(body))/uint64(d) {
					return nil, bad("tensor %q: shape %v is larger than the %d-byte data section", key, e.Shape, len(body))
				}
				elems *= uint64(d)
			}
			shape[i] = int(d)
		}
		if want := elems * uint64(dt.Size()); end-begin != want {
			return nil, bad("tensor %q: %d bytes in data_offsets, shape %v of %s needs %d", key, end-begin, e.Shape, dt, want)
		}
		sf.tensors[key] = Tensor{Name: key, DType: dt, Shape: shape, Data: body[begin:end:end]}
		sf.names = append(sf.names, key)
		spans = append(spans, span{begin, end, key})
	}
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	for i := 1; i < len(spans); i++ {
		if spans[i].begin < spans[i-1].end {
			return nil, bad("tensors %q [%d, %d] and %q [%d, %d] overlap", spans[i-1].name, spans[i-1].begin, spans[i-1].end, spans[i].name, spans[i].begin, spans[i].end)
		}
	}
	sort.Strings(sf.names)
	return sf, nil
}

// Tensor returns the tensor called name.
func (f *File) Tensor(name string) (Tensor, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return Tensor{}, fmt.Errorf("%w: %s", ErrClosed, f.name)
	}
	t, ok := f.tensors[name]
	if !ok {
		return Tensor{}, fmt.Errorf("%w: %q in %s", ErrNotFound, name, f.name)
	}
	return t, nil
}

// Names returns the tensor names in sorted order.
func (f *File) Names() []string {
	return append([]string(nil), f.names...)
}

// Metadata returns the header's __metadata__ map (nil when absent).
func (f *File) Metadata() map[string]string {
	out := make(map[string]string, len(f.metadata))
	for k, v := range f.metadata {
		out[k] = v
	}
	return out
}

// Close releases the file's mapping. Tensors obtained from the file must
// not be used afterwards. Closing twice is harmless.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	f.tensors = nil
	if f.mapped {
		if err := unix.Munmap(f.data); err != nil {
			return fmt.Errorf("safetensors: munmap %s: %w", f.name, err)
		}
	}
	f.data = nil
	return nil
}
