package shim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"ivshim.dev/ivshim/ivshmem"
)

// The records ranks exchange at start. Both have a fixed size so that every rank passes the
// same byte count to allgather whatever its local outcome; both are little-endian. The sizes
// stay the same in later versions (an allgather needs one count on every rank): a new version
// uses the reserved bytes, and the hello's version field lets an older build name the mismatch
// instead of misreading it.

// errMalformed is wrapped when a rank sent bytes this build cannot read: a different shim
// version, or memory corruption on the way.
var errMalformed = errors.New("malformed start record")

const (
	helloMagic   uint32 = 0x43485649 // "IVHC" read as little-endian
	helloVersion uint16 = 1
	helloSize           = 64
)

// Hello flags.
const (
	helloHasRegion  uint32 = 1 << iota // the rank mapped a valid region
	helloFatal                         // the rank cannot go on (bad configuration, corrupt region)
	helloKnownFlags = helloHasRegion | helloFatal
)

// hello is the first record every rank contributes: what it found locally.
//
//	off  0 u32 magic      off  4 u16 version   off  6 u16 size
//	off  8 u32 flags      off 12 u32 vm index (ivshmem.NoVM when none)
//	off 16 [16] host id   off 32 u64 region generation
//	off 40 u64 job hash   off 48 u64 session proposal   off 56 u64 reserved (0)
type hello struct {
	Flags      uint32
	VMIndex    uint32
	Host       ivshmem.HostID
	Generation uint64
	JobHash    uint64
	Proposal   uint64 // random, nonzero: the session id this rank would use as a group leader
}

func (h hello) hasRegion() bool { return h.Flags&helloHasRegion != 0 }
func (h hello) fatal() bool     { return h.Flags&helloFatal != 0 }

func (h hello) encode() []byte {
	b := make([]byte, helloSize)
	le := binary.LittleEndian
	le.PutUint32(b[0:], helloMagic)
	le.PutUint16(b[4:], helloVersion)
	le.PutUint16(b[6:], helloSize)
	le.PutUint32(b[8:], h.Flags)
	le.PutUint32(b[12:], h.VMIndex)
	copy(b[16:32], h.Host[:])
	le.PutUint64(b[32:], h.Generation)
	le.PutUint64(b[40:], h.JobHash)
	le.PutUint64(b[48:], h.Proposal)
	return b
}

func decodeHello(b []byte) (hello, error) {
	le := binary.LittleEndian
	if len(b) != helloSize {
		return hello{}, fmt.Errorf("%w: hello of %d bytes, want %d", errMalformed, len(b), helloSize)
	}
	if m := le.Uint32(b[0:]); m != helloMagic {
		return hello{}, fmt.Errorf("%w: hello magic %#x, want %#x", errMalformed, m, helloMagic)
	}
	if v, s := le.Uint16(b[4:]), le.Uint16(b[6:]); v != helloVersion || s != helloSize {
		return hello{}, fmt.Errorf("%w: hello version %d size %d, this build speaks version %d size %d",
			errMalformed, v, s, helloVersion, helloSize)
	}
	h := hello{
		Flags:      le.Uint32(b[8:]),
		VMIndex:    le.Uint32(b[12:]),
		Generation: le.Uint64(b[32:]),
		JobHash:    le.Uint64(b[40:]),
		Proposal:   le.Uint64(b[48:]),
	}
	copy(h.Host[:], b[16:32])
	switch {
	case h.Flags&^helloKnownFlags != 0:
		return hello{}, fmt.Errorf("%w: hello flags %#x", errMalformed, h.Flags)
	case h.hasRegion() && h.fatal():
		return hello{}, fmt.Errorf("%w: hello both has a region and is fatal", errMalformed)
	case h.hasRegion() && (h.Host.IsZero() || h.Proposal == 0):
		return hello{}, fmt.Errorf("%w: hello with a region but a zero host id or session proposal", errMalformed)
	}
	return h, nil
}

const (
	statusReasonMax = 248
	statusSize      = 8 + statusReasonMax
)

// Status flags.
const (
	statusFailed     uint32 = 1 << iota // the step failed on this rank: its group falls back to NET
	statusFatal                         // the step hit something that must stop the job
	statusKnownFlags = statusFailed | statusFatal
)

// status is what a rank reports after each later step of the protocol.
//
//	off 0 u32 flags   off 4 u32 value (step-specific, e.g. the claimed slot)
//	off 8 reason, NUL-padded UTF-8, truncated to 248 bytes
type status struct {
	Flags  uint32
	Value  uint32
	Reason string
}

func (s status) failed() bool { return s.Flags&(statusFailed|statusFatal) != 0 }
func (s status) fatal() bool  { return s.Flags&statusFatal != 0 }

func (s status) encode() []byte {
	b := make([]byte, statusSize)
	binary.LittleEndian.PutUint32(b[0:], s.Flags)
	binary.LittleEndian.PutUint32(b[4:], s.Value)
	copy(b[8:], s.Reason) // copy truncates to statusReasonMax
	return b
}

func decodeStatus(b []byte) (status, error) {
	if len(b) != statusSize {
		return status{}, fmt.Errorf("%w: status of %d bytes, want %d", errMalformed, len(b), statusSize)
	}
	s := status{Flags: binary.LittleEndian.Uint32(b[0:]), Value: binary.LittleEndian.Uint32(b[4:])}
	if s.Flags&^statusKnownFlags != 0 {
		return status{}, fmt.Errorf("%w: status flags %#x", errMalformed, s.Flags)
	}
	reason, _, _ := strings.Cut(string(b[8:]), "\x00")
	s.Reason = strings.ToValidUTF8(reason, "?")
	return s, nil
}

// splitRecords cuts the result of an allgather into size-byte records, one per rank.
func splitRecords(all []byte, size, ranks int) ([][]byte, error) {
	if len(all) != size*ranks {
		return nil, fmt.Errorf("%w: allgather returned %d bytes, want %d ranks x %d", errMalformed, len(all), ranks, size)
	}
	out := make([][]byte, ranks)
	for i := range out {
		out[i] = all[i*size : (i+1)*size]
	}
	return out, nil
}
