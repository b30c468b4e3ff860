/*
 * p2p_progress: legal MPI programs that deadlock unless a rank's co-located traffic keeps moving
 * while it sits inside a library call the shim does not implement, and the library keeps
 * moving while a rank waits inside the shim; plus the ordering of probes against earlier
 * wildcard receives. Correct for any layout; the interesting layouts put the partners of a pair
 * in one host.
 *
 *  - pair_then(op): even rank e posts MPI_Irecv from e+1, calls the library operation op with
 *    everyone, then waits; e+1 MPI_Ssend's to e, then calls op. e is inside op while e+1 waits
 *    for e to match its synchronous send.
 *  - probe_chain: 0 Isend's 1 MiB to 1 and Probe's 2; 1 receives it and sends to 2; 2 passes a
 *    message on to 0. 0's Probe of 2 must keep pushing the 1 MiB into the ring.
 *  - scan_barrier: Scan on an odd/even split communicator, then Barrier on the world, many times.
 *  - probe_order: a wildcard receive posted before a specific-source probe owns the message.
 *  - freed_send: an MPI_Isend freed with MPI_Request_free right away still arrives.
 */
#include "p2p_check.h"

#define BIG (1 << 20)
#define TAG 17

enum op { OP_SPLIT, OP_ALLGATHERV, OP_SCAN, OP_EXSCAN, OP_ALLTOALLV, OP_COMM_CREATE, OP_WIN_FENCE, OP_REDUCE_SCATTER,
          OP_ALLTOALLW, OP_NEIGHBOR, OP_COUNT };
static const char *op_name[OP_COUNT] = {"Comm_split", "Allgatherv", "Scan", "Exscan", "Alltoallv", "Comm_create",
                                        "Win_fence", "Reduce_scatter", "Alltoallw", "Neighbor_alltoall"};

/* The library operation op, called by every rank of the world; checks its result. */
static void library_op(enum op op)
{
    int n = chk.size, me = chk.rank;
    int *counts = chk_alloc(sizeof(int) * (size_t)n), *displs = chk_alloc(sizeof(int) * (size_t)n);
    int *out = chk_alloc(sizeof(int) * (size_t)n * 2), *in = chk_alloc(sizeof(int) * (size_t)n * 2);
    for (int i = 0; i < n; i++) {
        counts[i] = 1;
        displs[i] = i;
        in[i] = me * 100 + i;
    }
    switch (op) {
    case OP_SPLIT: {
        MPI_Comm c;
        MPI_Comm_split(MPI_COMM_WORLD, me % 2, -me, &c);
        int r = -1;
        MPI_Comm_rank(c, &r);
        int want = 0;
        for (int i = me + 1; i < n; i++)
            want += i % 2 == me % 2;
        CHECK(r == want, "Comm_split: rank %d, expected %d", r, want);
        MPI_Comm_free(&c);
        break;
    }
    case OP_ALLGATHERV:
        MPI_Allgatherv(&me, 1, MPI_INT, out, counts, displs, MPI_INT, MPI_COMM_WORLD);
        for (int i = 0; i < n; i++)
            CHECK(out[i] == i, "Allgatherv: element %d is %d", i, out[i]);
        break;
    case OP_SCAN: {
        int s = -1;
        MPI_Scan(&me, &s, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        CHECK(s == me * (me + 1) / 2, "Scan: %d", s);
        break;
    }
    case OP_EXSCAN: {
        int s = -1;
        MPI_Exscan(&me, &s, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        CHECK(me == 0 || s == me * (me - 1) / 2, "Exscan: %d", s);
        break;
    }
    case OP_ALLTOALLV:
        MPI_Alltoallv(in, counts, displs, MPI_INT, out, counts, displs, MPI_INT, MPI_COMM_WORLD);
        for (int i = 0; i < n; i++)
            CHECK(out[i] == i * 100 + me, "Alltoallv: element %d is %d", i, out[i]);
        break;
    case OP_COMM_CREATE: {
        MPI_Group wg, g;
        MPI_Comm c;
        int first[1] = {0};
        MPI_Comm_group(MPI_COMM_WORLD, &wg);
        MPI_Group_excl(wg, 1, first, &g);
        MPI_Comm_create(MPI_COMM_WORLD, g, &c);
        CHECK((me == 0) == (c == MPI_COMM_NULL), "Comm_create: null communicator on rank %d: %d", me, c == MPI_COMM_NULL);
        if (c != MPI_COMM_NULL)
            MPI_Comm_free(&c);
        MPI_Group_free(&g);
        MPI_Group_free(&wg);
        break;
    }
    case OP_WIN_FENCE: {
        /* Only that the epoch completes is checked: Debian's MPICH 4.0.2 (ch4:ucx) puts into the
         * wrong rank's window even without the shim (a 3-rank ring of MPI_Put lands in the
         * origin's own window), so the value would test the library, not the shim. Open MPI 4.1
         * has no one-sided component over TCP between hosts: the window cannot be created, and
         * a barrier stands in for the fence (still a call the shim must not block). Open MPI's
         * component over TCP (osc/pt2pt) refuses MPI_THREAD_MULTIPLE, and a window creation that
         * fails on some ranks leaves the others inside it for good: with any rank at that level
         * no window is tried. */
        MPI_Win w;
        int *cell, rc = MPI_ERR_OTHER, ok, all = 0, multiple = 0;
#ifdef OMPI_MAJOR_VERSION
        int provided = MPI_THREAD_SINGLE;
        MPI_Query_thread(&provided);
        multiple = provided == MPI_THREAD_MULTIPLE;
        MPI_Allreduce(MPI_IN_PLACE, &multiple, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);
#endif
        if (!multiple) {
            MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
            rc = MPI_Win_allocate(sizeof *cell, sizeof *cell, MPI_INFO_NULL, MPI_COMM_WORLD, &cell, &w);
            MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
        }
        ok = rc == MPI_SUCCESS;
        MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
        if (all) {
            MPI_Win_fence(0, w);
            MPI_Put(&me, 1, MPI_INT, (me + 1) % n, 0, 1, MPI_INT, w);
            MPI_Win_fence(0, w);
        } else {
            MPI_Barrier(MPI_COMM_WORLD);
        }
        CHECK(1, "Win_fence");
        if (ok)
            MPI_Win_free(&w);
        break;
    }
    case OP_REDUCE_SCATTER: {
        int r = -1;
        MPI_Reduce_scatter(in, &r, counts, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        CHECK(r == 100 * n * (n - 1) / 2 + n * me, "Reduce_scatter: %d", r);
        break;
    }
    case OP_ALLTOALLW: {
        MPI_Datatype *types = chk_alloc(sizeof(MPI_Datatype) * (size_t)n);
        for (int i = 0; i < n; i++) {
            types[i] = MPI_INT;
            displs[i] = i * (int)sizeof(int); /* bytes */
        }
        MPI_Alltoallw(in, counts, displs, types, out, counts, displs, types, MPI_COMM_WORLD);
        for (int i = 0; i < n; i++)
            CHECK(out[i] == i * 100 + me, "Alltoallw: element %d is %d", i, out[i]);
        free(types);
        break;
    }
    case OP_NEIGHBOR: {
        /* a ring: each rank's neighbours are the ranks before and after it */
        MPI_Comm ring;
        int dims[1] = {n}, periods[1] = {1};
        MPI_Cart_create(MPI_COMM_WORLD, 1, dims, periods, 0, &ring);
        int before = (me + n - 1) % n, after = (me + 1) % n;
        int send[2] = {me * 10 + before, me * 10 + after}, got[2] = {-1, -1};
        MPI_Neighbor_alltoall(send, 1, MPI_INT, got, 1, MPI_INT, ring);
        CHECK(got[0] == before * 10 + me && got[1] == after * 10 + me, "Neighbor_alltoall: got %d %d", got[0], got[1]);
        MPI_Comm_free(&ring);
        break;
    }
    default:
        break;
    }
    free(counts);
    free(displs);
    free(out);
    free(in);
}

static void pair_then(enum op op)
{
    int me = chk.rank, peer = me ^ 1, v = -1, want = 1000 + op;
    MPI_Request rq = MPI_REQUEST_NULL;
    if (peer >= chk.size) {
        library_op(op);
        return;
    }
    if (me % 2 == 0) {
        MPI_Irecv(&v, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD, &rq);
        library_op(op);
        MPI_Wait(&rq, MPI_STATUS_IGNORE);
        CHECK(v == want, "Ssend then %s: received %d, expected %d", op_name[op], v, want);
    } else {
        MPI_Ssend(&want, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD);
        library_op(op);
    }
}

static void probe_chain(void)
{
    if (chk.size < 3)
        return;
    unsigned char *big = chk_alloc(BIG);
    int token = 7, got = -1;
    MPI_Status st;
    switch (chk.rank) {
    case 0: {
        MPI_Request rq;
        chk_fill(big, BIG, 99);
        MPI_Isend(big, BIG, MPI_BYTE, 1, TAG, MPI_COMM_WORLD, &rq);
        MPI_Probe(2, TAG, MPI_COMM_WORLD, &st);
        MPI_Recv(&got, 1, MPI_INT, 2, TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Wait(&rq, MPI_STATUS_IGNORE);
        CHECK(got == token, "probe chain: rank 0 received %d", got);
        break;
    }
    case 1:
        MPI_Recv(big, BIG, MPI_BYTE, 0, TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        CHECK(chk_verify(big, BIG, 99) == BIG, "probe chain: 1 MiB from rank 0 differs");
        MPI_Send(&token, 1, MPI_INT, 2, TAG, MPI_COMM_WORLD);
        break;
    case 2:
        MPI_Recv(&got, 1, MPI_INT, 1, TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(&got, 1, MPI_INT, 0, TAG, MPI_COMM_WORLD);
        break;
    }
    free(big);
}

static void scan_barrier(int rounds)
{
    MPI_Comm c;
    int me = chk.rank, bad = 0;
    MPI_Comm_split(MPI_COMM_WORLD, me % 2, me, &c);
    for (int i = 0; i < rounds; i++) {
        int s = -1, v = i + me;
        MPI_Scan(&v, &s, 1, MPI_INT, MPI_SUM, c);
        int want = 0;
        for (int r = me % 2; r <= me; r += 2)
            want += i + r;
        bad += s != want;
        MPI_Barrier(MPI_COMM_WORLD);
    }
    CHECK(bad == 0, "scan then barrier: %d of %d scans wrong", bad, rounds);
    MPI_Comm_free(&c);
}

/* Rank 0 posts a wildcard receive, then probes every other rank specifically until the
 * receive completes: each sender's one message belongs to the wildcard receive. */
static void probe_order(void)
{
    int me = chk.rank, v = -1;
    if (me == 0) {
        for (int src = 1; src < chk.size; src++) {
            MPI_Request rq;
            MPI_Status st;
            int done = 0, stolen = 0;
            MPI_Irecv(&v, 1, MPI_INT, MPI_ANY_SOURCE, TAG + src, MPI_COMM_WORLD, &rq);
            MPI_Send(&src, 1, MPI_INT, src, TAG, MPI_COMM_WORLD); /* go */
            while (!done) {
                int flag = 0;
                MPI_Iprobe(src, TAG + src, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
                stolen |= flag;
                MPI_Test(&rq, &done, &st);
            }
            CHECK(!stolen, "probe order: Iprobe(%d) saw the message a wildcard receive posted earlier owns", src);
            CHECK(v == src * 3 && st.MPI_SOURCE == src, "probe order: wildcard receive got %d from %d", v, st.MPI_SOURCE);
        }
    } else {
        int go, mine = me * 3;
        MPI_Recv(&go, 1, MPI_INT, 0, TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(&mine, 1, MPI_INT, 0, TAG + me, MPI_COMM_WORLD);
    }
}

static void freed_send(void)
{
    int me = chk.rank, peer = me ^ 1;
    if (peer >= chk.size)
        return;
    unsigned char *big = chk_alloc(BIG);
    if (me % 2 == 1) {
        MPI_Request rq;
        chk_fill(big, BIG, 5 + (uint64_t)me);
        MPI_Isend(big, BIG, MPI_BYTE, peer, TAG, MPI_COMM_WORLD, &rq);
        MPI_Request_free(&rq);
        /* the buffer may be reused only once the receiver confirmed */
        int ok;
        MPI_Recv(&ok, 1, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
        int ok = 1;
        MPI_Recv(big, BIG, MPI_BYTE, peer, TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        CHECK(chk_verify(big, BIG, 5 + (uint64_t)peer) == BIG, "freed send: 1 MiB from rank %d differs", peer);
        MPI_Send(&ok, 1, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD);
    }
    free(big);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    for (int op = 0; op < OP_COUNT; op++)
        pair_then((enum op)op);
    probe_chain();
    scan_barrier(300);
    probe_order();
    freed_send();
    return chk_finish("p2p_progress");
}
