/*
 * hello_ring: the emulated cluster's smoke test. Each rank prints one line
 *
 *   rank R of N on HOST boot_id B region P ring ok allreduce ok
 *
 * after passing a token around the ring (each rank adds its rank) and an
 * MPI_Allreduce of (rank + 1) checked against N(N+1)/2. Any mismatch prints
 * "FAIL ..." to stderr and aborts, so a run that exits 0 has checked data.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void fail(int rank, const char *what, long got, long want)
{
    fprintf(stderr, "FAIL rank %d: %s: got %ld, want %ld\n", rank, what, got, want);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static void read_boot_id(char *buf, size_t len)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f == NULL || fgets(buf, (int)len, f) == NULL)
        snprintf(buf, len, "unknown");
    if (f != NULL)
        fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
}

int main(int argc, char **argv)
{
    int rank, size;
    char host[256], boot_id[64];
    const char *region = getenv("IVSHIM_REGION");

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    read_boot_id(boot_id, sizeof boot_id);

    /* Ring: rank 0 starts the token at 0, each rank adds its rank; rank 0 checks the sum. */
    long token = 0;
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    if (size > 1) {
        if (rank == 0) {
            MPI_Send(&token, 1, MPI_LONG, next, 7, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_LONG, prev, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            if (token != (long)size * (size - 1) / 2)
                fail(rank, "ring token", token, (long)size * (size - 1) / 2);
        } else {
            MPI_Recv(&token, 1, MPI_LONG, prev, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            if (token != (long)rank * (rank - 1) / 2)
                fail(rank, "ring token", token, (long)rank * (rank - 1) / 2);
            token += rank;
            MPI_Send(&token, 1, MPI_LONG, next, 7, MPI_COMM_WORLD);
        }
    }

    /* A larger exchange too, so more than one packet crosses each link. */
    enum { N = 1 << 16 };
    int *out = malloc(N * sizeof *out), *in = malloc(N * sizeof *in);
    if (out == NULL || in == NULL)
        fail(rank, "malloc", 0, 1);
    for (int i = 0; i < N; i++)
        out[i] = rank * 1000003 + i;
    MPI_Sendrecv(out, N, MPI_INT, next, 8, in, N, MPI_INT, prev, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    for (int i = 0; i < N; i++)
        if (in[i] != prev * 1000003 + i)
            fail(rank, "ring payload", in[i], (long)prev * 1000003 + i);
    free(out);
    free(in);

    long mine = rank + 1, sum = 0;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (sum != (long)size * (size + 1) / 2)
        fail(rank, "allreduce", sum, (long)size * (size + 1) / 2);

    printf("rank %d of %d on %s boot_id %s region %s ring ok allreduce ok\n", rank, size, host, boot_id,
           region != NULL ? region : "-");
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
