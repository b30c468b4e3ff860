/* Collectives: MPI_Barrier and MPI_Bcast. */
#include <stdlib.h>
#include <string.h>
#include "coll.h"

static int barrier(struct ivs_coll *k)
{
	uint64_t s = ivs_coll_op_begin(k, 0);
	ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
	if (k->nhosts == 1) {
		ivs_coll_await_all(k, s);
		return MPI_SUCCESS;
	}
	if (k->li == 0) {
		ivs_coll_await_all(k, s);
		int rc = ivs_lead_barrier(k);
		ivs_coll_publish(ivs_coll_result_line(k, s), s);
		return rc;
	}
	ivs_coll_await(ivs_coll_result_line(k, s), s);
	return MPI_SUCCESS;
}

/* In pieces of one slot: the root's host spreads each piece while its leader passes it on to
 * the other hosts' leaders, which pass it on and spread it on theirs; the leaders' transfers of
 * later pieces overlap the spreading of earlier ones. The message is n bytes of v, which on a
 * leader of several hosts are packed (v->p): it passes them on. */
static int bcast_bytes(struct ivs_coll *k, const struct ivs_view *v, uint64_t n, int root)
{
	int root_host = k->host_of[root], root_li = ivs_coll_root_local(k, root);
	int src_li = root_li >= 0 ? root_li : 0; /* whose area this host copies from */
	int lead = k->li == 0 && k->nhosts > 1 && n > 0, rc = MPI_SUCCESS;
	struct ivs_lead_pipe q;
	if (lead)
		rc = ivs_lead_pipe_open(k, &q, v->p, n, k->slot, root_host);
	for (uint64_t off = 0, i = 0; off < n; off += k->slot, i++) {
		uint64_t len = ivs_min_u64(n - off, k->slot);
		if (lead && root_li < 0 && rc == MPI_SUCCESS) /* from the leaders, on to the next ones */
			rc = ivs_lead_pipe_in(&q, (int)i);
		if (lead && root_li < 0 && rc == MPI_SUCCESS)
			rc = ivs_lead_pipe_out(&q, (int)i);
		ivs_coll_spread(k, src_li, IVS_EVERYONE, v, off, len);
		if (lead && root_li >= 0 && rc == MPI_SUCCESS) /* from the root, through the area */
			rc = ivs_lead_pipe_out(&q, (int)i);
	}
	return lead ? ivs_lead_pipe_close(&q, rc) : rc;
}

int MPI_Barrier(MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	if (ivs_coll_comm(comm, &k)) {
		ivs.stats.collectives_shm++;
		return barrier(k);
	}
	IVS_NET_COLL(PMPI_Barrier(comm), PMPI_Ibarrier(comm, &req_));
}

int MPI_Bcast(void *buf, int count, MPI_Datatype dt, int root, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	uint64_t n = ivs_dt_bytes(dt, count);
	if (!c || root < 0 || root >= c->size)
		IVS_NET_COLL_SIZED(n, PMPI_Bcast(buf, count, dt, root, comm),
		                   PMPI_Ibcast(buf, count, dt, root, comm, &req_));
	ivs.stats.collectives_shm++;
	if (n == 0) /* the same on every rank: type signatures match */
		return MPI_SUCCESS;
	/* A derived type goes between the user's buffer and the area piece by piece, but on the
	 * leaders of several hosts, which pass packed bytes on. Both ways put the same packed bytes
	 * in the area, so each member picks its own. Every member takes part in the broadcast, also
	 * a root whose packing failed (the others wait for its pieces): the error is the root's to
	 * return. */
	int at_root = c->rank == root;
	struct ivs_buf u;
	int rc = ivs_coll_buf(&u, buf, count, dt, n, at_root ? IVS_BUF_IN : IVS_BUF_OUT, k->nhosts == 1 || k->li != 0, comm);
	rc = ivs_coll_first_error(rc, bcast_bytes(k, &u.v, n, root));
	return ivs_coll_buf_done(&u, rc, at_root ? NULL : buf, count, dt, n, comm);
}
