/* Point-to-point interposers. A message to a co-located peer goes through the pair ring; any
 * other goes to the MPI library untouched. Receives that could be satisfied by either path
 * (MPI_ANY_SOURCE on a communicator with peers of both kinds, and network receives posted
 * behind such a wildcard) are matched in posting order: shared-memory arrivals by the progress
 * engine, network ones by PMPI_Improbe/PMPI_Imrecv (progress.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

/* The peer structure for comm rank dest if sends to it go into its ring. */
static inline struct ivs_peer *shm_peer(struct ivs_comm *c, int dest, int *world)
{
	if (!c || dest < 0 || dest >= c->size)
		return NULL;
	*world = c->world[dest];
	return ivs_tx_peer_on(c, *world);
}

static inline void count_net(uint64_t n)
{
	ivs.stats.messages[IVSHIM_PATH_NET]++;
	ivs_lib_note();
	ivs.stats.bytes[IVSHIM_PATH_NET] += n;
}

/* A new active request of kind on comm c with peer (comm rank or wildcard) and tag. */
static struct ivs_req *new_req(int kind, struct ivs_comm *c, int peer, int tag)
{
	struct ivs_req *r = ivs_req_alloc();
	r->kind = (uint8_t)kind;
	r->state = IVS_ACTIVE;
	r->comm = c;
	ivs_comm_hold(c);
	r->peer = peer;
	r->tag = tag;
	return r;
}

/* An argument error found by the shim: the communicator's error handler sees it, as it would
 * see the library's. */
int ivs_arg_error(MPI_Comm comm, int err)
{
	PMPI_Comm_call_errhandler(comm, err);
	return err;
}

static inline int tag_ok(int tag)
{
	return tag >= 0 && tag <= ivs.tag_ub;
}

/* A small contiguous message straight from the caller's buffer into the ring, when nothing is
 * queued for the peer before it: the send is complete when this returns 1. */
static int send_inline(struct ivs_peer *p, struct ivs_comm *c, const void *buf, int count, MPI_Datatype dt, int tag)
{
	uint64_t n;
	ptrdiff_t lb;
	if (!ivs_dt_contig(dt, count, &n, &lb) || !ivs_try_send_inline(p, (const uint8_t *)buf + lb, n, tag, c->ctx))
		return 0;
	ivs.stats.messages[IVSHIM_PATH_SHM]++;
	ivs.stats.bytes[IVSHIM_PATH_SHM] += n;
	return 1;
}

/* Start a send to comm rank dest of c, world rank w, through p's ring (p NULL: by the library).
 * Exactly one of *out (shim request) and *net (library request) is set. A standard-mode send
 * that goes into the ring at once (try_inline; send_common has tried already) gets a request
 * that is already complete, as a library's eager send does: its Wait only releases it. */
static int isend_to(struct ivs_comm *c, struct ivs_peer *p, int w, const void *buf, int count, MPI_Datatype dt, int dest,
                    int tag, MPI_Comm comm, int sync, int try_inline, struct ivs_req **out, MPI_Request *net)
{
	*out = NULL;
	if (!p) {
		if (ivs.enabled)
			count_net(ivs_dt_bytes(dt, count));
		return ivs_count_sent(c, dest, sync ? PMPI_Issend(buf, count, dt, dest, tag, comm, net)
		                                    : PMPI_Isend(buf, count, dt, dest, tag, comm, net));
	}
	if (!tag_ok(tag))
		return ivs_arg_error(comm, MPI_ERR_TAG);
	if (try_inline && !sync && send_inline(p, c, buf, count, dt, tag)) {
		struct ivs_req *done = ivs_req_alloc();
		done->kind = IVS_SEND;
		done->state = IVS_DONE;
		*out = done;
		return MPI_SUCCESS;
	}
	struct ivs_req *r = new_req(IVS_SEND, c, dest, tag);
	r->sync = sync;
	r->peer_world = w;
	int rc = ivs_dt_send_view(r, buf, count, dt, comm);
	if (rc != MPI_SUCCESS) { /* the library's Pack already called the error handler */
		ivs_req_release(r);
		return rc;
	}
	ivs.stats.messages[IVSHIM_PATH_SHM]++;
	ivs.stats.bytes[IVSHIM_PATH_SHM] += r->cap;
	ivs_enqueue_send(r);
	*out = r;
	return MPI_SUCCESS;
}

int ivs_isend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm,
              int sync, struct ivs_req **out, MPI_Request *net)
{
	struct ivs_comm *c = ivs.enabled ? ivs_comm_p2p(comm) : NULL;
	int w = -1;
	struct ivs_peer *p = shm_peer(c, dest, &w);
	return isend_to(c, p, w, buf, count, dt, dest, tag, comm, sync, 1, out, net);
}

/* A receive from library peer src (or MPI_ANY_SOURCE) on counted communicator c: the library
 * matches it, but the request is the shim's, so its completion is counted (join.c). */
static int lib_recv(struct ivs_comm *c, void *buf, int count, MPI_Datatype dt, int src, int tag, struct ivs_req **out)
{
	struct ivs_req *r = new_req(IVS_RECV, c, src, tag);
	r->recv_mode = IVS_RM_NET;
	int rc = PMPI_Irecv(buf, count, dt, src, tag, c->handle, &r->inner);
	if (rc != MPI_SUCCESS) { /* the library called the error handler */
		ivs_req_release(r);
		return rc;
	}
	r->lib_count = 1;
	if (src == MPI_ANY_SOURCE)
		ivs.lib_open_any++;
	else
		ivs.lib_open[c->world[src]]++;
	*out = r;
	return MPI_SUCCESS;
}

/* Start a receive. Exactly one of *out and *net is set. */
int ivs_irecv(void *buf, int count, MPI_Datatype dt, int src, int tag, MPI_Comm comm,
              struct ivs_req **out, MPI_Request *net)
{
	struct ivs_comm *c = ivs.enabled ? ivs_comm_p2p(comm) : NULL;
	int w = -1;
	*out = NULL;
	int mode;
	if (!c || src == MPI_PROC_NULL || (src != MPI_ANY_SOURCE && (src < 0 || src >= c->size)))
		return PMPI_Irecv(buf, count, dt, src, tag, comm, net);
	if (src == MPI_ANY_SOURCE && c->nshm < 2 && c->counted && !c->pending_probe && !ivs.nunexp_net)
		return lib_recv(c, buf, count, dt, src, tag, out); /* nobody here by a ring: the library
		                                                      matches it, inside its own calls too */
	if (src == MPI_ANY_SOURCE)
		mode = c->has_net ? IVS_RM_PROBE : IVS_RM_SHM;
	else if (ivs_rx_peer_on(c, w = c->world[src]))
		mode = IVS_RM_SHM;
	else if (c->pending_probe || ivs.nunexp_net || ivs_join_probing(c, w))
		mode = IVS_RM_PROBE; /* must not overtake a receive posted before it, nor a library
		                        message parked at a path switch (migrate.c); nor wait inside
		                        the library while its pair moves to a ring (join.c) */
	else if (c->counted)
		return lib_recv(c, buf, count, dt, src, tag, out);
	else
		return PMPI_Irecv(buf, count, dt, src, tag, comm, net);
	if (tag != MPI_ANY_TAG && !tag_ok(tag))
		return ivs_arg_error(comm, MPI_ERR_TAG);
	struct ivs_req *r = new_req(IVS_RECV, c, src, tag);
	r->ubuf = buf;
	r->count = count;
	ivs_dt_hold(r, dt);
	r->recv_mode = (uint8_t)mode;
	int rc = ivs_dt_recv_view(r, buf, count, dt);
	if (rc != MPI_SUCCESS) {
		ivs_req_release(r);
		return ivs_arg_error(comm, rc);
	}
	*out = r;
	struct ivs_msg *m = (mode == IVS_RM_SHM || src == MPI_ANY_SOURCE || ivs.nunexp_net) ? ivs_unexp_find(r) : NULL;
	if (m) {
		r->recv_mode = IVS_RM_SHM;
		ivs_deliver_buffered(r, m);
	} else {
		ivs_post_recv(r);
	}
	return MPI_SUCCESS;
}

/* Whether shim request r has completed, as far as the shim can tell without asking the library:
 * *lib is set to the request whose library request alone stands between r and its completion
 * (r itself, or the operation persistent r started), or NULL. Asking the library runs its
 * progress engine (with yield_when_idle a yield), so callers with several requests ask it once
 * for all of them (waits.c). */
int ivs_req_poll_shim(struct ivs_req *r, struct ivs_req **lib)
{
	*lib = NULL;
	if (r->kind == IVS_PSEND || r->kind == IVS_PRECV) {
		if (r->state != IVS_ACTIVE)
			return 1;
		if (r->act)
			return ivs_req_poll_shim(r->act, lib);
		if (r->net_done)
			return 1;
		*lib = r;
		return 0;
	}
	if (r->state == IVS_DONE)
		return 1;
	if (IVS_UNLIKELY(r->net_send))
		return ivs_pair_send_poll(r);
	if (r->recv_mode == IVS_RM_NET && r->inner != MPI_REQUEST_NULL)
		*lib = r;
	return 0;
}

/* The library completed q's library request with status st, or failed it with rc. */
void ivs_req_lib_done(struct ivs_req *q, int rc, const MPI_Status *st)
{
	q->net_st = *st;
	if (rc != MPI_SUCCESS)
		q->error = rc;
	if (q->kind == IVS_PSEND || q->kind == IVS_PRECV) {
		q->net_done = 1; /* ivs_finish returns q->error and clears it for the next start */
		return;
	}
	q->state = IVS_DONE;
	if (q->lib_count)
		ivs_join_recv_done(q);
}

/* Whether a shim request has completed, driving its library request if it has one. */
int ivs_req_poll(struct ivs_req *r)
{
	struct ivs_req *q;
	if (ivs_req_poll_shim(r, &q))
		return 1;
	if (!q)
		return 0;
	int flag = 0;
	MPI_Status st = q->net_st;
	int rc = PMPI_Test(&q->inner, &flag, &st);
	if (rc == MPI_SUCCESS && !flag)
		return 0;
	ivs_req_lib_done(q, rc, &st);
	return 1;
}

/* The library's status of a completed request, into the caller's. MPI_ERROR stays the caller's:
 * single completions leave it alone, multiple completions set it themselves. */
void ivs_status_copy(MPI_Status *st, const MPI_Status *from)
{
	int err = st->MPI_ERROR;
	*st = *from;
	st->MPI_ERROR = err;
}

void ivs_fill_status(struct ivs_req *r, MPI_Status *st)
{
	if (st == MPI_STATUS_IGNORE)
		return;
	if (r->recv_mode == IVS_RM_NET) {
		ivs_status_copy(st, &r->net_st);
		return;
	}
	st->MPI_SOURCE = r->kind == IVS_RECV ? r->st_source : MPI_ANY_SOURCE;
	st->MPI_TAG = r->kind == IVS_RECV ? r->st_tag : MPI_ANY_TAG;
	ivs_status_set(st, r->kind == IVS_RECV ? r->st_bytes : 0, r->cancelled);
}

/* The empty status MPI defines (of a null or inactive request), if st is not ignored. */
void ivs_status_empty(MPI_Status *st)
{
	if (st == MPI_STATUS_IGNORE)
		return;
	st->MPI_SOURCE = MPI_ANY_SOURCE;
	st->MPI_TAG = MPI_ANY_TAG;
	st->MPI_ERROR = MPI_SUCCESS;
	ivs_status_set(st, 0, 0);
}

/* Check ivs_abi_status_set against the library's setters, once: counts on both sides of
 * 32 bits, with and without the cancelled flag, over a status that is not blank. */
void ivs_status_init(void)
{
	static const uint64_t counts[] = {0, 8, 0x7fffffffu, 0xffffffffu, ((uint64_t)5 << 32) | 3};
	for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
		for (int cancelled = 0; cancelled <= 1; cancelled++) {
			MPI_Status lib, own;
			memset(&lib, 0x5a, sizeof lib);
			memset(&own, 0x5a, sizeof own);
			PMPI_Status_set_elements_x(&lib, MPI_BYTE, (MPI_Count)counts[i]);
			PMPI_Status_set_cancelled(&lib, cancelled);
			ivs_abi_status_set(&own, counts[i], cancelled);
			if (memcmp(&lib, &own, sizeof lib) != 0) {
				ivs.status_by_library = 1;
				if (ivs.verbose)
					fprintf(stderr, "ivshim: rank %d: this %s library lays out MPI_Status otherwise: "
					        "statuses are set through its calls\n", ivs.world_rank, IVS_ABI_NAME);
				return;
			}
		}
	}
}

/* Complete a request that ivs_req_poll reported done: status, and the handle becomes
 * MPI_REQUEST_NULL (or the persistent request inactive). Returns the operation's error. */
int ivs_finish(MPI_Request *h, struct ivs_req *r, MPI_Status *st)
{
	if (r->kind == IVS_PSEND || r->kind == IVS_PRECV) {
		int err = MPI_SUCCESS;
		if (r->state == IVS_ACTIVE) {
			if (r->act) {
				MPI_Request tmp = ivs_req_handle(r->act);
				err = ivs_finish(&tmp, r->act, st);
				r->act = NULL;
			} else {
				if (st != MPI_STATUS_IGNORE)
					ivs_status_copy(st, &r->net_st);
				r->net_done = 0;
				err = r->error; /* the library's operation failed: it saw the error itself */
				r->error = MPI_SUCCESS;
			}
			r->state = IVS_INACTIVE;
		} else {
			ivs_status_empty(st); /* an inactive persistent request completes at once */
		}
		if (r->free_on_done) {
			ivs_req_release(r);
			*h = MPI_REQUEST_NULL;
		}
		return err;
	}
	ivs_fill_status(r, st);
	int err = r->error, lib_saw_it = r->recv_mode == IVS_RM_NET;
	MPI_Comm comm = r->comm ? r->comm->handle : MPI_COMM_WORLD;
	ivs_req_release(r);
	*h = MPI_REQUEST_NULL;
	if (IVS_UNLIKELY(err != MPI_SUCCESS && !lib_saw_it))
		PMPI_Comm_call_errhandler(comm, err); /* the library did not see this error */
	return err;
}

/* Drive progress until r completes. */
int ivs_wait_loop_req(struct ivs_req *r)
{
	unsigned spins = 0;
	while (!ivs_req_poll(r)) {
		if (!ivs_progress())
			ivs_wait_pause(&spins);
		else
			spins = 0;
	}
	return MPI_SUCCESS;
}

/* Wait for a library request without starving the shim: while shim work is pending, a
 * blocking PMPI wait could leave a co-located peer waiting on us forever; and in a job that
 * uses shared memory, a rank blocked in the library could not answer the shim's own messages
 * (a collective switch at a migration, migrate.c) that another rank may be waiting for. */
int ivs_net_wait(MPI_Request *h, MPI_Status *st)
{
	if (ivs_may_block())
		return PMPI_Wait(h, st);
	unsigned spins = 0;
	for (;;) {
		int flag = 0, rc = PMPI_Test(h, &flag, st);
		if (rc != MPI_SUCCESS || flag)
			return rc;
		if (!ivs_progress())
			ivs_wait_pause(&spins);
	}
}

/* A dissemination barrier on comm among n processes, ranks[i] the rank of the i-th (NULL: i
 * itself), this one the me-th: round d sends to me + d and receives from me - d, every wait the
 * one above. With max, each message carries the largest *max its sender has seen, and every
 * member ends with the largest of all (max is idempotent, so the barrier's rounds make an
 * allreduce); without, the messages are empty. Consecutive barriers between the same processes
 * on one tag match in order (messages between two ranks do not overtake). Returns the first
 * error. */
int ivs_net_barrier(MPI_Comm comm, const int *ranks, int n, int me, int tag, uint64_t *max)
{
	int rc = MPI_SUCCESS, count = max ? 1 : 0;
	for (int d = 1; d < n && rc == MPI_SUCCESS; d <<= 1) {
		int from = (me - d + n) % n, to = (me + d) % n;
		uint64_t mine = max ? *max : 0, got = 0;
		MPI_Request r[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
		rc = PMPI_Irecv(&got, count, MPI_UINT64_T, ranks ? ranks[from] : from, tag, comm, &r[0]);
		if (rc == MPI_SUCCESS)
			rc = PMPI_Isend(&mine, count, MPI_UINT64_T, ranks ? ranks[to] : to, tag, comm, &r[1]);
		for (int i = 0; i < 2; i++) {
			int w = r[i] != MPI_REQUEST_NULL ? ivs_net_wait(&r[i], MPI_STATUS_IGNORE) : MPI_SUCCESS;
			if (rc == MPI_SUCCESS)
				rc = w;
		}
		if (max && rc == MPI_SUCCESS && got > *max)
			*max = got;
	}
	return rc;
}

static int wait_result(struct ivs_req *r, MPI_Request net, MPI_Status *st)
{
	if (!r)
		return ivs_net_wait(&net, st);
	MPI_Request h = ivs_req_handle(r);
	ivs_wait_loop_req(r);
	return ivs_finish(&h, r, st);
}

/* ---- blocking sends and receives ---- */

static int send_common(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, int sync)
{
	struct ivs_comm *c = ivs_comm_p2p(comm);
	int w = -1;
	struct ivs_peer *p = shm_peer(c, dest, &w);
	if (p && !sync && tag_ok(tag) && send_inline(p, c, buf, count, dt, tag))
		return MPI_SUCCESS;
	if (!p && ivs_may_block()) {
		count_net(ivs_dt_bytes(dt, count));
		return ivs_count_sent(c, dest, sync ? PMPI_Ssend(buf, count, dt, dest, tag, comm)
		                                    : PMPI_Send(buf, count, dt, dest, tag, comm));
	}
	struct ivs_req *r;
	MPI_Request net;
	int rc = isend_to(c, p, w, buf, count, dt, dest, tag, comm, sync, 0, &r, &net); /* inline was tried */
	if (rc != MPI_SUCCESS)
		return rc;
	return wait_result(r, net, MPI_STATUS_IGNORE);
}

int MPI_Send(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Send(buf, count, dt, dest, tag, comm);
	return send_common(buf, count, dt, dest, tag, comm, 0);
}

int MPI_Rsend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Rsend(buf, count, dt, dest, tag, comm);
	return send_common(buf, count, dt, dest, tag, comm, 0);
}

int MPI_Ssend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Ssend(buf, count, dt, dest, tag, comm);
	return send_common(buf, count, dt, dest, tag, comm, 1);
}

/* Buffered sends to co-located peers copy the data and complete at once, as MPI_Bsend must;
 * the copy drains through the ring in order with the pair's other messages. Each copy is
 * charged to the buffer the program attached (its packed size + MPI_BSEND_OVERHEAD, as the
 * library counts) until it has left for the ring: one that does not fit fails with
 * MPI_ERR_BUFFER, and MPI_Buffer_detach waits for the copies in flight. The library's own
 * buffered sends (to other hosts) are charged by the library; the two share the space. */
static struct {
	uint64_t size, used;
} bsend_buf;

static int bsend_shm(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, struct ivs_req **out)
{
	struct ivs_req *r;
	MPI_Request net;
	*out = NULL;
	int psize = 0, rc = PMPI_Pack_size(count, dt, comm, &psize);
	if (rc != MPI_SUCCESS)
		return ivs_arg_error(comm, rc);
	uint64_t charge = (uint64_t)psize + MPI_BSEND_OVERHEAD;
	if (bsend_buf.used + charge > bsend_buf.size)
		return ivs_arg_error(comm, MPI_ERR_BUFFER);
	rc = ivs_isend(buf, count, dt, dest, tag, comm, 0, &r, &net);
	if (rc != MPI_SUCCESS || r->state == IVS_DONE) {
		if (rc == MPI_SUCCESS) {
			MPI_Request h = ivs_req_handle(r);
			ivs_finish(&h, r, MPI_STATUS_IGNORE);
		}
		return rc;
	}
	if (!r->packed) {
		uint8_t *copy = malloc(r->cap - r->done ? r->cap : 1);
		if (!copy)
			ivs_fatal("out of memory buffering a %lu-byte MPI_Bsend", (unsigned long)r->cap);
		if (r->cap > r->done)
			ivs_copy(copy + r->done, r->cbuf + r->done, r->cap - r->done);
		r->cbuf = copy;
		r->packed = IVS_PACKED_WHOLE;
	} else if ((rc = ivs_dt_send_whole(r)) != MPI_SUCCESS) {
		ivs_fatal("cannot buffer a %lu-byte MPI_Bsend (error %d)", (unsigned long)r->cap, rc);
	}
	r->free_on_done = 1;
	r->internal = 1;
	r->bsend_charge = charge;
	bsend_buf.used += charge;
	*out = r;
	return MPI_SUCCESS;
}

/* An internal buffered-send copy is gone: its space in the attached buffer is free again. */
void ivs_bsend_release(struct ivs_req *r)
{
	bsend_buf.used -= r->bsend_charge;
	r->bsend_charge = 0;
}

int MPI_Buffer_attach(void *buf, int size)
{
	int rc = PMPI_Buffer_attach(buf, size);
	if (rc == MPI_SUCCESS)
		bsend_buf.size = size > 0 ? (uint64_t)size : 0;
	return rc;
}

int MPI_Buffer_detach(void *buf, int *size)
{
	unsigned spins = 0;
	while (bsend_buf.used)
		if (!ivs_progress())
			ivs_wait_pause(&spins);
	bsend_buf.size = 0;
	return PMPI_Buffer_detach(buf, size);
}

int MPI_Bsend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm)
{
	int w;
	struct ivs_comm *c = IVS_LIKELY(!ivs.enabled) ? NULL : ivs_comm_p2p(comm);
	if (!shm_peer(c, dest, &w)) {
		return ivs_count_sent(c, dest, PMPI_Bsend(buf, count, dt, dest, tag, comm));
	}
	struct ivs_req *r;
	return bsend_shm(buf, count, dt, dest, tag, comm, &r);
}

int MPI_Recv(void *buf, int count, MPI_Datatype dt, int src, int tag, MPI_Comm comm, MPI_Status *st)
{
	/* MPI_PROC_NULL stays a blocking library call: MPICH 4.0 gives the nonblocking form a
	 * status that is not the one MPI defines (source MPI_PROC_NULL, tag MPI_ANY_TAG). */
	if (IVS_LIKELY(!ivs.enabled) || src == MPI_PROC_NULL)
		return PMPI_Recv(buf, count, dt, src, tag, comm, st);
	struct ivs_req *r;
	MPI_Request net;
	int rc = ivs_irecv(buf, count, dt, src, tag, comm, &r, &net);
	if (rc != MPI_SUCCESS)
		return rc;
	return wait_result(r, net, st);
}

/* ---- nonblocking ---- */

static int isend_mode(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, int sync, MPI_Request *req)
{
	struct ivs_req *r;
	int rc = ivs_isend(buf, count, dt, dest, tag, comm, sync, &r, req);
	if (rc == MPI_SUCCESS && r)
		*req = ivs_req_handle(r);
	return rc;
}

int MPI_Isend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, MPI_Request *req)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Isend(buf, count, dt, dest, tag, comm, req);
	return isend_mode(buf, count, dt, dest, tag, comm, 0, req);
}

int MPI_Irsend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, MPI_Request *req)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Irsend(buf, count, dt, dest, tag, comm, req);
	return isend_mode(buf, count, dt, dest, tag, comm, 0, req);
}

int MPI_Issend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, MPI_Request *req)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Issend(buf, count, dt, dest, tag, comm, req);
	return isend_mode(buf, count, dt, dest, tag, comm, 1, req);
}

int MPI_Ibsend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, MPI_Request *req)
{
	int w;
	struct ivs_comm *c = IVS_LIKELY(!ivs.enabled) ? NULL : ivs_comm_p2p(comm);
	if (!shm_peer(c, dest, &w)) {
		return ivs_count_sent(c, dest, PMPI_Ibsend(buf, count, dt, dest, tag, comm, req));
	}
	struct ivs_req *inner;
	int rc = bsend_shm(buf, count, dt, dest, tag, comm, &inner);
	if (rc != MPI_SUCCESS)
		return rc;
	/* The user's request is complete at once; the shim owns the copy in flight. */
	struct ivs_req *r = ivs_req_alloc();
	r->kind = IVS_SEND;
	r->state = IVS_DONE;
	*req = ivs_req_handle(r);
	return MPI_SUCCESS;
}

int MPI_Irecv(void *buf, int count, MPI_Datatype dt, int src, int tag, MPI_Comm comm, MPI_Request *req)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Irecv(buf, count, dt, src, tag, comm, req);
	struct ivs_req *r;
	int rc = ivs_irecv(buf, count, dt, src, tag, comm, &r, req);
	if (rc == MPI_SUCCESS && r)
		*req = ivs_req_handle(r);
	return rc;
}

/* ---- combined ---- */

/* The status MPI defines for a receive from MPI_PROC_NULL. */
static int proc_null_status(MPI_Status *st)
{
	if (st != MPI_STATUS_IGNORE) {
		st->MPI_SOURCE = MPI_PROC_NULL;
		st->MPI_TAG = MPI_ANY_TAG;
		ivs_status_set(st, 0, 0);
	}
	return MPI_SUCCESS;
}

int MPI_Sendrecv(const void *sbuf, int scount, MPI_Datatype sdt, int dest, int stag,
                 void *rbuf, int rcount, MPI_Datatype rdt, int src, int rtag, MPI_Comm comm, MPI_Status *st)
{
	if (IVS_LIKELY(!ivs.enabled) || (!ivs_comm_p2p(comm) && ivs_may_block()))
		return PMPI_Sendrecv(sbuf, scount, sdt, dest, stag, rbuf, rcount, rdt, src, rtag, comm, st);
	struct ivs_req *rr = NULL, *sr;
	MPI_Request rnet, snet;
	int rc = src == MPI_PROC_NULL ? MPI_SUCCESS : ivs_irecv(rbuf, rcount, rdt, src, rtag, comm, &rr, &rnet);
	if (rc != MPI_SUCCESS)
		return rc;
	rc = ivs_isend(sbuf, scount, sdt, dest, stag, comm, 0, &sr, &snet);
	int rc2 = src == MPI_PROC_NULL ? proc_null_status(st) : wait_result(rr, rnet, st);
	if (rc != MPI_SUCCESS)
		return rc;
	rc = wait_result(sr, snet, MPI_STATUS_IGNORE);
	return rc2 != MPI_SUCCESS ? rc2 : rc;
}

int MPI_Sendrecv_replace(void *buf, int count, MPI_Datatype dt, int dest, int stag, int src, int rtag,
                         MPI_Comm comm, MPI_Status *st)
{
	if (IVS_LIKELY(!ivs.enabled) || (!ivs_comm_p2p(comm) && ivs_may_block()))
		return PMPI_Sendrecv_replace(buf, count, dt, dest, stag, src, rtag, comm, st);
	int sz, pos = 0, rc = PMPI_Pack_size(count, dt, comm, &sz);
	if (rc != MPI_SUCCESS)
		return rc;
	void *tmp = malloc(sz ? (size_t)sz : 1);
	if (!tmp)
		return MPI_ERR_NO_MEM;
	rc = PMPI_Pack(buf, count, dt, tmp, sz, &pos, comm);
	if (rc == MPI_SUCCESS)
		rc = MPI_Sendrecv(tmp, pos, MPI_PACKED, dest, stag, buf, count, dt, src, rtag, comm, st);
	free(tmp);
	return rc;
}

/* ---- probes ---- */

/* A shared-memory message matching (src, tag, comm), or NULL. */
static struct ivs_msg *probe_shm(struct ivs_comm *c, int src, int tag)
{
	struct ivs_req q = {.comm = c, .peer = src, .tag = tag};
	ivs_progress();
	return ivs_unexp_find(&q);
}

static void msg_status(struct ivs_comm *c, struct ivs_msg *m, MPI_Status *st)
{
	if (st == MPI_STATUS_IGNORE)
		return;
	if (m->is_lib) {
		ivs_status_copy(st, &m->lib_st);
		return;
	}
	st->MPI_SOURCE = c->by_local[ivs.peers[m->src_world]->local];
	st->MPI_TAG = m->tag;
	ivs_status_set(st, m->total, 0);
}

/* Whether a probe for src on c must ask the library: the source is not co-located, or is any
 * source on a communicator that has non-co-located members. */
static int probe_needs_net(struct ivs_comm *c, int src)
{
	if (src == MPI_ANY_SOURCE)
		return c->has_net;
	return src < 0 || src >= c->size || !ivs_rx_peer_on(c, c->world[src]);
}

/* Whether a probe for src on c must look at the unexpected queue: the ring's messages, and
 * library messages parked at a path switch, come before the library's. */
static int probe_needs_shm(struct ivs_comm *c, int src)
{
	return src == MPI_ANY_SOURCE || !probe_needs_net(c, src) || ivs.nunexp_net;
}

/* PMPI_Improbe on c: a message it takes is taken from the library (counted, join.c). */
static int lib_improbe(struct ivs_comm *c, int src, int tag, int *flag, MPI_Message *m, MPI_Status *s)
{
	int rc = PMPI_Improbe(src, tag, c->handle, flag, m, s);
	if (rc == MPI_SUCCESS && *flag)
		ivs_count_got(c, s->MPI_SOURCE);
	return rc;
}

/* Probe the library for (src, tag) on c. A message found there belongs to a receive posted
 * earlier that matches it (a wildcard waiting in probe mode), not to this probe: such
 * receives take their messages first, and the probe looks again. With mprobe the probe takes the
 * message it reports (*msg). */
static int net_probe(struct ivs_comm *c, int src, int tag, int *flag, MPI_Message *msg, MPI_Status *st)
{
	MPI_Status tmp, *s = st == MPI_STATUS_IGNORE ? &tmp : st;
	/* No progress in here: the caller made it before it looked at the unexpected queue, and a
	 * peer's MARK handled between that look and the library's answer would let a library
	 * message of that peer pass its ring messages queued meanwhile (migrate.c). */
	for (;;) {
		MPI_Message tmp_msg, *m = msg ? msg : &tmp_msg;
		int rc = msg ? lib_improbe(c, src, tag, flag, msg, s) : PMPI_Iprobe(src, tag, c->handle, flag, s);
		if (rc == MPI_SUCCESS && *flag && ivs_park_peer(c, c->world[s->MPI_SOURCE])) {
			/* From a co-located peer whose ring is still to be read up to its MARK (or
			 * awaited): it waits, parked (Improbe for exactly this source and tag takes
			 * exactly the message reported), and the probe looks again. */
			if (!msg)
				rc = lib_improbe(c, s->MPI_SOURCE, s->MPI_TAG, flag, m, s);
			if (rc == MPI_SUCCESS && *flag && ivs_park(c, s, m))
				continue;
			if (rc != MPI_SUCCESS)
				return rc;
		}
		struct ivs_req *owner = rc == MPI_SUCCESS && *flag && c->pending_probe ? ivs_probe_owner(c, s) : NULL;
		if (!owner)
			return rc;
		if (!msg) {
			/* The receive takes it at this progress; the probe reports nothing this time
			 * (the next one looks at the unexpected queue again first). */
			ivs_progress();
			*flag = 0;
			return MPI_SUCCESS;
		}
		ivs_net_assign(owner, msg);
	}
}

int MPI_Iprobe(int src, int tag, MPI_Comm comm, int *flag, MPI_Status *st)
{
	struct ivs_comm *c = ivs.enabled ? ivs_comm_p2p(comm) : NULL;
	if (!c || src == MPI_PROC_NULL) {
		ivs_progress(); /* a loop of library-only probes must still drain the rings */
		return PMPI_Iprobe(src, tag, comm, flag, st);
	}
	if (probe_needs_shm(c, src)) {
		struct ivs_msg *m = probe_shm(c, src, tag);
		if (m) {
			msg_status(c, m, st);
			*flag = 1;
			return MPI_SUCCESS;
		}
	} else {
		ivs_progress(); /* a loop of library probes must not stall the rings */
	}
	if (probe_needs_net(c, src))
		return net_probe(c, src, tag, flag, NULL, st);
	*flag = 0;
	return MPI_SUCCESS;
}

int MPI_Probe(int src, int tag, MPI_Comm comm, MPI_Status *st)
{
	struct ivs_comm *c = ivs.enabled ? ivs_comm_p2p(comm) : NULL;
	if (!c || src == MPI_PROC_NULL || (probe_needs_net(c, src) && src != MPI_ANY_SOURCE && ivs_may_block() && !ivs.nunexp_net))
		return PMPI_Probe(src, tag, comm, st);
	unsigned spins = 0;
	for (;;) {
		int flag = 0, rc = MPI_Iprobe(src, tag, comm, &flag, st);
		if (rc != MPI_SUCCESS || flag)
			return rc;
		ivs_wait_pause(&spins);
	}
}

int MPI_Improbe(int src, int tag, MPI_Comm comm, int *flag, MPI_Message *msg, MPI_Status *st)
{
	struct ivs_comm *c = ivs.enabled ? ivs_comm_p2p(comm) : NULL;
	if (!c || src == MPI_PROC_NULL)
		return PMPI_Improbe(src, tag, comm, flag, msg, st);
	if (probe_needs_shm(c, src)) {
		struct ivs_msg *m = probe_shm(c, src, tag);
		if (m) {
			if (ivs_msg_register(m) < 0)
				return MPI_ERR_INTERN;
			ivs_unexp_remove(m);
			m->probe_comm = c;
			msg_status(c, m, st);
			*msg = ivs_msg_handle(m);
			*flag = 1;
			return MPI_SUCCESS;
		}
	} else {
		ivs_progress(); /* a loop of library probes must not stall the rings */
	}
	if (probe_needs_net(c, src))
		return net_probe(c, src, tag, flag, msg, st);
	*flag = 0;
	return MPI_SUCCESS;
}

int MPI_Mprobe(int src, int tag, MPI_Comm comm, MPI_Message *msg, MPI_Status *st)
{
	struct ivs_comm *c = ivs.enabled ? ivs_comm_p2p(comm) : NULL;
	if (!c || src == MPI_PROC_NULL || (probe_needs_net(c, src) && src != MPI_ANY_SOURCE && ivs_may_block() && !ivs.nunexp_net)) {
		MPI_Status tmp, *s = st == MPI_STATUS_IGNORE ? &tmp : st;
		int rc = PMPI_Mprobe(src, tag, comm, msg, s);
		if (rc == MPI_SUCCESS)
			ivs_count_got(c, s->MPI_SOURCE); /* taken from the library (join.c) */
		return rc;
	}
	unsigned spins = 0;
	for (;;) {
		int flag = 0, rc = MPI_Improbe(src, tag, comm, &flag, msg, st);
		if (rc != MPI_SUCCESS || flag)
			return rc;
		ivs_wait_pause(&spins);
	}
}

int MPI_Imrecv(void *buf, int count, MPI_Datatype dt, MPI_Message *msg, MPI_Request *req)
{
	struct ivs_msg *m = ivs.enabled ? ivs_msg_of(*msg) : NULL;
	if (!m)
		return PMPI_Imrecv(buf, count, dt, msg, req);
	struct ivs_req *r = new_req(IVS_RECV, m->probe_comm, MPI_ANY_SOURCE, MPI_ANY_TAG);
	r->ubuf = buf;
	r->count = count;
	ivs_dt_hold(r, dt);
	r->recv_mode = IVS_RM_SHM;
	int rc = ivs_dt_recv_view(r, buf, count, dt);
	if (rc != MPI_SUCCESS) {
		ivs_req_release(r);
		return rc;
	}
	ivs_msg_unregister(m);
	*msg = MPI_MESSAGE_NULL;
	ivs_deliver_buffered(r, m);
	*req = ivs_req_handle(r);
	return MPI_SUCCESS;
}

int MPI_Mrecv(void *buf, int count, MPI_Datatype dt, MPI_Message *msg, MPI_Status *st)
{
	if (!ivs.enabled || !ivs_msg_of(*msg))
		return PMPI_Mrecv(buf, count, dt, msg, st);
	MPI_Request h;
	int rc = MPI_Imrecv(buf, count, dt, msg, &h);
	if (rc != MPI_SUCCESS)
		return rc;
	struct ivs_req *r = ivs_req_of(h);
	ivs_wait_loop_req(r);
	return ivs_finish(&h, r, st);
}
