/*
 * p2p_polls: how often one MPI_Testany or MPI_Testsome asks the MPI library, with four receives
 * pending. Every library call that tests or probes runs its progress engine (with
 * mpi_yield_when_idle a yield), so a polling loop pays per call: HPCC's RandomAccess tests four
 * MPI_ANY_SOURCE receives after every update, and a shim that asked the library once per
 * receive made it 4x slower. This program defines the library's PMPI_ test and probe entry
 * points itself (the shim's calls of them bind to the executable's definitions first) and counts
 * the calls that reach the library while it tests:
 *   - four receives from rank + size/2, on the other host with 2 hosts x 2 VMs (the library
 *     matches them; the shim wraps them);
 *   - four MPI_ANY_SOURCE receives (then satisfied by rank ^ 1, on the same host).
 * On average at most 1.5 such calls per test (the shim probes once for its wildcard receives,
 * or tests the library's requests once; now and then it polls its control messages). Without
 * the shim the library's MPI_Testany calls none of them, which passes the same checks.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include "p2p_check.h"

enum { NREQ = 4, TESTS = 2000, TAG_POLL = 7 };

static long lib_calls;

#define FORWARD(name, ...)                                                     \
    do {                                                                       \
        static int (*real)();                                                  \
        if (!real)                                                             \
            *(void **)&real = dlsym(RTLD_NEXT, #name);                         \
        lib_calls++;                                                           \
        return real(__VA_ARGS__);                                              \
    } while (0)

int PMPI_Test(MPI_Request *r, int *f, MPI_Status *st) { FORWARD(PMPI_Test, r, f, st); }
int PMPI_Testany(int n, MPI_Request *r, int *i, int *f, MPI_Status *st) { FORWARD(PMPI_Testany, n, r, i, f, st); }
int PMPI_Testsome(int n, MPI_Request *r, int *o, int *i, MPI_Status *st) { FORWARD(PMPI_Testsome, n, r, o, i, st); }
int PMPI_Testall(int n, MPI_Request *r, int *f, MPI_Status *st) { FORWARD(PMPI_Testall, n, r, f, st); }
int PMPI_Request_get_status(MPI_Request r, int *f, MPI_Status *st) { FORWARD(PMPI_Request_get_status, r, f, st); }
int PMPI_Improbe(int s, int t, MPI_Comm c, int *f, MPI_Message *m, MPI_Status *st) { FORWARD(PMPI_Improbe, s, t, c, f, m, st); }
int PMPI_Iprobe(int s, int t, MPI_Comm c, int *f, MPI_Status *st) { FORWARD(PMPI_Iprobe, s, t, c, f, st); }

/* Posts NREQ receives from src (a rank or MPI_ANY_SOURCE), tests them TESTS times with
 * Testany and Testsome in turn while nothing can arrive, then lets `to` send them. */
static void poll_case(const char *what, int src, int to, int from_of_mine)
{
    int bufs[NREQ], one = 1;
    MPI_Request rq[NREQ];
    for (int i = 0; i < NREQ; i++)
        MPI_Irecv(&bufs[i], 1, MPI_INT, src, TAG_POLL, MPI_COMM_WORLD, &rq[i]);
    long before = lib_calls, early = 0;
    for (int k = 0; k < TESTS; k++) {
        int idx, flag, out, idxs[NREQ];
        if (k % 2) {
            MPI_Testany(NREQ, rq, &idx, &flag, MPI_STATUS_IGNORE);
            early += flag && idx != MPI_UNDEFINED;
        } else {
            MPI_Testsome(NREQ, rq, &out, idxs, MPI_STATUSES_IGNORE);
            early += out > 0;
        }
    }
    double per = (double)(lib_calls - before) / TESTS;
    CHECK(!early, "%s: a receive completed before anything was sent to it", what);
    CHECK(per <= 1.5, "%s: %.2f library test or probe calls per MPI_Testany/Testsome with %d receives pending",
          what, per, NREQ);
    MPI_Barrier(MPI_COMM_WORLD); /* everyone has polled: now the messages */
    for (int i = 0; i < NREQ; i++)
        MPI_Send(&one, 1, MPI_INT, to, TAG_POLL, MPI_COMM_WORLD);
    MPI_Status st[NREQ];
    MPI_Waitall(NREQ, rq, st);
    for (int i = 0; i < NREQ; i++)
        CHECK(bufs[i] == 1 && st[i].MPI_SOURCE == from_of_mine, "%s: receive %d got %d from rank %d", what, i, bufs[i],
              st[i].MPI_SOURCE);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    /* With 2 hosts x 2 VMs, rank + size/2 is on the other host and rank ^ 1 on this one. */
    int n = chk.size, me = chk.rank;
    if (n % 2 == 0) {
        int far = (me + n / 2) % n;
        poll_case("receives from rank + size/2", far, far, far);
        poll_case("MPI_ANY_SOURCE receives", MPI_ANY_SOURCE, me ^ 1, me ^ 1);
    } else { /* everyone receives from the next rank */
        int next = (me + 1) % n, prev = (me + n - 1) % n;
        poll_case("receives from the next rank", next, prev, next);
        poll_case("MPI_ANY_SOURCE receives", MPI_ANY_SOURCE, prev, next);
    }
    return chk_finish("p2p_polls");
}
