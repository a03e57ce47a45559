package server

import (
	"errors"

	"disagg/worker/engine"
)

// isInvalidRequest reports whether err is the engine rejecting a request
// as invalid (a 400 rather than a 500).
func isInvalidRequest(err error) bool {
	return errors.Is(err, engine.ErrInvalidRequest)
}
