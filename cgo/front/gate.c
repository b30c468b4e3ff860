/*
 * Gates: the library's blocking calls that are collective over a communicator and have no
 * nonblocking form the shim could wait for by polling: window creation, MPI_Win_fence and
 * MPI_Win_free.
 *
 * Why. A rank blocked inside such a call answers no migration agreement (migrate.c,
 * "Collectives"), and a valid program could deadlock there: the rank ran one collective ahead of
 * a member on a communicator being switched (the root of an MPI_Bcast) and now waits in the call
 * for that member, which waits for the agreement's decision, which needs this rank's answer
 * (tests/model/collswitch.pml -DBLOCKING_Y finds it).
 *
 * What. On a communicator whose library collectives the shim calls nonblocking (ivs_comm.lib_nb:
 * recorded, no member at MPI_THREAD_MULTIPLE, in a job that may have an agreement or rings to
 * move), every member first waits in a barrier among its members with the shim's polling wait,
 * answering the shim's messages, and enters the blocking call only once every member entered the
 * barrier. From then on no member waits for a decision before it reaches the call, so the call
 * completes (collswitch.pml -DBLOCKING_Y -DGATED_Y: proven free of deadlock). Whether a
 * communicator is gated is the same on every member (lib_nb is agreed when it is recorded), so
 * the barriers match. A window keeps its communicator's members for the gates of its fences and
 * its MPI_Win_free (the program may free the communicator first).
 *
 * Also gated: the blocking neighbourhood alltoalls the shim calls where the libraries'
 * nonblocking ones pair blocks wrong (coll_lib.c). Cost: one barrier per gated call (README:
 * an empty fence 1.5-1.75x the library's).
 * Communicator creation is not gated: with a gate before MPI_Comm_dup (an MPI_Ibarrier on the
 * communicator, or this point-to-point barrier) MPICH's comm/comm_idup_comm, a blocking
 * MPI_Comm_dup while MPI_Comm_idup requests are pending, hung on Open MPI (2 of 2 and 1 of 2
 * runs; 4 of 4 passed without a gate). Not gated either: MPI_Intercomm_create, calls on
 * communicators the shim did not record, active-target synchronisation by groups
 * (MPI_Win_start/complete/post/wait), collective file I/O, windows MPICH's mpi_f08 creates with
 * an INTEGER(MPI_ADDRESS_KIND) displacement unit (its _large routines call PMPI_Win_allocate_c
 * directly) and every call the shim does not interpose (README, "Migrate a VM"). A re-plan's own blocking PMPI_Comm_split (coll_area.c) is
 * gated by the set-up's polled exchange right before it.
 */
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

/* comm's record if its blocking collective calls pass a gate (the same on every member) */
static const struct ivs_comm *gated(MPI_Comm comm)
{
	const struct ivs_comm *c = ivs.job_active ? ivs_comm_get(comm) : NULL;
	return c && c->lib_nb ? c : NULL;
}

/* The gate itself: a barrier among n members (world ranks, this one the me-th) by empty
 * messages on the shim's own communicator (ivs_net_barrier, as the leaders' barrier), which
 * puts nothing of the shim's among the program's own collectives on its communicator. One tag serves every gate: members pass the
 * gates of communicators they share in the same order (else the blocking calls behind them
 * would deadlock without the shim too), and messages between two ranks do not overtake. */
enum { GATE_TAG = 1 };
static void pass(const int *world, int n, int me)
{
	int rc = ivs_net_barrier(ivs.gatecomm, world, n, me, GATE_TAG);
	if (rc != MPI_SUCCESS)
		ivs_fatal("the gate of a blocking collective call among %d members failed (%d)", n, rc);
	ivs.stats.gates++;
}

void ivs_gate(MPI_Comm comm)
{
	const struct ivs_comm *c = gated(comm);
	if (c)
		pass(c->world, c->size, c->rank);
}

/* ---- windows ---- */

struct gated_win {
	MPI_Win win;
	int *world, n, me; /* the members of its communicator */
	struct gated_win *next;
};
static struct gated_win *wins;

/* Gate the creation of a window on comm: returns the record for its later gates (without its
 * window yet), or NULL where comm is not gated. */
static struct gated_win *win_gate(MPI_Comm comm)
{
	const struct ivs_comm *c = gated(comm);
	if (!c)
		return NULL;
	pass(c->world, c->size, c->rank);
	struct gated_win *w = malloc(sizeof *w);
	int *world = malloc(sizeof(int) * (size_t)c->size);
	if (!w || !world)
		ivs_fatal("out of memory");
	memcpy(world, c->world, sizeof(int) * (size_t)c->size);
	*w = (struct gated_win){MPI_WIN_NULL, world, c->size, c->rank, NULL};
	return w;
}

/* After the window's creation returned rc: remember it. */
static int win_made(int rc, MPI_Win *win, struct gated_win *w)
{
	if (!w)
		return rc;
	if (rc != MPI_SUCCESS) {
		free(w->world);
		free(w);
		return rc;
	}
	w->win = *win;
	w->next = wins;
	wins = w;
	return rc;
}

static struct gated_win **win_find(MPI_Win win)
{
	struct gated_win **p = &wins;
	while (*p && (*p)->win != win)
		p = &(*p)->next;
	return p;
}

/* The body of a window's creation by call on comm into *win. */
#define WIN_CREATE(comm, win, call)                        \
	do {                                                   \
		struct gated_win *w_ = win_gate(comm);             \
		return win_made((call), (win), w_);                \
	} while (0)

int MPI_Win_create(void *base, MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_create(base, size, disp_unit, info, comm, win));
}

int MPI_Win_allocate(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm, void *baseptr, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_allocate(size, disp_unit, info, comm, baseptr, win));
}

int MPI_Win_allocate_shared(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm, void *baseptr, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_allocate_shared(size, disp_unit, info, comm, baseptr, win));
}

int MPI_Win_create_dynamic(MPI_Info info, MPI_Comm comm, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_create_dynamic(info, comm, win));
}

#if defined(MPICH) && MPI_VERSION >= 4
int MPI_Win_create_c(void *base, MPI_Aint size, MPI_Aint disp_unit, MPI_Info info, MPI_Comm comm, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_create_c(base, size, disp_unit, info, comm, win));
}

int MPI_Win_allocate_c(MPI_Aint size, MPI_Aint disp_unit, MPI_Info info, MPI_Comm comm, void *baseptr, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_allocate_c(size, disp_unit, info, comm, baseptr, win));
}

int MPI_Win_allocate_shared_c(MPI_Aint size, MPI_Aint disp_unit, MPI_Info info, MPI_Comm comm, void *baseptr,
                              MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_allocate_shared_c(size, disp_unit, info, comm, baseptr, win));
}
#endif

int MPI_Win_fence(int assertion, MPI_Win win)
{
	struct gated_win *w = wins ? *win_find(win) : NULL;
	if (w)
		pass(w->world, w->n, w->me);
	return PMPI_Win_fence(assertion, win);
}

int MPI_Win_free(MPI_Win *win)
{
	struct gated_win **p = wins ? win_find(*win) : NULL, *w = p ? *p : NULL;
	if (!w)
		return PMPI_Win_free(win);
	pass(w->world, w->n, w->me);
	MPI_Win was = *win;
	int rc = PMPI_Win_free(win);
	/* The library may have run the program's callbacks (attribute deletion, error handlers),
	 * which may have made or freed windows: look the record up again. */
	if (rc == MPI_SUCCESS && *(p = win_find(was))) {
		w = *p;
		*p = w->next;
		free(w->world);
		free(w);
	}
	return rc;
}
