package ivshmem

// Go mirror of ivshim_region.h. layout_test.go proves every field has the offset and size
// the C header gives it; change both together and bump Version when the format changes.

// Format constants, equal to their IVSHIM_* twins in ivshim_region.h.
const (
	Magic      uint64 = 0x31524d4948535649 // "IVSHMIR1" read as little-endian
	Version    uint32 = 4
	CacheLine         = 64
	HeaderSize        = 4096
	JobIDMax          = 64
	MaxSlots          = 1024
	MaxVMs            = 1024
	MinChunk          = 4096
	NoVM       uint32 = 0xffffffff
)

// VMState is ivshim_vm.state: what the broker says about a VM of the job on this host.
type VMState uint32

// VM states.
const (
	VMEmpty   VMState = 0
	VMPresent VMState = 1
	VMLeaving VMState = 2
)

// SlotState is ivshim_slot.state: the lifecycle of a rank's slot.
type SlotState uint32

// Slot states.
const (
	SlotFree    SlotState = 0
	SlotClaimed SlotState = 1
	SlotActive  SlotState = 2
	SlotLeaving SlotState = 3
)

// AllocKind is ivshim_chunk.kind: what an allocation holds.
type AllocKind uint16

// Allocation kinds.
const (
	AllocRing       AllocKind = 1
	AllocCollective AllocKind = 2
)

// PairNet in a pair word: the direction takes the MPI library for the rest of the session (the
// receiver had no room for its ring, or the pair closed before it had one). Other values are 0
// (no ring yet) or a ring's offset. See IVSHIM_PAIR_NET.
const PairNet uint64 = 1

// Ring states (ivshim_ring.state).
const (
	RingOpen   uint32 = 1
	RingClosed uint32 = 2
)

// header mirrors struct ivshim_region_header. Lines 0-2 are immutable once published;
// Generation is broker-owned and atomic; Session, SessionMembers and HeapLock are shim-owned
// and atomic.
type header struct {
	Magic          uint64
	Version        uint32
	HeaderSize     uint32
	TotalSize      uint64
	HostID         [16]byte
	SlotCount      uint32
	VMCount        uint32
	ChunkSize      uint32
	ChunkCount     uint32
	RingSize       uint32
	Reserved0      uint32
	JobID          [JobIDMax]byte
	VMTableOff     uint64
	SlotTableOff   uint64
	PairTableOff   uint64
	ChunkTableOff  uint64
	HeapOff        uint64
	Reserved2      [3]uint64
	Generation     uint64
	Reserved3      [7]uint64
	Session        uint64
	SessionMembers uint64
	Reserved4      [6]uint64
	HeapLock       uint64
	Reserved5      [7]uint64
	Reserved       [HeaderSize - 6*CacheLine]byte
}

// vmEntry mirrors struct ivshim_vm. Broker-owned; State is atomic.
type vmEntry struct {
	UUID       [16]byte
	State      uint32
	Reserved0  uint32
	Generation uint64
	Reserved   [5]uint64
}

// slot mirrors struct ivshim_slot. Written only by the owning rank; State and Heartbeat are
// atomic, the identity fields are published by State.
type slot struct {
	State      uint32
	VMIndex    uint32
	Session    uint64
	WorldRank  uint32
	WorldSize  uint32
	PID        uint32
	Reserved0  uint32
	Reserved1  [4]uint64
	Heartbeat  uint64
	Reserved2  [7]uint64
	RingWanted [MaxSlots / 64]uint64
}

// chunk mirrors struct ivshim_chunk; written under header.HeapLock only.
type chunk struct {
	Owner  uint64
	Length uint32
	Slot   uint16
	Kind   uint16
}

// ring mirrors struct ivshim_ring: immutable line, producer line (Tail), consumer line
// (Head, State).
type ring struct {
	Capacity     uint64
	Session      uint64
	SenderSlot   uint32
	ReceiverSlot uint32
	Reserved0    [5]uint64
	Tail         uint64
	Reserved1    [7]uint64
	Head         uint64
	State        uint32
	Reserved2    uint32
	Reserved3    [6]uint64
}
