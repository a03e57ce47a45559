//go:build !cgo

package probe

const cgoEnabled = false
