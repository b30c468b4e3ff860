package ivshmem

// The C view of the format: what the C compiler makes of ivshim_region.h, ivshim_ring.h and
// ivshim_coll.h, the offset and size of every field, the value of every constant and the
// collective area's offsets. It lives in this package, next to the headers, so that the Go build
// cache notices header edits; layout_test.go compares it with the Go mirror.

/*
#include <stddef.h>
#include "ivshim_region.h"
#include "ivshim_ring.h"
#include "ivshim_coll.h"

struct clayout_field { const char *name; size_t off; size_t size; };

#define CL_FIELD(s, f) { #s "." #f, offsetof(struct s, f), sizeof(((struct s *)0)->f) }
#define CL_STRUCT(s) { #s, 0, sizeof(struct s) }

static const struct clayout_field clayout_fields[] = {
	CL_STRUCT(ivshim_region_header),
	CL_FIELD(ivshim_region_header, magic), CL_FIELD(ivshim_region_header, version),
	CL_FIELD(ivshim_region_header, header_size), CL_FIELD(ivshim_region_header, total_size),
	CL_FIELD(ivshim_region_header, host_id), CL_FIELD(ivshim_region_header, slot_count),
	CL_FIELD(ivshim_region_header, vm_count), CL_FIELD(ivshim_region_header, chunk_size),
	CL_FIELD(ivshim_region_header, chunk_count), CL_FIELD(ivshim_region_header, ring_size),
	CL_FIELD(ivshim_region_header, reserved0), CL_FIELD(ivshim_region_header, job_id),
	CL_FIELD(ivshim_region_header, vm_table_off), CL_FIELD(ivshim_region_header, slot_table_off),
	CL_FIELD(ivshim_region_header, pair_table_off), CL_FIELD(ivshim_region_header, chunk_table_off),
	CL_FIELD(ivshim_region_header, heap_off), CL_FIELD(ivshim_region_header, reserved2),
	CL_FIELD(ivshim_region_header, generation), CL_FIELD(ivshim_region_header, reserved3),
	CL_FIELD(ivshim_region_header, session), CL_FIELD(ivshim_region_header, session_members),
	CL_FIELD(ivshim_region_header, reserved4), CL_FIELD(ivshim_region_header, heap_lock),
	CL_FIELD(ivshim_region_header, reserved5), CL_FIELD(ivshim_region_header, reserved),
	CL_STRUCT(ivshim_vm),
	CL_FIELD(ivshim_vm, uuid), CL_FIELD(ivshim_vm, state), CL_FIELD(ivshim_vm, reserved0),
	CL_FIELD(ivshim_vm, generation), CL_FIELD(ivshim_vm, reserved),
	CL_STRUCT(ivshim_slot),
	CL_FIELD(ivshim_slot, state), CL_FIELD(ivshim_slot, vm_index), CL_FIELD(ivshim_slot, session),
	CL_FIELD(ivshim_slot, world_rank), CL_FIELD(ivshim_slot, world_size), CL_FIELD(ivshim_slot, pid),
	CL_FIELD(ivshim_slot, reserved0), CL_FIELD(ivshim_slot, reserved1), CL_FIELD(ivshim_slot, heartbeat),
	CL_FIELD(ivshim_slot, reserved2), CL_FIELD(ivshim_slot, ring_wanted),
	CL_STRUCT(ivshim_chunk),
	CL_FIELD(ivshim_chunk, owner), CL_FIELD(ivshim_chunk, length), CL_FIELD(ivshim_chunk, slot), CL_FIELD(ivshim_chunk, kind),
	CL_STRUCT(ivshim_ring),
	CL_FIELD(ivshim_ring, capacity), CL_FIELD(ivshim_ring, session), CL_FIELD(ivshim_ring, sender_slot),
	CL_FIELD(ivshim_ring, receiver_slot), CL_FIELD(ivshim_ring, reserved0), CL_FIELD(ivshim_ring, tail),
	CL_FIELD(ivshim_ring, reserved1), CL_FIELD(ivshim_ring, head), CL_FIELD(ivshim_ring, state),
	CL_FIELD(ivshim_ring, reserved2), CL_FIELD(ivshim_ring, reserved3),
	CL_STRUCT(ivs_rec),
	CL_FIELD(ivs_rec, stamp), CL_FIELD(ivs_rec, len), CL_FIELD(ivs_rec, kind), CL_FIELD(ivs_rec, flags),
	CL_FIELD(ivs_rec, tag), CL_FIELD(ivs_rec, ctx), CL_FIELD(ivs_rec, total), CL_FIELD(ivs_rec, cookie),
	CL_STRUCT(ivs_cline),
	CL_FIELD(ivs_cline, seq), CL_FIELD(ivs_cline, data),
	CL_STRUCT(ivs_cleft),
	CL_FIELD(ivs_cleft, left), CL_FIELD(ivs_cleft, reserved),
};

struct clayout_value { const char *name; unsigned long long value; };
#define CL_CONST(n) { #n, (unsigned long long)(n) }

static const struct clayout_value clayout_values[] = {
	CL_CONST(IVSHIM_REGION_MAGIC), CL_CONST(IVSHIM_REGION_VERSION), CL_CONST(IVSHIM_CACHELINE),
	CL_CONST(IVSHIM_HEADER_SIZE), CL_CONST(IVSHIM_JOB_ID_MAX), CL_CONST(IVSHIM_MAX_SLOTS), CL_CONST(IVSHIM_MAX_VMS),
	CL_CONST(IVSHIM_MIN_CHUNK), CL_CONST(IVSHIM_NO_VM), CL_CONST(IVSHIM_PAIR_NET), CL_CONST(IVSHIM_VM_EMPTY), CL_CONST(IVSHIM_VM_PRESENT),
	CL_CONST(IVSHIM_VM_LEAVING), CL_CONST(IVSHIM_SLOT_FREE), CL_CONST(IVSHIM_SLOT_CLAIMED), CL_CONST(IVSHIM_SLOT_ACTIVE),
	CL_CONST(IVSHIM_SLOT_LEAVING), CL_CONST(IVSHIM_ALLOC_RING), CL_CONST(IVSHIM_ALLOC_COLLECTIVE),
	CL_CONST(IVSHIM_RING_OPEN), CL_CONST(IVSHIM_RING_CLOSED), CL_CONST(IVSHIM_RING_DATA_OFF),
	CL_CONST(IVS_ALIGN), CL_CONST(IVS_REC_HDR), CL_CONST(IVS_RING_MIN_CAP), CL_CONST(IVS_F_SYNC),
	CL_CONST(IVS_REC_PAD), CL_CONST(IVS_REC_MSG), CL_CONST(IVS_REC_FRAG), CL_CONST(IVS_REC_ACK), CL_CONST(IVS_REC_MARK),
	CL_CONST(IVS_INLINE), CL_CONST(IVS_DEPTH), CL_CONST(IVS_SLOT_MAX), CL_CONST(IVS_SLOT_MIN),
};

enum clayout_area_part { CL_AREA_LINE, CL_AREA_LEFT, CL_AREA_SLOT, CL_AREA_RES, CL_AREA_SIZE };

// Offset of one part of a collective area of nl members with slots of slot bytes (i: member,
// s: op), or its size.
static uint64_t clayout_area(enum clayout_area_part part, uint64_t nl, uint64_t slot, uint64_t i, uint64_t s)
{
	switch (part) {
	case CL_AREA_LINE:
		return ivs_area_line_off(i, s);
	case CL_AREA_LEFT:
		return ivs_area_left_off(nl, i);
	case CL_AREA_SLOT:
		return ivs_area_slot_off(nl, slot, i, s);
	case CL_AREA_RES:
		return ivs_area_res_off(nl, slot, s);
	default:
		return ivs_area_size(nl, slot);
	}
}

static int clayout_slot_ok(uint64_t slot) { return ivs_area_slot_ok(slot); }
static size_t clayout_nfields(void) { return sizeof clayout_fields / sizeof clayout_fields[0]; }
static struct clayout_field clayout_field_at(size_t i) { return clayout_fields[i]; }
static size_t clayout_nvalues(void) { return sizeof clayout_values / sizeof clayout_values[0]; }
static struct clayout_value clayout_value_at(size_t i) { return clayout_values[i]; }
*/
import "C"

// cField is the C compiler's placement of one struct field; for a whole struct Name is the
// struct tag, Offset 0 and Size its sizeof.
type cField struct {
	Name   string
	Offset uintptr
	Size   uintptr
}

// cFields lists every struct and field of ivshim_region.h, ivshim_ring.h and ivshim_coll.h as
// "struct" or "struct.field".
func cFields() []cField {
	n := C.clayout_nfields()
	out := make([]cField, 0, n)
	for i := C.size_t(0); i < n; i++ {
		f := C.clayout_field_at(i)
		out = append(out, cField{Name: C.GoString(f.name), Offset: uintptr(f.off), Size: uintptr(f.size)})
	}
	return out
}

// cConstants maps each IVSHIM_* constant of ivshim_region.h and IVS_* constant of ivshim_ring.h
// and ivshim_coll.h to its value.
func cConstants() map[string]uint64 {
	n := C.clayout_nvalues()
	out := make(map[string]uint64, n)
	for i := C.size_t(0); i < n; i++ {
		c := C.clayout_value_at(i)
		out[C.GoString(c.name)] = uint64(c.value)
	}
	return out
}

// cArea is the C view of a collective area of nl members with slots of slot bytes: the offsets
// of member i's line, left word and slot for op s (i == nl: the result line), of the result
// buffer for op s, and the size.
type cArea struct{ Line, Left, Slot, Result, Size uint64 }

// cSlotOK is ivs_area_slot_ok.
func cSlotOK(slot uint64) bool { return C.clayout_slot_ok(C.uint64_t(slot)) != 0 }

func cAreaAt(nl, slot, i, s uint64) cArea {
	at := func(part C.enum_clayout_area_part) uint64 {
		return uint64(C.clayout_area(part, C.uint64_t(nl), C.uint64_t(slot), C.uint64_t(i), C.uint64_t(s)))
	}
	return cArea{Line: at(C.CL_AREA_LINE), Left: at(C.CL_AREA_LEFT), Slot: at(C.CL_AREA_SLOT),
		Result: at(C.CL_AREA_RES), Size: at(C.CL_AREA_SIZE)}
}
