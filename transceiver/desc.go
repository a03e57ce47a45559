package transceiver

import (
	"fmt"
	"slices"
)

// Run is a coalesced descriptor: Count adjacent blocks starting at Local on
// this side and at Remote on the peer's side.
type Run struct {
	// Local is the first local block of the run.
	Local int32
	// Remote is the first remote block of the run.
	Remote int32
	// Count is the number of blocks in the run.
	Count int32
}

// Descriptor is a Run in bytes: one posted operation.
type Descriptor struct {
	// LocalOffset and RemoteOffset are byte offsets from each region's base.
	LocalOffset  int64
	RemoteOffset int64
	// Len is the byte length.
	Len int64
}

// Coalesce sorts pairs by local block and merges every run of pairs whose
// local and remote ids both increase by one into a single Run. It assumes
// the pairs passed CheckPairs (no duplicates).
func Coalesce(pairs []BlockPair) []Run {
	if len(pairs) == 0 {
		return nil
	}
	s := slices.Clone(pairs)
	slices.SortFunc(s, func(a, b BlockPair) int { return int(a.Local) - int(b.Local) })
	runs := make([]Run, 0, len(s))
	cur := Run{Local: s[0].Local, Remote: s[0].Remote, Count: 1}
	for _, p := range s[1:] {
		if p.Local == cur.Local+cur.Count && p.Remote == cur.Remote+cur.Count {
			cur.Count++
			continue
		}
		runs = append(runs, cur)
		cur = Run{Local: p.Local, Remote: p.Remote, Count: 1}
	}
	return append(runs, cur)
}

// Descriptors converts runs to byte descriptors for blocks of blockBytes.
func Descriptors(runs []Run, blockBytes int) []Descriptor {
	out := make([]Descriptor, len(runs))
	bb := int64(blockBytes)
	for i, r := range runs {
		out[i] = Descriptor{LocalOffset: int64(r.Local) * bb, RemoteOffset: int64(r.Remote) * bb, Len: int64(r.Count) * bb}
	}
	return out
}

// CheckPairs validates a transfer before anything is posted: every local
// id lies in [0, localBlocks) and in t.LocalBlocks when given, every remote
// id in [0, remoteBlocks) and in t.RemoteBlocks when given, and no block
// appears twice on either side. The error wraps ErrBadDescriptor.
func CheckPairs(t Transfer, localBlocks, remoteBlocks int) error {
	if len(t.Pairs) == 0 {
		return fmt.Errorf("%w: request %d has no block pairs", ErrBadDescriptor, t.RequestID)
	}
	localOK := allowSet(t.LocalBlocks)
	remoteOK := allowSet(t.RemoteBlocks)
	seenL := make(map[int32]struct{}, len(t.Pairs))
	seenR := make(map[int32]struct{}, len(t.Pairs))
	for i, p := range t.Pairs {
		if p.Local < 0 || int(p.Local) >= localBlocks {
			return fmt.Errorf("%w: pair %d: local block %d outside the registered %d blocks", ErrBadDescriptor, i, p.Local, localBlocks)
		}
		if p.Remote < 0 || int(p.Remote) >= remoteBlocks {
			return fmt.Errorf("%w: pair %d: remote block %d outside the peer's registered %d blocks", ErrBadDescriptor, i, p.Remote, remoteBlocks)
		}
		if localOK != nil {
			if _, ok := localOK[p.Local]; !ok {
				return fmt.Errorf("%w: pair %d: local block %d is not one of request %d's blocks", ErrBadDescriptor, i, p.Local, t.RequestID)
			}
		}
		if remoteOK != nil {
			if _, ok := remoteOK[p.Remote]; !ok {
				return fmt.Errorf("%w: pair %d: remote block %d is not one of request %d's blocks", ErrBadDescriptor, i, p.Remote, t.RequestID)
			}
		}
		if _, dup := seenL[p.Local]; dup {
			return fmt.Errorf("%w: pair %d: local block %d appears twice", ErrBadDescriptor, i, p.Local)
		}
		if _, dup := seenR[p.Remote]; dup {
			return fmt.Errorf("%w: pair %d: remote block %d appears twice", ErrBadDescriptor, i, p.Remote)
		}
		seenL[p.Local] = struct{}{}
		seenR[p.Remote] = struct{}{}
	}
	return nil
}

func allowSet(ids []int32) map[int32]struct{} {
	if ids == nil {
		return nil
	}
	m := make(map[int32]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	return m
}

// Plan checks a transfer against both regions and returns its coalesced
// byte descriptors. Both sides must use the same block size.
func Plan(t Transfer, local Region, remote RemoteRegion) ([]Descriptor, error) {
	if local.BlockBytes != remote.BlockBytes {
		return nil, fmt.Errorf("%w: local blocks are %d bytes, the peer's %d", ErrBadDescriptor, local.BlockBytes, remote.BlockBytes)
	}
	if err := CheckPairs(t, local.NumBlocks, remote.NumBlocks); err != nil {
		return nil, err
	}
	return Descriptors(Coalesce(t.Pairs), local.BlockBytes), nil
}
