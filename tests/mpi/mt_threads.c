/*
 * mt_threads: threads in MPI at once. A rank granted MPI_THREAD_MULTIPLE runs every lane in a
 * thread of its own, all at once; any other rank runs the lanes one after another (its thread
 * level comes from IVSHIM_TEST_THREAD, test_init.h, so one job mixes both). A lane has its own
 * communicator and, round by round: every rank sends every other rank a message (8 B to
 * 300 000 B, nonblocking, all at once), a ring shift by MPI_Sendrecv, an MPI_Allreduce and an
 * MPI_Bcast from a root that moves. Then every rank sends itself a message from a thread (where
 * it has threads) while its main thread waits for it in MPI_Probe with wildcards, as MPICH's
 * threads/pt2pt/sendselfth does. The checks are the same whatever the levels, so the report
 * is too (p2p_check.h). Run by tests/conformance (TestThreadMultiple).
 */
#include <pthread.h>
#include "p2p_check.h"

enum { LANES = 2, ROUNDS = 12, SELF_TAG = 7 };
static const int sizes[] = {8, 1000, 70000, 300000};

static MPI_Comm lanes[LANES], selfcomm;
static pthread_mutex_t chk_lock = PTHREAD_MUTEX_INITIALIZER;

/* CHECK for any thread: p2p_check.h's bookkeeping is not thread-safe */
#define MT_CHECK(cond, ...)                               \
    do {                                                  \
        pthread_mutex_lock(&chk_lock);                    \
        chk_check(!!(cond), __VA_ARGS__);                 \
        pthread_mutex_unlock(&chk_lock);                  \
    } while (0)

static uint64_t seed(int from, int to, int lane, int round)
{
    return ((uint64_t)from << 40) ^ ((uint64_t)to << 24) ^ ((uint64_t)lane << 16) ^ (uint64_t)round;
}

static void *lane(void *arg)
{
    int t = (int)(intptr_t)arg, me = chk.rank, n = chk.size;
    MPI_Comm comm = lanes[t];
    size_t max = (size_t)sizes[sizeof sizes / sizeof sizes[0] - 1];
    unsigned char *out = chk_alloc(max * (size_t)n), *in = chk_alloc(max * (size_t)n);
    MPI_Request *req = chk_alloc(sizeof(MPI_Request) * 2 * (size_t)n);
    MPI_Status *st = chk_alloc(sizeof(MPI_Status) * 2 * (size_t)n);
    for (int round = 0; round < ROUNDS; round++) {
        int len = sizes[(round + t) % (int)(sizeof sizes / sizeof sizes[0])], nr = 0;
        for (int q = 0; q < n; q++) {
            if (q == me)
                continue;
            MPI_Irecv(in + (size_t)q * max, len, MPI_BYTE, q, round, comm, &req[nr++]);
            chk_fill(out + (size_t)q * max, (size_t)len, seed(me, q, t, round));
            MPI_Isend(out + (size_t)q * max, len, MPI_BYTE, q, round, comm, &req[nr++]);
        }
        MPI_Waitall(nr, req, st);
        for (int q = 0, i = 0; q < n; q++) {
            if (q == me)
                continue;
            size_t bad = chk_verify(in + (size_t)q * max, (size_t)len, seed(q, me, t, round));
            int got = -1;
            MPI_Get_count(&st[i], MPI_BYTE, &got);
            MT_CHECK(bad == (size_t)len && got == len && st[i].MPI_SOURCE == q && st[i].MPI_TAG == round,
                     "lane %d round %d: %d bytes from rank %d: count %d, source %d, tag %d, first bad byte %zu",
                     t, round, len, q, got, st[i].MPI_SOURCE, st[i].MPI_TAG, bad);
            i += 2;
        }

        int right = (me + 1) % n, left = (me + n - 1) % n;
        chk_fill(out, (size_t)len, seed(me, right, t, round + ROUNDS));
        MPI_Sendrecv(out, len, MPI_BYTE, right, ROUNDS + round, in, len, MPI_BYTE, left, ROUNDS + round, comm, &st[0]);
        MT_CHECK(chk_verify(in, (size_t)len, seed(left, me, t, round + ROUNDS)) == (size_t)len,
                 "lane %d round %d: ring shift of %d bytes from rank %d", t, round, len, left);

        long v[3] = {me + t + round, 1, -(long)me}, sum[3] = {0, 0, 0};
        MPI_Allreduce(v, sum, 3, MPI_LONG, MPI_SUM, comm);
        long want = (long)n * (n - 1) / 2 + (long)n * (t + round);
        MT_CHECK(sum[0] == want && sum[1] == n && sum[2] == -(long)n * (n - 1) / 2,
                 "lane %d round %d: allreduce %ld %ld %ld, want %ld %d %ld", t, round, sum[0], sum[1], sum[2], want, n,
                 -(long)n * (n - 1) / 2);

        int root = (round + t) % n;
        if (me == root)
            chk_fill(in, (size_t)len, seed(root, n, t, round));
        MPI_Bcast(in, len, MPI_BYTE, root, comm);
        MT_CHECK(chk_verify(in, (size_t)len, seed(root, n, t, round)) == (size_t)len,
                 "lane %d round %d: bcast of %d bytes from rank %d", t, round, len, root);
    }
    free(out);
    free(in);
    free(req);
    free(st);
    return NULL;
}

static void *send_self(void *arg)
{
    (void)arg;
    int v = 1000 + chk.rank;
    MPI_Send(&v, 1, MPI_INT, chk.rank, SELF_TAG, selfcomm);
    return NULL;
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    int threads = provided == MPI_THREAD_MULTIPLE;
    for (int t = 0; t < LANES; t++)
        MPI_Comm_dup(MPI_COMM_WORLD, &lanes[t]);
    MPI_Comm_dup(MPI_COMM_WORLD, &selfcomm);

    if (threads) {
        pthread_t th[LANES];
        for (int t = 0; t < LANES; t++)
            if (pthread_create(&th[t], NULL, lane, (void *)(intptr_t)t) != 0) {
                fprintf(stderr, "mt_threads: cannot start a thread\n");
                MPI_Abort(MPI_COMM_WORLD, 3);
            }
        for (int t = 0; t < LANES; t++)
            pthread_join(th[t], NULL);
    } else {
        for (int t = 0; t < LANES; t++)
            lane((void *)(intptr_t)t);
    }

    /* a message to self, sent while (or, without threads, before) the main thread probes */
    pthread_t sender;
    MPI_Request sreq = MPI_REQUEST_NULL;
    if (threads) {
        if (pthread_create(&sender, NULL, send_self, NULL) != 0) {
            fprintf(stderr, "mt_threads: cannot start a thread\n");
            MPI_Abort(MPI_COMM_WORLD, 3);
        }
    } else {
        static int v;
        v = 1000 + chk.rank;
        MPI_Isend(&v, 1, MPI_INT, chk.rank, SELF_TAG, selfcomm, &sreq);
    }
    MPI_Status st;
    MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, selfcomm, &st);
    chk_status(&st, chk.rank, SELF_TAG, MPI_INT, 1, "probe of the message to self");
    int got = -1;
    MPI_Recv(&got, 1, MPI_INT, st.MPI_SOURCE, st.MPI_TAG, selfcomm, &st);
    CHECK(got == 1000 + chk.rank, "message to self: %d, want %d", got, 1000 + chk.rank);
    if (threads)
        pthread_join(sender, NULL);
    else
        MPI_Wait(&sreq, MPI_STATUS_IGNORE);

    for (int t = 0; t < LANES; t++)
        MPI_Comm_free(&lanes[t]);
    MPI_Comm_free(&selfcomm);
    return chk_finish("mt_threads");
}
