/*
 * ivshim collective area format, part of region format IVSHIM_REGION_VERSION (ivshim_region.h):
 * the layout of a communicator's collective area and the protocol its users keep. The single
 * definition the C data plane's collectives (cgo/front/coll_*.c) agree on; ivshmem/layout_test.go
 * proves the Go mirror in ivshmem/coll_format.go has the same constants, struct layouts and area
 * offsets.
 *
 * An area serves the nl co-located members of one communicator on one host. The host's local
 * leader (the co-located member with the lowest rank in the communicator) allocates it in the
 * region (an allocation of kind IVSHIM_ALLOC_COLLECTIVE, so it starts on a chunk); a host with a
 * single member keeps it in private memory. Map, offsets from the start of the area as the
 * functions below compute them:
 *
 *   struct ivs_cline line[nl][IVS_DEPTH]  per member, per op s % IVS_DEPTH: seq + inline bytes
 *   struct ivs_cline result[IVS_DEPTH]    the leader's result line per op s % IVS_DEPTH
 *   struct ivs_cleft left[nl]             per member: 1 once it freed the communicator
 *   uint8_t slot[nl][2][slot]             per member, per parity s & 1: data larger than a line
 *   uint8_t res[2][slot]                  the leader's result buffer per parity s & 1
 *
 * The slot size is the area's own: a power of two from IVS_SLOT_MIN to IVS_SLOT_MAX that the
 * leader picks when it allocates the area (the largest that fits the region's heap) and gives
 * the members with the area's offset. A smaller slot moves large data in more pieces; it lets a
 * tight region hold an area for every communicator (64 members: 8.4 MiB at the largest slot,
 * 0.77 MiB at the smallest).
 *
 * Protocol (one sequence number s per collective on the communicator, the same on all members):
 *   - a member publishes for s by writing its data (inline in line s % IVS_DEPTH, or in slot
 *     s & 1) and then that line's seq = s (RELEASE); readers wait for exactly s (ACQUIRE), then
 *     read.
 *   - a buffer used by op s was last used by op s - IVS_DEPTH (lines) or s - 2 (slots, results);
 *     a member may write it only after every co-located member has published s - IVS_DEPTH + 1
 *     or s - 1, and so finished the op that last read it. A member remembers how far the others
 *     got, so an op with inline data checks the others' lines only once per IVS_DEPTH - 1 ops.
 *     Deep rotation also lets a reader walk the lines in address order while the writer runs
 *     ahead: a loop of small broadcasts streams (Open MPI, 2 ranks, Bcast 8 B: 0.083 us with 8
 *     lines, 0.061 with 32, 0.056 with 64; the library's own 0.087).
 *   - the leader publishes its result for s the same way in result[s % IVS_DEPTH] / res[s & 1].
 *   - a member that frees the communicator stores 1 into its left word (RELEASE) and never
 *     touches the area again; the leader returns the area to the region once it has loaded
 *     (ACQUIRE) 1 from every member's left word, its own included. Nobody waits for that.
 * Words read from the area are untrusted: only sequence numbers and left words are read from it
 * as control, and data is copied with lengths computed locally.
 */
#ifndef IVSHIM_COLL_H
#define IVSHIM_COLL_H

#include <stddef.h>
#include <stdint.h>
#include "ivshim_region.h"

#define IVS_INLINE 56u        /* data bytes in a line, after its seq */
#define IVS_DEPTH 64u         /* lines per member: how far ahead a member may publish inline data */
#define IVS_SLOT_MAX (64u << 10) /* largest slot: the most a member publishes for one op */
#define IVS_SLOT_MIN (4u << 10)  /* smallest slot: a page */

/* A line: what a member (or the leader's result) publishes for one op. */
struct ivs_cline {
	uint64_t seq; /* atomic: the op whose data this line or its slot holds, stored last (RELEASE) */
	uint8_t data[IVS_INLINE];
};

/* A member's left word, alone on its line: the leader polls it while the member may be gone. */
struct ivs_cleft {
	uint64_t left; /* atomic: 0, then 1 (RELEASE) once the member freed the communicator */
	uint64_t reserved[7];
};

_Static_assert(sizeof(struct ivs_cline) == IVSHIM_CACHELINE, "a line is one cache line");
_Static_assert(offsetof(struct ivs_cline, data) == sizeof(uint64_t) &&
	       IVS_INLINE == IVSHIM_CACHELINE - sizeof(uint64_t), "inline data fills the line after seq");
_Static_assert(sizeof(struct ivs_cleft) == IVSHIM_CACHELINE && offsetof(struct ivs_cleft, left) == 0,
	       "a left word has its cache line to itself");
_Static_assert(IVS_SLOT_MIN % IVSHIM_CACHELINE == 0 && (IVS_SLOT_MIN & (IVS_SLOT_MIN - 1)) == 0 &&
	       (IVS_SLOT_MAX & (IVS_SLOT_MAX - 1)) == 0 && IVS_SLOT_MIN <= IVS_SLOT_MAX,
	       "slot sizes are powers of two on cache lines: slots and result buffers start on cache lines");
_Static_assert(IVS_INLINE < IVS_SLOT_MIN && IVS_SLOT_MIN / IVSHIM_MAX_SLOTS >= 1,
	       "what misses a line fits a slot, and a slot split among all members (distribute, exchange) gives each some");
_Static_assert(IVS_DEPTH >= 2, "a member can make sure only that op s - 1 is done: ops s - 1 and s need two lines");

/* Offset of member i's line for op s; i == nl names the leader's result lines. */
static inline uint64_t ivs_area_line_off(uint64_t i, uint64_t s)
{
	return (i * IVS_DEPTH + s % IVS_DEPTH) * sizeof(struct ivs_cline);
}

/* Offset of member i's left word, after the nl + 1 members' lines. */
static inline uint64_t ivs_area_left_off(uint64_t nl, uint64_t i)
{
	return ivs_area_line_off(nl + 1, 0) + i * sizeof(struct ivs_cleft);
}

/* Whether slot is a slot size an area may have. */
static inline int ivs_area_slot_ok(uint64_t slot)
{
	return slot >= IVS_SLOT_MIN && slot <= IVS_SLOT_MAX && (slot & (slot - 1)) == 0;
}

/* Offset of member i's slot for op s, after the nl left words; slot is the area's slot size. */
static inline uint64_t ivs_area_slot_off(uint64_t nl, uint64_t slot, uint64_t i, uint64_t s)
{
	return ivs_area_left_off(nl, nl) + (i * 2 + (s & 1)) * slot;
}

/* Offset of the leader's result buffer for op s, after the nl members' slots. A result is one
 * reduced piece, at most a slot. */
static inline uint64_t ivs_area_res_off(uint64_t nl, uint64_t slot, uint64_t s)
{
	return ivs_area_slot_off(nl, slot, nl, 0) + (s & 1) * slot;
}

/* Bytes of an area for nl members with slots of slot bytes. */
static inline uint64_t ivs_area_size(uint64_t nl, uint64_t slot)
{
	return ivs_area_res_off(nl, slot, 0) + 2 * slot;
}

#endif /* IVSHIM_COLL_H */
