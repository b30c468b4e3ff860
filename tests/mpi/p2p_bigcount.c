/*
 * p2p_bigcount: MPI-4 calls beside the MPI-3 ones between partners (e, e+1) and across the
 * world: large-count calls (MPI_Send_c, MPI_Irecv_c, MPI_Bcast_c, ...) must meet int ones and the
 * reverse, and MPI_Isendrecv(_replace) must meet plain sends and receives, whatever path the
 * pair uses. Open MPI 4.1 has no MPI-4 calls: there the program runs the same exchanges with
 * MPI-3 calls, so its report has the same checks.
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
#define ISENDRECV MPI_Isendrecv
#define ISENDRECV_REPLACE MPI_Isendrecv_replace
#define TYPE_CONTIGUOUS_C(n, old, t) MPI_Type_contiguous_c((MPI_Count)(n), old, t)
#else
#define TYPE_CONTIGUOUS_C MPI_Type_contiguous
/* what MPI_Isendrecv does, with MPI-3 calls: the two parts complete together */
static int isendrecv(const void *sb, int sc, MPI_Datatype st, int d, int sg, void *rb, int rc, MPI_Datatype rt, int s,
                     int rg, MPI_Comm c, MPI_Request *r)
{
    MPI_Request two[2];
    MPI_Irecv(rb, rc, rt, s, rg, c, &two[0]);
    MPI_Isend(sb, sc, st, d, sg, c, &two[1]);
    MPI_Waitall(2, two, MPI_STATUSES_IGNORE);
    *r = MPI_REQUEST_NULL;
    return MPI_SUCCESS;
}
static int isendrecv_replace(void *b, int n, MPI_Datatype t, int d, int sg, int s, int rg, MPI_Comm c, MPI_Request *r)
{
    *r = MPI_REQUEST_NULL;
    return MPI_Sendrecv_replace(b, n, t, d, sg, s, rg, c, MPI_STATUS_IGNORE);
}
#define ISENDRECV isendrecv
#define ISENDRECV_REPLACE isendrecv_replace
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
    /* Isendrecv against a plain receive and send, then Isendrecv_replace against itself */
    if (chk.rank < peer) {
        ISENDRECV(out, N, MPI_INT, peer, TAG + 3, in, N, MPI_INT, peer, TAG + 4, MPI_COMM_WORLD, &rq[0]);
        MPI_Wait(&rq[0], MPI_STATUS_IGNORE);
    } else {
        MPI_Recv(in, N, MPI_INT, peer, TAG + 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(out, N, MPI_INT, peer, TAG + 4, MPI_COMM_WORLD);
    }
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += in[i] != peer * 100000 + salt + i;
    CHECK(bad == 0, "Isendrecv with %d: %d elements wrong", peer, bad);
    memcpy(in2, out, sizeof(int) * N);
    ISENDRECV_REPLACE(in2, N, MPI_INT, peer, TAG + 5, peer, TAG + 5, MPI_COMM_WORLD, &rq[0]);
    MPI_Wait(&rq[0], MPI_STATUS_IGNORE);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += in2[i] != peer * 100000 + salt + i;
    CHECK(bad == 0, "Isendrecv_replace with %d: %d elements wrong", peer, bad);
    free(out);
    free(in);
    free(in2);
}

/* A type made by a large-count constructor, alone and inside a vector, in int calls: MPICH
 * refuses MPI_Type_get_envelope for it (MPI_Type_get_envelope_c only), fatally by default. */
enum { NV = 1000 }; /* vector blocks in large_count_type */
static void large_count_type(int partner)
{
    MPI_Datatype c, v;
    TYPE_CONTIGUOUS_C(4, MPI_INT, &c);
    MPI_Type_commit(&c);
    MPI_Type_vector(NV, 1, 2, c, &v);
    MPI_Type_commit(&v);
    int *s = chk_alloc(sizeof(int) * 8 * NV), *d = chk_alloc(sizeof(int) * 8 * NV);
    for (int i = 0; i < 8 * NV; i++) {
        s[i] = chk.rank * 100000 + i;
        d[i] = -1;
    }
    MPI_Sendrecv(s, 1, v, partner, 5, d, 1, v, partner, 5, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    int bad = 0;
    for (int i = 0; i < 8 * NV; i++)
        bad += d[i] != (i % 8 < 4 ? partner * 100000 + i : -1);
    CHECK(bad == 0, "a vector of a large-count contiguous type from %d: %d ints wrong", partner, bad);
    MPI_Sendrecv(s, 10, c, partner, 6, d, 40, MPI_INT, partner, 6, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    bad = 0;
    for (int i = 0; i < 40; i++)
        bad += d[i] != partner * 100000 + i;
    CHECK(bad == 0, "10 of a large-count contiguous type from %d: %d ints wrong", partner, bad);
    free(s);
    free(d);
    MPI_Type_free(&v);
    MPI_Type_free(&c);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    int partner = chk.rank ^ 1, n = chk.size, half = n / 2;
    if (partner < n) {
        exchange(partner, 1);
        large_count_type(partner);
    }
    if (half > 0 && n % 2 == 0)
        exchange((chk.rank + half) % n, 2); /* symmetric when the size is even */
    int v = chk.rank == 0 ? 77 : -1, sum = -1;
    BCAST_C(&v, 1, MPI_INT, 0, MPI_COMM_WORLD);
    ALLREDUCE_C(&chk.rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(v == 77 && sum == n * (n - 1) / 2, "Bcast_c %d Allreduce_c %d", v, sum);
    return chk_finish("p2p_bigcount");
}
