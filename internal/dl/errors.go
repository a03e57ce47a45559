package dl

import "errors"

var (
	// ErrNotFound: the library could not be opened.
	ErrNotFound = errors.New("dl: library not found")
	// ErrNoSymbol: the library lacks a symbol.
	ErrNoSymbol = errors.New("dl: symbol not found")
	// ErrNoCgo: this binary was built without cgo and cannot load libraries.
	ErrNoCgo = errors.New("dl: built without cgo; native libraries cannot be loaded")
)
