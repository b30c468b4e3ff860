package ivshmem

// Go mirror of ivshim_ring.h, the records inside a pair ring's data area. Go never reads or
// writes records (the C data plane does); the mirror lets layout_test.go pin the record format
// next to the region format, and gives Go tools one definition to decode a ring with.

// Record format constants, equal to their IVS_* twins in ivshim_ring.h.
const (
	RecordAlign      = 64              // IVS_ALIGN: records start on lines of this many bytes
	RecordHeaderSize = 40              // IVS_REC_HDR: payload offset in a record
	RingMinCapacity  = 8 * RecordAlign // IVS_RING_MIN_CAP: smallest ring the data plane attaches to
	RecordFlagSync   = uint16(1)       // IVS_F_SYNC: the sender of a RecordMsg waits for a RecordAck
)

// RecordKind is ivs_rec.kind.
type RecordKind uint16

// Record kinds.
const (
	RecordPad  RecordKind = 1 // skip to the end of the data area
	RecordMsg  RecordKind = 2 // first record of a message: envelope + first payload bytes
	RecordFrag RecordKind = 3 // further payload of the message being received
	RecordAck  RecordKind = 4 // receiver matched a synchronous send; Cookie names it
	RecordMark RecordKind = 5 // the sender's last record on the ring: it uses the MPI library from here on
)

// record mirrors struct ivs_rec. Written by the ring's producer; Stamp is atomic, stored last
// (position | 1, RELEASE), and zeroed by the consumer once it is done with the record.
type record struct {
	Stamp  uint64
	Len    uint32
	Kind   uint16
	Flags  uint16
	Tag    int32
	Ctx    uint32
	Total  uint64
	Cookie uint64
}
