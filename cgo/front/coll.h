/*
 * Shared-memory collectives. Layout of a communicator's collective area, allocated in the region
 * by the host's local leader (the co-located member with the lowest rank in the communicator):
 *
 *   struct ivs_cline line[nl][DEPTH]   per member, per op s % DEPTH: seq + 56 inline bytes
 *   struct ivs_cline result[DEPTH]     the leader's result line per op s % DEPTH
 *   uint64_t left[nl], one line each      per member: 1 once it freed the communicator
 *   uint8_t slot[nl][2][IVS_SLOT]      per member, per parity s&1: data larger than a line
 *   uint8_t res[2][IVS_RES]            the leader's result buffer per parity s&1
 *
 * Protocol (one sequence number s per collective on the communicator, the same on all members):
 *   - a member publishes for s by writing its data (inline in line s%DEPTH, or in slot s&1)
 *     and then that line's seq = s (RELEASE); readers wait for exactly s (ACQUIRE), then read.
 *   - a buffer used by op s was last used by op s-DEPTH (lines) or s-2 (slots, results); a
 *     member may write it only after every co-located member has published s-DEPTH+1 or s-1,
 *     and so finished the op that last read it. A member remembers how far the others got,
 *     so an op with inline data checks the others' lines only once per DEPTH-1 ops. Deep
 *     rotation also lets a reader walk the lines in address order while the writer runs ahead:
 *     a loop of small broadcasts streams (Open MPI, 2 ranks, Bcast 8 B: 0.083 us with 8
 *     lines, 0.061 with 32, 0.056 with 64; the library's own 0.087).
 *   - the leader publishes its result for s the same way in result[s%DEPTH] / res[s&1].
 * Words read from the area are untrusted: only sequence numbers are read from it as control,
 * and data is copied with lengths computed locally.
 */
#ifndef IVSHIM_COLL_H
#define IVSHIM_COLL_H

#include <stdint.h>

#define IVS_INLINE 56u
#define IVS_DEPTH 64u /* lines per member: how far ahead a member may publish inline data */
#define IVS_SLOT (64u << 10)
#define IVS_RES (256u << 10)

struct ivs_cline {
	uint64_t seq; /* atomic */
	uint8_t data[IVS_INLINE];
};

struct ivs_coll {
	int nl, li;          /* co-located members, my index among them (comm rank order) */
	int *lranks;         /* local index -> comm rank */
	int nhosts, myhost;  /* hosts of the communicator, ordered by their lowest comm rank */
	int maxnl;           /* most members on one host */
	int *host_of;        /* comm rank -> host */
	int *host_first;     /* host -> offset of its first member in host-grouped order */
	int *pos;            /* comm rank -> position in host-grouped order */
	MPI_Comm lcomm;      /* leaders of all hosts, rank = host index; MPI_COMM_NULL elsewhere */
	int usable;          /* the area exists on every host */
	uint64_t area_off;   /* region offset of the area (leader's allocation) */
	uint8_t *area;
	uint64_t seq;
	uint64_t *seen;      /* local index -> highest op this rank has seen that member publish */
};

#endif
