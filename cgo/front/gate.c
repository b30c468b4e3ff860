/*
 * Gates: the library's blocking calls that are collective over a communicator and have no
 * nonblocking form the shim could wait for by polling: communicator creation (comm.c), window
 * creation, MPI_Win_fence and MPI_Win_free (here).
 *
 * Why. A rank blocked inside such a call answers no migration agreement (migrate.c,
 * "Collectives"), and a valid program could deadlock there: the rank ran one collective ahead of
 * a member on a communicator being switched (the root of an MPI_Bcast) and now waits in the call
 * for that member, which waits for the agreement's decision, which needs this rank's answer
 * (tests/model/collswitch.pml -DBLOCKING_Y finds it).
 *
 * What. On a communicator whose library collectives the shim calls nonblocking (ivs_comm.lib_nb:
 * recorded, no member at MPI_THREAD_MULTIPLE, in a job that may have an agreement or rings to
 * move), every member first waits in a nonblocking barrier there with the shim's polling wait,
 * answering the shim's messages, and enters the blocking call only once every member entered the
 * barrier. From then on no member waits for a decision before it reaches the call, so the call
 * completes (collswitch.pml -DBLOCKING_Y -DGATED_Y: proven free of deadlock). Whether a
 * communicator is gated is the same on every member (lib_nb is agreed when it is recorded), so
 * the barriers match. A window keeps a duplicate of its communicator for the gates of its
 * fences and its MPI_Win_free (the program may free the communicator first); it is made right
 * after the gate of the window's creation, so it needs no gate of its own.
 *
 * Cost: one barrier per gated call (communicator and window creation are rare; a fence pays one
 * more barrier than the library's own). Not gated: MPI_Comm_create_group (collective over a
 * group, not the communicator), MPI_Intercomm_create and calls on communicators the shim did not
 * record (intercommunicators: their other side may not be gated), active-target
 * synchronisation by groups (MPI_Win_start/complete/post/wait), collective file I/O, and every
 * call the shim does not interpose (README, "Migrate a VM").
 */
#include <stdlib.h>
#include "ivshim.h"

/* Whether comm's blocking collective calls pass a gate: the same on every member. */
static int gated(MPI_Comm comm)
{
	const struct ivs_comm *c = ivs.job_active ? ivs_comm_get(comm) : NULL;
	return c && c->lib_nb;
}

/* The gate itself. A failure leaves the call ungated; the call itself reports what is wrong. */
static void pass(MPI_Comm comm)
{
	MPI_Request r;
	if (PMPI_Ibarrier(comm, &r) == MPI_SUCCESS && ivs_net_wait(&r, MPI_STATUS_IGNORE) == MPI_SUCCESS)
		ivs.stats.gates++;
}

void ivs_gate(MPI_Comm comm)
{
	if (gated(comm))
		pass(comm);
}

/* ---- windows ---- */

struct gated_win {
	MPI_Win win;
	MPI_Comm comm; /* the duplicate the window's gates use */
	struct gated_win *next;
};
static struct gated_win *wins;

/* Gate the creation of a window on comm: returns the duplicate for its later gates, or
 * MPI_COMM_NULL where comm is not gated. */
static MPI_Comm win_gate(MPI_Comm comm)
{
	MPI_Comm dup = MPI_COMM_NULL;
	if (gated(comm)) {
		pass(comm);
		if (PMPI_Comm_dup(comm, &dup) != MPI_SUCCESS)
			dup = MPI_COMM_NULL;
	}
	return dup;
}

/* After the window's creation returned rc: remember it with its duplicate. */
static int win_made(int rc, MPI_Win *win, MPI_Comm dup)
{
	if (dup == MPI_COMM_NULL)
		return rc;
	struct gated_win *w = rc == MPI_SUCCESS ? malloc(sizeof *w) : NULL;
	if (!w) { /* no window, or no memory: its fences go ungated */
		PMPI_Comm_free(&dup);
		return rc;
	}
	*w = (struct gated_win){*win, dup, wins};
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
		MPI_Comm dup_ = win_gate(comm);                    \
		return win_made((call), (win), dup_);              \
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
		pass(w->comm);
	return PMPI_Win_fence(assertion, win);
}

int MPI_Win_free(MPI_Win *win)
{
	struct gated_win **p = wins ? win_find(*win) : NULL, *w = p ? *p : NULL;
	if (!w)
		return PMPI_Win_free(win);
	pass(w->comm);
	int rc = PMPI_Win_free(win);
	if (rc == MPI_SUCCESS) {
		*p = w->next;
		PMPI_Comm_free(&w->comm);
		free(w);
	}
	return rc;
}
