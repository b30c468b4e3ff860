/* Collectives: MPI_Gather, MPI_Allgather, MPI_Scatter and MPI_Alltoall. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "coll.h"

/* ---- user buffers as views ---- */

enum ubuf_mode {
	UBUF_OUT,  /* bytes to be received */
	UBUF_IN,   /* bytes to be sent */
	UBUF_COPY, /* bytes to be sent, always a packed copy (the buffer is also received into) */
};

/* The n packed bytes of count elements of dt at buf as a view (coll.h): the user's memory when
 * they are contiguous, the type's typemap where `typed` (only the area sees this member's
 * buffer: a derived type moves piece by piece), else a packed scratch copy. The view is set
 * whatever the result: a rank whose packing failed still takes part in the collective (the
 * others wait for it) and returns the error. */
struct ubuf {
	struct ivs_view v;
	struct ivs_tm *tm; /* the typemap's reference, if v uses it */
	int scratch;
};

static int ubuf_view(struct ubuf *u, const void *buf, int count, MPI_Datatype dt, uint64_t n, enum ubuf_mode mode, int typed,
                     MPI_Comm comm)
{
	uint64_t bytes;
	ptrdiff_t lb;
	*u = (struct ubuf){0};
	if (mode != UBUF_COPY && ivs_dt_contig(dt, count, &bytes, &lb) && bytes == n) {
		u->v.p = (uint8_t *)buf + lb;
		return MPI_SUCCESS;
	}
	if (mode != UBUF_COPY && typed && ivs_dt_bytes(dt, count) == n && (u->tm = ivs_dt_typemap(dt, buf))) {
		u->v = (struct ivs_view){.tm = u->tm, .buf = (void *)buf, .count = count};
		return MPI_SUCCESS;
	}
	u->scratch = 1;
	u->v.p = ivs_coll_alloc(n);
	int rc = mode == UBUF_OUT ? MPI_SUCCESS : ivs_dt_pack(buf, count, dt, u->v.p, n, comm);
	if (rc != MPI_SUCCESS)
		memset(u->v.p, 0, n); /* what the others get: zeros, not stale heap */
	return rc;
}

/* Done with u: a scratch buffer is unpacked into buf (if buf and all went well) and freed. */
static int ubuf_done(struct ubuf *u, int rc, void *buf, int count, MPI_Datatype dt, uint64_t n, MPI_Comm comm)
{
	if (u->scratch) {
		if (rc == MPI_SUCCESS && buf)
			rc = ivs_dt_unpack(u->v.p, n, buf, count, dt, comm);
		free(u->v.p);
	}
	ivs_tm_unref(u->tm);
	*u = (struct ubuf){0};
	return rc;
}

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
	struct ubuf in, out = {0};
	/* The receive arguments matter only where the result goes (a gather's non-roots may pass
	 * MPI_DATATYPE_NULL); in place, this rank's block is where the result goes. */
	if (gets)
		ubuf_view(&out, rbuf, rcount * c->size, rdt, all, UBUF_OUT, typed, c->handle); /* receives: nothing to fail */
	int rc;
	if (sbuf == MPI_IN_PLACE) {
		MPI_Aint lb, ext;
		PMPI_Type_get_extent(rdt, &lb, &ext);
		rc = ubuf_view(&in, (uint8_t *)rbuf + (ptrdiff_t)c->rank * rcount * ext, rcount, rdt, n, UBUF_IN, typed, c->handle);
	} else {
		rc = ubuf_view(&in, sbuf, scount, sdt, n, UBUF_IN, typed, c->handle);
	}
	if (k->nhosts == 1)
		ivs_coll_collect(k, root < 0 ? IVS_EVERYONE : ivs_coll_root_local(k, root), &in.v, n, &out.v, k->lranks);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_gather_hosts(k, c, in.v.p, out.v.p, n, root));
	ubuf_done(&in, rc, NULL, 0, sdt, n, c->handle);
	return ubuf_done(&out, rc, gets ? rbuf : NULL, rcount * c->size, rdt, all, c->handle);
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
	struct ubuf in = {0}, out = {0};
	int rc = at_root ? ubuf_view(&in, sbuf, scount * c->size, sdt, n * (uint64_t)c->size, UBUF_IN, typed, comm) : MPI_SUCCESS;
	if (rbuf != MPI_IN_PLACE)
		ubuf_view(&out, rbuf, rcount, rdt, n, UBUF_OUT, typed, comm); /* receives: nothing to fail */
	if (k->nhosts == 1)
		ivs_coll_distribute(k, ivs_coll_root_local(k, root), &in.v, n, rbuf != MPI_IN_PLACE ? &out.v : NULL, k->lranks);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_scatter_hosts(k, c, in.v.p, out.v.p, n, root));
	ubuf_done(&in, rc, NULL, 0, sdt, n, comm);
	return ubuf_done(&out, rc, rbuf, rcount, rdt, n, comm);
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
	struct ubuf in, out;
	int rc = sbuf == MPI_IN_PLACE ? ubuf_view(&in, rbuf, rcount * c->size, rdt, row, UBUF_COPY, 0, comm)
	                              : ubuf_view(&in, sbuf, scount * c->size, sdt, row, UBUF_IN, 1, comm);
	ubuf_view(&out, rbuf, rcount * c->size, rdt, row, UBUF_OUT, 1, comm); /* receives: nothing to fail */
	if (k->nhosts == 1)
		ivs_coll_exchange(k, &in.v, n, &out.v);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_alltoall_hosts(k, c, &in.v, &out.v, n));
	ubuf_done(&in, rc, NULL, 0, sdt, row, comm);
	return ubuf_done(&out, rc, rbuf, rcount * c->size, rdt, row, comm);
}
