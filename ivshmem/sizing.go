package ivshmem

import "fmt"

// Sizing: how big a region a group of co-located ranks needs, and how big each ring of a group
// can be in a given region.
//
// A group of m ranks on one host holds m*m pair rings (one per ordered pair, a rank's ring to
// itself included) and one collective area per communicator with members on the host
// (CollAreaSize(m, slot) for a communicator of all m; the data plane allocates areas on demand,
// each with the largest slot that still fits). The sizing keeps room for CollReserve such areas
// at the largest slot (room for about 11 times as many at the smallest), and gives the rest to the
// rings: the ring
// capacity shrinks with the group, by powers of two, from the region's ring size down to
// RingMinCapacity. The region therefore stays within its size (the broker's cap) for any
// group; what shrinks is the bytes a pair can have in flight.

// CollReserve is how many collective areas of a whole group, at the largest slot, the ring
// sizing leaves room for.
const CollReserve = 4

// DefaultRegionCap is the size the broker never exceeds when it sizes a region by itself.
const DefaultRegionCap = 256 << 20

// RingCapacity is the data capacity of every pair ring of a group of m co-located ranks in a
// region of layout l: the largest power of two up to l.RingSize whose m*m rings fit the heap
// beside CollReserve collective areas of m members. In a region too small for that reserve
// (a test's 1 MiB region) the rings get the largest size that fits at all: point-to-point
// traffic keeps shared memory and communicators without room for an area say so and use the
// library's collectives. It is 0 when not even rings of RingMinCapacity fit, or m exceeds the
// slot table; the error then says why, for the user. Every member computes the same value
// from the same layout.
func (l Layout) RingCapacity(m int) (uint64, error) {
	if m < 1 || uint64(m) > uint64(l.SlotCount) {
		return 0, fmt.Errorf("%d co-located ranks, but the region has %d slots", m, l.SlotCount)
	}
	heap := uint64(l.ChunkCount)
	reserve := l.collReserve(m)
	pairs := uint64(m) * uint64(m)
	for _, keep := range []uint64{reserve, 0} {
		if keep >= heap {
			continue
		}
		for c := uint64(l.RingSize); c >= RingMinCapacity; c /= 2 {
			if pairs*l.chunksFor(RingHeaderSize+c) <= heap-keep {
				return c, nil
			}
		}
	}
	return 0, fmt.Errorf("%d co-located ranks need %d rings of at least %d bytes, more than the %d-byte heap of a %d-byte region",
		m, pairs, RingMinCapacity, heap*uint64(l.ChunkSize), l.TotalSize)
}

// collReserve is the heap chunks the ring sizing leaves to collective areas of a group of m.
func (l Layout) collReserve(m int) uint64 {
	if m < 2 {
		return 0
	}
	return CollReserve * l.chunksFor(CollAreaSize(m, CollSlotMax))
}

// SizeFor returns region parameters for ranks co-located ranks: p's slot count raised to
// ranks, and the smallest power-of-two size of at least p.TotalSize in which their rings get the
// full p.RingSize, but never above limit; and the ring capacity the group gets in it
// (RingCapacity: p.RingSize, or less in a capped region, or none: the error says why).
func SizeFor(ranks int, p Params, limit uint64) (out Params, ringCapacity uint64, err error) {
	if ranks < 1 {
		ranks = 1
	}
	if ranks > MaxSlots {
		return p, 0, fmt.Errorf("%d ranks on one host: at most %d", ranks, MaxSlots)
	}
	if uint32(ranks) > p.SlotCount {
		p.SlotCount = uint32(ranks)
	}
	if p.TotalSize < MinRegionSize {
		p.TotalSize = MinRegionSize
	}
	if limit < p.TotalSize {
		limit = p.TotalSize
	}
	for {
		l, err := ComputeLayout(p)
		var c uint64
		if err == nil {
			c, err = l.RingCapacity(ranks)
		}
		if c == uint64(p.RingSize) || p.TotalSize*2 > limit {
			return p, c, err
		}
		p.TotalSize *= 2
	}
}
