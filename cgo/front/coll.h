/*
 * Shared-memory collectives. Layout of a communicator's collective area, allocated in the region
 * by the host's local leader (the co-located member with the lowest rank in the communicator):
 *
 *   struct ivs_cline line[nl][2]       per member, per sequence parity: seq + 56 inline bytes
 *   struct ivs_cline result[2]         the leader's result line per parity
 *   uint8_t slot[nl][2][IVS_SLOT]      per member, per parity: data larger than a line
 *   uint8_t res[2][IVS_RES]            the leader's result buffer per parity
 *
 * Protocol (one sequence number s per collective on the communicator, the same on all members):
 *   - a member publishes for s by writing its data (inline or slot, parity s&1) and then
 *     line[me][s&1].seq = s (RELEASE); readers wait for exactly s (ACQUIRE), then read.
 *   - a member may overwrite its parity p = s&1 only after every co-located member has
 *     published s-1: they have then finished op s-2, the last to read parity p.
 *   - the leader publishes its result for s the same way in result[s&1] / res[s&1].
 * Words read from the area are untrusted: only sequence numbers are read from it as control,
 * and data is copied with lengths computed locally.
 */
#ifndef IVSHIM_COLL_H
#define IVSHIM_COLL_H

#include <stdint.h>

#define IVS_INLINE 56u
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
