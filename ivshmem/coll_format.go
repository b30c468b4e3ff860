package ivshmem

// Go mirror of ivshim_coll.h, a communicator's collective area. Go never reads or writes an
// area (the C data plane does, the Go control plane only allocates it); the mirror lets
// layout_test.go pin the area format next to the region and ring formats, and gives Go tools one
// definition to size and decode an area with.

// Collective area constants, equal to their IVS_* twins in ivshim_coll.h.
const (
	CollInline  = 56       // IVS_INLINE: data bytes in a line, after its sequence number
	CollDepth   = 64       // IVS_DEPTH: lines per member
	CollSlotMax = 64 << 10 // IVS_SLOT_MAX: the largest slot of an area (its result buffers are slot-sized too)
	CollSlotMin = 4 << 10  // IVS_SLOT_MIN: the smallest
)

// CollSlotOK is ivs_area_slot_ok: whether slot is a slot size an area may have.
func CollSlotOK(slot uint64) bool {
	return slot >= CollSlotMin && slot <= CollSlotMax && slot&(slot-1) == 0
}

// collLine mirrors struct ivs_cline. Written by one member (or the leader, for result lines);
// Seq is atomic, stored last (RELEASE).
type collLine struct {
	Seq  uint64
	Data [CollInline]byte
}

// collLeft mirrors struct ivs_cleft. Left is atomic, written once (1, RELEASE) by its member when
// it frees the communicator, read by the leader.
type collLeft struct {
	Left     uint64
	Reserved [7]uint64
}

// collLineOff is ivs_area_line_off: member i's line for op s; i == nl names the result lines.
func collLineOff(i, s uint64) uint64 {
	return (i*CollDepth + s%CollDepth) * collLineSize
}

// collLeftOff is ivs_area_left_off: member i's left word in an area of nl members.
func collLeftOff(nl, i uint64) uint64 {
	return collLineOff(nl+1, 0) + i*collLeftSize
}

// collSlotOff is ivs_area_slot_off: member i's slot for op s in an area of nl members with
// slots of slot bytes.
func collSlotOff(nl, slot, i, s uint64) uint64 {
	return collLeftOff(nl, nl) + (i*2+(s&1))*slot
}

// collResultOff is ivs_area_res_off: the leader's result buffer for op s.
func collResultOff(nl, slot, s uint64) uint64 {
	return collSlotOff(nl, slot, nl, 0) + (s&1)*slot
}

// CollAreaSize is ivs_area_size: the bytes of the collective area of a communicator with nl
// members on one host and slots of slot bytes.
func CollAreaSize(nl int, slot uint64) uint64 {
	return collResultOff(uint64(nl), slot, 0) + 2*slot
}
