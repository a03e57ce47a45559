package api

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"
)

// RequestID is the request's X-Request-Id when it is a reasonable id
// (printable ASCII without quotes or backslashes, at most 128 bytes), else
// a new random one with the given prefix ("cmpl-", "chatcmpl-"). The proxy
// forwards the id to both workers, so that their answers carry it too.
func RequestID(r *http.Request, prefix string) string {
	if id := r.Header.Get(HeaderRequestID); ValidRequestID(id) {
		return id
	}
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on supported platforms; fall back to time.
		return fmt.Sprintf("%s%x", prefix, time.Now().UnixNano())
	}
	return prefix + hex.EncodeToString(b[:])
}

// ValidRequestID reports whether id may be echoed as a request id.
func ValidRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// StatusRecorder wraps a ResponseWriter and remembers the status written,
// for metrics and panic recovery.
type StatusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

// WriteHeader records the first status.
func (r *StatusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

// Write records an implicit 200.
func (r *StatusRecorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.status, r.wrote = http.StatusOK, true
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the writer's Flush.
func (r *StatusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Wrote reports whether anything was written yet.
func (r *StatusRecorder) Wrote() bool { return r.wrote }

// StatusCode is the status written (200 when nothing was).
func (r *StatusRecorder) StatusCode() int {
	if !r.wrote {
		return http.StatusOK
	}
	return r.status
}
