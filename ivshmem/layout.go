package ivshmem

import (
	"errors"
	"fmt"
	"math/bits"
	"unsafe"
)

// Sizes of the tables and of the collective area's lines, fixed by the format.
const (
	vmEntrySize   = uint64(unsafe.Sizeof(vmEntry{}))
	slotSize      = uint64(unsafe.Sizeof(slot{}))
	chunkSize     = uint64(unsafe.Sizeof(chunk{}))
	pairEntrySize = 8
	collLineSize  = uint64(unsafe.Sizeof(collLine{}))
	collLeftSize  = uint64(unsafe.Sizeof(collLeft{}))
	// RingHeaderSize is the bytes of struct ivshim_ring in front of a ring's data.
	RingHeaderSize = uint64(unsafe.Sizeof(ring{}))
)

// Defaults used by Create when Options leaves a parameter zero.
const (
	DefaultSlots     = 64
	DefaultVMs       = 64
	DefaultChunkSize = 4096
	DefaultRingSize  = 256 << 10
	MinRegionSize    = 1 << 20
)

// ErrInvalid is wrapped by every validation failure: the bytes are not a usable region of this
// format version.
var ErrInvalid = errors.New("invalid ivshim region")

// Params are the free parameters of a region; everything else in the layout follows from them.
type Params struct {
	TotalSize uint64
	SlotCount uint32
	VMCount   uint32
	ChunkSize uint32
	RingSize  uint32
}

// Layout is a validated, private copy of a region's geometry. It is taken once when the region
// is opened and never re-read from shared memory, so a peer rewriting the header later cannot
// move the tables under us.
type Layout struct {
	Params
	ChunkCount    uint32
	VMTableOff    uint64
	SlotTableOff  uint64
	PairTableOff  uint64
	ChunkTableOff uint64
	HeapOff       uint64
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func isPow2(v uint64) bool { return v != 0 && v&(v-1) == 0 }

// ComputeLayout places the tables and the heap for p. The layout is a pure function of p, so
// validating a region means recomputing it and comparing.
func ComputeLayout(p Params) (Layout, error) {
	switch {
	case p.TotalSize < MinRegionSize:
		return Layout{}, fmt.Errorf("%w: total size %d below %d", ErrInvalid, p.TotalSize, MinRegionSize)
	case p.TotalSize > 1<<46:
		return Layout{}, fmt.Errorf("%w: total size %d above 64 TiB", ErrInvalid, p.TotalSize)
	case p.SlotCount == 0 || p.SlotCount > MaxSlots:
		return Layout{}, fmt.Errorf("%w: slot count %d not in 1..%d", ErrInvalid, p.SlotCount, MaxSlots)
	case p.VMCount == 0 || p.VMCount > MaxVMs:
		return Layout{}, fmt.Errorf("%w: vm count %d not in 1..%d", ErrInvalid, p.VMCount, MaxVMs)
	case p.ChunkSize < MinChunk || !isPow2(uint64(p.ChunkSize)):
		return Layout{}, fmt.Errorf("%w: chunk size %d not a power of two >= %d", ErrInvalid, p.ChunkSize, MinChunk)
	case p.RingSize < RingMinCapacity || !isPow2(uint64(p.RingSize)):
		return Layout{}, fmt.Errorf("%w: ring size %d not a power of two >= %d", ErrInvalid, p.RingSize, RingMinCapacity)
	}
	l := Layout{Params: p}
	l.VMTableOff = HeaderSize
	l.SlotTableOff = alignUp(l.VMTableOff+uint64(p.VMCount)*vmEntrySize, CacheLine)
	l.PairTableOff = alignUp(l.SlotTableOff+uint64(p.SlotCount)*slotSize, CacheLine)
	l.ChunkTableOff = alignUp(l.PairTableOff+uint64(p.SlotCount)*uint64(p.SlotCount)*pairEntrySize, CacheLine)
	cs := uint64(p.ChunkSize)
	if l.ChunkTableOff >= p.TotalSize {
		return Layout{}, fmt.Errorf("%w: tables (%d bytes) do not fit in %d", ErrInvalid, l.ChunkTableOff, p.TotalSize)
	}
	n := (p.TotalSize - l.ChunkTableOff) / (cs + chunkSize)
	for ; n > 0; n-- {
		l.HeapOff = alignUp(l.ChunkTableOff+n*chunkSize, cs)
		if l.HeapOff+n*cs <= p.TotalSize {
			break
		}
	}
	if n == 0 || n > 1<<31 {
		return Layout{}, fmt.Errorf("%w: no room for a heap in %d bytes", ErrInvalid, p.TotalSize)
	}
	l.ChunkCount = uint32(n)
	if uint64(p.RingSize)+RingHeaderSize > n*cs {
		return Layout{}, fmt.Errorf("%w: ring size %d does not fit the %d-byte heap", ErrInvalid, p.RingSize, n*cs)
	}
	return l, nil
}

// chunksFor is how many chunks hold n bytes.
func (l Layout) chunksFor(n uint64) uint64 {
	return (n + uint64(l.ChunkSize) - 1) >> bits.TrailingZeros32(l.ChunkSize)
}

// HeapEnd is the first byte after the heap.
func (l Layout) HeapEnd() uint64 { return l.HeapOff + uint64(l.ChunkCount)*uint64(l.ChunkSize) }
