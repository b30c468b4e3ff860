/*
 * Progress in both directions between the shim and the MPI library.
 *
 * 1. The rings must move whenever the rank is inside any MPI call, interposed or not: a rank
 *    blocked in MPI_Comm_split, MPI_Allgatherv, MPI_Win_fence, collective I/O or the shim's own
 *    PMPI_Comm_split may owe a co-located peer the ACK of a synchronous send or ring space.
 * 2. The library must move whenever the rank waits inside the shim: its sends may be what a
 *    rank blocked in a library call waits for (ivs_wait_pause calls ivs_lib_wait_poke, which
 *    paces the pokes by the library's activity: see there).
 *
 * Choices evaluated for 1:
 *  - interpose every blocking call with its nonblocking variant plus a progress loop: hundreds
 *    of functions (I/O, RMA, topology, tools), and every library extension a program may call
 *    would still block the rings;
 *  - a helper thread that drains the rings while the rank is inside a library call: it cannot
 *    see calls the shim does not interpose (those are the problem), so it would have to run
 *    always and every shim queue would need a lock on the per-message path;
 *  - register the shim's ring progress with the library's own progress engine: every blocking
 *    library call spins in that engine, so the rings move in exactly the calls that need it and
 *    nothing is added to the per-message path. This is what the shim does:
 *      Open MPI: opal_progress_register() from libopen-pal (exported by Debian's 4.1 and every
 *        Open MPI since 1.x); opal_progress() runs the callback on every poll.
 *      MPICH ch4:ucx (and MPICH-ABI builds on UCX): MPICH 4.0 does not export its progress
 *        hooks (MPIR_Progress_hook_register is hidden, MPIX_Async_start arrived in 4.2), but its
 *        progress engine calls ucp_worker_progress() through the PLT on every poll. The shim
 *        defines ucp_worker_progress, runs the ring progress and calls UCX's own (RTLD_NEXT).
 *    A library offering neither (MPICH on libfabric, some Intel MPI builds) keeps the rings
 *    moving only inside the shim's calls; the rank then prints one warning at MPI_Init and
 *    blocking library calls are entered only when the shim has nothing pending
 *    (ivs_busy(), as for every library before this hook existed).
 *
 * The hook runs ring progress only (ivs_progress_rings): never a library call, never while the
 * shim's own engine is running (it is not re-entrant). It runs on the thread inside the library,
 * the only thread in MPI at that time (the data plane is off under MPI_THREAD_MULTIPLE).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include "ivshim.h"

static int hooked; /* the library's progress engine runs the rings */

int ivs_lib_hooked(void) { return hooked; }

/*
 * Pokes, and what they cost. A poke is a pass of the library's engine: microseconds with a TCP
 * transport to poll, and Open MPI's engine yields by itself when idle. Poking every 8 pauses made
 * collectives of 4 ranks on 2 CPUs 2-4x slower (make bench). So a waiting rank pokes often only
 * after the library was seen busy, and backs off while it is quiet:
 *  - busy: the library's engine ran other than in a poke (the hook sees every pass, whoever
 *    called it: the program, a library request the shim tests, a collective's network phase),
 *    or the shim handed a message to the library (ivs_lib_note);
 *  - after that, the next poke comes POKE_FIRST pauses later and every further one twice as late,
 *    down to one every POKE_MAX pauses: a library operation this rank owes progress to stalls
 *    at most that long, never forever.
 * Without a hook the library's activity is invisible: a poke every POKE_FIRST pauses. */
enum { POKE_FIRST = 8, POKE_MAX = 256 };
static unsigned lib_epoch, poke_epoch, poke_gap = POKE_MAX, poke_wait;
static int in_poke;

void ivs_lib_note(void) { lib_epoch++; }

/* The library's engine made a pass: activity unless it is our own poke. */
static inline void lib_seen(void)
{
	if (!in_poke)
		lib_epoch++;
}

/* One pass of the library's progress engine: a probe that takes nothing (both libraries
 * poll their engine in a probe that finds no message; MPICH short-cuts probes on
 * MPI_COMM_SELF, so world it is). */
void ivs_lib_poke(void)
{
	int flag;
	in_poke = 1;
	PMPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
	in_poke = 0;
}

/* Called by a waiting rank after each pause that gave the core away. */
void ivs_lib_wait_poke(void)
{
	if (lib_epoch != poke_epoch || !hooked) {
		poke_epoch = lib_epoch;
		poke_gap = POKE_FIRST;
	}
	if (++poke_wait < poke_gap)
		return;
	poke_wait = 0;
	if (poke_gap < POKE_MAX)
		poke_gap *= 2;
	ivs_lib_poke();
}

#if defined(OPEN_MPI)
static int opal_hook(void)
{
	lib_seen();
	return ivs_progress_rings();
}

void ivs_lib_hook_install(void)
{
	int (*reg)(int (*)(void)) = (int (*)(int (*)(void)))dlsym(RTLD_DEFAULT, "opal_progress_register");
	hooked = reg && reg(opal_hook) == 0;
}

void ivs_lib_hook_remove(void)
{
	int (*unreg)(int (*)(void)) = (int (*)(int (*)(void)))dlsym(RTLD_DEFAULT, "opal_progress_unregister");
	if (hooked && unreg)
		unreg(opal_hook);
	hooked = 0;
}

#else
/* UCX's entry point, interposed. Exported (exports.map); only the MPI library calls it. */
unsigned ucp_worker_progress(void *worker);

static unsigned (*ucx_progress)(void *worker);
static int ucx_armed;

unsigned ucp_worker_progress(void *worker)
{
	if (IVS_UNLIKELY(!ucx_progress)) {
		ucx_progress = (unsigned (*)(void *))dlsym(RTLD_NEXT, "ucp_worker_progress");
		if (!ucx_progress) {
			fprintf(stderr, "ivshim: ucp_worker_progress called but UCX is not loaded\n");
			return 0;
		}
	}
	unsigned n = ucx_progress(worker);
	if (ucx_armed) {
		lib_seen();
		n += (unsigned)ivs_progress_rings();
	}
	return n;
}

void ivs_lib_hook_install(void)
{
	/* The library runs on UCX if libucp is in the process and resolves to us first. */
	void *ucp = dlsym(RTLD_NEXT, "ucp_worker_progress");
	ucx_armed = ucp != NULL && dlsym(RTLD_DEFAULT, "ucp_worker_progress") == (void *)ucp_worker_progress;
	hooked = ucx_armed;
}

void ivs_lib_hook_remove(void)
{
	ucx_armed = 0;
	hooked = 0;
}
#endif
