/*
 * Fortran bindings: the entry points through which a Fortran program's MPI calls reach the
 * shim's C interposers.
 *
 * Who calls what (Debian 12: Open MPI 4.1.4, MPICH 4.0.2, gfortran 12; nm -D / objdump -d):
 *
 * Open MPI. libmpi_mpifh.so holds the mpif.h bindings: one function per routine, ompi_send_f,
 * exported also as the weak aliases mpi_send, mpi_send_, mpi_send__, MPI_SEND, MPI_Send_f,
 * MPI_Send_f08 and the PMPI twins pmpi_send{,_,__}, PMPI_SEND, PMPI_Send_f{,08}. Each converts
 * its arguments (PMPI_Comm_f2c, PMPI_Request_f2c, the mpi_fortran_*_ common-block sentinels) and
 * calls PMPI_Send directly: Open MPI's Fortran never reaches an MPI_* C symbol, not even for
 * MPI_INIT (ompi_init_f -> PMPI_Init), so without this file a Fortran program never initialises
 * the shim and runs in pure pass-through. `use mpi` (libmpi_usempi_ignore_tkr.so) only declares
 * interfaces: gfortran calls mpi_send_ itself. `use mpi_f08` (libmpi_usempif08.so) wraps each
 * routine in mpi_send_f08_, which calls ompi_send_f through the PLT, except the routines with
 * LOGICAL arguments, which call pmpi_test_, pmpi_testall_, pmpi_testany_, pmpi_testsome_,
 * pmpi_iprobe_, pmpi_improbe_, pmpi_request_get_status_, pmpi_intercomm_merge_,
 * pmpi_cart_create_, pmpi_cart_sub_, pmpi_graph_create_, pmpi_dist_graph_create(_adjacent)_.
 * Its MPI_STATUS_IGNORE, MPI_IN_PLACE, ... are bound to the same common blocks
 * (mpi_fortran_status_ignore_, ...) as mpif.h's.
 * So for Open MPI this file defines, for every routine the shim interposes in C, every name
 * libmpi_mpifh.so exports for it except those beginning with PMPI_: lowercase with 0, 1 and 2
 * underscores, uppercase, MPI_Xxx_f, MPI_Xxx_f08, ompi_xxx_f (what mpi_f08 calls) and
 * pmpi_xxx{,_,__} (what mpi_f08 calls for the LOGICAL routines; Fortran PMPI calls must
 * understand the shim's handles too).
 *
 * MPICH. libmpichfort.so's mpif.h and `use mpi` bindings (mpi_send_ = pmpi_send_ = MPI_SEND
 * ...) call the C MPI_* functions (MPI_Init, MPI_Send, MPI_Wait...), so they reach the shim
 * already. Its mpi_f08 bindings split in two: those with a choice buffer (mpi_send_f08ts_ ...)
 * call MPI_Send etc. through a descriptor helper and reach the shim too; the others
 * (mpi_init_f08_, mpi_wait_f08_, mpi_test_f08_, mpi_barrier_f08_, mpi_comm_split_f08_, ...) bind
 * straight to PMPI_Init, PMPI_Wait, ... (mpi_c_interface_nobuf). So for MPICH this file defines
 * mpi_xxx_f08_ and pmpir_xxx_f08_ (the pmpi_f08 module's names) of those buffer-less routines.
 * MPICH's f08 handles are the C integer handles (type(MPI_Comm) holds it in MPI_VAL), its
 * type(MPI_Status) is the C MPI_Status, MPI_STATUS(ES)_IGNORE are MPIR_F08_MPI_STATUS(ES)_IGNORE_OBJ
 * and the optional ierror arrives as a NULL pointer when absent.
 *
 * Handles. MPI_Fint handles of communicators, datatypes, ops, groups and infos convert with the
 * library's f2c/c2f. Requests and matched-probe messages may be the shim's own (abi.h): in Open MPI
 * those are pointers into the shim's pools that PMPI_Request_c2f cannot convert, so they get
 * Fortran handles from a table here, IVS_F_BASE + slot. Open MPI issues Fortran request and
 * message handles as indices into its f_to_c pointer arrays, which grow one entry per live
 * object from 0: reaching 1 << 30 needs 2^30 live requests at once (hundreds of GB of
 * ompi_request_t), so the ranges cannot meet. In MPICH the Fortran handle is the C handle, the
 * shim's included (0x2c000001.., abi.h).
 *
 * Nothing here runs before the program calls MPI, functions bind lazily and every library
 * variable referenced here (the sentinels, MPICH's MPI_UNWEIGHTED) is a weak reference, NULL
 * without the MPI library, so preloading into processes without MPI stays harmless.
 *
 * Known limits: C code of a mixed-language program that converts a shim request's Fortran handle
 * with Open MPI's MPI_Request_f2c (or a C shim request with MPI_Request_c2f) gets the library's
 * answer, which knows nothing of the shim's handles. MPICH 4.0's own mpi_f08 Waitany, Waitsome and
 * Testsome return 0-based indices (pmodels/mpich#6270); the entry points here return the
 * standard's 1-based ones.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

typedef MPI_Fint fint;
_Static_assert(sizeof(MPI_Fint) == sizeof(int), "Fortran INTEGER arrays are passed as int arrays");

/* Fortran LOGICAL .TRUE. (gfortran, and OMPI_FORTRAN_VALUE_TRUE of Debian's Open MPI). */
#define IVS_F_TRUE 1

static inline void fret(fint *ierr, int rc)
{
	if (ierr) /* optional in mpi_f08 */
		*ierr = rc;
}

static inline int fsentinel(const void *p, const void *s) { return s && p == s; }

/* ------------------------------------------------------------------------------------------ */
#if defined(OPEN_MPI)

#pragma weak mpi_fortran_bottom_
#pragma weak mpi_fortran_in_place_
#pragma weak mpi_fortran_status_ignore_
#pragma weak mpi_fortran_statuses_ignore_
#pragma weak mpi_fortran_unweighted_
#pragma weak mpi_fortran_weights_empty_
extern int mpi_fortran_bottom_, mpi_fortran_in_place_, mpi_fortran_status_ignore_, mpi_fortran_statuses_ignore_,
	mpi_fortran_unweighted_, mpi_fortran_weights_empty_;

#define FSTATUS_INTS (sizeof(MPI_Status) / sizeof(fint)) /* MPI_STATUS_SIZE */
#define F_COMM(f) PMPI_Comm_f2c(*(f))
#define C_COMM(c) PMPI_Comm_c2f(c)
#define F_TYPE(f) PMPI_Type_f2c(*(f))
#define C_TYPE(c) PMPI_Type_c2f(c)
#define F_OP(f) PMPI_Op_f2c(*(f))
#define F_GROUP(f) PMPI_Group_f2c(*(f))
#define F_INFO(f) PMPI_Info_f2c(*(f))
#define F_WIN(f) PMPI_Win_f2c(*(f))
#define C_WIN(c) PMPI_Win_c2f(c)

static inline int fstatus_ignore(const fint *f) { return fsentinel(f, &mpi_fortran_status_ignore_); }
static inline int fstatuses_ignore(const fint *f) { return fsentinel(f, &mpi_fortran_statuses_ignore_); }

static inline void *fbuf(void *p)
{
	if (fsentinel(p, &mpi_fortran_in_place_))
		return MPI_IN_PLACE;
	return fsentinel(p, &mpi_fortran_bottom_) ? MPI_BOTTOM : p;
}

static inline const int *fweights(const fint *w)
{
	if (fsentinel(w, &mpi_fortran_unweighted_))
		return MPI_UNWEIGHTED;
	return fsentinel(w, &mpi_fortran_weights_empty_) ? MPI_WEIGHTS_EMPTY : w;
}

/* Fortran handles of shim requests / messages: IVS_F_BASE + slot. A free slot holds
 * (next free slot + 1) << 1 | 1; live ones hold the C handle, a pointer, so bit 0 is clear.
 * No lock: shim requests exist only below MPI_THREAD_MULTIPLE (ivshim.h), so one thread at a
 * time is in MPI; under MPI_THREAD_MULTIPLE the tables stay empty and are only read. */
#define IVS_F_BASE (1 << 30)
#define IVS_F_MAX (1u << 24)

struct ftab {
	void **slot;
	uint32_t used, cap, free1; /* free1: first free slot + 1, 0 = none */
};
static struct ftab req_tab, msg_tab;

static void *ftab_get(const struct ftab *t, fint f)
{
	uint32_t i = (uint32_t)f - IVS_F_BASE;
	if (f < IVS_F_BASE || i >= t->used || ((uintptr_t)t->slot[i] & 1))
		return NULL;
	return t->slot[i];
}

static fint ftab_put(struct ftab *t, void *c)
{
	uint32_t i;
	if (t->free1) {
		i = t->free1 - 1;
		t->free1 = (uint32_t)((uintptr_t)t->slot[i] >> 1);
	} else {
		if (t->used == t->cap) {
			uint32_t cap = t->cap ? 2 * t->cap : 256;
			void **s = cap <= IVS_F_MAX ? realloc(t->slot, cap * sizeof *s) : NULL;
			if (!s)
				ivs_fatal("more than %u Fortran handles of shim requests or messages", t->cap);
			t->slot = s;
			t->cap = cap;
		}
		i = t->used++;
	}
	t->slot[i] = c;
	return (fint)(IVS_F_BASE + i);
}

static void ftab_drop(struct ftab *t, fint f)
{
	if (!ftab_get(t, f))
		return;
	uint32_t i = (uint32_t)f - IVS_F_BASE;
	t->slot[i] = (void *)(((uintptr_t)t->free1 << 1) | 1);
	t->free1 = i + 1;
}

static inline MPI_Request F_REQ(fint f)
{
	void *c = ftab_get(&req_tab, f);
	return c ? (MPI_Request)c : PMPI_Request_f2c(f);
}

static inline fint C_REQ(MPI_Request c) { return ivs_req_of(c) ? ftab_put(&req_tab, c) : PMPI_Request_c2f(c); }

/* The call turned request `was` into `now` (completed, freed): update its Fortran handle. */
static inline void freq_update(fint *f, MPI_Request was, MPI_Request now)
{
	if (was == now)
		return;
	ftab_drop(&req_tab, *f);
	*f = C_REQ(now);
}

static inline MPI_Message F_MSG(fint f)
{
	void *c = ftab_get(&msg_tab, f);
	return c ? (MPI_Message)c : PMPI_Message_f2c(f);
}

static inline fint C_MSG(MPI_Message c) { return ivs_msg_of(c) ? ftab_put(&msg_tab, c) : PMPI_Message_c2f(c); }

static inline void fmsg_update(fint *f, MPI_Message was, MPI_Message now)
{
	if (was == now)
		return;
	ftab_drop(&msg_tab, *f);
	*f = C_MSG(now);
}

/* A Fortran status argument seen as a C one: converted back by fst_close. */
struct fst {
	MPI_Status c;
	fint *f;
};

/* The caller's status comes in as well: single-completion calls and probes leave its MPI_ERROR
 * as it was, so fst_close must write back what the caller had there. */
static inline MPI_Status *fst_open(struct fst *s, fint *f)
{
	s->f = fstatus_ignore(f) ? NULL : f;
	if (!s->f)
		return MPI_STATUS_IGNORE;
	PMPI_Status_f2c(s->f, &s->c);
	return &s->c;
}

static inline void fst_close(struct fst *s, int set)
{
	if (s->f && set)
		PMPI_Status_c2f(&s->c, s->f);
}

/* C code converting handles of a mixed-language program: a shim request or message is no
 * ompi_request_t (Open MPI's MPI_Request_c2f would write its index into the shim's pool), so
 * its Fortran handle comes from the same table the Fortran bindings use. */
MPI_Fint MPI_Request_c2f(MPI_Request c) { return C_REQ(c); }
MPI_Request MPI_Request_f2c(MPI_Fint f) { return F_REQ(f); }
MPI_Fint MPI_Message_c2f(MPI_Message c) { return C_MSG(c); }
MPI_Message MPI_Message_f2c(MPI_Fint f) { return F_MSG(f); }

/* ------------------------------------------------------------------------------------------ */
#elif defined(MPICH)

/* The mpi_f08 module's sentinels (MPI_UNWEIGHTED and MPI_WEIGHTS_EMPTY are module variables),
 * and the C MPI_UNWEIGHTED and MPI_WEIGHTS_EMPTY, which MPICH makes variables of libmpich: all
 * weak, or the library would not load where libmpich is absent. */
#pragma weak MPIR_F08_MPI_STATUS_IGNORE_OBJ
#pragma weak MPIR_F08_MPI_STATUSES_IGNORE_OBJ
#pragma weak MPI_F08_STATUS_IGNORE
#pragma weak MPI_F08_STATUSES_IGNORE
#pragma weak __mpi_f08_link_constants_MOD_mpi_unweighted
#pragma weak __mpi_f08_link_constants_MOD_mpi_weights_empty
#pragma weak MPI_UNWEIGHTED
#pragma weak MPI_WEIGHTS_EMPTY
extern int __mpi_f08_link_constants_MOD_mpi_unweighted, __mpi_f08_link_constants_MOD_mpi_weights_empty;

#define F_COMM(f) ((MPI_Comm) * (f))
#define C_COMM(c) ((fint)(c))
#define F_TYPE(f) ((MPI_Datatype) * (f))
#define C_TYPE(c) ((fint)(c))
#define F_GROUP(f) ((MPI_Group) * (f))
#define F_INFO(f) ((MPI_Info) * (f))
#define F_WIN(f) ((MPI_Win) * (f))
#define C_WIN(c) ((fint)(c))
#define F_REQ(f) ((MPI_Request)(f))
#define F_MSG(f) ((MPI_Message)(f))
#define C_MSG(c) ((fint)(c))

static inline int fstatus_ignore(const fint *f)
{
	return fsentinel(f, &MPIR_F08_MPI_STATUS_IGNORE_OBJ) || (&MPI_F08_STATUS_IGNORE && fsentinel(f, MPI_F08_STATUS_IGNORE));
}

static inline int fstatuses_ignore(const fint *f)
{
	return fsentinel(f, MPIR_F08_MPI_STATUSES_IGNORE_OBJ) ||
	       (&MPI_F08_STATUSES_IGNORE && fsentinel(f, MPI_F08_STATUSES_IGNORE));
}

static inline const int *fweights(const fint *w)
{
	if (fsentinel(w, &__mpi_f08_link_constants_MOD_mpi_unweighted))
		return MPI_UNWEIGHTED;
	return fsentinel(w, &__mpi_f08_link_constants_MOD_mpi_weights_empty) ? MPI_WEIGHTS_EMPTY : w;
}

static inline void freq_update(fint *f, MPI_Request was, MPI_Request now)
{
	(void)was;
	*f = (fint)now;
}

static inline void fmsg_update(fint *f, MPI_Message was, MPI_Message now)
{
	(void)was;
	*f = (fint)now;
}

/* type(MPI_Status) is MPI_Status itself. */
struct fst {
	char unused;
};

static inline MPI_Status *fst_open(struct fst *s, fint *f)
{
	(void)s;
	return fstatus_ignore(f) ? MPI_STATUS_IGNORE : (MPI_Status *)f;
}

static inline void fst_close(struct fst *s, int set)
{
	(void)s;
	(void)set;
}

#else
#error "unknown MPI ABI family"
#endif
/* ------------------------------------------------------------------------------------------ */

/* An array of Fortran requests (and statuses) seen as C arrays for one call. */
#define FVEC_SMALL 8
struct fvec {
	MPI_Request *req;  /* passed to the call */
	MPI_Status *st;    /* passed to the call, or MPI_STATUSES_IGNORE */
#if defined(OPEN_MPI)
	MPI_Request *was;  /* req before the call */
	void *heap;
	MPI_Request small[2 * FVEC_SMALL];
	MPI_Status small_st[FVEC_SMALL];
#endif
};

static int fvec_open(struct fvec *v, int n, fint *freqs, fint *fsts)
{
	int ignore = !fsts || fstatuses_ignore(fsts);
#if defined(OPEN_MPI)
	size_t m = n > 0 ? (size_t)n : 0;
	v->heap = NULL;
	v->req = v->small;
	v->st = v->small_st;
	if (m > FVEC_SMALL) {
		v->heap = malloc(m * (2 * sizeof(MPI_Request) + sizeof(MPI_Status)));
		if (!v->heap)
			return MPI_ERR_NO_MEM;
		v->req = v->heap;
		v->st = (MPI_Status *)(v->req + 2 * m);
	}
	v->was = v->req + m;
	for (size_t i = 0; i < m; i++)
		v->req[i] = v->was[i] = F_REQ(freqs[i]);
	if (ignore)
		v->st = MPI_STATUSES_IGNORE;
#else
	(void)n;
	v->req = (MPI_Request *)freqs;
	v->st = ignore ? MPI_STATUSES_IGNORE : (MPI_Status *)fsts;
#endif
	return MPI_SUCCESS;
}

/* Write back every request the call changed and the first nst statuses. */
static void fvec_close(struct fvec *v, int n, fint *freqs, fint *fsts, int nst)
{
#if defined(OPEN_MPI)
	for (int i = 0; i < n; i++)
		freq_update(&freqs[i], v->was[i], v->req[i]);
	for (int i = 0; v->st != MPI_STATUSES_IGNORE && i < nst; i++)
		PMPI_Status_c2f(&v->st[i], fsts + (size_t)i * FSTATUS_INTS);
	free(v->heap);
#else
	(void)v, (void)n, (void)freqs, (void)fsts, (void)nst;
#endif
}

static inline int flogical(const fint *f) { return *f != 0; }
static inline void fset_logical(fint *f, int v) { *f = v ? IVS_F_TRUE : 0; }

/* Fortran LOGICAL array -> C int array (free it). */
static int *flogicals(int n, const fint *f)
{
	int *c = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
	for (int i = 0; c && i < n; i++)
		c[i] = f[i] != 0;
	return c;
}

/* A C index (0-based, or MPI_UNDEFINED) as Fortran's. */
static inline fint findex(int i) { return i >= 0 ? i + 1 : i; }

static inline int statuses_set(int rc) { return rc == MPI_SUCCESS || rc == MPI_ERR_IN_STATUS; }

/* Every name of one Fortran entry point. Open MPI: all of libmpi_mpifh.so's but PMPI_*; MPICH:
 * those of the mpi_f08 and pmpi_f08 modules. */
#define IVS_F_ALIAS(impl, name) extern __typeof__(impl) name __attribute__((alias(#impl)));
#if defined(OPEN_MPI)
/* Every name of a mpif.h routine but MPI_Xxx_f08, which a few routines (MPI_Buffer_detach) have
 * in the mpi_f08 library instead. */
#define IVS_F_EXPORT_F77(impl, lower, UPPER, Camel)                                                       \
	IVS_F_ALIAS(impl, mpi_##lower) IVS_F_ALIAS(impl, mpi_##lower##_) IVS_F_ALIAS(impl, mpi_##lower##__) \
	IVS_F_ALIAS(impl, pmpi_##lower) IVS_F_ALIAS(impl, pmpi_##lower##_)                                 \
	IVS_F_ALIAS(impl, pmpi_##lower##__) IVS_F_ALIAS(impl, MPI_##UPPER)                                 \
	IVS_F_ALIAS(impl, MPI_##Camel##_f) IVS_F_ALIAS(impl, ompi_##lower##_f)
#define IVS_F_EXPORT(impl, lower, UPPER, Camel) \
	IVS_F_EXPORT_F77(impl, lower, UPPER, Camel) IVS_F_ALIAS(impl, MPI_##Camel##_f08)
#else
#define IVS_F_EXPORT(impl, lower, UPPER, Camel) \
	IVS_F_ALIAS(impl, mpi_##lower##_f08_) IVS_F_ALIAS(impl, pmpir_##lower##_f08_)
#endif

/* ---- both families: routines without a choice buffer ---- */

static void f_init(fint *ierr) { fret(ierr, MPI_Init(NULL, NULL)); }
IVS_F_EXPORT(f_init, init, INIT, Init)

static void f_init_thread(fint *required, fint *provided, fint *ierr)
{
	int p = MPI_THREAD_SINGLE, rc = MPI_Init_thread(NULL, NULL, *required, &p);
	*provided = p;
	fret(ierr, rc);
}
IVS_F_EXPORT(f_init_thread, init_thread, INIT_THREAD, Init_thread)

static void f_finalize(fint *ierr) { fret(ierr, MPI_Finalize()); }
IVS_F_EXPORT(f_finalize, finalize, FINALIZE, Finalize)

/* Calls taking one request by reference: MPI_Start, MPI_Request_free, MPI_Cancel. */
#define F_REQ_OP(lower, UPPER, Camel)                     \
	static void f_##lower(fint *req, fint *ierr)          \
	{                                                     \
		MPI_Request was = F_REQ(*req), c = was;           \
		int rc = MPI_##Camel(&c);                         \
		freq_update(req, was, c);                         \
		fret(ierr, rc);                                   \
	}                                                     \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_REQ_OP(start, START, Start)
F_REQ_OP(request_free, REQUEST_FREE, Request_free)
F_REQ_OP(cancel, CANCEL, Cancel)

static void f_startall(fint *n, fint *reqs, fint *ierr)
{
	struct fvec v;
	int rc = fvec_open(&v, *n, reqs, NULL);
	if (rc == MPI_SUCCESS) {
		rc = MPI_Startall(*n, v.req);
		fvec_close(&v, *n, reqs, NULL, 0);
	}
	fret(ierr, rc);
}
IVS_F_EXPORT(f_startall, startall, STARTALL, Startall)

static void f_wait(fint *req, fint *status, fint *ierr)
{
	struct fst s;
	MPI_Request was = F_REQ(*req), c = was;
	int rc = MPI_Wait(&c, fst_open(&s, status));
	freq_update(req, was, c);
	fst_close(&s, rc == MPI_SUCCESS);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_wait, wait, WAIT, Wait)

static void f_test(fint *req, fint *flag, fint *status, fint *ierr)
{
	struct fst s;
	MPI_Request was = F_REQ(*req), c = was;
	int done = 0, rc = MPI_Test(&c, &done, fst_open(&s, status));
	freq_update(req, was, c);
	fst_close(&s, rc == MPI_SUCCESS && done);
	fset_logical(flag, done);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_test, test, TEST, Test)

static void f_request_get_status(fint *req, fint *flag, fint *status, fint *ierr)
{
	struct fst s;
	int done = 0, rc = MPI_Request_get_status(F_REQ(*req), &done, fst_open(&s, status));
	fst_close(&s, rc == MPI_SUCCESS && done);
	fset_logical(flag, done);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_request_get_status, request_get_status, REQUEST_GET_STATUS, Request_get_status)

static void f_waitall(fint *n, fint *reqs, fint *statuses, fint *ierr)
{
	struct fvec v;
	int rc = fvec_open(&v, *n, reqs, statuses);
	if (rc == MPI_SUCCESS) {
		rc = MPI_Waitall(*n, v.req, v.st);
		fvec_close(&v, *n, reqs, statuses, statuses_set(rc) ? *n : 0);
	}
	fret(ierr, rc);
}
IVS_F_EXPORT(f_waitall, waitall, WAITALL, Waitall)

static void f_testall(fint *n, fint *reqs, fint *flag, fint *statuses, fint *ierr)
{
	struct fvec v;
	int done = 0, rc = fvec_open(&v, *n, reqs, statuses);
	if (rc == MPI_SUCCESS) {
		rc = MPI_Testall(*n, v.req, &done, v.st);
		fvec_close(&v, *n, reqs, statuses, statuses_set(rc) && done ? *n : 0);
	}
	fset_logical(flag, done);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_testall, testall, TESTALL, Testall)

static void f_waitany(fint *n, fint *reqs, fint *index, fint *status, fint *ierr)
{
	struct fvec v;
	struct fst s;
	int i = MPI_UNDEFINED, rc = fvec_open(&v, *n, reqs, NULL);
	if (rc == MPI_SUCCESS) {
		rc = MPI_Waitany(*n, v.req, &i, fst_open(&s, status));
		fvec_close(&v, *n, reqs, NULL, 0);
		fst_close(&s, rc == MPI_SUCCESS);
	}
	*index = findex(i);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_waitany, waitany, WAITANY, Waitany)

static void f_testany(fint *n, fint *reqs, fint *index, fint *flag, fint *status, fint *ierr)
{
	struct fvec v;
	struct fst s;
	int i = MPI_UNDEFINED, done = 0, rc = fvec_open(&v, *n, reqs, NULL);
	if (rc == MPI_SUCCESS) {
		rc = MPI_Testany(*n, v.req, &i, &done, fst_open(&s, status));
		fvec_close(&v, *n, reqs, NULL, 0);
		fst_close(&s, rc == MPI_SUCCESS && done);
	}
	*index = findex(i);
	fset_logical(flag, done);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_testany, testany, TESTANY, Testany)

/* MPI_Waitsome and MPI_Testsome. */
#define F_SOME(lower, UPPER, Camel)                                                              \
	static void f_##lower(fint *n, fint *reqs, fint *outcount, fint *indices, fint *statuses, fint *ierr) \
	{                                                                                            \
		struct fvec v;                                                                           \
		int out = MPI_UNDEFINED, rc = fvec_open(&v, *n, reqs, statuses);                         \
		if (rc == MPI_SUCCESS) {                                                                 \
			rc = MPI_##Camel(*n, v.req, &out, indices, v.st);                                    \
			fvec_close(&v, *n, reqs, statuses, statuses_set(rc) && out > 0 ? out : 0);           \
		}                                                                                        \
		for (int i = 0; statuses_set(rc) && i < out; i++)                                        \
			indices[i] = findex(indices[i]);                                                     \
		*outcount = out;                                                                         \
		fret(ierr, rc);                                                                          \
	}                                                                                            \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_SOME(waitsome, WAITSOME, Waitsome)
F_SOME(testsome, TESTSOME, Testsome)

static void f_probe(fint *src, fint *tag, fint *comm, fint *status, fint *ierr)
{
	struct fst s;
	int rc = MPI_Probe(*src, *tag, F_COMM(comm), fst_open(&s, status));
	fst_close(&s, rc == MPI_SUCCESS);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_probe, probe, PROBE, Probe)

static void f_iprobe(fint *src, fint *tag, fint *comm, fint *flag, fint *status, fint *ierr)
{
	struct fst s;
	int found = 0, rc = MPI_Iprobe(*src, *tag, F_COMM(comm), &found, fst_open(&s, status));
	fst_close(&s, rc == MPI_SUCCESS && found);
	fset_logical(flag, found);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_iprobe, iprobe, IPROBE, Iprobe)

static void f_mprobe(fint *src, fint *tag, fint *comm, fint *msg, fint *status, fint *ierr)
{
	struct fst s;
	MPI_Message m = MPI_MESSAGE_NULL;
	int rc = MPI_Mprobe(*src, *tag, F_COMM(comm), &m, fst_open(&s, status));
	if (rc == MPI_SUCCESS)
		*msg = C_MSG(m);
	fst_close(&s, rc == MPI_SUCCESS);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_mprobe, mprobe, MPROBE, Mprobe)

static void f_improbe(fint *src, fint *tag, fint *comm, fint *flag, fint *msg, fint *status, fint *ierr)
{
	struct fst s;
	MPI_Message m = MPI_MESSAGE_NULL;
	int found = 0, rc = MPI_Improbe(*src, *tag, F_COMM(comm), &found, &m, fst_open(&s, status));
	if (rc == MPI_SUCCESS && found)
		*msg = C_MSG(m);
	fst_close(&s, rc == MPI_SUCCESS && found);
	fset_logical(flag, found);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_improbe, improbe, IMPROBE, Improbe)

static void f_barrier(fint *comm, fint *ierr) { fret(ierr, MPI_Barrier(F_COMM(comm))); }
IVS_F_EXPORT(f_barrier, barrier, BARRIER, Barrier)

/* ---- communicator and datatype life cycle ---- */

static void fcomm_out(fint *newcomm, MPI_Comm c, int rc, fint *ierr)
{
	if (rc == MPI_SUCCESS)
		*newcomm = C_COMM(c);
	fret(ierr, rc);
}

static void f_comm_dup(fint *comm, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Comm_dup(F_COMM(comm), &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_comm_dup, comm_dup, COMM_DUP, Comm_dup)

static void f_comm_dup_with_info(fint *comm, fint *info, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Comm_dup_with_info(F_COMM(comm), F_INFO(info), &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_comm_dup_with_info, comm_dup_with_info, COMM_DUP_WITH_INFO, Comm_dup_with_info)

static void f_comm_split(fint *comm, fint *color, fint *key, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Comm_split(F_COMM(comm), *color, *key, &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_comm_split, comm_split, COMM_SPLIT, Comm_split)

static void f_comm_split_type(fint *comm, fint *type, fint *key, fint *info, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Comm_split_type(F_COMM(comm), *type, *key, F_INFO(info), &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_comm_split_type, comm_split_type, COMM_SPLIT_TYPE, Comm_split_type)

static void f_comm_create(fint *comm, fint *group, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Comm_create(F_COMM(comm), F_GROUP(group), &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_comm_create, comm_create, COMM_CREATE, Comm_create)

static void f_comm_create_group(fint *comm, fint *group, fint *tag, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Comm_create_group(F_COMM(comm), F_GROUP(group), *tag, &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_comm_create_group, comm_create_group, COMM_CREATE_GROUP, Comm_create_group)

/* MPI_Comm_idup (comm.c: its parent's collectives are called blocking from then on). Open MPI
 * makes the new communicator at once and issues its Fortran handle in the call (as its own
 * binding does); MPICH writes the new handle when the request completes, so the program's own
 * variable must receive it (MPICH's f08 handle is the C handle). */
#if defined(OPEN_MPI)
static void f_comm_idup(fint *comm, fint *newcomm, fint *req, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	MPI_Request c = MPI_REQUEST_NULL;
	int rc = MPI_Comm_idup(F_COMM(comm), &n, &c);
	if (rc == MPI_SUCCESS) {
		*newcomm = C_COMM(n);
		*req = C_REQ(c);
	}
	fret(ierr, rc);
}
#else
static void f_comm_idup(fint *comm, fint *newcomm, fint *req, fint *ierr)
{
	fret(ierr, MPI_Comm_idup(F_COMM(comm), (MPI_Comm *)newcomm, (MPI_Request *)req));
}

#if MPI_VERSION >= 4
static void f_comm_idup_with_info(fint *comm, fint *info, fint *newcomm, fint *req, fint *ierr)
{
	fret(ierr, MPI_Comm_idup_with_info(F_COMM(comm), F_INFO(info), (MPI_Comm *)newcomm, (MPI_Request *)req));
}
IVS_F_EXPORT(f_comm_idup_with_info, comm_idup_with_info, COMM_IDUP_WITH_INFO, Comm_idup_with_info)
#endif
#endif
IVS_F_EXPORT(f_comm_idup, comm_idup, COMM_IDUP, Comm_idup)

static void f_intercomm_merge(fint *comm, fint *high, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Intercomm_merge(F_COMM(comm), flogical(high), &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_intercomm_merge, intercomm_merge, INTERCOMM_MERGE, Intercomm_merge)

static void f_intercomm_create(fint *local, fint *local_leader, fint *peer, fint *remote_leader, fint *tag,
                               fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Intercomm_create(F_COMM(local), *local_leader, F_COMM(peer), *remote_leader, *tag, &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_intercomm_create, intercomm_create, INTERCOMM_CREATE, Intercomm_create)

static void f_cart_create(fint *comm, fint *ndims, fint *dims, fint *periods, fint *reorder, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int *p = flogicals(*ndims, periods);
	int rc = p ? MPI_Cart_create(F_COMM(comm), *ndims, dims, p, flogical(reorder), &n) : MPI_ERR_NO_MEM;
	free(p);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_cart_create, cart_create, CART_CREATE, Cart_create)

static void f_cart_sub(fint *comm, fint *remain, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL, c = F_COMM(comm);
	int nd = 0, rc = PMPI_Cartdim_get(c, &nd);
	int *r = rc == MPI_SUCCESS ? flogicals(nd, remain) : NULL;
	if (rc == MPI_SUCCESS)
		rc = r ? MPI_Cart_sub(c, r, &n) : MPI_ERR_NO_MEM;
	free(r);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_cart_sub, cart_sub, CART_SUB, Cart_sub)

static void f_graph_create(fint *comm, fint *nnodes, fint *index, fint *edges, fint *reorder, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Graph_create(F_COMM(comm), *nnodes, index, edges, flogical(reorder), &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_graph_create, graph_create, GRAPH_CREATE, Graph_create)

static void f_dist_graph_create(fint *comm, fint *nn, fint *sources, fint *degrees, fint *dests, fint *weights,
                                fint *info, fint *reorder, fint *newcomm, fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Dist_graph_create(F_COMM(comm), *nn, sources, degrees, dests, fweights(weights), F_INFO(info),
	                               flogical(reorder), &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_dist_graph_create, dist_graph_create, DIST_GRAPH_CREATE, Dist_graph_create)

static void f_dist_graph_create_adjacent(fint *comm, fint *indeg, fint *sources, fint *sweights, fint *outdeg,
                                         fint *dests, fint *dweights, fint *info, fint *reorder, fint *newcomm,
                                         fint *ierr)
{
	MPI_Comm n = MPI_COMM_NULL;
	int rc = MPI_Dist_graph_create_adjacent(F_COMM(comm), *indeg, sources, fweights(sweights), *outdeg, dests,
	                                        fweights(dweights), F_INFO(info), flogical(reorder), &n);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_dist_graph_create_adjacent, dist_graph_create_adjacent, DIST_GRAPH_CREATE_ADJACENT,
             Dist_graph_create_adjacent)

/* MPI_Comm_free and MPI_Comm_disconnect. */
/* A call that ends a handle of C type T given by reference (MPI_Comm_free, MPI_Type_free,
 * MPI_Win_free, MPI_File_close ...): the Fortran handle receives the library's null handle. */
#define F_HANDLE_END(lower, UPPER, Camel, T, f2c, c2f)    \
	static void f_##lower(fint *h, fint *ierr)            \
	{                                                     \
		T c = f2c(h);                                     \
		int rc = MPI_##Camel(&c);                         \
		if (rc == MPI_SUCCESS)                            \
			*h = c2f(c);                                  \
		fret(ierr, rc);                                   \
	}                                                     \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_HANDLE_END(comm_free, COMM_FREE, Comm_free, MPI_Comm, F_COMM, C_COMM)
F_HANDLE_END(comm_disconnect, COMM_DISCONNECT, Comm_disconnect, MPI_Comm, F_COMM, C_COMM)
F_HANDLE_END(type_free, TYPE_FREE, Type_free, MPI_Datatype, F_TYPE, C_TYPE)

/* ---- windows: creation, fences and MPI_Win_free pass a gate (gate.c) ---- */

static void fwin_out(fint *win, MPI_Win w, int rc, fint *ierr)
{
	if (rc == MPI_SUCCESS)
		*win = C_WIN(w);
	fret(ierr, rc);
}

/* MPI_Win_allocate and MPI_Win_allocate_shared; baseptr: an INTEGER(KIND=MPI_ADDRESS_KIND) or
 * a TYPE(C_PTR) that receives the address. */
#define F_WIN_ALLOCATE(lower, UPPER, Camel)                                                                      \
	static void f_##lower(MPI_Aint *size, fint *disp, fint *info, fint *comm, void *baseptr, fint *win, fint *ierr) \
	{                                                                                                            \
		MPI_Win w = MPI_WIN_NULL;                                                                                \
		int rc = MPI_##Camel(*size, *disp, F_INFO(info), F_COMM(comm), baseptr, &w);                            \
		fwin_out(win, w, rc, ierr);                                                                              \
	}                                                                                                            \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_WIN_ALLOCATE(win_allocate, WIN_ALLOCATE, Win_allocate)
F_WIN_ALLOCATE(win_allocate_shared, WIN_ALLOCATE_SHARED, Win_allocate_shared)

#if defined(MPICH) && MPI_VERSION >= 4
/* MPICH's mpi_f08 forms with an INTEGER(MPI_ADDRESS_KIND) displacement unit
 * (MPI_Win_allocate_f08_large ...), which call PMPI_Win_allocate_c directly: the same entry
 * points with the large-count C routines. (Its MPI_Win_create_f08ts_large reaches MPI_Win_create_c
 * itself.) */
#define F_WIN_ALLOCATE_LARGE(lower, Camel)                                                                   \
	static void f_##lower##_large(MPI_Aint *size, MPI_Aint *disp, fint *info, fint *comm, void *baseptr,       \
	                              fint *win, fint *ierr)                                                     \
	{                                                                                                        \
		MPI_Win w = MPI_WIN_NULL;                                                                            \
		int rc = MPI_##Camel##_c(*size, *disp, F_INFO(info), F_COMM(comm), baseptr, &w);                    \
		fwin_out(win, w, rc, ierr);                                                                          \
	}                                                                                                        \
	IVS_F_ALIAS(f_##lower##_large, mpi_##lower##_f08_large_) IVS_F_ALIAS(f_##lower##_large, pmpir_##lower##_f08_large_)
F_WIN_ALLOCATE_LARGE(win_allocate, Win_allocate)
F_WIN_ALLOCATE_LARGE(win_allocate_shared, Win_allocate_shared)
#endif

static void f_win_create_dynamic(fint *info, fint *comm, fint *win, fint *ierr)
{
	MPI_Win w = MPI_WIN_NULL;
	int rc = MPI_Win_create_dynamic(F_INFO(info), F_COMM(comm), &w);
	fwin_out(win, w, rc, ierr);
}
IVS_F_EXPORT(f_win_create_dynamic, win_create_dynamic, WIN_CREATE_DYNAMIC, Win_create_dynamic)

static void f_win_fence(fint *assertion, fint *win, fint *ierr) { fret(ierr, MPI_Win_fence(*assertion, F_WIN(win))); }
IVS_F_EXPORT(f_win_fence, win_fence, WIN_FENCE, Win_fence)

F_HANDLE_END(win_free, WIN_FREE, Win_free, MPI_Win, F_WIN, C_WIN)

/* ---- files: MPI-IO's collective calls pass a gate (gate.c) ---- */

#define F_FILE(f) PMPI_File_f2c(*(f))
#define C_FILE(c) PMPI_File_c2f(c)

/* A Fortran string argument as a C string, as the library reads it: leading and trailing blanks
 * dropped (Open MPI's bindings, and MPICH's mpi_f08, MPIR_Fortran_string_f2c, whose entry points
 * are the only ones here for MPICH). NULL when out of memory. Its hidden length is read as an
 * int, the low half of gfortran's size_t: Open MPI's mpi_f08 passes an INTEGER by value. */
static char *fstr(const char *s, int n)
{
	size_t len = n > 0 ? (size_t)n : 0;
	while (len > 0 && *s == ' ') {
		s++;
		len--;
	}
	while (len > 0 && s[len - 1] == ' ')
		len--;
	char *c = malloc(len + 1);
	if (c) {
		memcpy(c, s, len);
		c[len] = 0;
	}
	return c;
}

static void f_file_open(fint *comm, const char *name, fint *amode, fint *info, fint *fh, fint *ierr, int name_len)
{
	char *c = fstr(name, name_len);
	MPI_File f = MPI_FILE_NULL;
	int rc = c ? MPI_File_open(F_COMM(comm), c, *amode, F_INFO(info), &f) : MPI_ERR_NO_MEM;
	free(c);
	if (rc == MPI_SUCCESS)
		*fh = C_FILE(f);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_file_open, file_open, FILE_OPEN, File_open)

F_HANDLE_END(file_close, FILE_CLOSE, File_close, MPI_File, F_FILE, C_FILE)

#if defined(MPICH) && MPI_VERSION >= 4
/* MPI-4's communicator creation from groups (MPICH's mpi_f08 calls PMPI_ directly; its mpif.h
 * and use mpi reach the C functions). */
static void f_comm_create_from_group(fint *group, const char *tag, fint *info, fint *eh, fint *newcomm, fint *ierr,
                                     int tag_len)
{
	char *c = fstr(tag, tag_len);
	MPI_Comm n = MPI_COMM_NULL;
	int rc = c ? MPI_Comm_create_from_group(F_GROUP(group), c, F_INFO(info), (MPI_Errhandler)*eh, &n) : MPI_ERR_NO_MEM;
	free(c);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_comm_create_from_group, comm_create_from_group, COMM_CREATE_FROM_GROUP, Comm_create_from_group)

static void f_intercomm_create_from_groups(fint *local, fint *local_leader, fint *remote, fint *remote_leader,
                                           const char *tag, fint *info, fint *eh, fint *newcomm, fint *ierr,
                                           int tag_len)
{
	char *c = fstr(tag, tag_len);
	MPI_Comm n = MPI_COMM_NULL;
	int rc = c ? MPI_Intercomm_create_from_groups(F_GROUP(local), *local_leader, F_GROUP(remote), *remote_leader, c,
	                                              F_INFO(info), (MPI_Errhandler)*eh, &n)
	           : MPI_ERR_NO_MEM;
	free(c);
	fcomm_out(newcomm, n, rc, ierr);
}
IVS_F_EXPORT(f_intercomm_create_from_groups, intercomm_create_from_groups, INTERCOMM_CREATE_FROM_GROUPS,
             Intercomm_create_from_groups)
#endif

static void f_file_set_view(fint *fh, MPI_Offset *disp, fint *etype, fint *ftype, const char *rep, fint *info,
                            fint *ierr, int rep_len)
{
	char *c = fstr(rep, rep_len);
	int rc = c ? MPI_File_set_view(F_FILE(fh), *disp, F_TYPE(etype), F_TYPE(ftype), c, F_INFO(info)) : MPI_ERR_NO_MEM;
	free(c);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_file_set_view, file_set_view, FILE_SET_VIEW, File_set_view)

/* MPI_File_set_size and MPI_File_preallocate */
#define F_FILE_SIZE(lower, UPPER, Camel)                                                                     \
	static void f_##lower(fint *fh, MPI_Offset *size, fint *ierr) { fret(ierr, MPI_##Camel(F_FILE(fh), *size)); } \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_FILE_SIZE(file_set_size, FILE_SET_SIZE, File_set_size)
F_FILE_SIZE(file_preallocate, FILE_PREALLOCATE, File_preallocate)

static void f_file_sync(fint *fh, fint *ierr) { fret(ierr, MPI_File_sync(F_FILE(fh))); }
IVS_F_EXPORT(f_file_sync, file_sync, FILE_SYNC, File_sync)

static void f_file_set_atomicity(fint *fh, fint *flag, fint *ierr)
{
	fret(ierr, MPI_File_set_atomicity(F_FILE(fh), *flag != 0));
}
IVS_F_EXPORT(f_file_set_atomicity, file_set_atomicity, FILE_SET_ATOMICITY, File_set_atomicity)

static void f_file_set_info(fint *fh, fint *info, fint *ierr) { fret(ierr, MPI_File_set_info(F_FILE(fh), F_INFO(info))); }
IVS_F_EXPORT(f_file_set_info, file_set_info, FILE_SET_INFO, File_set_info)

static void f_file_seek_shared(fint *fh, MPI_Offset *off, fint *whence, fint *ierr)
{
	fret(ierr, MPI_File_seek_shared(F_FILE(fh), *off, *whence));
}
IVS_F_EXPORT(f_file_seek_shared, file_seek_shared, FILE_SEEK_SHARED, File_seek_shared)

/* Active-target synchronisation by groups: the pairwise gate of gate.c. */
static void f_win_post(fint *group, fint *assertion, fint *win, fint *ierr)
{
	fret(ierr, MPI_Win_post(F_GROUP(group), *assertion, F_WIN(win)));
}
IVS_F_EXPORT(f_win_post, win_post, WIN_POST, Win_post)

static void f_win_start(fint *group, fint *assertion, fint *win, fint *ierr)
{
	fret(ierr, MPI_Win_start(F_GROUP(group), *assertion, F_WIN(win)));
}
IVS_F_EXPORT(f_win_start, win_start, WIN_START, Win_start)

static void f_win_complete(fint *win, fint *ierr) { fret(ierr, MPI_Win_complete(F_WIN(win))); }
IVS_F_EXPORT(f_win_complete, win_complete, WIN_COMPLETE, Win_complete)

static void f_win_wait(fint *win, fint *ierr) { fret(ierr, MPI_Win_wait(F_WIN(win))); }
IVS_F_EXPORT(f_win_wait, win_wait, WIN_WAIT, Win_wait)

static void f_win_test(fint *win, fint *flag, fint *ierr)
{
	int done = 0, rc = MPI_Win_test(F_WIN(win), &done);
	if (rc == MPI_SUCCESS)
		fset_logical(flag, done);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_win_test, win_test, WIN_TEST, Win_test)

/* Dynamic processes (comm.c): MPI_Comm_spawn, _spawn_multiple, MPI_Comm_accept and _connect
 * pass comm's gate, then run the library's own Fortran binding with the arguments as they came,
 * hidden string lengths included (passed on as the same 8 bytes, whatever their width in the
 * binding), so its conversions of command lines, argv arrays, MPI_ARGV_NULL and
 * MPI_ERRCODES_IGNORE stay the library's. Open MPI: ompi_xxx_f, which calls PMPI_Comm_spawn, not
 * the shim's; MPICH: mpi_xxx_f08_, which calls PMPI_ too (its mpif.h and `use mpi` bindings
 * reach MPI_Comm_spawn itself). The arguments stand in the same places in both. */
#if defined(OPEN_MPI)
#define F_LIB_NAME(lower) "ompi_" #lower "_f"
#else
#define F_LIB_NAME(lower) "mpi_" #lower "_f08_"
#endif
/* The library's own routine name, found once after the shim in the lookup order (a race of
 * two threads finds the same address). NULL where the shim cannot see it: a Fortran MPI library
 * the program loaded with dlopen(RTLD_LOCAL). */
static void *f_lib(void **cache, const char *name)
{
	void *f = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
	if (!f && (f = dlsym(RTLD_NEXT, name)))
		__atomic_store_n(cache, f, __ATOMIC_RELEASE);
	return f;
}

/* ... and what a call does without it: the error, raised on comm as the library would. */
static int f_lib_missing(const char *name, MPI_Comm comm)
{
	fprintf(stderr, "ivshim: rank %d: the MPI library's Fortran routine %s is not visible to the shim (a Fortran MPI "
	                "library loaded with RTLD_LOCAL?): the call fails with MPI_ERR_INTERN\n",
	        ivs.world_rank, name);
	PMPI_Comm_call_errhandler(comm, MPI_ERR_INTERN);
	return MPI_ERR_INTERN;
}

#define F_DYN(lower, UPPER, Camel, params, comm, args)                                 \
	static void f_##lower params                                                      \
	{                                                                                 \
		static void *next;                                                            \
		void (*lib) params = (void (*) params)f_lib(&next, F_LIB_NAME(lower));         \
		if (!lib) {                                                                   \
			fret(ierr, f_lib_missing(F_LIB_NAME(lower), F_COMM(comm)));               \
			return;                                                                   \
		}                                                                             \
		ivs_gate_intra(F_COMM(comm));                                                 \
		lib args;                                                                     \
	}                                                                                 \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_DYN(comm_spawn, COMM_SPAWN, Comm_spawn,
      (char *cmd, char *argv, fint *maxprocs, fint *info, fint *root, fint *comm, fint *inter, fint *errcodes,
       fint *ierr, size_t cmd_len, size_t argv_len),
      comm, (cmd, argv, maxprocs, info, root, comm, inter, errcodes, ierr, cmd_len, argv_len))
F_DYN(comm_spawn_multiple, COMM_SPAWN_MULTIPLE, Comm_spawn_multiple,
      (fint *count, char *cmds, char *argvs, fint *maxprocs, fint *infos, fint *root, fint *comm, fint *inter,
       fint *errcodes, fint *ierr, size_t cmds_len, size_t argvs_len),
      comm, (count, cmds, argvs, maxprocs, infos, root, comm, inter, errcodes, ierr, cmds_len, argvs_len))
F_DYN(comm_accept, COMM_ACCEPT, Comm_accept,
      (char *port, fint *info, fint *root, fint *comm, fint *newcomm, fint *ierr, size_t port_len), comm,
      (port, info, root, comm, newcomm, ierr, port_len))
F_DYN(comm_connect, COMM_CONNECT, Comm_connect,
      (char *port, fint *info, fint *root, fint *comm, fint *newcomm, fint *ierr, size_t port_len), comm,
      (port, info, root, comm, newcomm, ierr, port_len))

/* MPI_Buffer_detach: the shim's buffered copies in flight must drain first (p2p.c). The
 * mpif.h and `use mpi` bindings ignore the address argument (MPI-3.1 section 3.6); mpi_f08
 * passes a TYPE(C_PTR) that receives it (Open MPI: ompi_buffer_detach_f08; MPICH: its f08
 * routine, which has no choice buffer and so would call PMPI_Buffer_detach itself). */
static void buffer_detach(void **addr, fint *size, fint *ierr)
{
	void *buf = NULL;
	int n = 0, rc = MPI_Buffer_detach(&buf, &n);
	if (rc == MPI_SUCCESS) {
		*size = n;
		if (addr)
			*addr = buf;
	}
	fret(ierr, rc);
}

static void f08_buffer_detach(void **addr, fint *size, fint *ierr) { buffer_detach(addr, size, ierr); }
#if defined(OPEN_MPI)
static void f_buffer_detach(void *ignored, fint *size, fint *ierr)
{
	(void)ignored;
	buffer_detach(NULL, size, ierr);
}
IVS_F_EXPORT_F77(f_buffer_detach, buffer_detach, BUFFER_DETACH, Buffer_detach)
IVS_F_ALIAS(f08_buffer_detach, ompi_buffer_detach_f08)
#else
IVS_F_EXPORT(f08_buffer_detach, buffer_detach, BUFFER_DETACH, Buffer_detach)
#endif

/* ---- Open MPI only: routines with a choice buffer (MPICH's reach MPI_* themselves) ---- */
#if defined(OPEN_MPI)

static void f_win_create(void *base, MPI_Aint *size, fint *disp, fint *info, fint *comm, fint *win, fint *ierr)
{
	MPI_Win w = MPI_WIN_NULL;
	int rc = MPI_Win_create(base, *size, *disp, F_INFO(info), F_COMM(comm), &w);
	fwin_out(win, w, rc, ierr);
}
IVS_F_EXPORT(f_win_create, win_create, WIN_CREATE, Win_create)
/* `use mpi`'s TYPE(C_PTR) form of MPI_WIN_ALLOCATE(_SHARED) */
IVS_F_EXPORT(f_win_allocate, win_allocate_cptr, WIN_ALLOCATE_CPTR, Win_allocate_cptr)
IVS_F_EXPORT(f_win_allocate_shared, win_allocate_shared_cptr, WIN_ALLOCATE_SHARED_CPTR, Win_allocate_shared_cptr)

/* MPI_Send, MPI_Rsend, MPI_Ssend, MPI_Bsend. */
#define F_SEND(lower, UPPER, Camel)                                                                          \
	static void f_##lower(void *buf, fint *count, fint *type, fint *dest, fint *tag, fint *comm, fint *ierr) \
	{                                                                                                        \
		fret(ierr, MPI_##Camel(fbuf(buf), *count, F_TYPE(type), *dest, *tag, F_COMM(comm)));                 \
	}                                                                                                        \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_SEND(send, SEND, Send)
F_SEND(rsend, RSEND, Rsend)
F_SEND(ssend, SSEND, Ssend)
F_SEND(bsend, BSEND, Bsend)

static void f_buffer_attach(void *buf, fint *size, fint *ierr) { fret(ierr, MPI_Buffer_attach(buf, *size)); }
IVS_F_EXPORT(f_buffer_attach, buffer_attach, BUFFER_ATTACH, Buffer_attach)

/* Calls returning a new request for (buf, count, type, peer, tag, comm): the nonblocking sends
 * and receive, and the persistent inits. */
#define F_NEWREQ(lower, UPPER, Camel)                                                                  \
	static void f_##lower(void *buf, fint *count, fint *type, fint *peer, fint *tag, fint *comm, fint *req, \
	                      fint *ierr)                                                                  \
	{                                                                                                  \
		MPI_Request c = MPI_REQUEST_NULL;                                                              \
		int rc = MPI_##Camel(fbuf(buf), *count, F_TYPE(type), *peer, *tag, F_COMM(comm), &c);          \
		if (rc == MPI_SUCCESS)                                                                         \
			*req = C_REQ(c);                                                                           \
		fret(ierr, rc);                                                                                \
	}                                                                                                  \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_NEWREQ(isend, ISEND, Isend)
F_NEWREQ(irsend, IRSEND, Irsend)
F_NEWREQ(issend, ISSEND, Issend)
F_NEWREQ(ibsend, IBSEND, Ibsend)
F_NEWREQ(irecv, IRECV, Irecv)
F_NEWREQ(send_init, SEND_INIT, Send_init)
F_NEWREQ(rsend_init, RSEND_INIT, Rsend_init)
F_NEWREQ(ssend_init, SSEND_INIT, Ssend_init)
F_NEWREQ(bsend_init, BSEND_INIT, Bsend_init)
F_NEWREQ(recv_init, RECV_INIT, Recv_init)

static void f_recv(void *buf, fint *count, fint *type, fint *src, fint *tag, fint *comm, fint *status, fint *ierr)
{
	struct fst s;
	int rc = MPI_Recv(fbuf(buf), *count, F_TYPE(type), *src, *tag, F_COMM(comm), fst_open(&s, status));
	fst_close(&s, rc == MPI_SUCCESS);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_recv, recv, RECV, Recv)

static void f_mrecv(void *buf, fint *count, fint *type, fint *msg, fint *status, fint *ierr)
{
	struct fst s;
	MPI_Message was = F_MSG(*msg), m = was;
	int rc = MPI_Mrecv(fbuf(buf), *count, F_TYPE(type), &m, fst_open(&s, status));
	fmsg_update(msg, was, m);
	fst_close(&s, rc == MPI_SUCCESS);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_mrecv, mrecv, MRECV, Mrecv)

static void f_imrecv(void *buf, fint *count, fint *type, fint *msg, fint *req, fint *ierr)
{
	MPI_Message was = F_MSG(*msg), m = was;
	MPI_Request c = MPI_REQUEST_NULL;
	int rc = MPI_Imrecv(fbuf(buf), *count, F_TYPE(type), &m, &c);
	fmsg_update(msg, was, m);
	if (rc == MPI_SUCCESS)
		*req = C_REQ(c);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_imrecv, imrecv, IMRECV, Imrecv)

static void f_sendrecv(void *sbuf, fint *scount, fint *stype, fint *dest, fint *stag, void *rbuf, fint *rcount,
                       fint *rtype, fint *src, fint *rtag, fint *comm, fint *status, fint *ierr)
{
	struct fst s;
	int rc = MPI_Sendrecv(fbuf(sbuf), *scount, F_TYPE(stype), *dest, *stag, fbuf(rbuf), *rcount, F_TYPE(rtype),
	                      *src, *rtag, F_COMM(comm), fst_open(&s, status));
	fst_close(&s, rc == MPI_SUCCESS);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_sendrecv, sendrecv, SENDRECV, Sendrecv)

static void f_sendrecv_replace(void *buf, fint *count, fint *type, fint *dest, fint *stag, fint *src, fint *rtag,
                               fint *comm, fint *status, fint *ierr)
{
	struct fst s;
	int rc = MPI_Sendrecv_replace(fbuf(buf), *count, F_TYPE(type), *dest, *stag, *src, *rtag, F_COMM(comm),
	                              fst_open(&s, status));
	fst_close(&s, rc == MPI_SUCCESS);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_sendrecv_replace, sendrecv_replace, SENDRECV_REPLACE, Sendrecv_replace)

static void f_bcast(void *buf, fint *count, fint *type, fint *root, fint *comm, fint *ierr)
{
	fret(ierr, MPI_Bcast(fbuf(buf), *count, F_TYPE(type), *root, F_COMM(comm)));
}
IVS_F_EXPORT(f_bcast, bcast, BCAST, Bcast)

static void f_reduce(void *sbuf, void *rbuf, fint *count, fint *type, fint *op, fint *root, fint *comm, fint *ierr)
{
	fret(ierr, MPI_Reduce(fbuf(sbuf), fbuf(rbuf), *count, F_TYPE(type), F_OP(op), *root, F_COMM(comm)));
}
IVS_F_EXPORT(f_reduce, reduce, REDUCE, Reduce)

/* MPI_Allreduce and MPI_Reduce_scatter_block. */
#define F_ALLRED(lower, UPPER, Camel)                                                                       \
	static void f_##lower(void *sbuf, void *rbuf, fint *count, fint *type, fint *op, fint *comm, fint *ierr) \
	{                                                                                                       \
		fret(ierr, MPI_##Camel(fbuf(sbuf), fbuf(rbuf), *count, F_TYPE(type), F_OP(op), F_COMM(comm)));      \
	}                                                                                                       \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_ALLRED(allreduce, ALLREDUCE, Allreduce)
F_ALLRED(reduce_scatter_block, REDUCE_SCATTER_BLOCK, Reduce_scatter_block)

static void f_reduce_scatter(void *sbuf, void *rbuf, fint *counts, fint *type, fint *op, fint *comm, fint *ierr)
{
	fret(ierr, MPI_Reduce_scatter(fbuf(sbuf), fbuf(rbuf), counts, F_TYPE(type), F_OP(op), F_COMM(comm)));
}
IVS_F_EXPORT(f_reduce_scatter, reduce_scatter, REDUCE_SCATTER, Reduce_scatter)

/* MPI_Gather and MPI_Scatter. */
#define F_ROOTED(lower, UPPER, Camel)                                                                   \
	static void f_##lower(void *sbuf, fint *scount, fint *stype, void *rbuf, fint *rcount, fint *rtype, \
	                      fint *root, fint *comm, fint *ierr)                                           \
	{                                                                                                   \
		fret(ierr, MPI_##Camel(fbuf(sbuf), *scount, F_TYPE(stype), fbuf(rbuf), *rcount, F_TYPE(rtype), \
		                       *root, F_COMM(comm)));                                                   \
	}                                                                                                   \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_ROOTED(gather, GATHER, Gather)
F_ROOTED(scatter, SCATTER, Scatter)

/* MPI_Allgather and MPI_Alltoall. */
#define F_ALLTO(lower, UPPER, Camel)                                                                    \
	static void f_##lower(void *sbuf, fint *scount, fint *stype, void *rbuf, fint *rcount, fint *rtype, \
	                      fint *comm, fint *ierr)                                                       \
	{                                                                                                   \
		fret(ierr, MPI_##Camel(fbuf(sbuf), *scount, F_TYPE(stype), fbuf(rbuf), *rcount, F_TYPE(rtype), \
		                       F_COMM(comm)));                                                          \
	}                                                                                                   \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_ALLTO(allgather, ALLGATHER, Allgather)
F_ALLTO(alltoall, ALLTOALL, Alltoall)
F_ALLTO(neighbor_allgather, NEIGHBOR_ALLGATHER, Neighbor_allgather)
F_ALLTO(neighbor_alltoall, NEIGHBOR_ALLTOALL, Neighbor_alltoall)

/* The collectives only the library runs (coll_lib.c): reached from Fortran too, so a Fortran
 * rank waiting in one answers the shim's messages as a C rank does. */
F_ALLRED(scan, SCAN, Scan)
F_ALLRED(exscan, EXSCAN, Exscan)

/* MPI_Allgatherv and MPI_Neighbor_allgatherv. */
#define F_GATHERV_ALL(lower, UPPER, Camel)                                                                     \
	static void f_##lower(void *sbuf, fint *scount, fint *stype, void *rbuf, fint *rcounts, fint *displs,      \
	                      fint *rtype, fint *comm, fint *ierr)                                                 \
	{                                                                                                          \
		fret(ierr, MPI_##Camel(fbuf(sbuf), *scount, F_TYPE(stype), fbuf(rbuf), rcounts, displs, F_TYPE(rtype), \
		                       F_COMM(comm)));                                                                 \
	}                                                                                                          \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_GATHERV_ALL(allgatherv, ALLGATHERV, Allgatherv)
F_GATHERV_ALL(neighbor_allgatherv, NEIGHBOR_ALLGATHERV, Neighbor_allgatherv)

static void f_gatherv(void *sbuf, fint *scount, fint *stype, void *rbuf, fint *rcounts, fint *displs, fint *rtype,
                      fint *root, fint *comm, fint *ierr)
{
	fret(ierr, MPI_Gatherv(fbuf(sbuf), *scount, F_TYPE(stype), fbuf(rbuf), rcounts, displs, F_TYPE(rtype), *root,
	                       F_COMM(comm)));
}
IVS_F_EXPORT(f_gatherv, gatherv, GATHERV, Gatherv)

static void f_scatterv(void *sbuf, fint *scounts, fint *displs, fint *stype, void *rbuf, fint *rcount, fint *rtype,
                       fint *root, fint *comm, fint *ierr)
{
	fret(ierr, MPI_Scatterv(fbuf(sbuf), scounts, displs, F_TYPE(stype), fbuf(rbuf), *rcount, F_TYPE(rtype), *root,
	                        F_COMM(comm)));
}
IVS_F_EXPORT(f_scatterv, scatterv, SCATTERV, Scatterv)

/* MPI_Alltoallv and MPI_Neighbor_alltoallv. */
#define F_ALLTOV(lower, UPPER, Camel)                                                                          \
	static void f_##lower(void *sbuf, fint *scounts, fint *sdispls, fint *stype, void *rbuf, fint *rcounts,    \
	                      fint *rdispls, fint *rtype, fint *comm, fint *ierr)                                  \
	{                                                                                                          \
		fret(ierr, MPI_##Camel(fbuf(sbuf), scounts, sdispls, F_TYPE(stype), fbuf(rbuf), rcounts, rdispls,      \
		                       F_TYPE(rtype), F_COMM(comm)));                                                  \
	}                                                                                                          \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
F_ALLTOV(alltoallv, ALLTOALLV, Alltoallv)
F_ALLTOV(neighbor_alltoallv, NEIGHBOR_ALLTOALLV, Neighbor_alltoallv)

/* The datatype arrays of the w-variants: n Fortran handles as C ones (NULL: no memory). */
static MPI_Datatype *ftypes(int n, const fint *f)
{
	MPI_Datatype *t = malloc(sizeof *t * (size_t)(n > 0 ? n : 1));
	for (int i = 0; t && i < n; i++)
		t[i] = F_TYPE(&f[i]);
	return t;
}

static void f_alltoallw(void *sbuf, fint *scounts, fint *sdispls, fint *stypes, void *rbuf, fint *rcounts,
                        fint *rdispls, fint *rtypes, fint *comm, fint *ierr)
{
	MPI_Comm c = F_COMM(comm);
	int inter = 0, n = 0, rc = PMPI_Comm_test_inter(c, &inter);
	if (rc == MPI_SUCCESS)
		rc = inter ? PMPI_Comm_remote_size(c, &n) : PMPI_Comm_size(c, &n);
	/* with MPI_IN_PLACE the send arguments are ignored: a program may pass scalars there */
	void *s = fbuf(sbuf);
	MPI_Datatype *st = rc == MPI_SUCCESS ? ftypes(s == MPI_IN_PLACE ? 0 : n, stypes) : NULL;
	MPI_Datatype *rt = st ? ftypes(n, rtypes) : NULL;
	if (rc == MPI_SUCCESS)
		rc = rt ? MPI_Alltoallw(s, scounts, sdispls, st, fbuf(rbuf), rcounts, rdispls, rt, c) : MPI_ERR_NO_MEM;
	free(st);
	free(rt);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_alltoallw, alltoallw, ALLTOALLW, Alltoallw)

/* How many neighbours a process topology gives this rank, in and out. */
static int fneighbors(MPI_Comm c, int *in, int *out)
{
	int kind = MPI_UNDEFINED, rc = PMPI_Topo_test(c, &kind), me = 0, weighted = 0;
	if (rc != MPI_SUCCESS)
		return rc;
	switch (kind) {
	case MPI_CART:
		rc = PMPI_Cartdim_get(c, in);
		*in *= 2;
		*out = *in;
		return rc;
	case MPI_GRAPH:
		rc = PMPI_Comm_rank(c, &me);
		if (rc == MPI_SUCCESS)
			rc = PMPI_Graph_neighbors_count(c, me, in);
		*out = *in;
		return rc;
	case MPI_DIST_GRAPH:
		return PMPI_Dist_graph_neighbors_count(c, in, out, &weighted);
	default: /* not a topology: what the library would say, through the handler */
		return ivs_arg_error(c, MPI_ERR_TOPOLOGY);
	}
}

static void f_neighbor_alltoallw(void *sbuf, fint *scounts, MPI_Aint *sdispls, fint *stypes, void *rbuf,
                                 fint *rcounts, MPI_Aint *rdispls, fint *rtypes, fint *comm, fint *ierr)
{
	MPI_Comm c = F_COMM(comm);
	int in = 0, out = 0, rc = fneighbors(c, &in, &out);
	MPI_Datatype *st = rc == MPI_SUCCESS ? ftypes(out, stypes) : NULL, *rt = st ? ftypes(in, rtypes) : NULL;
	if (rc == MPI_SUCCESS)
		rc = rt ? MPI_Neighbor_alltoallw(fbuf(sbuf), scounts, sdispls, st, fbuf(rbuf), rcounts, rdispls, rt, c)
		        : MPI_ERR_NO_MEM;
	free(st);
	free(rt);
	fret(ierr, rc);
}
IVS_F_EXPORT(f_neighbor_alltoallw, neighbor_alltoallw, NEIGHBOR_ALLTOALLW, Neighbor_alltoallw)

/* MPI-IO's collective data access (gate.c): f_lower(params) calls MPI_Camel(the file, args...),
 * with the Fortran status last (F_FILE_ST) or without one (F_FILE_NOST). */
#define F_FILE_ST(lower, UPPER, Camel, params, ...)                                         \
	static void f_##lower params                                                            \
	{                                                                                       \
		struct fst s;                                                                       \
		int rc = MPI_##Camel(F_FILE(fh), __VA_ARGS__, fst_open(&s, status));                \
		fst_close(&s, rc == MPI_SUCCESS);                                                   \
		fret(ierr, rc);                                                                     \
	}                                                                                       \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)
#define F_FILE_NOST(lower, UPPER, Camel, params, ...)                                       \
	static void f_##lower params { fret(ierr, MPI_##Camel(F_FILE(fh), __VA_ARGS__)); }     \
	IVS_F_EXPORT(f_##lower, lower, UPPER, Camel)

/* MPI_File_read_all, _write_all, _read_ordered, _write_ordered */
#define F_FILE_RW(lower, UPPER, Camel)                                                                      \
	F_FILE_ST(lower, UPPER, Camel, (fint * fh, void *buf, fint *count, fint *type, fint *status, fint *ierr), \
	          fbuf(buf), *count, F_TYPE(type))
F_FILE_RW(file_read_all, FILE_READ_ALL, File_read_all)
F_FILE_RW(file_write_all, FILE_WRITE_ALL, File_write_all)
F_FILE_RW(file_read_ordered, FILE_READ_ORDERED, File_read_ordered)
F_FILE_RW(file_write_ordered, FILE_WRITE_ORDERED, File_write_ordered)
F_FILE_ST(file_read_at_all, FILE_READ_AT_ALL, File_read_at_all,
          (fint * fh, MPI_Offset *off, void *buf, fint *count, fint *type, fint *status, fint *ierr), *off, fbuf(buf),
          *count, F_TYPE(type))
F_FILE_ST(file_write_at_all, FILE_WRITE_AT_ALL, File_write_at_all,
          (fint * fh, MPI_Offset *off, void *buf, fint *count, fint *type, fint *status, fint *ierr), *off, fbuf(buf),
          *count, F_TYPE(type))

/* the split collectives' _begin */
#define F_FILE_BEGIN(lower, UPPER, Camel) \
	F_FILE_NOST(lower, UPPER, Camel, (fint * fh, void *buf, fint *count, fint *type, fint *ierr), fbuf(buf), *count, F_TYPE(type))
F_FILE_BEGIN(file_read_all_begin, FILE_READ_ALL_BEGIN, File_read_all_begin)
F_FILE_BEGIN(file_write_all_begin, FILE_WRITE_ALL_BEGIN, File_write_all_begin)
F_FILE_BEGIN(file_read_ordered_begin, FILE_READ_ORDERED_BEGIN, File_read_ordered_begin)
F_FILE_BEGIN(file_write_ordered_begin, FILE_WRITE_ORDERED_BEGIN, File_write_ordered_begin)
F_FILE_NOST(file_read_at_all_begin, FILE_READ_AT_ALL_BEGIN, File_read_at_all_begin,
            (fint * fh, MPI_Offset *off, void *buf, fint *count, fint *type, fint *ierr), *off, fbuf(buf), *count, F_TYPE(type))
F_FILE_NOST(file_write_at_all_begin, FILE_WRITE_AT_ALL_BEGIN, File_write_at_all_begin,
            (fint * fh, MPI_Offset *off, void *buf, fint *count, fint *type, fint *ierr), *off, fbuf(buf), *count, F_TYPE(type))

/* ... and their _end */
#define F_FILE_END(lower, UPPER, Camel) \
	F_FILE_ST(lower, UPPER, Camel, (fint * fh, void *buf, fint *status, fint *ierr), fbuf(buf))
F_FILE_END(file_read_all_end, FILE_READ_ALL_END, File_read_all_end)
F_FILE_END(file_write_all_end, FILE_WRITE_ALL_END, File_write_all_end)
F_FILE_END(file_read_at_all_end, FILE_READ_AT_ALL_END, File_read_at_all_end)
F_FILE_END(file_write_at_all_end, FILE_WRITE_AT_ALL_END, File_write_at_all_end)
F_FILE_END(file_read_ordered_end, FILE_READ_ORDERED_END, File_read_ordered_end)
F_FILE_END(file_write_ordered_end, FILE_WRITE_ORDERED_END, File_write_ordered_end)

#endif /* OPEN_MPI */
