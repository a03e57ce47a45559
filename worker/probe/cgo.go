//go:build cgo

package probe

const cgoEnabled = true
