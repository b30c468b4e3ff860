/*
 * Shared-memory collectives: the per-communicator state of a rank. The area it points to, and
 * the protocol the members keep in it, are defined in ivshmem/ivshim_coll.h.
 */
#ifndef IVSHIM_FRONT_COLL_H
#define IVSHIM_FRONT_COLL_H

#include <stdint.h>
#include "ivshim_coll.h"

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
