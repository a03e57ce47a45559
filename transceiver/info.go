package transceiver

import (
	"encoding/binary"
	"fmt"
)

// InfoVersion is the version of the connection-info blob this build writes
// and the only one it reads.
const InfoVersion = 1

var infoMagic = [4]byte{'D', 'X', 'T', 'I'}

// Limits on decoded fields, so a forged blob cannot make us allocate much.
const (
	maxNameLen    = 256
	maxPayloadLen = 1 << 20
)

// RemoteRegion is a peer's registered region as its info blob describes it.
type RemoteRegion struct {
	// Base is the peer's virtual base address (meaningful to the peer's
	// transport only).
	Base uint64
	// BlockBytes is the size of the peer's blocks.
	BlockBytes int
	// NumBlocks is the number of blocks the peer registered.
	NumBlocks int
	// Device is true when the peer registered GPU memory.
	Device bool
	// Staged is true when the region is the peer's host staging buffer
	// (see Staging), not its KV pool: the pool itself cannot be reached,
	// so the peer's blocks must be pushed by the peer, and block ids in
	// this region are staging slots.
	Staged bool
}

// Flags of the region byte in the info blob.
const (
	infoDevice = 1 << 0
	infoStaged = 1 << 1
)

// Info is the decoded connection info of one agent.
type Info struct {
	// Backend is the backend that wrote the blob; a peer of another
	// backend cannot connect.
	Backend string
	// Agent is the agent's name.
	Agent string
	// Region is the agent's registered region.
	Region RemoteRegion
	// Payload is the backend's own data (worker address, rkey, metadata).
	Payload []byte
}

// EncodeInfo serializes info as a versioned blob.
func EncodeInfo(in Info) ([]byte, error) {
	if len(in.Backend) > maxNameLen || len(in.Agent) > maxNameLen {
		return nil, fmt.Errorf("transceiver: backend or agent name longer than %d bytes", maxNameLen)
	}
	if len(in.Payload) > maxPayloadLen {
		return nil, fmt.Errorf("transceiver: info payload of %d bytes exceeds %d", len(in.Payload), maxPayloadLen)
	}
	b := make([]byte, 0, 64+len(in.Backend)+len(in.Agent)+len(in.Payload))
	b = append(b, infoMagic[:]...)
	b = binary.LittleEndian.AppendUint16(b, InfoVersion)
	b = appendBytes(b, []byte(in.Backend))
	b = appendBytes(b, []byte(in.Agent))
	b = binary.LittleEndian.AppendUint64(b, in.Region.Base)
	b = binary.LittleEndian.AppendUint64(b, uint64(in.Region.BlockBytes))
	b = binary.LittleEndian.AppendUint64(b, uint64(in.Region.NumBlocks))
	flags := byte(0)
	if in.Region.Device {
		flags |= infoDevice
	}
	if in.Region.Staged {
		flags |= infoStaged
	}
	b = append(b, flags)
	b = appendBytes(b, in.Payload)
	return b, nil
}

func appendBytes(b, s []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// reader decodes little-endian fields with bounds checks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = fmt.Errorf("truncated: want %d bytes, %d left", n, len(r.b))
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() byte {
	if s := r.take(1); s != nil {
		return s[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if s := r.take(2); s != nil {
		return binary.LittleEndian.Uint16(s)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if s := r.take(4); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if s := r.take(8); s != nil {
		return binary.LittleEndian.Uint64(s)
	}
	return 0
}

func (r *reader) bytes(limit int) []byte {
	n := r.u32()
	if r.err == nil && int64(n) > int64(limit) {
		r.err = fmt.Errorf("field of %d bytes exceeds the limit of %d", n, limit)
		return nil
	}
	s := r.take(int(n))
	if s == nil {
		return nil
	}
	return append([]byte(nil), s...)
}

// DecodeInfo parses a connection-info blob. It rejects other versions,
// truncated or oversize fields, trailing bytes and nonsensical regions.
func DecodeInfo(blob []byte) (Info, error) {
	r := &reader{b: blob}
	if m := r.take(4); r.err == nil && [4]byte(m) != infoMagic {
		return Info{}, fmt.Errorf("%w: bad magic %q", ErrBadInfo, m)
	}
	if v := r.u16(); r.err == nil && v != InfoVersion {
		return Info{}, fmt.Errorf("%w: version %d, this build reads version %d", ErrBadInfo, v, InfoVersion)
	}
	var in Info
	in.Backend = string(r.bytes(maxNameLen))
	in.Agent = string(r.bytes(maxNameLen))
	in.Region.Base = r.u64()
	bb, nb := r.u64(), r.u64()
	flags := r.u8()
	in.Region.Device, in.Region.Staged = flags&infoDevice != 0, flags&infoStaged != 0
	in.Payload = r.bytes(maxPayloadLen)
	if r.err != nil {
		return Info{}, fmt.Errorf("%w: %v", ErrBadInfo, r.err)
	}
	if len(r.b) != 0 {
		return Info{}, fmt.Errorf("%w: %d trailing bytes", ErrBadInfo, len(r.b))
	}
	if flags&^(infoDevice|infoStaged) != 0 {
		return Info{}, fmt.Errorf("%w: unknown region flags %#x", ErrBadInfo, flags)
	}
	const maxInt32 = 1<<31 - 1
	if bb == 0 || nb == 0 || bb > 1<<40 || nb > maxInt32 || bb*nb/nb != bb || in.Region.Base+bb*nb < in.Region.Base {
		return Info{}, fmt.Errorf("%w: region of %d blocks of %d bytes at %#x", ErrBadInfo, nb, bb, in.Region.Base)
	}
	in.Region.BlockBytes, in.Region.NumBlocks = int(bb), int(nb)
	return in, nil
}
