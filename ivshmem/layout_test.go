package ivshmem

import (
	"reflect"
	"strings"
	"testing"
	"unicode"
)

// cName turns a Go field name into its C twin: HostID -> host_id, VMTableOff -> vm_table_off.
func cName(goName string) string {
	r := []rune(goName)
	var b strings.Builder
	for i, c := range r {
		if i > 0 && unicode.IsUpper(c) {
			prevLower := !unicode.IsUpper(r[i-1])
			nextLower := i+1 < len(r) && unicode.IsLower(r[i+1])
			if prevLower || nextLower {
				b.WriteByte('_')
			}
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}

func TestGoAndCAgreeOnLayout(t *testing.T) {
	c := map[string]cField{}
	for _, f := range cFields() {
		c[f.Name] = f
	}
	structs := map[string]any{
		"ivshim_region_header": header{},
		"ivshim_vm":            vmEntry{},
		"ivshim_slot":          slot{},
		"ivshim_chunk":         chunk{},
		"ivshim_ring":          ring{},
		"ivs_rec":              record{},
	}
	seen := 0
	for cStruct, v := range structs {
		typ := reflect.TypeOf(v)
		whole, ok := c[cStruct]
		if !ok {
			t.Fatalf("C table has no struct %s", cStruct)
		}
		seen++
		if whole.Size != typ.Size() {
			t.Errorf("sizeof(struct %s) = %d in C, %d in Go", cStruct, whole.Size, typ.Size())
		}
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			name := cStruct + "." + cName(f.Name)
			cf, ok := c[name]
			if !ok {
				t.Errorf("Go field %s.%s has no C twin %s", typ.Name(), f.Name, name)
				continue
			}
			seen++
			if cf.Offset != f.Offset || cf.Size != f.Type.Size() {
				t.Errorf("%s: C offset %d size %d, Go offset %d size %d", name, cf.Offset, cf.Size, f.Offset, f.Type.Size())
			}
		}
	}
	if seen != len(c) {
		t.Errorf("C table lists %d structs and fields, Go mirrors %d", len(c), seen)
	}
}

func TestGoAndCAgreeOnConstants(t *testing.T) {
	want := map[string]uint64{
		"IVSHIM_REGION_MAGIC": Magic, "IVSHIM_REGION_VERSION": uint64(Version),
		"IVSHIM_CACHELINE": CacheLine, "IVSHIM_HEADER_SIZE": HeaderSize,
		"IVSHIM_JOB_ID_MAX": JobIDMax, "IVSHIM_MAX_SLOTS": MaxSlots, "IVSHIM_MAX_VMS": MaxVMs,
		"IVSHIM_MIN_CHUNK": MinChunk, "IVSHIM_NO_VM": uint64(NoVM),
		"IVSHIM_VM_EMPTY": uint64(VMEmpty), "IVSHIM_VM_PRESENT": uint64(VMPresent),
		"IVSHIM_VM_LEAVING": uint64(VMLeaving), "IVSHIM_SLOT_FREE": uint64(SlotFree),
		"IVSHIM_SLOT_CLAIMED": uint64(SlotClaimed), "IVSHIM_SLOT_ACTIVE": uint64(SlotActive),
		"IVSHIM_SLOT_LEAVING": uint64(SlotLeaving), "IVSHIM_ALLOC_RING": uint64(AllocRing),
		"IVSHIM_ALLOC_COLLECTIVE": uint64(AllocCollective), "IVSHIM_RING_OPEN": uint64(RingOpen),
		"IVSHIM_RING_CLOSED": uint64(RingClosed), "IVSHIM_RING_DATA_OFF": RingHeaderSize,
		"IVS_ALIGN": RecordAlign, "IVS_REC_HDR": RecordHeaderSize, "IVS_RING_MIN_CAP": RingMinCapacity,
		"IVS_F_SYNC": uint64(RecordFlagSync), "IVS_REC_PAD": uint64(RecordPad),
		"IVS_REC_MSG": uint64(RecordMsg), "IVS_REC_FRAG": uint64(RecordFrag), "IVS_REC_ACK": uint64(RecordAck),
	}
	got := cConstants()
	if len(got) != len(want) {
		t.Errorf("C exports %d constants, Go checks %d", len(got), len(want))
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("%s: C %#x (present %v), Go %#x", name, g, ok, w)
		}
	}
	if string([]byte{0x49, 0x56, 0x53, 0x48, 0x4d, 0x49, 0x52, 0x31}) != "IVSHMIR1" {
		t.Fatal("magic comment out of date")
	}
}
