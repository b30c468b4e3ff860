/* Completion calls (Wait/Test and their any/all/some forms), cancel, free, status, and
 * persistent requests, for any mix of shim requests and the MPI library's own. */
#include <stdlib.h>
#include "ivshim.h"

/* Non-destructive: whether *h would complete now. */
static int ready(MPI_Request *h)
{
	struct ivs_req *r = ivs_req_of(*h);
	if (r)
		return ivs_req_poll(r);
	if (*h == MPI_REQUEST_NULL)
		return 1;
	int flag = 0;
	if (PMPI_Request_get_status(*h, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS)
		return 1;
	return flag;
}

/* Whether shim request h is an inactive persistent request (ignored by the any/some forms). */
static int inert(MPI_Request h)
{
	struct ivs_req *r = ivs_req_of(h);
	return r && (r->kind == IVS_PSEND || r->kind == IVS_PRECV) && r->state != IVS_ACTIVE;
}

/* Complete *h, which ready() reported done. */
static int complete(MPI_Request *h, MPI_Status *st)
{
	struct ivs_req *r = ivs_req_of(*h);
	if (r)
		return ivs_finish(h, r, st);
	if (*h == MPI_REQUEST_NULL) {
		ivs_status_empty(st);
		return MPI_SUCCESS;
	}
	return PMPI_Wait(h, st);
}

/* Complete *h (ready) into status k of a multiple completion's sts, whose MPI_ERROR is the
 * operation's; nothing is written for MPI_STATUSES_IGNORE. An error makes *err
 * MPI_ERR_IN_STATUS. */
static void complete_into(MPI_Request *h, MPI_Status *sts, int k, int *err)
{
	MPI_Status *st = sts == MPI_STATUSES_IGNORE ? MPI_STATUS_IGNORE : &sts[k];
	int rc = complete(h, st);
	if (st != MPI_STATUS_IGNORE)
		st->MPI_ERROR = rc;
	if (rc != MPI_SUCCESS)
		*err = MPI_ERR_IN_STATUS;
}

static int any_shim(int n, MPI_Request *hs)
{
	for (int i = 0; i < n; i++)
		if (ivs_req_of(hs[i]))
			return 1;
	return 0;
}

static void pause_progress(unsigned *spins)
{
	if (!ivs_progress())
		ivs_wait_pause(spins);
	else
		*spins = 0;
}

int MPI_Wait(MPI_Request *h, MPI_Status *st)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Wait(h, st);
	struct ivs_req *r = ivs_req_of(*h);
	if (!r)
		return ivs_net_wait(h, st);
	ivs_wait_loop_req(r);
	return ivs_finish(h, r, st);
}

int MPI_Test(MPI_Request *h, int *flag, MPI_Status *st)
{
	if (IVS_LIKELY(!ivs.enabled))
		return PMPI_Test(h, flag, st);
	struct ivs_req *r = ivs_req_of(*h);
	if (!r) {
		int rc = PMPI_Test(h, flag, st);
		if (!*flag)
			ivs_progress();
		return rc;
	}
	ivs_progress();
	*flag = ivs_req_poll(r);
	return *flag ? ivs_finish(h, r, st) : MPI_SUCCESS;
}

/* Finish every ready request of hs[0..n) not done yet; returns how many, errors into *err. */
static int sweep(int n, MPI_Request *hs, MPI_Status *sts, char *done, int *err)
{
	int k = 0;
	for (int i = 0; i < n; i++) {
		if (done[i] || !ready(&hs[i]))
			continue;
		complete_into(&hs[i], sts, i, err);
		done[i] = 1;
		k++;
	}
	return k;
}

int MPI_Waitall(int n, MPI_Request *hs, MPI_Status *sts)
{
	if (IVS_LIKELY(!ivs.enabled) || (!any_shim(n, hs) && ivs_may_block()))
		return PMPI_Waitall(n, hs, sts);
	char stackdone[64] = {0}, *done = n <= 64 ? stackdone : calloc((size_t)n, 1);
	if (!done)
		return MPI_ERR_NO_MEM;
	int err = MPI_SUCCESS, left = n;
	unsigned spins = 0;
	for (;;) {
		left -= sweep(n, hs, sts, done, &err);
		if (!left)
			break;
		pause_progress(&spins);
	}
	if (done != stackdone)
		free(done);
	return err;
}

int MPI_Testall(int n, MPI_Request *hs, int *flag, MPI_Status *sts)
{
	if (IVS_LIKELY(!ivs.enabled) || !any_shim(n, hs)) {
		ivs_progress();
		return PMPI_Testall(n, hs, flag, sts);
	}
	ivs_progress();
	for (int i = 0; i < n; i++) {
		if (!ready(&hs[i])) {
			*flag = 0;
			return MPI_SUCCESS;
		}
	}
	int err = MPI_SUCCESS;
	for (int i = 0; i < n; i++) {
		complete_into(&hs[i], sts, i, &err);
	}
	*flag = 1;
	return err;
}

/* The library's requests of hs, with the shim's replaced by MPI_REQUEST_NULL, in lib (n
 * entries; stack for few): the any/some forms let the library judge its own, because only it
 * knows which of its persistent requests are inactive (to be ignored, not completed). */
struct lib_view {
	MPI_Request *h;
	MPI_Request stack[32];
};

static int lib_view_open(struct lib_view *v, int n, const MPI_Request *hs)
{
	v->h = n <= 32 ? v->stack : malloc(sizeof *v->h * (size_t)n);
	if (!v->h)
		return MPI_ERR_NO_MEM;
	for (int i = 0; i < n; i++)
		v->h[i] = ivs_req_of(hs[i]) ? MPI_REQUEST_NULL : hs[i];
	return MPI_SUCCESS;
}

/* Whether the view holds no request at all: the library would only say so (and its any/some
 * forms would still cost a call). */
static int lib_view_empty(const struct lib_view *v, int n)
{
	for (int i = 0; i < n; i++)
		if (v->h[i] != MPI_REQUEST_NULL)
			return 0;
	return 1;
}

static void lib_view_close(struct lib_view *v)
{
	if (v->h != v->stack)
		free(v->h);
}

/* The shim's requests in a lib_view: one whose completion waits only for a library request of
 * its own has that request in the view, so that one call of the library asks about all of them
 * (each call runs its progress engine: four MPI_ANY_SOURCE receives of a rank alone on its host,
 * tested with MPI_Testany after every update of HPCC's RandomAccess, took 4 passes, and yields,
 * where the library alone takes one). Returns the index of a shim request complete already
 * (its library request not asked) from index `from` on, or -1; *active is set if a shim request
 * looked at is active. */
static int lib_view_shim(struct lib_view *v, int from, int n, const MPI_Request *hs, int *active)
{
	for (int i = from; i < n; i++) {
		struct ivs_req *r = ivs_req_of(hs[i]), *q;
		if (!r || inert(hs[i]))
			continue;
		*active = 1;
		if (ivs_req_poll_shim(r, &q))
			return i;
		if (q)
			v->h[i] = q->inner;
	}
	return -1;
}

/* The library completed (or failed, rc) view entry i, with status st: the caller's request, or
 * the library request of the shim's request there, which completes it. */
static void lib_view_done(struct lib_view *v, MPI_Request *hs, int i, int rc, const MPI_Status *st)
{
	struct ivs_req *r = ivs_req_of(hs[i]), *q;
	if (!r) {
		hs[i] = v->h[i];
		return;
	}
	ivs_req_poll_shim(r, &q); /* as lib_view_shim found it: q is set */
	q->inner = v->h[i];
	ivs_req_lib_done(q, rc, st);
}

/* One pass of Testany: index of a completed active request, MPI_UNDEFINED if none is active
 * (*flag = 1 then), or -1 if none is ready. Shim requests are looked at first. */
static int testany_pass(int n, MPI_Request *hs, MPI_Status *st, int *rc)
{
	struct lib_view v;
	int active = 0, idx = MPI_UNDEFINED, flag = 0;
	if ((*rc = lib_view_open(&v, n, hs)) != MPI_SUCCESS)
		return MPI_UNDEFINED;
	int i = lib_view_shim(&v, 0, n, hs, &active);
	if (i >= 0) {
		lib_view_close(&v);
		*rc = complete(&hs[i], st);
		return i;
	}
	MPI_Status got;
	if (lib_view_empty(&v, n))
		flag = 1;
	else
		*rc = PMPI_Testany(n, v.h, &idx, &flag, &got);
	if (flag && idx != MPI_UNDEFINED) {
		int shim = ivs_req_of(hs[idx]) != NULL;
		lib_view_done(&v, hs, idx, *rc, &got);
		if (shim)
			*rc = complete(&hs[idx], st);
		else if (st != MPI_STATUS_IGNORE)
			ivs_status_copy(st, &got); /* a single completion leaves MPI_ERROR alone */
	}
	lib_view_close(&v);
	if (*rc != MPI_SUCCESS)
		return idx;
	if (flag && idx != MPI_UNDEFINED)
		return idx;
	if (flag && !active) {
		ivs_status_empty(st);
		return MPI_UNDEFINED;
	}
	return -1;
}

int MPI_Waitany(int n, MPI_Request *hs, int *index, MPI_Status *st)
{
	if (IVS_LIKELY(!ivs.enabled) || (!any_shim(n, hs) && ivs_may_block()))
		return PMPI_Waitany(n, hs, index, st);
	unsigned spins = 0;
	for (;;) {
		int rc = MPI_SUCCESS, i = testany_pass(n, hs, st, &rc);
		if (i != -1) {
			*index = i;
			return rc;
		}
		pause_progress(&spins);
	}
}

int MPI_Testany(int n, MPI_Request *hs, int *index, int *flag, MPI_Status *st)
{
	if (IVS_LIKELY(!ivs.enabled) || !any_shim(n, hs)) {
		ivs_progress();
		return PMPI_Testany(n, hs, index, flag, st);
	}
	ivs_progress();
	int rc = MPI_SUCCESS, i = testany_pass(n, hs, st, &rc);
	*flag = i != -1;
	*index = i == -1 ? MPI_UNDEFINED : i;
	return rc;
}

/* One pass of Testsome: finishes every ready active request, the shim's first. */
static int testsome_pass(int n, MPI_Request *hs, int *outcount, int *idx, MPI_Status *sts)
{
	int k = 0, active = 0, err = MPI_SUCCESS;
	struct lib_view v;
	int rc = lib_view_open(&v, n, hs);
	if (rc != MPI_SUCCESS)
		return rc;
	for (int i = -1; (i = lib_view_shim(&v, i + 1, n, hs, &active)) >= 0;) {
		complete_into(&hs[i], sts, k, &err);
		idx[k++] = i;
	}
	MPI_Status stack[32], *got = n <= 32 ? stack : malloc(sizeof *got * (size_t)n);
	int nlib = MPI_UNDEFINED;
	if (!got)
		rc = MPI_ERR_NO_MEM;
	else if (!lib_view_empty(&v, n))
		rc = PMPI_Testsome(n, v.h, &nlib, idx + k, got);
	for (int j = 0; nlib != MPI_UNDEFINED && j < nlib; j++) {
		int i = idx[k + j], shim = ivs_req_of(hs[i]) != NULL;
		if (rc != MPI_ERR_IN_STATUS) /* the library sets it only then; the caller may see errors of the shim's */
			got[j].MPI_ERROR = rc;
		lib_view_done(&v, hs, i, got[j].MPI_ERROR, &got[j]);
		if (shim)
			complete_into(&hs[i], sts, k + j, &err);
		else if (sts != MPI_STATUSES_IGNORE)
			sts[k + j] = got[j];
	}
	if (got != stack)
		free(got);
	lib_view_close(&v);
	if (rc != MPI_SUCCESS)
		err = rc;
	if (nlib != MPI_UNDEFINED)
		k += nlib;
	*outcount = active || nlib != MPI_UNDEFINED ? k : MPI_UNDEFINED;
	return err;
}

int MPI_Waitsome(int n, MPI_Request *hs, int *outcount, int *idx, MPI_Status *sts)
{
	if (IVS_LIKELY(!ivs.enabled) || (!any_shim(n, hs) && ivs_may_block()))
		return PMPI_Waitsome(n, hs, outcount, idx, sts);
	unsigned spins = 0;
	for (;;) {
		int rc = testsome_pass(n, hs, outcount, idx, sts);
		if (*outcount != 0)
			return rc;
		pause_progress(&spins);
	}
}

int MPI_Testsome(int n, MPI_Request *hs, int *outcount, int *idx, MPI_Status *sts)
{
	if (IVS_LIKELY(!ivs.enabled) || !any_shim(n, hs)) {
		ivs_progress();
		return PMPI_Testsome(n, hs, outcount, idx, sts);
	}
	ivs_progress();
	return testsome_pass(n, hs, outcount, idx, sts);
}

int MPI_Request_get_status(MPI_Request h, int *flag, MPI_Status *st)
{
	struct ivs_req *r = ivs.enabled ? ivs_req_of(h) : NULL;
	if (!r) {
		ivs_progress();
		return PMPI_Request_get_status(h, flag, st);
	}
	ivs_progress();
	*flag = ivs_req_poll(r);
	if (!*flag)
		return MPI_SUCCESS;
	if (r->kind == IVS_PSEND || r->kind == IVS_PRECV) {
		if (r->act)
			ivs_fill_status(r->act, st);
		else if (st != MPI_STATUS_IGNORE && r->state == IVS_ACTIVE)
			ivs_status_copy(st, &r->net_st);
		else
			ivs_status_empty(st);
		return MPI_SUCCESS;
	}
	ivs_fill_status(r, st);
	return MPI_SUCCESS;
}

/* Cancel: a receive not matched yet is withdrawn; a send is withdrawn only if none of it
 * reached the ring (otherwise the cancel fails, which MPI allows). */
static void cancel_req(struct ivs_req *r)
{
	if (r->kind == IVS_PSEND || r->kind == IVS_PRECV) {
		if (r->act)
			cancel_req(r->act);
		else if (r->state == IVS_ACTIVE) {
			ivs.lib_uncounted = 1; /* a send, maybe: join.c's check at MPI_Finalize */
			PMPI_Cancel(&r->inner);
		}
		return;
	}
	if (r->state == IVS_DONE)
		return;
	if (r->kind == IVS_RECV) {
		if (r->recv_mode == IVS_RM_NET) {
			PMPI_Cancel(&r->inner);
			return;
		}
		if (r->in_posted) {
			ivs_unpost(r);
			ivs_dt_drop(r);
			r->cancelled = 1;
			r->state = IVS_DONE;
		}
		return;
	}
	if (!r->cookie_sent) {
		struct ivs_peer *p = ivs.peers[r->peer_world];
		struct ivs_req **pp = &p->sendq, *prev = NULL;
		while (*pp && *pp != r) {
			prev = *pp;
			pp = &(*pp)->next;
		}
		if (*pp == r) {
			*pp = r->next;
			if (p->sendq_tail == r)
				p->sendq_tail = prev;
			ivs.nsend_queued--;
			if (r->sync_wait) {
				r->sync_wait = 0;
				ivs.nsync_wait--;
			}
			ivs_dt_drop(r);
			r->cancelled = 1;
			r->state = IVS_DONE;
		}
	}
}

int MPI_Cancel(MPI_Request *h)
{
	struct ivs_req *r = ivs.enabled ? ivs_req_of(*h) : NULL;
	if (!r) {
		ivs.lib_uncounted = 1;
		return PMPI_Cancel(h);
	}
	cancel_req(r);
	return MPI_SUCCESS;
}

int MPI_Request_free(MPI_Request *h)
{
	struct ivs_req *r = ivs.enabled ? ivs_req_of(*h) : NULL;
	if (!r)
		return PMPI_Request_free(h);
	*h = MPI_REQUEST_NULL;
	if (r->kind == IVS_PSEND || r->kind == IVS_PRECV) {
		struct ivs_req *a = r->act;
		if (r->state == IVS_ACTIVE) {
			if (a && a->kind == IVS_RECV && a->recv_mode == IVS_RM_NET) { /* the library holds it */
				if (!ivs_req_poll(a)) {
					if (a->lib_count)
						ivs_join_recv_lost(a);
					PMPI_Request_free(&a->inner);
				}
				ivs_req_release(a);
			} else if (a) {
				a->free_on_done = 1;
			} else {
				PMPI_Request_free(&r->inner);
			}
		} else if (r->inner != MPI_REQUEST_NULL && !r->act) {
			PMPI_Request_free(&r->inner);
		}
		ivs_req_release(r);
		return MPI_SUCCESS;
	}
	if (r->lib_count)
		ivs_req_poll(r); /* completed already: counted, not lost */
	if (r->recv_mode == IVS_RM_NET && r->state != IVS_DONE) {
		if (r->lib_count)
			ivs_join_recv_lost(r);
		PMPI_Request_free(&r->inner);
		ivs_req_release(r);
		return MPI_SUCCESS;
	}
	if (r->state == IVS_DONE)
		ivs_req_release(r);
	else
		r->free_on_done = 1;
	return MPI_SUCCESS;
}

/* ---- persistent requests ---- */

static int persistent(int kind, const void *buf, int count, MPI_Datatype dt, int peer, int tag,
                      MPI_Comm comm, int sync, MPI_Request *h)
{
	struct ivs_req *r = ivs_req_alloc();
	r->kind = (uint8_t)kind;
	r->state = IVS_INACTIVE;
	r->ubuf = (void *)buf;
	r->count = count;
	r->peer = peer;
	r->tag = tag;
	r->sync = sync;
	r->comm = ivs_comm_p2p(comm);
	ivs_comm_hold(r->comm);
	ivs_dt_hold(r, dt);
	r->inner = MPI_REQUEST_NULL;
	*h = ivs_req_handle(r);
	return MPI_SUCCESS;
}

#define PERSISTENT_SEND(name, pname, sync)                                                              \
	int name(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, MPI_Request *h) \
	{                                                                                                       \
		if (IVS_LIKELY(!ivs.enabled) || !ivs_comm_p2p(comm))                                             \
			return pname(buf, count, dt, dest, tag, comm, h);                                              \
		return persistent(IVS_PSEND, buf, count, dt, dest, tag, comm, sync, h);                          \
	}
PERSISTENT_SEND(MPI_Send_init, PMPI_Send_init, 0)
PERSISTENT_SEND(MPI_Rsend_init, PMPI_Rsend_init, 0)
PERSISTENT_SEND(MPI_Ssend_init, PMPI_Ssend_init, 1)

/* Buffered persistent sends keep the library's semantics (attached buffer); their starts go
 * through MPI_Ibsend, so co-located destinations still use the ring. */
int MPI_Bsend_init(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm, MPI_Request *h)
{
	if (IVS_LIKELY(!ivs.enabled) || !ivs_comm_p2p(comm))
		return PMPI_Bsend_init(buf, count, dt, dest, tag, comm, h);
	return persistent(IVS_PSEND, buf, count, dt, dest, tag, comm, 2, h);
}

int MPI_Recv_init(void *buf, int count, MPI_Datatype dt, int src, int tag, MPI_Comm comm, MPI_Request *h)
{
	if (IVS_LIKELY(!ivs.enabled) || !ivs_comm_p2p(comm))
		return PMPI_Recv_init(buf, count, dt, src, tag, comm, h);
	return persistent(IVS_PRECV, buf, count, dt, src, tag, comm, 0, h);
}

static int start_one(MPI_Request *h)
{
	struct ivs_req *r = ivs.enabled ? ivs_req_of(*h) : NULL;
	if (!r)
		return PMPI_Start(h);
	if (r->state == IVS_ACTIVE)
		return MPI_ERR_REQUEST;
	int rc;
	MPI_Comm comm = r->comm->handle;
	r->act = NULL;
	r->inner = MPI_REQUEST_NULL;
	r->net_done = 0;
	if (r->kind == IVS_PRECV) {
		rc = ivs_irecv(r->ubuf, r->count, r->dt, r->peer, r->tag, comm, &r->act, &r->inner);
	} else if (r->sync == 2) {
		MPI_Request tmp;
		rc = MPI_Ibsend(r->ubuf, r->count, r->dt, r->peer, r->tag, comm, &tmp);
		if (rc == MPI_SUCCESS) {
			r->act = ivs_req_of(tmp);
			if (!r->act)
				r->inner = tmp;
		}
	} else {
		rc = ivs_isend(r->ubuf, r->count, r->dt, r->peer, r->tag, comm, r->sync, &r->act, &r->inner);
	}
	if (rc == MPI_SUCCESS)
		r->state = IVS_ACTIVE;
	return rc;
}

int MPI_Start(MPI_Request *h)
{
	return start_one(h);
}

int MPI_Startall(int n, MPI_Request *hs)
{
	if (IVS_LIKELY(!ivs.enabled) || !any_shim(n, hs))
		return PMPI_Startall(n, hs);
	for (int i = 0; i < n; i++) {
		int rc = start_one(&hs[i]);
		if (rc != MPI_SUCCESS)
			return rc;
	}
	return MPI_SUCCESS;
}
