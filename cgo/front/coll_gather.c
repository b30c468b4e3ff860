/* Collectives: MPI_Gather, MPI_Allgather, MPI_Scatter and MPI_Alltoall. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "coll.h"

/* Across hosts a leader holds four buffers of its members' alltoall rows (send, receive, and
 * both regrouped); beyond this size each, the library's own alltoall is used. It bounds the
 * leaders' int counts too. The decision takes the largest host, so it is the same everywhere. */
#define IVS_LEADER_ROWS (64ull << 20)

/* Across hosts, an alltoall with blocks larger than this goes to the library: its leaders'
 * phase funnels every block through one rank per host, which made 16 KiB blocks 2-3x and
 * 256 KiB-1 MiB blocks 11-22x slower than the library's own alltoall over TCP (make bench,
 * 2 hosts x 2 and x 4 VMs), while up to 4 KiB it was 0.5-1.0x. Measured again with the
 * leaders exchanging by point-to-point (2 hosts x 2 VMs, Open MPI, medians of 5): 8 KiB
 * blocks 2.0x, 16 KiB-4 MiB 4.4-10.6x, where the library's alltoall called by the shim took
 * 0.56-0.95x. n is the same on every rank. */
#define IVS_ALLTOALL_HOSTS_BLOCK (4ull << 10)

/* Byte counts the fast path handles: the library's counts are ints. */
static int too_big(uint64_t bytes)
{
	return bytes > INT_MAX;
}

/* Gather to root, or allgather if root < 0, of n bytes per rank. */
static int gather_common(struct ivs_coll *k, struct ivs_comm *c, const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf,
                         int rcount, MPI_Datatype rdt, int root, uint64_t n)
{
	ivs.stats.collectives_shm++;
	if (n == 0)
		return MPI_SUCCESS;
	int gets = root < 0 || c->rank == root;
	uint64_t all = n * (uint64_t)c->size;
	int typed = k->nhosts == 1; /* across hosts the buffers go to the library too */
	struct ivs_buf in = {0}, out = {0};
	/* The receive arguments matter only where the result goes (a gather's non-roots may pass
	 * MPI_DATATYPE_NULL). */
	if (gets)
		ivs_coll_buf(&out, rbuf, rcount * c->size, rdt, all, IVS_BUF_OUT, typed, c->handle); /* receives: nothing to fail */
	int rc = MPI_SUCCESS;
	const struct ivs_view *src = &in.v;
	if (sbuf != MPI_IN_PLACE) {
		rc = ivs_coll_buf(&in, sbuf, scount, sdt, n, IVS_BUF_IN, typed, c->handle);
	} else if (typed && !out.scratch) {
		src = NULL; /* this rank's block is in the user's buffer, which out views */
	} else { /* a copy of it, packed, or the user's memory, contiguous */
		MPI_Aint lb, ext;
		PMPI_Type_get_extent(rdt, &lb, &ext);
		rc = ivs_coll_buf(&in, (uint8_t *)rbuf + (ptrdiff_t)c->rank * rcount * ext, rcount, rdt, n, IVS_BUF_IN, 0, c->handle);
	}
	if (k->nhosts == 1)
		ivs_coll_collect(k, root < 0 ? IVS_EVERYONE : ivs_coll_root_local(k, root), src, n, &out.v, k->lranks);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_gather_hosts(k, c, in.v.p, out.v.p, n, root));
	ivs_coll_buf_done(&in, rc, NULL, 0, sdt, n, c->handle);
	return ivs_coll_buf_done(&out, rc, gets ? rbuf : NULL, rcount * c->size, rdt, all, c->handle);
}

int MPI_Allgather(const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf, int rcount, MPI_Datatype rdt, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	uint64_t n = ivs_dt_bytes(rdt, rcount);
	if (!c || too_big(n * (uint64_t)c->size))
		IVS_NET_COLL_SIZED(n, PMPI_Allgather(sbuf, scount, sdt, rbuf, rcount, rdt, comm),
		                   PMPI_Iallgather(sbuf, scount, sdt, rbuf, rcount, rdt, comm, &req_));
	return gather_common(k, c, sbuf, scount, sdt, rbuf, rcount, rdt, -1, n);
}

int MPI_Gather(const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf, int rcount, MPI_Datatype rdt, int root, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	int at_root = c && c->rank == root;
	uint64_t n = !c ? 0 : at_root && sbuf == MPI_IN_PLACE ? ivs_dt_bytes(rdt, rcount) : ivs_dt_bytes(sdt, scount);
	if (!c || root < 0 || root >= c->size || too_big(n * (uint64_t)c->size))
		IVS_NET_COLL_ROOTED(root, ivs_dt_bytes(rdt, rcount), ivs_dt_bytes(sdt, scount),
		                   PMPI_Gather(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm),
		                   PMPI_Igather(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm, &req_));
	return gather_common(k, c, sbuf, scount, sdt, rbuf, rcount, rdt, root, n);
}

int MPI_Scatter(const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf, int rcount, MPI_Datatype rdt, int root, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	int at_root = c && c->rank == root;
	uint64_t n = !c ? 0 : at_root && rbuf == MPI_IN_PLACE ? ivs_dt_bytes(sdt, scount) : ivs_dt_bytes(rdt, rcount);
	if (!c || root < 0 || root >= c->size || too_big(n * (uint64_t)c->size))
		IVS_NET_COLL_ROOTED(root, ivs_dt_bytes(sdt, scount), ivs_dt_bytes(rdt, rcount),
		                   PMPI_Scatter(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm),
		                   PMPI_Iscatter(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm, &req_));
	ivs.stats.collectives_shm++;
	if (n == 0)
		return MPI_SUCCESS;
	int typed = k->nhosts == 1; /* across hosts the buffers go to the library too */
	struct ivs_buf in = {0}, out = {0};
	int rc = at_root ? ivs_coll_buf(&in, sbuf, scount * c->size, sdt, n * (uint64_t)c->size, IVS_BUF_IN, typed, comm)
	                 : MPI_SUCCESS;
	if (rbuf != MPI_IN_PLACE)
		ivs_coll_buf(&out, rbuf, rcount, rdt, n, IVS_BUF_OUT, typed, comm); /* receives: nothing to fail */
	if (k->nhosts == 1)
		ivs_coll_distribute(k, ivs_coll_root_local(k, root), &in.v, n, rbuf != MPI_IN_PLACE ? &out.v : NULL, k->lranks);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_scatter_hosts(k, c, in.v.p, out.v.p, n, root));
	ivs_coll_buf_done(&in, rc, NULL, 0, sdt, n, comm);
	return ivs_coll_buf_done(&out, rc, rbuf, rcount, rdt, n, comm);
}

int MPI_Alltoall(const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf, int rcount, MPI_Datatype rdt, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	uint64_t n = ivs_dt_bytes(rdt, rcount), row = c ? n * (uint64_t)c->size : 0;
	if (!c || too_big(row) ||
	    (k->nhosts > 1 && (n > IVS_ALLTOALL_HOSTS_BLOCK || row * (uint64_t)k->maxnl > IVS_LEADER_ROWS)))
		IVS_NET_COLL_SIZED(n, PMPI_Alltoall(sbuf, scount, sdt, rbuf, rcount, rdt, comm),
		                   PMPI_Ialltoall(sbuf, scount, sdt, rbuf, rcount, rdt, comm, &req_));
	ivs.stats.collectives_shm++;
	if (n == 0)
		return MPI_SUCCESS;
	/* Only the area sees a member's buffers, also across hosts: derived types go piece by piece. */
	struct ivs_buf in = {0}, out = {0};
	int rc = sbuf == MPI_IN_PLACE ? ivs_coll_buf(&in, rbuf, rcount * c->size, rdt, row, IVS_BUF_COPY, 1, comm)
	                              : ivs_coll_buf(&in, sbuf, scount * c->size, sdt, row, IVS_BUF_IN, 1, comm);
	ivs_coll_buf(&out, rbuf, rcount * c->size, rdt, row, IVS_BUF_OUT, 1, comm); /* receives: nothing to fail */
	if (k->nhosts == 1)
		ivs_coll_exchange(k, &in.v, n, &out.v);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_alltoall_hosts(k, c, &in.v, &out.v, n));
	ivs_coll_buf_done(&in, rc, NULL, 0, sdt, row, comm);
	return ivs_coll_buf_done(&out, rc, rbuf, rcount * c->size, rdt, row, comm);
}
