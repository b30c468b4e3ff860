/*
 * MPI-4 large-count calls (MPI_Send_c, MPI_Bcast_c, ...): MPICH 4 exports them, Open MPI 4.1 does
 * not. Left alone they would bypass the shim, and a large-count send to a co-located peer would
 * travel by the library while the peer's receive waits on the ring. Every count that fits an int
 * takes the int interposer, so both forms match each other and use the same path. A count
 * beyond INT_MAX goes to the library's own large-count call, except on a communicator where this
 * rank reaches someone through the rings: there the two paths could not be matched, and the
 * call fails with MPI_ERR_COUNT through the communicator's error handler (the shim's data path
 * counts in int elements). Such a call goes uncounted (join.c): it ends this rank's answers to
 * join questions, and a pair whose sender made one never finds its counts equal.
 */
#include <limits.h>
#include <stdlib.h>
#include "coll.h"

#if defined(MPICH) && MPI_VERSION >= 4

static inline int fits(MPI_Count n)
{
	return n >= 0 && n <= INT_MAX;
}

/* Too large for the shim, on a communicator where this rank has co-located peers. */
static int too_large(MPI_Comm comm)
{
	const struct ivs_comm *c = ivs.enabled ? ivs_comm_p2p(comm) : NULL;
	if (c && (c->nshm >= 2 || c->pending_probe || ivs.nunexp_net)) /* a receive waits in the shim's queue */
		return ivs_arg_error(comm, MPI_ERR_COUNT);
	if (c && c->counted) { /* the library's call, which the counts never see */
		ivs.lib_uncounted = 1;
		ivs.lib_lost = 1;
	}
	return MPI_SUCCESS;
}

/* Blocking and nonblocking sends and receives, and their persistent forms: (buf, count, type,
 * peer, tag, comm, last). */
#define LC_P2P(name, bufq, last_t)                                                                                 \
	int MPI_##name##_c(bufq void *buf, MPI_Count count, MPI_Datatype dt, int peer, int tag, MPI_Comm comm, last_t x) \
	{                                                                                                               \
		if (fits(count))                                                                                            \
			return MPI_##name(buf, (int)count, dt, peer, tag, comm, x);                                             \
		int rc = too_large(comm);                                                                                   \
		return rc != MPI_SUCCESS ? rc : PMPI_##name##_c(buf, count, dt, peer, tag, comm, x);                       \
	}
#define LC_SEND(name)                                                                                \
	int MPI_##name##_c(const void *buf, MPI_Count count, MPI_Datatype dt, int peer, int tag, MPI_Comm comm) \
	{                                                                                                \
		if (fits(count))                                                                             \
			return MPI_##name(buf, (int)count, dt, peer, tag, comm);                                 \
		int rc = too_large(comm);                                                                    \
		return rc != MPI_SUCCESS ? rc : PMPI_##name##_c(buf, count, dt, peer, tag, comm);           \
	}
LC_SEND(Send)
LC_SEND(Bsend)
LC_SEND(Ssend)
LC_SEND(Rsend)
LC_P2P(Recv, , MPI_Status *)
LC_P2P(Isend, const, MPI_Request *)
LC_P2P(Ibsend, const, MPI_Request *)
LC_P2P(Issend, const, MPI_Request *)
LC_P2P(Irsend, const, MPI_Request *)
LC_P2P(Irecv, , MPI_Request *)
LC_P2P(Send_init, const, MPI_Request *)
LC_P2P(Bsend_init, const, MPI_Request *)
LC_P2P(Ssend_init, const, MPI_Request *)
LC_P2P(Rsend_init, const, MPI_Request *)
LC_P2P(Recv_init, , MPI_Request *)

int MPI_Sendrecv_c(const void *sbuf, MPI_Count scount, MPI_Datatype sdt, int dest, int stag, void *rbuf,
                   MPI_Count rcount, MPI_Datatype rdt, int src, int rtag, MPI_Comm comm, MPI_Status *st)
{
	if (fits(scount) && fits(rcount))
		return MPI_Sendrecv(sbuf, (int)scount, sdt, dest, stag, rbuf, (int)rcount, rdt, src, rtag, comm, st);
	int rc = too_large(comm);
	return rc != MPI_SUCCESS ? rc : PMPI_Sendrecv_c(sbuf, scount, sdt, dest, stag, rbuf, rcount, rdt, src, rtag, comm, st);
}

int MPI_Sendrecv_replace_c(void *buf, MPI_Count count, MPI_Datatype dt, int dest, int stag, int src, int rtag,
                           MPI_Comm comm, MPI_Status *st)
{
	if (fits(count))
		return MPI_Sendrecv_replace(buf, (int)count, dt, dest, stag, src, rtag, comm, st);
	int rc = too_large(comm);
	return rc != MPI_SUCCESS ? rc : PMPI_Sendrecv_replace_c(buf, count, dt, dest, stag, src, rtag, comm, st);
}

/* Matched receives: the message handle tells the path, a shim message is never that large. */
int MPI_Mrecv_c(void *buf, MPI_Count count, MPI_Datatype dt, MPI_Message *msg, MPI_Status *st)
{
	return fits(count) ? MPI_Mrecv(buf, (int)count, dt, msg, st) : PMPI_Mrecv_c(buf, count, dt, msg, st);
}

int MPI_Imrecv_c(void *buf, MPI_Count count, MPI_Datatype dt, MPI_Message *msg, MPI_Request *req)
{
	return fits(count) ? MPI_Imrecv(buf, (int)count, dt, msg, req) : PMPI_Imrecv_c(buf, count, dt, msg, req);
}

/* Bytes of n elements of dt (for the rule on collectives that move none: coll.h). */
static uint64_t lc_bytes(MPI_Datatype dt, MPI_Count n)
{
	MPI_Count size = 0;
	PMPI_Type_size_c(dt, &size);
	return size > 0 && n > 0 ? (uint64_t)size * (uint64_t)n : 0;
}

/* Collectives the shim implements: an int count takes the same path as MPI_Xxx on the other
 * members; larger ones are beyond the shim's byte limit (INT_MAX) and go to the library there
 * too, the way the library's collectives are called (IVS_NET_COLL, coll.h). */

int MPI_Bcast_c(void *buf, MPI_Count count, MPI_Datatype dt, int root, MPI_Comm comm)
{
	if (fits(count))
		return MPI_Bcast(buf, (int)count, dt, root, comm);
	IVS_NET_COLL_SIZED(lc_bytes(dt, count), PMPI_Bcast_c(buf, count, dt, root, comm),
	                   PMPI_Ibcast_c(buf, count, dt, root, comm, &req_));
}

int MPI_Allreduce_c(const void *sbuf, void *rbuf, MPI_Count count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	if (fits(count))
		return MPI_Allreduce(sbuf, rbuf, (int)count, dt, op, comm);
	IVS_NET_COLL(PMPI_Allreduce_c(sbuf, rbuf, count, dt, op, comm), PMPI_Iallreduce_c(sbuf, rbuf, count, dt, op, comm, &req_));
}

int MPI_Reduce_c(const void *sbuf, void *rbuf, MPI_Count count, MPI_Datatype dt, MPI_Op op, int root, MPI_Comm comm)
{
	if (fits(count))
		return MPI_Reduce(sbuf, rbuf, (int)count, dt, op, root, comm);
	IVS_NET_COLL(PMPI_Reduce_c(sbuf, rbuf, count, dt, op, root, comm),
	             PMPI_Ireduce_c(sbuf, rbuf, count, dt, op, root, comm, &req_));
}

int MPI_Reduce_scatter_block_c(const void *sbuf, void *rbuf, MPI_Count count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	if (fits(count))
		return MPI_Reduce_scatter_block(sbuf, rbuf, (int)count, dt, op, comm);
	IVS_NET_COLL(PMPI_Reduce_scatter_block_c(sbuf, rbuf, count, dt, op, comm),
	             PMPI_Ireduce_scatter_block_c(sbuf, rbuf, count, dt, op, comm, &req_));
}

/* The counts are the same on every member (MPI requires it), so is whether they all fit (and
 * whether their sum does: MPI_Reduce_scatter's test). */
int MPI_Reduce_scatter_c(const void *sbuf, void *rbuf, const MPI_Count counts[], MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	int n = 0;
	PMPI_Comm_size(comm, &n);
	int *small = ivs_coll_alloc(sizeof *small * (size_t)(n > 0 ? n : 1)), all = 1;
	for (int i = 0; all && i < n; i++) {
		all = fits(counts[i]);
		small[i] = (int)counts[i];
	}
	if (all) {
		int rc = MPI_Reduce_scatter(sbuf, rbuf, small, dt, op, comm);
		free(small);
		return rc;
	}
	free(small);
	IVS_NET_COLL(PMPI_Reduce_scatter_c(sbuf, rbuf, counts, dt, op, comm),
	             PMPI_Ireduce_scatter_c(sbuf, rbuf, counts, dt, op, comm, &req_));
}

#define LC_MOVE(name, iname)                                                                                 \
	int MPI_##name##_c(const void *sbuf, MPI_Count scount, MPI_Datatype sdt, void *rbuf, MPI_Count rcount, \
	                   MPI_Datatype rdt, MPI_Comm comm)                                                     \
	{                                                                                                   \
		if (fits(scount) && fits(rcount))                                                           \
			return MPI_##name(sbuf, (int)scount, sdt, rbuf, (int)rcount, rdt, comm);            \
		IVS_NET_COLL_SIZED(lc_bytes(rdt, rcount), PMPI_##name##_c(sbuf, scount, sdt, rbuf, rcount, rdt, comm), \
		                   PMPI_##iname##_c(sbuf, scount, sdt, rbuf, rcount, rdt, comm, &req_));    \
	}
LC_MOVE(Allgather, Iallgather)
LC_MOVE(Alltoall, Ialltoall)

/* root_side and other_side: the (datatype, count) whose bytes the root and the others move. */
#define LC_ROOTED(name, iname, root_side, other_side)                                                        \
	int MPI_##name##_c(const void *sbuf, MPI_Count scount, MPI_Datatype sdt, void *rbuf, MPI_Count rcount, \
	                   MPI_Datatype rdt, int root, MPI_Comm comm)                                           \
	{                                                                                                   \
		if (fits(scount) && fits(rcount))                                                           \
			return MPI_##name(sbuf, (int)scount, sdt, rbuf, (int)rcount, rdt, root, comm);      \
		IVS_NET_COLL_ROOTED(root, lc_bytes root_side, lc_bytes other_side,                          \
		                    PMPI_##name##_c(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm),      \
		                    PMPI_##iname##_c(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm, &req_)); \
	}
LC_ROOTED(Gather, Igather, (rdt, rcount), (sdt, scount))
LC_ROOTED(Scatter, Iscatter, (sdt, scount), (rdt, rcount))

#endif
