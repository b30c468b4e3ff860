/*
 * Shared-memory collectives, private to the coll_*.c files: the rest of the front library sees
 * only ivs_coll_forget (ivshim.h).
 *
 * A collective has an intra-host phase in the communicator's shared-memory area (its layout and
 * protocol are ivshmem/ivshim_coll.h), an inter-host phase among one leader per host (or a
 * gather's or scatter's root and the other hosts' members) through PMPI on a communicator of
 * the members (ivs_coll.hcomm), and an intra-host release. A communicator whose members all
 * share one host never touches PMPI for data. Data larger than the area moves in pieces.
 * Whatever the fast path does not cover (user ops, non-predefined reduction types, v-variants,
 * byte counts beyond INT_MAX) goes to the MPI library; every such decision depends only on
 * arguments MPI requires to match on all ranks, so all members take the same path.
 *
 * Files, each using only the ones above it:
 *   coll_area.c           the area protocol (ivs_coll_op_begin, ivs_coll_await; ivs_coll_publish
 *                         is inline below), per-communicator set-up, the area's release at
 *                         MPI_Comm_free
 *   coll_move.c           bytes among co-located members through the area: spread, collect,
 *                         distribute, exchange
 *   coll_leaders.c        the point-to-point steps between hosts: the leaders' phase of barrier,
 *                         bcast and reductions, their exchange, a root's direct messages
 *   coll_hosts.c          gathers, scatters and alltoall across hosts
 *   coll_barrier_bcast.c  MPI_Barrier, MPI_Bcast
 *   coll_reduce.c         MPI_Reduce, MPI_Allreduce, MPI_Reduce_scatter(_block)
 *   coll_gather.c         MPI_Gather, MPI_Allgather, MPI_Scatter, MPI_Alltoall
 *   coll_lib.c            the collectives only the library runs (v-variants, scans, neighbourhood)
 */
#ifndef IVSHIM_FRONT_COLL_H
#define IVSHIM_FRONT_COLL_H

#include <stdint.h>
#include "ivshim.h"
#include "ivshim_coll.h"

/* A rank's view of a communicator's collectives, built at its first collective and again at the
 * first after a re-plan (coll_area.c, migrate.c). */
struct ivs_coll {
	int nl, li;          /* co-located members, my index among them (comm rank order) */
	int *lranks;         /* local index -> comm rank */
	int nhosts, myhost;  /* hosts of the communicator, ordered by their lowest comm rank */
	int maxnl;           /* most members on one host */
	int *host_of;        /* comm rank -> host */
	int *host_first;     /* host -> offset of its first member in host-grouped order */
	int *pos;            /* comm rank -> position in host-grouped order */
	int ranked;          /* host-grouped order is comm rank order (pos[r] == r) */
	MPI_Comm hcomm;      /* every member, rank = comm rank: the steps between hosts; MPI_COMM_NULL
	                        with one host or without a usable area */
	int *lead;           /* host -> comm rank of its leader, the member of local index 0 */
	int usable;          /* the area exists on every host */
	uint64_t area_off;   /* region offset of the area (leader's allocation) */
	uint8_t *area;
	uint64_t slot;       /* slot size (ivshim_coll.h), the same on every host: pieces are at most this */
	uint64_t seq;
	uint64_t *seen;      /* local index -> highest op this rank has seen that member publish */
	unsigned leaving_at_setup; /* leaves of members known at the set-up (coll_area.c leaving_now) */
	unsigned joins_at_setup;   /* joins of members known at the set-up (coll_area.c joins_now) */
};

/* ---- coll_area.c: the area and its protocol ---- */

struct ivs_comm *ivs_coll_comm(MPI_Comm comm, struct ivs_coll **k);
uint64_t ivs_coll_op_begin(struct ivs_coll *k, uint64_t n);
void ivs_coll_await(struct ivs_cline *l, uint64_t s);
void ivs_coll_await_all(struct ivs_coll *k, uint64_t s);
void *ivs_coll_alloc(uint64_t n);

/* The first error of rc and more. A member that met an error still takes its part in the rest
 * of the collective (the others wait for it) and returns the first. */
static inline int ivs_coll_first_error(int rc, int more)
{
	return rc != MPI_SUCCESS ? rc : more;
}

/* Member i's line for op s; i == nl is the leader's result line. */
static inline struct ivs_cline *ivs_coll_line(struct ivs_coll *k, int i, uint64_t s)
{
	return (struct ivs_cline *)(k->area + ivs_area_line_off((uint64_t)i, s));
}

static inline struct ivs_cline *ivs_coll_result_line(struct ivs_coll *k, uint64_t s)
{
	return ivs_coll_line(k, k->nl, s);
}

/* Where member i's data of n bytes for op s lives: its line, or its slot if larger. */
static inline uint8_t *ivs_coll_data(struct ivs_coll *k, int i, uint64_t s, uint64_t n)
{
	return n <= IVS_INLINE ? ivs_coll_line(k, i, s)->data : k->area + ivs_area_slot_off((uint64_t)k->nl, k->slot, (uint64_t)i, s);
}

/* Where the leader's result of n bytes for op s lives. */
static inline uint8_t *ivs_coll_result(struct ivs_coll *k, uint64_t s, uint64_t n)
{
	return n <= IVS_INLINE ? ivs_coll_result_line(k, s)->data : k->area + ivs_area_res_off((uint64_t)k->nl, k->slot, s);
}

static inline void ivs_coll_publish(struct ivs_cline *l, uint64_t s)
{
	__atomic_store_n(&l->seq, s, __ATOMIC_RELEASE);
}

/* Wait for member i's line for op s, and remember that i got that far. */
static inline void ivs_coll_await_member(struct ivs_coll *k, int i, uint64_t s)
{
	ivs_coll_await(ivs_coll_line(k, i, s), s);
	k->seen[i] = s;
}

/* The local index of comm rank root, -1 if it is on another host. */
static inline int ivs_coll_root_local(struct ivs_coll *k, int root)
{
	for (int i = 0; i < k->nl; i++)
		if (k->lranks[i] == root)
			return i;
	return -1;
}

static inline uint64_t ivs_min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* The library's nonblocking call that returned rc, completed without starving the rings. */
static inline int ivs_coll_net_complete(int rc, MPI_Request *req)
{
	return rc == MPI_SUCCESS ? ivs_net_wait(req, MPI_STATUS_IGNORE) : rc;
}

/* First statement of every collective interposer: the rank is inside a collective until the
 * interposer returns (migrate.c retires an area only outside). */
static inline int ivs_coll_enter(void) { return ++ivs.coll_depth; }
static inline void ivs_coll_leave(int *depth) { (void)depth; ivs.coll_depth--; }
#define IVS_COLL_SCOPE int ivs_scope_ __attribute__((cleanup(ivs_coll_leave), unused)) = ivs_coll_enter()

/* An interposer's way to the library's collective on comm. The variant is the same on every
 * member (a blocking collective does not match a nonblocking one). The nonblocking one,
 * completed by the shim's wait, on a communicator the shim recorded (all its members in this
 * MPI_COMM_WORLD, so all decide alike) without a member at MPI_THREAD_MULTIPLE, in a job whose
 * collectives may use areas (ivs.coll_areas: a rank waiting in it then answers a migration's
 * agreement, migrate.c "Collectives") or where a rank with rings could not hook the library's
 * progress (ivs.coll_nb_all: the rings must move): ivs_comm.lib_nb. Else the blocking one: a
 * communicator the shim did not record may have members of another MPI_COMM_WORLD (spawned,
 * connected), which call the blocking one; and Open MPI's nonblocking collectives (libnbc) took
 * 1.1-2.7x its blocking ones between two hosts over TCP (1.09-1.45x in geometric mean over
 * 0 B-1 MiB), a price not worth paying where no agreement ever needs an answer.
 * A collective in which no member moves a byte takes the blocking call too: both libraries
 * return from it at once without waiting for anyone (0.01-0.09 us) when the count is 0, where
 * their nonblocking ones run a whole round (8-13 us). Whether it moves a byte comes from the
 * bytes per block this rank sends or receives, at_root on the root and others elsewhere (root
 * -1: not rooted): matching type signatures make them the same on every member of an
 * intracommunicator. (A datatype of size 0 with a count above 0 makes the blocking call run its
 * algorithm: such a rank does not answer there.) Those expressions are evaluated only for a
 * communicator with lib_nb. */
#define IVS_NET_COLL_ROOTED(root, at_root, others, blocking, nonblocking) \
	IVS_NET_COLL_ON(1, root, at_root, others, blocking, nonblocking)
/* ... inter: whether the call is legal on an intercommunicator, whose gate it then passes (gate.c);
 * where it is not (scans, neighbourhood collectives), the library reports the error at once */
#define IVS_NET_COLL_ON(inter, root, at_root, others, blocking, nonblocking)                                 \
	do {                                                                                                \
		ivs.stats.collectives_net += ivs.job_active;                                                \
		const struct ivs_comm *nb_ = ivs.job_active ? ivs_comm_get(comm) : NULL;                    \
		if ((inter) && !nb_ && ivs.job_active)                                                      \
			ivs_gate_inter(comm); /* gate.c */                                                  \
		if (!nb_ || !nb_->lib_nb || ((root) >= 0 && nb_->rank == (root) ? (at_root) : (others)) == 0) \
			return blocking;                                                                    \
		MPI_Request req_;                                                                           \
		return ivs_coll_net_complete(nonblocking, &req_);                                           \
	} while (0)
#define IVS_NET_COLL_SIZED(bytes, blocking, nonblocking) IVS_NET_COLL_ROOTED(-1, bytes, bytes, blocking, nonblocking)
#define IVS_NET_COLL(blocking, nonblocking) IVS_NET_COLL_SIZED(1, blocking, nonblocking)
/* ... the nonblocking one only where nb_ok, an expression that is the same on every member */
#define IVS_NET_COLL_IF(nb_ok, blocking, nonblocking) IVS_NET_COLL_SIZED((nb_ok) ? 1 : 0, blocking, nonblocking)
/* ... and legal on an intercommunicator where inter */
#define IVS_NET_COLL_ON_IF(inter, nb_ok, blocking, nonblocking) \
	IVS_NET_COLL_ON(inter, -1, (nb_ok) ? 1 : 0, (nb_ok) ? 1 : 0, blocking, nonblocking)

/* ---- coll_move.c: bytes among the co-located members ---- */

#define IVS_EVERYONE (-1) /* as a destination: every co-located member */

/* A member's message as the collectives move it: its packed bytes at p, or (p NULL) the packed
 * bytes of count elements of a derived type at buf, which the type's typemap moves between the
 * user's buffer and the area piece by piece, without a packed copy of the whole. */
struct ivs_view {
	uint8_t *p;
	struct ivs_tm *tm;
	void *buf;
	int count;
};
static inline uint8_t *ivs_flat_ptr(const uint8_t *p)
{
	return (uint8_t *)p;
}
#define IVS_FLAT(ptr) (&(struct ivs_view){.p = ivs_flat_ptr(ptr)})

/* The packed bytes [at, at + n) of v to `to`, or from `from` into v. */
static inline void ivs_view_get(const struct ivs_view *v, uint64_t at, uint8_t *to, uint64_t n)
{
	if (v->p)
		ivs_copy(to, v->p + at, n);
	else
		ivs_tm_copy(v->tm, v->buf, v->count, at, to, n, 0);
}
static inline void ivs_view_put(const struct ivs_view *v, uint64_t at, const uint8_t *from, uint64_t n)
{
	if (v->p)
		ivs_copy(v->p + at, from, n);
	else
		ivs_tm_copy(v->tm, v->buf, v->count, at, (uint8_t *)from, n, 1);
}

/* A user's buffer as a view: the count elements of dt at buf (n packed bytes) are the user's
 * memory where contiguous, the type's typemap where `typed` (the caller's choice: only the area
 * sees this buffer, so it may move piece by piece), else a packed scratch copy. The view is set
 * whatever the result: a rank whose packing failed still takes part in the collective (the
 * others wait for it) and returns the error. _done unpacks a scratch copy into buf (if buf, and
 * all went well), frees it and drops the typemap. */
enum ivs_buf_mode {
	IVS_BUF_OUT,  /* bytes to be received */
	IVS_BUF_IN,   /* bytes to be sent */
	IVS_BUF_COPY, /* bytes to be sent, always a packed copy (the buffer is also received into) */
};
struct ivs_buf {
	struct ivs_view v; /* v.tm, if set, holds a reference to the typemap */
	int scratch;       /* v.p is a packed copy, allocated */
};
int ivs_coll_buf_other(struct ivs_buf *u, const void *buf, int count, MPI_Datatype dt, uint64_t n, enum ivs_buf_mode mode,
                       int typed, MPI_Comm comm);
int ivs_coll_buf_release(struct ivs_buf *u, int rc, void *buf, int count, MPI_Datatype dt, uint64_t n, MPI_Comm comm);
/* The user's contiguous memory inline: a small collective's view costs no call. */
static inline int ivs_coll_buf(struct ivs_buf *u, const void *buf, int count, MPI_Datatype dt, uint64_t n, enum ivs_buf_mode mode,
                               int typed, MPI_Comm comm)
{
	uint64_t bytes;
	ptrdiff_t lb;
	if (mode != IVS_BUF_COPY && ivs_dt_contig(dt, count, &bytes, &lb) && bytes == n) {
		*u = (struct ivs_buf){.v.p = (uint8_t *)buf + lb};
		return MPI_SUCCESS;
	}
	return ivs_coll_buf_other(u, buf, count, dt, n, mode, typed, comm);
}
static inline int ivs_coll_buf_done(struct ivs_buf *u, int rc, void *buf, int count, MPI_Datatype dt, uint64_t n, MPI_Comm comm)
{
	return u->scratch || u->v.tm ? ivs_coll_buf_release(u, rc, buf, count, dt, n, comm) : rc;
}

/* Member `from`'s packed bytes [at, at + n) of v reach member `to` (or every member) at the
 * same bytes of its v. */
void ivs_coll_spread(struct ivs_coll *k, int from, int to, const struct ivs_view *v, uint64_t at, uint64_t n);
void ivs_coll_collect(struct ivs_coll *k, int to, const struct ivs_view *src, uint64_t n, const struct ivs_view *dst,
                      const int *at);
void ivs_coll_distribute(struct ivs_coll *k, int from, const struct ivs_view *src, uint64_t n, const struct ivs_view *dst,
                         const int *at);
void ivs_coll_exchange(struct ivs_coll *k, const struct ivs_view *src, uint64_t n, const struct ivs_view *dst);

/* ---- coll_leaders.c: the leaders' phase of barrier, bcast and reductions, their exchange, and a
 * gather's or scatter's root with the other hosts' members ---- */

int ivs_lead_barrier(struct ivs_coll *k);
int ivs_lead_bcast(struct ivs_coll *k, uint8_t *data, uint64_t n, int root_host);

/* A leaders' bcast of n bytes in pieces (0 bytes: one empty piece): open, then for each piece i
 * in order _in (it has arrived here) and _out (send it on), then close (with the rc so far;
 * returns the final one). */
enum { PIPE_AHEAD = 8, IVS_LEAD_MAX_CHILDREN = 31 };
struct ivs_lead_pipe {
	struct ivs_coll *k;
	uint8_t *data;
	uint64_t n, piece;
	int npieces, posted;
	int parent, child[IVS_LEAD_MAX_CHILDREN], nchild;
	MPI_Request in[PIPE_AHEAD], out[PIPE_AHEAD][IVS_LEAD_MAX_CHILDREN];
};
int ivs_lead_pipe_open(struct ivs_coll *k, struct ivs_lead_pipe *q, uint8_t *data, uint64_t n, uint64_t piece, int root_host);
int ivs_lead_pipe_in(struct ivs_lead_pipe *q, int i);
int ivs_lead_pipe_out(struct ivs_lead_pipe *q, int i);
int ivs_lead_pipe_close(struct ivs_lead_pipe *q, int rc);
int ivs_lead_reduce(struct ivs_coll *k, uint8_t *acc, int cnt, uint64_t span, MPI_Datatype dt, MPI_Op op, int root_host);
int ivs_lead_exchange_v(struct ivs_coll *k, int root, const uint8_t *sbuf, const int *scount, const int *sdispl,
                        uint8_t *rbuf, const int *rcount, const int *rdispl);
/* ... in two halves: _begin posts it, _end completes it (returns the first error) */
struct ivs_lead_exch {
	MPI_Request *r;
	int nr, rc;
};
void ivs_lead_exchange_begin(struct ivs_coll *k, struct ivs_lead_exch *x, int root, const uint8_t *sbuf, const int *scount,
                             const int *sdispl, uint8_t *rbuf, const int *rcount, const int *rdispl);
int ivs_lead_exchange_end(struct ivs_lead_exch *x);
int ivs_lead_eager(uint64_t n);
/* A gather's (send on the other hosts) or scatter's (send at the root) blocks of n bytes between
 * the root and every member of another host, each its own message; complete with _end */
void ivs_lead_direct_begin(struct ivs_coll *k, struct ivs_lead_exch *x, int root, uint8_t *buf, uint64_t n, int send);

/* ---- coll_hosts.c: gathers, scatters and alltoall across hosts ---- */

/* Gather's and scatter's src and dst are packed bytes: the library may send or receive them.
 * Alltoall's members pass only their leader's library calls, so their buffers are views. */
int ivs_coll_gather_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root);
int ivs_coll_scatter_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root);
int ivs_coll_alltoall_hosts(struct ivs_coll *k, struct ivs_comm *c, const struct ivs_view *src, const struct ivs_view *dst,
                            uint64_t n);

#endif
