/*
 * ring_soak: keeps a job busy for a given time with checked traffic, for tests that disturb
 * the cluster (kill a broker, ...) while ranks communicate. Usage:
 *
 *   ring_soak SECONDS [PAUSE_RANK PAUSE_SECONDS]
 *
 * Each iteration every rank sends a payload to both ring neighbours (so with two ranks per
 * host every rank sends to a co-located peer), alternating a small and a large size, checks
 * what it receives, then takes part in an MPI_Allreduce that also carries rank 0's decision
 * to stop once SECONDS have passed, or once rank 0 got SIGUSR1 (Open MPI's mpirun passes it on
 * to every rank: a test stops the job when it saw what it waited for). On SIGUSR2, rank
 * PAUSE_RANK prints "rank R pauses" and sleeps PAUSE_SECONDS outside MPI before its next
 * iteration (a rank computing while its VM is flagged leaving). At the end each rank prints
 *
 *   rank R of N iterations I ok
 *
 * Any mismatch prints "FAIL ..." to stderr and aborts.
 */
#define _POSIX_C_SOURCE 200809L /* sigaction */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { SMALL = 16, LARGE = 1 << 17 };

static void fail(int rank, const char *what, long iter, long got, long want)
{
    fprintf(stderr, "FAIL rank %d iteration %ld: %s: got %ld, want %ld\n", rank, iter, what, got, want);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static volatile sig_atomic_t asked_to_stop, asked_to_pause;

static void on_usr1(int sig)
{
    (void)sig;
    asked_to_stop = 1;
}

static void on_usr2(int sig)
{
    (void)sig;
    asked_to_pause = 1;
}

static int value(int sender, long iter, int i) { return (int)((sender * 7919L + iter * 31L + i) & 0x7fffffff); }

int main(int argc, char **argv)
{
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    double seconds = argc > 1 ? atof(argv[1]) : 0, pause_s = argc > 3 ? atof(argv[3]) : 0;
    int pause_rank = argc > 3 ? atoi(argv[2]) : -1;
    if (seconds <= 0 || argc == 3 || argc > 4 || (argc == 4 && (pause_rank < 0 || pause_rank >= size || pause_s <= 0))) {
        if (rank == 0)
            fprintf(stderr, "usage: ring_soak SECONDS [PAUSE_RANK PAUSE_SECONDS]\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    struct sigaction sa = {.sa_handler = on_usr1};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    int *out = malloc(LARGE * sizeof *out), *from_prev = malloc(LARGE * sizeof *from_prev),
        *from_next = malloc(LARGE * sizeof *from_next);
    if (out == NULL || from_prev == NULL || from_next == NULL)
        fail(rank, "malloc", 0, 0, 1);

    double start = MPI_Wtime();
    long iter = 0;
    for (int stop = 0; !stop; iter++) {
        if (asked_to_pause && rank == pause_rank) {
            asked_to_pause = 0;
            printf("rank %d pauses\n", rank);
            fflush(stdout);
            struct timespec ts = {(time_t)pause_s, (long)((pause_s - (time_t)pause_s) * 1e9)};
            while (nanosleep(&ts, &ts) != 0)
                ;
        }
        int n = iter % 2 ? LARGE : SMALL;
        for (int i = 0; i < n; i++)
            out[i] = value(rank, iter, i);
        MPI_Request reqs[4];
        MPI_Irecv(from_prev, n, MPI_INT, prev, 1, MPI_COMM_WORLD, &reqs[0]);
        MPI_Irecv(from_next, n, MPI_INT, next, 2, MPI_COMM_WORLD, &reqs[1]);
        MPI_Isend(out, n, MPI_INT, next, 1, MPI_COMM_WORLD, &reqs[2]);
        MPI_Isend(out, n, MPI_INT, prev, 2, MPI_COMM_WORLD, &reqs[3]);
        MPI_Waitall(4, reqs, MPI_STATUSES_IGNORE);
        for (int i = 0; i < n; i++) {
            if (from_prev[i] != value(prev, iter, i))
                fail(rank, "payload from prev", iter, from_prev[i], value(prev, iter, i));
            if (from_next[i] != value(next, iter, i))
                fail(rank, "payload from next", iter, from_next[i], value(next, iter, i));
        }
        /* [0]: sum of ranks, checked; [1]: rank 0's stop decision. */
        long mine[2] = {rank, rank == 0 && (asked_to_stop || MPI_Wtime() - start >= seconds)}, sum[2];
        MPI_Allreduce(mine, sum, 2, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        if (sum[0] != (long)size * (size - 1) / 2)
            fail(rank, "allreduce", iter, sum[0], (long)size * (size - 1) / 2);
        stop = sum[1] != 0;
    }
    printf("rank %d of %d iterations %ld ok\n", rank, size, iter);
    fflush(stdout);
    free(out);
    free(from_prev);
    free(from_next);
    MPI_Finalize();
    return 0;
}
