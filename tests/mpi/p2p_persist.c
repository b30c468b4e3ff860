/*
 * p2p_persist: persistent requests with every other rank (co-located and remote).
 *  1. Send_init, Ssend_init and Bsend_init (with MPI_Buffer_attach) to every peer, Recv_init
 *     from every peer (one of them MPI_ANY_SOURCE), restarted ITER times with new data, with
 *     MPI_Start or MPI_Startall and completed with Waitall, Testall or Waitany;
 *  2. Rsend_init, the receive started before a barrier each time;
 *  3. persistent requests with derived datatypes (vector sent, contiguous received);
 *  4. MPI_Request_free of an active persistent send: the message still arrives.
 */
#include "p2p_check.h"

enum { ITER = 30, RITER = 10, TAG_P = 10, TAG_R = 2, TAG_V = 3, TAG_FREE = 4 };

static int to(int d) { return (chk.rank + d) % chk.size; }
static int from(int d) { return (chk.rank - d + chk.size) % chk.size; }

static int len_of(int d)
{
    static const int lens[] = {1000, 30000, 7};
    return lens[d % 3];
}

static int val(int it, int src, int dst, int i) { return ((it * 64 + src) * 64 + dst) * 65536 + i; }

/* mode_name is the persistent send mode every rank uses towards the rank d after it. */
static const char *mode_name(int d)
{
    static const char *names[] = {"Ssend_init", "Send_init", "Bsend_init"};
    return names[d % 3];
}

static void restarted_many_times(void)
{
    int np = chk.size - 1, n = 2 * np;
    MPI_Request *req = chk_alloc(sizeof(MPI_Request) * (size_t)n);
    MPI_Status *st = chk_alloc(sizeof(MPI_Status) * (size_t)n);
    int **buf = chk_alloc(sizeof(int *) * (size_t)n);
    int bsize = 0;
    for (int d = 1; d <= np; d++)
        if (d % 3 == 2) {
            int sz;
            MPI_Pack_size(len_of(d), MPI_INT, MPI_COMM_WORLD, &sz);
            /* room for two: the previous start's copy may not be released yet */
            bsize += 2 * (sz + MPI_BSEND_OVERHEAD);
        }
    char *bbuf = NULL;
    if (bsize > 0) {
        bbuf = chk_alloc((size_t)bsize);
        MPI_Buffer_attach(bbuf, bsize);
    }
    /* even entries receive from from(d), odd ones send to to(d) */
    for (int d = 1; d <= np; d++) {
        int len = len_of(d), r = 2 * (d - 1), s = r + 1;
        buf[r] = chk_alloc(sizeof(int) * (size_t)len);
        buf[s] = chk_alloc(sizeof(int) * (size_t)len);
        MPI_Recv_init(buf[r], len, MPI_INT, d == 2 ? MPI_ANY_SOURCE : from(d), TAG_P + d, MPI_COMM_WORLD, &req[r]);
        switch (d % 3) {
        case 1:
            MPI_Send_init(buf[s], len, MPI_INT, to(d), TAG_P + d, MPI_COMM_WORLD, &req[s]);
            break;
        case 2:
            MPI_Bsend_init(buf[s], len, MPI_INT, to(d), TAG_P + d, MPI_COMM_WORLD, &req[s]);
            break;
        default:
            MPI_Ssend_init(buf[s], len, MPI_INT, to(d), TAG_P + d, MPI_COMM_WORLD, &req[s]);
            break;
        }
    }
    for (int it = 0; it < ITER; it++) {
        for (int d = 1; d <= np; d++)
            for (int i = 0; i < len_of(d); i++) {
                buf[2 * (d - 1) + 1][i] = val(it, chk.rank, to(d), i);
                buf[2 * (d - 1)][i] = -1;
            }
        if (it % 2)
            MPI_Startall(n, req);
        else
            for (int i = n - 1; i >= 0; i--)
                MPI_Start(&req[i]);
        int flag = 0, idx, done = 0;
        switch (it % 3) {
        case 0:
            MPI_Waitall(n, req, st);
            break;
        case 1:
            do
                MPI_Testall(n, req, &flag, st);
            while (!flag);
            break;
        default:
            for (done = 0; done < n; done++) {
                MPI_Status one;
                MPI_Waitany(n, req, &idx, &one);
                if (idx >= 0 && idx < n)
                    st[idx] = one;
            }
            MPI_Waitany(n, req, &idx, MPI_STATUS_IGNORE);
            CHECK(idx == MPI_UNDEFINED, "iteration %d: Waitany after all completed: index %d", it, idx);
            break;
        }
        for (int d = 1; d <= np; d++) {
            int r = 2 * (d - 1), len = len_of(d), i = 0;
            char what[96];
            snprintf(what, sizeof what, "iteration %d, %s from %d", it, mode_name(d), from(d));
            CHECK(req[r] != MPI_REQUEST_NULL && req[r + 1] != MPI_REQUEST_NULL, "%s: persistent handle freed", what);
            chk_status(&st[r], from(d), TAG_P + d, MPI_INT, len, what);
            while (i < len && buf[r][i] == val(it, from(d), chk.rank, i))
                i++;
            CHECK(i == len, "%s: element %d of %d is %d", what, i, len, i < len ? buf[r][i] : 0);
        }
    }
    for (int i = 0; i < n; i++) {
        MPI_Request_free(&req[i]);
        free(buf[i]);
    }
    if (bsize > 0) {
        void *b;
        int sz;
        MPI_Buffer_detach(&b, &sz);
        CHECK(b == bbuf && sz == bsize, "Buffer_detach returned %d bytes, attached %d", sz, bsize);
        free(bbuf);
    }
    free(req);
    free(st);
    free(buf);
}

/* ready_mode: the receive is started before a barrier, the ready send after it. */
static void ready_mode(int d)
{
    int len = len_of(d), *out = chk_alloc(sizeof(int) * (size_t)len), *in = chk_alloc(sizeof(int) * (size_t)len);
    MPI_Request r[2];
    MPI_Status st[2];
    MPI_Recv_init(in, len, MPI_INT, from(d), TAG_R, MPI_COMM_WORLD, &r[0]);
    MPI_Rsend_init(out, len, MPI_INT, to(d), TAG_R, MPI_COMM_WORLD, &r[1]);
    for (int it = 0; it < RITER; it++) {
        for (int i = 0; i < len; i++)
            out[i] = val(it, chk.rank, to(d), i);
        MPI_Start(&r[0]);
        MPI_Barrier(MPI_COMM_WORLD);
        MPI_Start(&r[1]);
        MPI_Waitall(2, r, st);
        int i = 0;
        while (i < len && in[i] == val(it, from(d), chk.rank, i))
            i++;
        chk_status(&st[0], from(d), TAG_R, MPI_INT, len, "Rsend_init");
        CHECK(i == len, "Rsend_init iteration %d from %d: element %d of %d differs", it, from(d), i, len);
    }
    MPI_Request_free(&r[0]);
    MPI_Request_free(&r[1]);
    free(out);
    free(in);
}

/* derived: a persistent send of every third double of an array, received contiguously. */
static void derived(int d)
{
    enum { N = 500 };
    double *out = chk_alloc(sizeof(double) * 3 * N), *in = chk_alloc(sizeof(double) * N);
    MPI_Datatype every3;
    MPI_Type_vector(N, 1, 3, MPI_DOUBLE, &every3);
    MPI_Type_commit(&every3);
    MPI_Request r[2];
    MPI_Status st;
    MPI_Send_init(out, 1, every3, to(d), TAG_V, MPI_COMM_WORLD, &r[0]);
    MPI_Recv_init(in, N, MPI_DOUBLE, from(d), TAG_V, MPI_COMM_WORLD, &r[1]);
    for (int it = 0; it < 5; it++) {
        for (int i = 0; i < 3 * N; i++)
            out[i] = i % 3 ? -1.0 : val(it, chk.rank, to(d), i / 3);
        MPI_Startall(2, r);
        MPI_Wait(&r[1], &st);
        MPI_Wait(&r[0], MPI_STATUS_IGNORE);
        int i = 0;
        while (i < N && in[i] == val(it, from(d), chk.rank, i))
            i++;
        chk_status(&st, from(d), TAG_V, MPI_DOUBLE, N, "persistent vector send");
        CHECK(i == N, "persistent vector send iteration %d from %d: element %d differs", it, from(d), i);
    }
    MPI_Request_free(&r[0]);
    MPI_Request_free(&r[1]);
    MPI_Type_free(&every3);
    free(out);
    free(in);
}

/* free_active: an active persistent send that is freed still delivers its message. */
static void free_active(int d)
{
    int len = len_of(d), *out = chk_alloc(sizeof(int) * (size_t)len), *in = chk_alloc(sizeof(int) * (size_t)len);
    for (int i = 0; i < len; i++)
        out[i] = val(99, chk.rank, to(d), i);
    MPI_Request s, r;
    MPI_Status st;
    MPI_Send_init(out, len, MPI_INT, to(d), TAG_FREE, MPI_COMM_WORLD, &s);
    MPI_Start(&s);
    MPI_Request_free(&s);
    CHECK(s == MPI_REQUEST_NULL, "Request_free of an active persistent send left the handle");
    MPI_Recv_init(in, len, MPI_INT, from(d), TAG_FREE, MPI_COMM_WORLD, &r);
    MPI_Start(&r);
    MPI_Wait(&r, &st);
    MPI_Request_free(&r);
    int i = 0;
    while (i < len && in[i] == val(99, from(d), chk.rank, i))
        i++;
    chk_status(&st, from(d), TAG_FREE, MPI_INT, len, "freed active persistent send");
    CHECK(i == len, "freed active persistent send from %d: element %d of %d differs", from(d), i, len);
    /* The sender may reuse its buffer only once it knows the message arrived. */
    MPI_Barrier(MPI_COMM_WORLD);
    free(out);
    free(in);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    restarted_many_times();
    for (int d = 1; d < chk.size; d++) {
        ready_mode(d);
        derived(d);
        free_active(d);
    }
    return chk_finish("p2p_persist");
}
