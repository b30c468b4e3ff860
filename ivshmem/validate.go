package ivshmem

import (
	"encoding/binary"
	"fmt"
)

// Validate checks that b (at least a header) starts with a v1 region header whose layout fits
// in mapped bytes, and returns a private copy of that layout. It reads the header once,
// field by field, with no pointer into b surviving the call: b may be shared with other VMs.
func Validate(b []byte, mapped uint64) (Layout, HostID, string, error) {
	if len(b) < HeaderSize {
		return Layout{}, HostID{}, "", fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrInvalid, len(b), HeaderSize)
	}
	le := binary.LittleEndian
	if m := le.Uint64(b[0:]); m != Magic {
		return Layout{}, HostID{}, "", fmt.Errorf("%w: magic %#x, want %#x", ErrInvalid, m, Magic)
	}
	if v := le.Uint32(b[8:]); v != Version {
		return Layout{}, HostID{}, "", fmt.Errorf("%w: format version %d, this build reads %d", ErrInvalid, v, Version)
	}
	if hs := le.Uint32(b[12:]); hs != HeaderSize {
		return Layout{}, HostID{}, "", fmt.Errorf("%w: header size %d, want %d", ErrInvalid, hs, HeaderSize)
	}
	p := Params{
		TotalSize: le.Uint64(b[16:]),
		SlotCount: le.Uint32(b[40:]),
		VMCount:   le.Uint32(b[44:]),
		ChunkSize: le.Uint32(b[48:]),
		RingSize:  le.Uint32(b[56:]),
	}
	if p.TotalSize > mapped {
		return Layout{}, HostID{}, "", fmt.Errorf("%w: header claims %d bytes, only %d mapped", ErrInvalid, p.TotalSize, mapped)
	}
	want, err := ComputeLayout(p)
	if err != nil {
		return Layout{}, HostID{}, "", err
	}
	got := want
	got.ChunkCount = le.Uint32(b[52:])
	got.VMTableOff = le.Uint64(b[128:])
	got.SlotTableOff = le.Uint64(b[136:])
	got.PairTableOff = le.Uint64(b[144:])
	got.ChunkTableOff = le.Uint64(b[152:])
	got.HeapOff = le.Uint64(b[160:])
	if got != want {
		return Layout{}, HostID{}, "", fmt.Errorf("%w: layout %+v does not match the one its parameters give, %+v", ErrInvalid, got, want)
	}
	var host HostID
	copy(host[:], b[24:40])
	if host.IsZero() {
		return Layout{}, HostID{}, "", fmt.Errorf("%w: zero host id", ErrInvalid)
	}
	job, err := ParseJobIDField(b[64 : 64+JobIDMax])
	if err != nil {
		return Layout{}, HostID{}, "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return want, host, job, nil
}
