/* Shim request and message handles (see abi.h for why they cannot collide with the MPI
 * library's). Requests come from one pool reserved up front, so a handle check is a range
 * compare; matched-probe messages are few and live in a small table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "ivshim.h"

#define IVS_REQ_MAX (1u << 20)
#define IVS_MSG_MAX 4096u

static struct ivs_req *pool;      /* IVS_REQ_MAX entries, pages touched on demand */
static struct ivs_req *free_list;
static uint32_t pool_used;
static struct ivs_msg *msg_table[IVS_MSG_MAX];

struct ivs_req *ivs_req_alloc(void)
{
	struct ivs_req *r = free_list;
	if (r) {
		free_list = r->next;
	} else {
		if (IVS_UNLIKELY(!pool)) {
			void *p = mmap(NULL, IVS_REQ_MAX * sizeof *pool, PROT_READ | PROT_WRITE,
			               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
			if (p == MAP_FAILED)
				ivs_fatal("cannot reserve the request pool");
			pool = p;
		}
		if (IVS_UNLIKELY(pool_used == IVS_REQ_MAX))
			ivs_fatal("more than %u shim requests outstanding", IVS_REQ_MAX);
		r = &pool[pool_used++];
	}
	memset(r, 0, sizeof *r);
	return r;
}

void ivs_req_release(struct ivs_req *r)
{
	ivs_dt_drop(r);
	if (r->comm)
		ivs_comm_unhold(r->comm);
	if (r->dt_owned) { /* the library may hand the same handle to the next type: forget it */
		ivs_dt_forget(r->dt);
		PMPI_Type_free(&r->dt);
	}
	if (r->bsend_charge)
		ivs_bsend_release(r);
	r->state = IVS_INACTIVE;
	r->kind = 0;
	r->next = free_list;
	free_list = r;
}

#if defined(OPEN_MPI)
struct ivs_req *ivs_req_of(MPI_Request h)
{
	uintptr_t d = (uintptr_t)h - (uintptr_t)pool;
	if (d < (uintptr_t)pool_used * sizeof *pool && d % sizeof *pool == 0 && ((struct ivs_req *)h)->kind)
		return (struct ivs_req *)h;
	return NULL;
}
MPI_Request ivs_req_handle(struct ivs_req *r) { return (MPI_Request)r; }

struct ivs_msg *ivs_msg_of(MPI_Message h)
{
	uintptr_t d = (uintptr_t)h - (uintptr_t)msg_table;
	if (d < sizeof msg_table && d % sizeof msg_table[0] == 0)
		return *(struct ivs_msg **)h;
	return NULL;
}
static MPI_Message msg_handle_at(uint32_t i) { return (MPI_Message)&msg_table[i]; }
static uint32_t msg_index(MPI_Message h) { return (uint32_t)(((uintptr_t)h - (uintptr_t)msg_table) / sizeof msg_table[0]); }

#else
struct ivs_req *ivs_req_of(MPI_Request h)
{
	uint32_t u = (uint32_t)h;
	if ((u & ~IVS_MPICH_IDX_MAX) != IVS_MPICH_REQ_BASE || u == IVS_MPICH_REQ_BASE)
		return NULL;
	uint32_t i = (u & IVS_MPICH_IDX_MAX) - 1;
	if (i >= pool_used || !pool[i].kind)
		return NULL;
	return &pool[i];
}
MPI_Request ivs_req_handle(struct ivs_req *r) { return (MPI_Request)(IVS_MPICH_REQ_BASE | (uint32_t)(r - pool + 1)); }

struct ivs_msg *ivs_msg_of(MPI_Message h)
{
	uint32_t u = (uint32_t)h;
	if ((u & ~IVS_MPICH_IDX_MAX) != IVS_MPICH_MSG_BASE || (u & IVS_MPICH_IDX_MAX) >= IVS_MSG_MAX)
		return NULL;
	return msg_table[u & IVS_MPICH_IDX_MAX];
}
static MPI_Message msg_handle_at(uint32_t i) { return (MPI_Message)(IVS_MPICH_MSG_BASE | i); }
static uint32_t msg_index(MPI_Message h) { return (uint32_t)h & IVS_MPICH_IDX_MAX; }
#endif

/* Matched-probe messages: a slot per message between MPI_(I)mprobe and MPI_(I)mrecv. */
int ivs_msg_register(struct ivs_msg *m)
{
	for (uint32_t i = 0; i < IVS_MSG_MAX; i++) {
		if (!msg_table[i]) {
			msg_table[i] = m;
			return (int)i;
		}
	}
	return -1;
}

MPI_Message ivs_msg_handle(struct ivs_msg *m)
{
	for (uint32_t i = 0; i < IVS_MSG_MAX; i++)
		if (msg_table[i] == m)
			return msg_handle_at(i);
	return MPI_MESSAGE_NULL;
}

void ivs_msg_unregister(struct ivs_msg *m)
{
	MPI_Message h = ivs_msg_handle(m);
	if (h != MPI_MESSAGE_NULL)
		msg_table[msg_index(h)] = NULL;
}

/* Synchronous-send cookies: pool index + 1 in the high half, a per-request salt in the low
 * half, so an ACK naming a recycled or foreign request is recognised and ignored. */
static uint32_t cookie_salt;

uint64_t ivs_req_cookie(struct ivs_req *r)
{
	if (!r->cookie)
		r->cookie = ((uint64_t)(r - pool + 1) << 32) | ++cookie_salt;
	return r->cookie;
}

struct ivs_req *ivs_req_by_cookie(uint64_t cookie)
{
	uint64_t i = (cookie >> 32) - 1;
	if (cookie == 0 || i >= pool_used)
		return NULL;
	struct ivs_req *r = &pool[i];
	if (r->cookie != cookie || !r->sync_wait)
		return NULL;
	return r;
}
