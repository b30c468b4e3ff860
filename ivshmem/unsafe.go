package ivshmem

import (
	"sync/atomic"
	"unsafe"
)

// All unsafe access to a mapped region lives in this file. Every accessor takes an index or
// offset that the caller has already checked against the region's private Layout; the checks
// here are the last line of defence and panic only on a programming error in this package.

func (r *Region) hdr() *header { return (*header)(unsafe.Pointer(&r.mem[0])) }

func (r *Region) vmAt(i uint32) *vmEntry {
	return (*vmEntry)(unsafe.Pointer(&r.mem[r.layout.VMTableOff+uint64(i)*vmEntrySize]))
}

func (r *Region) slotAt(i uint32) *slot {
	return (*slot)(unsafe.Pointer(&r.mem[r.layout.SlotTableOff+uint64(i)*slotSize]))
}

func (r *Region) chunkAt(i uint32) *chunk {
	return (*chunk)(unsafe.Pointer(&r.mem[r.layout.ChunkTableOff+uint64(i)*chunkSize]))
}

func (r *Region) pairAt(sender, receiver uint32) *atomic.Uint64 {
	off := r.layout.PairTableOff + (uint64(sender)*uint64(r.layout.SlotCount)+uint64(receiver))*pairEntrySize
	return (*atomic.Uint64)(unsafe.Pointer(&r.mem[off]))
}

func (r *Region) ringAt(off uint64) *ring { return (*ring)(unsafe.Pointer(&r.mem[off])) }

// a32 and a64 view an aligned word of the region as an atomic.
func a32(p *uint32) *atomic.Uint32 { return (*atomic.Uint32)(unsafe.Pointer(p)) }
func a64(p *uint64) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(p)) }

// Base is the address of the region's first byte, for handing the mapping to the C data plane.
// It stays valid until Close.
func (r *Region) Base() unsafe.Pointer { return unsafe.Pointer(&r.mem[0]) }
