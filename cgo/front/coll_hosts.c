/* Collectives across hosts: gathers, scatters and alltoall.
 * A host's leader collects its members' blocks through the area, the leaders move them with
 * the library's v-collective over the leaders' communicator (host-grouped order: a host's
 * members in comm rank order, hosts in order), and the leader hands the results out through
 * the area. A leader's library error is returned after the intra-host phases, which still run
 * so that its host's members do not wait forever. */
#include <stdlib.h>
#include <string.h>
#include "coll.h"

/* The leaders' per-host byte counts and displacements for `per` bytes per member. */
static int *leader_counts(struct ivs_coll *k, uint64_t per)
{
	int *cd = ivs_coll_alloc(sizeof(int) * 2 * (uint64_t)k->nhosts);
	for (int h = 0; h < k->nhosts; h++) {
		cd[h] = (int)((uint64_t)(k->host_first[h + 1] - k->host_first[h]) * per);
		cd[k->nhosts + h] = (int)((uint64_t)k->host_first[h] * per);
	}
	return cd;
}

/* Blocks of n bytes between comm rank order (ranked[r]) and host-grouped order (grouped[pos[r]]). */
static void regroup(struct ivs_coll *k, int size, uint8_t *grouped, uint8_t *ranked, uint64_t n, int to_grouped)
{
	for (int r = 0; r < size; r++) {
		uint8_t *g = grouped + (uint64_t)k->pos[r] * n, *o = ranked + (uint64_t)r * n;
		ivs_copy(to_grouped ? g : o, to_grouped ? o : g, n);
	}
}

/* Gather to root, or allgather if root < 0, across hosts. */
int ivs_coll_gather_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root)
{
	int everyone = root < 0, root_host = everyone ? -1 : k->host_of[root];
	int root_li = everyone ? IVS_EVERYONE : ivs_coll_root_local(k, root), gets = everyone || k->myhost == root_host;
	uint64_t all = n * (uint64_t)c->size;
	uint8_t *mine = k->li == 0 ? ivs_coll_alloc(n * (uint64_t)k->nl) : NULL;
	uint8_t *grouped = gets && (everyone || k->li == 0 || k->li == root_li) ? ivs_coll_alloc(all) : NULL;
	int rc = MPI_SUCCESS;
	ivs_coll_collect(k, 0, src, n, mine, NULL);
	if (k->li == 0) {
		int *cd = leader_counts(k, n), count = (int)(n * (uint64_t)k->nl);
		MPI_Request req;
		rc = ivs_coll_net_complete(everyone ? PMPI_Iallgatherv(mine, count, MPI_BYTE, grouped, cd, cd + k->nhosts, MPI_BYTE, k->lcomm, &req)
		                           : PMPI_Igatherv(mine, count, MPI_BYTE, grouped, cd, cd + k->nhosts, MPI_BYTE, root_host,
		                                           k->lcomm, &req),
		                  &req);
		free(cd);
	}
	if (gets && root_li != 0) /* the leader has it: on to the root, or to everyone */
		ivs_coll_spread(k, 0, root_li, grouped, all, grouped);
	if (everyone || c->rank == root)
		regroup(k, c->size, grouped, dst, n, 0);
	free(grouped);
	free(mine);
	return rc;
}

int ivs_coll_scatter_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root)
{
	int root_host = k->host_of[root], root_li = ivs_coll_root_local(k, root), at_root_host = k->myhost == root_host;
	uint64_t all = n * (uint64_t)c->size;
	uint8_t *grouped = at_root_host && (k->li == 0 || k->li == root_li) ? ivs_coll_alloc(all) : NULL;
	uint8_t *mine = k->li == 0 ? ivs_coll_alloc(n * (uint64_t)k->nl) : NULL;
	int rc = MPI_SUCCESS;
	if (c->rank == root)
		regroup(k, c->size, grouped, (uint8_t *)src, n, 1);
	if (at_root_host && root_li != 0)
		ivs_coll_spread(k, root_li, 0, grouped, all, grouped);
	if (k->li == 0) {
		int *cd = leader_counts(k, n);
		MPI_Request req;
		rc = ivs_coll_net_complete(PMPI_Iscatterv(grouped, cd, cd + k->nhosts, MPI_BYTE, mine, (int)(n * (uint64_t)k->nl),
		                                 MPI_BYTE, root_host, k->lcomm, &req), &req);
		free(cd);
	}
	ivs_coll_distribute(k, 0, mine, n, dst, NULL);
	free(grouped);
	free(mine);
	return rc;
}

/* The leaders' alltoall: in[i][r] is the block local member i sends to comm rank r, out[j][r]
 * the block local member j receives from comm rank r. For each destination host the leader
 * sends [local member][destination member] blocks; from a source host it receives
 * [source member][local member] blocks, so the block from rank r to local member j lands at
 * (pos[r]*nl + j)*n. */
static int leaders_alltoall(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *in, uint8_t *out, uint64_t n)
{
	uint64_t row = n * (uint64_t)c->size, nl = (uint64_t)k->nl;
	uint8_t *snd = ivs_coll_alloc(nl * row), *rcv = ivs_coll_alloc(nl * row);
	int nh = k->nhosts, *cd = ivs_coll_alloc(sizeof(int) * 4 * (uint64_t)nh);
	for (int h = 0; h < nh; h++) {
		uint64_t members = (uint64_t)(k->host_first[h + 1] - k->host_first[h]);
		cd[h] = cd[2 * nh + h] = (int)(nl * members * n);
		cd[nh + h] = cd[3 * nh + h] = (int)(nl * (uint64_t)k->host_first[h] * n);
	}
	for (int r = 0; r < c->size; r++) {
		int h = k->host_of[r];
		uint64_t members = (uint64_t)(k->host_first[h + 1] - k->host_first[h]), j = (uint64_t)(k->pos[r] - k->host_first[h]);
		for (uint64_t i = 0; i < nl; i++)
			ivs_copy(snd + (uint64_t)cd[nh + h] + (i * members + j) * n, in + i * row + (uint64_t)r * n, n);
	}
	MPI_Request req;
	int rc = ivs_coll_net_complete(PMPI_Ialltoallv(snd, cd, cd + nh, MPI_BYTE, rcv, cd + 2 * nh, cd + 3 * nh, MPI_BYTE, k->lcomm,
	                                      &req), &req);
	for (int r = 0; r < c->size && rc == MPI_SUCCESS; r++)
		for (uint64_t j = 0; j < nl; j++)
			ivs_copy(out + j * row + (uint64_t)r * n, rcv + ((uint64_t)k->pos[r] * nl + j) * n, n);
	free(snd);
	free(rcv);
	free(cd);
	return rc;
}

int ivs_coll_alltoall_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n)
{
	uint64_t row = n * (uint64_t)c->size; /* one member's send or receive buffer */
	uint8_t *in = NULL, *out = NULL;
	int rc = MPI_SUCCESS;
	if (k->li == 0) {
		in = ivs_coll_alloc(row * (uint64_t)k->nl);
		out = ivs_coll_alloc(row * (uint64_t)k->nl);
	}
	ivs_coll_collect(k, 0, src, row, in, NULL);
	if (k->li == 0)
		rc = leaders_alltoall(k, c, in, out, n);
	ivs_coll_distribute(k, 0, out, row, dst, NULL);
	free(in);
	free(out);
	return rc;
}
