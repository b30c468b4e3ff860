package ivshmem

import (
	"reflect"
	"slices"
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
		"ivs_cline":            collLine{},
		"ivs_cleft":            collLeft{},
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
		"IVSHIM_MIN_CHUNK": MinChunk, "IVSHIM_NO_VM": uint64(NoVM), "IVSHIM_PAIR_NET": PairNet,
		"IVSHIM_VM_EMPTY": uint64(VMEmpty), "IVSHIM_VM_PRESENT": uint64(VMPresent),
		"IVSHIM_VM_LEAVING": uint64(VMLeaving), "IVSHIM_SLOT_FREE": uint64(SlotFree),
		"IVSHIM_SLOT_CLAIMED": uint64(SlotClaimed), "IVSHIM_SLOT_ACTIVE": uint64(SlotActive),
		"IVSHIM_SLOT_LEAVING": uint64(SlotLeaving), "IVSHIM_ALLOC_RING": uint64(AllocRing),
		"IVSHIM_ALLOC_COLLECTIVE": uint64(AllocCollective), "IVSHIM_RING_OPEN": uint64(RingOpen),
		"IVSHIM_RING_CLOSED": uint64(RingClosed), "IVSHIM_RING_DATA_OFF": RingHeaderSize,
		"IVS_ALIGN": RecordAlign, "IVS_REC_HDR": RecordHeaderSize, "IVS_RING_MIN_CAP": RingMinCapacity,
		"IVS_F_SYNC": uint64(RecordFlagSync), "IVS_REC_PAD": uint64(RecordPad),
		"IVS_REC_MSG": uint64(RecordMsg), "IVS_REC_FRAG": uint64(RecordFrag), "IVS_REC_ACK": uint64(RecordAck),
		"IVS_REC_MARK": uint64(RecordMark),
		"IVS_INLINE":   CollInline, "IVS_DEPTH": CollDepth, "IVS_SLOT_MAX": CollSlotMax, "IVS_SLOT_MIN": CollSlotMin,
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

// TestGoAndCAgreeOnCollectiveArea compares the area map of ivshim_coll.h with its Go mirror for
// areas of one member (private memory), a few members, and as many members as a region has
// slots, at the smallest, a middle and the largest slot size: the first, second, middle and
// last member and the result lines, for ops on both sides of a line rotation and far beyond.
func TestGoAndCAgreeOnCollectiveArea(t *testing.T) {
	slots := []uint64{CollSlotMin, 16 << 10, CollSlotMax}
	for _, slot := range slots {
		for _, nl := range []uint64{1, 2, 3, 4, 7, 64, MaxSlots} {
			for _, i := range []uint64{0, 1, nl / 2, nl - 1, nl} {
				for _, s := range []uint64{0, 1, 2, CollDepth - 1, CollDepth, CollDepth + 1, 3*CollDepth + 5, 1<<40 + 3} {
					got := cAreaAt(nl, slot, i, s)
					want := cArea{Line: collLineOff(i, s), Left: collLeftOff(nl, i), Slot: collSlotOff(nl, slot, i, s),
						Result: collResultOff(nl, slot, s), Size: CollAreaSize(int(nl), slot)}
					if got != want {
						t.Errorf("area of %d members, %d-byte slots, member %d, op %d: C %+v, Go %+v", nl, slot, i, s, got, want)
					}
				}
			}
		}
	}
	if t.Failed() {
		return
	}
	// The parts follow each other without gaps or overlap, each on whole cache lines.
	for _, slot := range slots {
		for _, nl := range []uint64{1, 2, 5} {
			bounds := []struct {
				name     string
				off, end uint64
			}{
				{"lines", collLineOff(0, 0), collLineOff(nl, CollDepth-1) + collLineSize},
				{"left words", collLeftOff(nl, 0), collLeftOff(nl, nl-1) + collLeftSize},
				{"slots", collSlotOff(nl, slot, 0, 0), collSlotOff(nl, slot, nl-1, 1) + slot},
				{"result buffers", collResultOff(nl, slot, 0), collResultOff(nl, slot, 1) + slot},
			}
			at := uint64(0)
			for _, b := range bounds {
				if b.off != at || b.off%CacheLine != 0 || b.end <= b.off {
					t.Errorf("area of %d members, %d-byte slots: %s at [%d, %d), want a start of %d on a cache line", nl, slot, b.name, b.off, b.end, at)
				}
				at = b.end
			}
			if size := CollAreaSize(int(nl), slot); size != at {
				t.Errorf("area of %d members, %d-byte slots: size %d, parts end at %d", nl, slot, size, at)
			}
		}
	}
}

// TestGoAndCAgreeOnSlotSizes: the slot sizes C and Go accept are the same, and exactly the
// powers of two from 4 KiB to 64 KiB (a slot size comes from another rank: it is checked).
func TestGoAndCAgreeOnSlotSizes(t *testing.T) {
	var ok []uint64
	for _, slot := range []uint64{0, 1, 64, 4095, 4096, 4160, 8192, 12288, 32768, 65536, 65600, 131072, 1 << 63} {
		if cSlotOK(slot) != CollSlotOK(slot) {
			t.Errorf("slot size %d: C says %v, Go %v", slot, cSlotOK(slot), CollSlotOK(slot))
		}
		if CollSlotOK(slot) {
			ok = append(ok, slot)
		}
	}
	if want := []uint64{4096, 8192, 32768, 65536}; !slices.Equal(ok, want) {
		t.Errorf("accepted slot sizes %v, want %v", ok, want)
	}
}
