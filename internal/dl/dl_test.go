package dl

import (
	"errors"
	"testing"
)

func TestOpenLibc(t *testing.T) {
	l, err := Open("libc.so.6")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Sym("strlen"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Sym("no_such_symbol_here"); !errors.Is(err, ErrNoSymbol) {
		t.Fatalf("missing symbol: err = %v, want ErrNoSymbol", err)
	}
	p, err := l.Sym("gnu_get_libc_version")
	if err != nil {
		t.Fatal(err)
	}
	if v := CString(p); v == "" {
		t.Fatal("empty glibc version")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Sym("strlen"); err == nil {
		t.Fatal("Sym after Close succeeded")
	}
}

func TestOpenMissing(t *testing.T) {
	_, err := Open("libdefinitely-not-here.so.7")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}
