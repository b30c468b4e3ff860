package ivshmem

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func validRegionBytes(f *testing.F) []byte {
	f.Helper()
	h, _ := NewHostID()
	path := filepath.Join(f.TempDir(), "r")
	if err := Create(path, Options{Size: 1 << 20, HostID: h, JobID: "fuzz", Slots: 4, VMs: 2, RingSize: 4096}); err != nil {
		f.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzValidate: any header bytes either fail with ErrInvalid or yield a layout whose every
// table lies inside the mapping.
func FuzzValidate(f *testing.F) {
	good := validRegionBytes(f)
	f.Add(good[:HeaderSize], uint64(len(good)))
	f.Add(make([]byte, HeaderSize), uint64(1<<20))
	f.Fuzz(func(t *testing.T, hdr []byte, mapped uint64) {
		l, _, job, err := Validate(hdr, mapped)
		if err != nil {
			return
		}
		if l.HeapEnd() > mapped || l.HeapEnd() > l.TotalSize || l.ChunkTableOff+uint64(l.ChunkCount)*chunkSize > l.HeapOff {
			t.Fatalf("accepted layout escapes the mapping: %+v (mapped %d)", l, mapped)
		}
		if CheckJobID(job) != nil {
			t.Fatalf("accepted job id %q", job)
		}
	})
}

// FuzzPairRing: whatever a hostile peer writes into the pair table, chunk table and ring
// header, PairRing never panics and any ring it accepts lies inside the heap.
func FuzzPairRing(f *testing.F) {
	good := validRegionBytes(f)
	l, _, _, err := Validate(good, uint64(len(good)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(l.HeapOff, uint64(1), uint32(2), uint16(AllocRing), uint64(4096)) // a valid ring
	f.Add(uint64(0), uint64(1), uint32(1), uint16(1), uint64(4096))
	f.Add(uint64(1<<62), uint64(1), uint32(1<<31), uint16(1), uint64(1<<63))
	f.Fuzz(func(t *testing.T, off, owner uint64, length uint32, kind uint16, capacity uint64) {
		path := filepath.Join(t.TempDir(), "r")
		if err := os.WriteFile(path, good, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		l := r.Layout()
		r.pairAt(0, 1).Store(off)
		binary.LittleEndian.PutUint64(r.mem[l.ChunkTableOff:], owner)
		binary.LittleEndian.PutUint32(r.mem[l.ChunkTableOff+8:], length)
		binary.LittleEndian.PutUint16(r.mem[l.ChunkTableOff+14:], kind)
		binary.LittleEndian.PutUint64(r.mem[l.HeapOff:], capacity)
		binary.LittleEndian.PutUint64(r.mem[l.HeapOff+8:], 1)  // session
		binary.LittleEndian.PutUint32(r.mem[l.HeapOff+20:], 1) // receiver slot
		g, ok, err := r.PairRing(1, 0, 1)
		if err != nil || !ok {
			return
		}
		if g.Off < l.HeapOff || g.Off+RingHeaderSize+g.Capacity > l.HeapEnd() {
			t.Fatalf("accepted ring %+v outside heap [%d,%d)", g, l.HeapOff, l.HeapEnd())
		}
	})
}

func FuzzParseJobIDField(f *testing.F) {
	f.Add([]byte("job-1\x00\x00"))
	f.Add([]byte("\x00"))
	f.Add([]byte("a/b\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseJobIDField(b)
		if err == nil && CheckJobID(s) != nil {
			t.Fatalf("accepted %q", s)
		}
	})
}

func FuzzParsePCIID(f *testing.F) {
	f.Add("0x1af4\n")
	f.Add("0x")
	f.Add("1af4")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParsePCIID(s)
		if err != nil {
			return
		}
		if w, err := ParsePCIID(fmt.Sprintf("0x%04x", v)); err != nil || w != v {
			t.Fatalf("%q parsed to %#x, which does not round-trip: %#x %v", s, v, w, err)
		}
	})
}

func FuzzParseHostID(f *testing.F) {
	f.Add("0aac0d9a-e797-4237-b79a-375383923368")
	f.Add("0aac0d9ae7974237b79a375383923368")
	f.Add("00000000-0000-0000-0000-000000000000")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHostID(s)
		if err != nil {
			return
		}
		back, err := ParseHostID(h.String())
		if err != nil || back != h {
			t.Fatalf("round trip of %q: %v %v", s, back, err)
		}
	})
}
