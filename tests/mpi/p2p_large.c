/*
 * p2p_large: message sizes from 0 B to 16 MiB — around cache lines, pages, 256 KiB and beyond
 * any ring or eager limit — between every pair of ranks (co-located and remote), every byte
 * checked against a pattern unique to (phase, source, destination, size):
 *  1. blocking MPI_Send/MPI_Recv, pairs scheduled round-robin, both directions in turn;
 *  2. nonblocking, every rank sending to and receiving from every other rank at once, into
 *     receive buffers larger than the message (MPI_Get_count must give the sent size);
 *  3. MPI_Sendrecv around each ring shift, both directions at once.
 */
#include "p2p_check.h"

static const int sizes[] = {0, 1, 63, 64, 65, 4096, 262143, 262144, 262145, 1 << 20, 16 << 20};
enum { NSIZES = sizeof sizes / sizeof sizes[0], SLACK = 17, TAG = 5 };

static uint64_t seed(int phase, int src, int dst, int k)
{
    return (((uint64_t)phase * 256 + (uint64_t)src) * 256 + (uint64_t)dst) * 64 + (uint64_t)k;
}

static int to(int d) { return (chk.rank + d) % chk.size; }
static int from(int d) { return (chk.rank - d + chk.size) % chk.size; }

/* check_in checks a received message of sizes[k] bytes from src. */
static void check_in(int phase, const unsigned char *buf, const MPI_Status *st, int src, int k)
{
    char what[80];
    snprintf(what, sizeof what, "phase %d: %d bytes from %d", phase, sizes[k], src);
    chk_status(st, src, TAG + k, MPI_BYTE, sizes[k], what);
    size_t n = (size_t)sizes[k], bad = chk_verify(buf, n, seed(phase, src, chk.rank, k));
    CHECK(bad == n, "%s: byte %zu differs", what, bad);
}

/* partner returns the rank paired with this one in round r of a round-robin tournament, or -1
 * when this rank sits the round out (odd number of ranks). */
static int partner(int r)
{
    int n = chk.size + chk.size % 2, m = n - 1, i = chk.rank, p;
    if (i == m)
        p = r;
    else {
        p = ((2 * r - i) % m + m) % m;
        if (p == i)
            p = m;
    }
    return p < chk.size ? p : -1;
}

static void blocking(unsigned char *out, unsigned char *in)
{
    int rounds = chk.size - 1 + chk.size % 2;
    for (int r = 0; r < rounds; r++) {
        int p = partner(r);
        if (p < 0)
            continue;
        for (int k = 0; k < NSIZES; k++) {
            MPI_Status st;
            chk_fill(out, (size_t)sizes[k], seed(1, chk.rank, p, k));
            if (chk.rank < p) {
                MPI_Send(out, sizes[k], MPI_BYTE, p, TAG + k, MPI_COMM_WORLD);
                MPI_Recv(in, sizes[k], MPI_BYTE, p, TAG + k, MPI_COMM_WORLD, &st);
            } else {
                MPI_Recv(in, sizes[k], MPI_BYTE, p, TAG + k, MPI_COMM_WORLD, &st);
                MPI_Send(out, sizes[k], MPI_BYTE, p, TAG + k, MPI_COMM_WORLD);
            }
            check_in(1, in, &st, p, k);
        }
    }
}

static void nonblocking(void)
{
    int np = chk.size - 1;
    unsigned char **out = chk_alloc(sizeof(void *) * (size_t)np), **in = chk_alloc(sizeof(void *) * (size_t)np);
    MPI_Request *req = chk_alloc(sizeof(MPI_Request) * 2 * (size_t)np);
    MPI_Status *st = chk_alloc(sizeof(MPI_Status) * 2 * (size_t)np);
    for (int k = 0; k < NSIZES; k++) {
        for (int d = 1; d <= np; d++) {
            out[d - 1] = chk_alloc((size_t)sizes[k]);
            in[d - 1] = chk_alloc((size_t)sizes[k] + SLACK);
            chk_fill(out[d - 1], (size_t)sizes[k], seed(2, chk.rank, to(d), k));
            MPI_Irecv(in[d - 1], sizes[k] + SLACK, MPI_BYTE, from(d), TAG + k, MPI_COMM_WORLD, &req[2 * (d - 1)]);
            MPI_Isend(out[d - 1], sizes[k], MPI_BYTE, to(d), TAG + k, MPI_COMM_WORLD, &req[2 * (d - 1) + 1]);
        }
        MPI_Waitall(2 * np, req, st);
        for (int d = 1; d <= np; d++) {
            check_in(2, in[d - 1], &st[2 * (d - 1)], from(d), k);
            free(out[d - 1]);
            free(in[d - 1]);
        }
    }
    free(out);
    free(in);
    free(req);
    free(st);
}

static void sendrecv(unsigned char *out, unsigned char *in)
{
    for (int d = 1; d < chk.size; d++)
        for (int k = 0; k < NSIZES; k++) {
            MPI_Status st;
            chk_fill(out, (size_t)sizes[k], seed(3, chk.rank, to(d), k));
            MPI_Sendrecv(out, sizes[k], MPI_BYTE, to(d), TAG + k, in, sizes[k], MPI_BYTE, from(d), TAG + k,
                         MPI_COMM_WORLD, &st);
            check_in(3, in, &st, from(d), k);
        }
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    unsigned char *out = chk_alloc((size_t)sizes[NSIZES - 1]), *in = chk_alloc((size_t)sizes[NSIZES - 1]);
    blocking(out, in);
    nonblocking();
    sendrecv(out, in);
    free(out);
    free(in);
    return chk_finish("p2p_large");
}
