/*
 * p2p_bigcount: the MPI-4 large-count calls (MPI_Send_c, MPI_Irecv_c, MPI_Bcast_c, ...) mixed
 * with the int ones between partners (e, e+1) and across the world: a large-count send must meet
 * an int receive and the reverse, whatever path the pair uses. Open MPI 4.1 has no large-count
 * calls: there the program runs the same exchanges with the int calls, so its report has the
 * same checks.
 */
#include "p2p_check.h"

#if MPI_VERSION >= 4
#define SEND_C(b, n, t, d, g, c) MPI_Send_c(b, (MPI_Count)(n), t, d, g, c)
#define IRECV_C(b, n, t, s, g, c, r) MPI_Irecv_c(b, (MPI_Count)(n), t, s, g, c, r)
#define ISEND_C(b, n, t, d, g, c, r) MPI_Isend_c(b, (MPI_Count)(n), t, d, g, c, r)
#define RECV_C(b, n, t, s, g, c, st) MPI_Recv_c(b, (MPI_Count)(n), t, s, g, c, st)
#define SSEND_C(b, n, t, d, g, c) MPI_Ssend_c(b, (MPI_Count)(n), t, d, g, c)
#define BCAST_C(b, n, t, r, c) MPI_Bcast_c(b, (MPI_Count)(n), t, r, c)
#define ALLREDUCE_C(s, r, n, t, o, c) MPI_Allreduce_c(s, r, (MPI_Count)(n), t, o, c)
#else
#define SEND_C MPI_Send
#define IRECV_C MPI_Irecv
#define ISEND_C MPI_Isend
#define RECV_C MPI_Recv
#define SSEND_C MPI_Ssend
#define BCAST_C MPI_Bcast
#define ALLREDUCE_C MPI_Allreduce
#endif

#define N 5000
#define TAG 31

static void exchange(int peer, int salt)
{
    int *out = chk_alloc(sizeof(int) * N), *in = chk_alloc(sizeof(int) * N), *in2 = chk_alloc(sizeof(int) * N);
    for (int i = 0; i < N; i++)
        out[i] = chk.rank * 100000 + salt + i;
    MPI_Request rq[2];
    /* large-count receive meets an int send, then an int receive meets a large-count send */
    IRECV_C(in, N, MPI_INT, peer, TAG, MPI_COMM_WORLD, &rq[0]);
    MPI_Isend(out, N, MPI_INT, peer, TAG, MPI_COMM_WORLD, &rq[1]);
    MPI_Waitall(2, rq, MPI_STATUSES_IGNORE);
    MPI_Irecv(in2, N, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD, &rq[0]);
    if (chk.rank < peer)
        SSEND_C(out, N, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD);
    else
        SEND_C(out, N, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD);
    MPI_Wait(&rq[0], MPI_STATUS_IGNORE);
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += (in[i] != peer * 100000 + salt + i) + (in2[i] != peer * 100000 + salt + i);
    CHECK(bad == 0, "exchange with %d: %d elements wrong", peer, bad);
    /* a wildcard large-count receive and a nonblocking large-count send */
    MPI_Status st;
    ISEND_C(out, 1, MPI_INT, peer, TAG + 2, MPI_COMM_WORLD, &rq[1]);
    RECV_C(in, 1, MPI_INT, MPI_ANY_SOURCE, TAG + 2, MPI_COMM_WORLD, &st);
    MPI_Wait(&rq[1], MPI_STATUS_IGNORE);
    CHECK(st.MPI_SOURCE == peer && in[0] == peer * 100000 + salt, "wildcard from %d: source %d value %d", peer, st.MPI_SOURCE, in[0]);
    free(out);
    free(in);
    free(in2);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    int partner = chk.rank ^ 1, n = chk.size, half = n / 2;
    if (partner < n)
        exchange(partner, 1);
    if (half > 0 && n % 2 == 0)
        exchange((chk.rank + half) % n, 2); /* symmetric when the size is even */
    int v = chk.rank == 0 ? 77 : -1, sum = -1;
    BCAST_C(&v, 1, MPI_INT, 0, MPI_COMM_WORLD);
    ALLREDUCE_C(&chk.rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(v == 77 && sum == n * (n - 1) / 2, "Bcast_c %d Allreduce_c %d", v, sum);
    return chk_finish("p2p_bigcount");
}
