/* Collectives: MPI_Gather, MPI_Allgather, MPI_Scatter and MPI_Alltoall. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "coll.h"

/* ---- user buffers as bytes ---- */

enum flat_mode {
	FLAT_OUT,  /* bytes to be received */
	FLAT_IN,   /* bytes to be sent: the user's or a packed copy */
	FLAT_COPY, /* bytes to be sent, always a copy (the buffer is also received into) */
};

/* The bytes of count elements of dt at buf: the user's memory when they are contiguous (and
 * no copy is asked for), else a scratch buffer. f->p is set whatever the result: a rank whose
 * packing failed still takes part in the collective (the others wait for it) and returns the
 * error. */
struct flat {
	uint8_t *p;
	int scratch;
};

static int flat_view(struct flat *f, const void *buf, int count, MPI_Datatype dt, uint64_t n, enum flat_mode mode,
                     MPI_Comm comm)
{
	uint64_t bytes;
	ptrdiff_t lb;
	f->scratch = mode == FLAT_COPY || !ivs_dt_contig(dt, count, &bytes, &lb) || bytes != n;
	if (!f->scratch) {
		f->p = (uint8_t *)buf + lb;
		return MPI_SUCCESS;
	}
	f->p = ivs_coll_alloc(n);
	int rc = mode == FLAT_OUT ? MPI_SUCCESS : ivs_dt_pack(buf, count, dt, f->p, n, comm);
	if (rc != MPI_SUCCESS)
		memset(f->p, 0, n); /* what the others get: zeros, not stale heap */
	return rc;
}

/* Done with f: a scratch buffer is unpacked into buf (if buf and all went well) and freed. */
static int flat_done(struct flat *f, int rc, void *buf, int count, MPI_Datatype dt, uint64_t n, MPI_Comm comm)
{
	if (f->scratch) {
		if (rc == MPI_SUCCESS && buf)
			rc = ivs_dt_unpack(f->p, n, buf, count, dt, comm);
		free(f->p);
		f->scratch = 0;
	}
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
	struct flat in = {0}, out = {0};
	/* The receive arguments matter only where the result goes (a gather's non-roots may pass
	 * MPI_DATATYPE_NULL); in place, this rank's block is where the result goes. */
	if (gets)
		flat_view(&out, rbuf, rcount * c->size, rdt, all, FLAT_OUT, c->handle); /* receives: nothing to fail */
	int rc;
	if (sbuf == MPI_IN_PLACE) {
		MPI_Aint lb, ext;
		PMPI_Type_get_extent(rdt, &lb, &ext);
		rc = flat_view(&in, (uint8_t *)rbuf + (ptrdiff_t)c->rank * rcount * ext, rcount, rdt, n, FLAT_IN, c->handle);
	} else {
		rc = flat_view(&in, sbuf, scount, sdt, n, FLAT_IN, c->handle);
	}
	if (k->nhosts == 1)
		ivs_coll_collect(k, root < 0 ? IVS_EVERYONE : ivs_coll_root_local(k, root), in.p, n, out.p, k->lranks);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_gather_hosts(k, c, in.p, out.p, n, root));
	flat_done(&in, rc, NULL, 0, sdt, n, c->handle);
	return flat_done(&out, rc, gets ? rbuf : NULL, rcount * c->size, rdt, all, c->handle);
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
	struct flat in = {0}, out = {0};
	int rc = at_root ? flat_view(&in, sbuf, scount * c->size, sdt, n * (uint64_t)c->size, FLAT_IN, comm) : MPI_SUCCESS;
	if (rbuf != MPI_IN_PLACE)
		flat_view(&out, rbuf, rcount, rdt, n, FLAT_OUT, comm); /* receives: nothing to fail */
	if (k->nhosts == 1)
		ivs_coll_distribute(k, ivs_coll_root_local(k, root), in.p, n, out.p, k->lranks);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_scatter_hosts(k, c, in.p, out.p, n, root));
	flat_done(&in, rc, NULL, 0, sdt, n, comm);
	return flat_done(&out, rc, rbuf, rcount, rdt, n, comm);
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
	struct flat in = {0}, out = {0};
	int rc = sbuf == MPI_IN_PLACE ? flat_view(&in, rbuf, rcount * c->size, rdt, row, FLAT_COPY, comm)
	                              : flat_view(&in, sbuf, scount * c->size, sdt, row, FLAT_IN, comm);
	flat_view(&out, rbuf, rcount * c->size, rdt, row, FLAT_OUT, comm); /* receives: nothing to fail */
	if (k->nhosts == 1)
		ivs_coll_exchange(k, in.p, n, out.p);
	else
		rc = ivs_coll_first_error(rc, ivs_coll_alltoall_hosts(k, c, in.p, out.p, n));
	flat_done(&in, rc, NULL, 0, sdt, row, comm);
	return flat_done(&out, rc, rbuf, rcount * c->size, rdt, row, comm);
}
