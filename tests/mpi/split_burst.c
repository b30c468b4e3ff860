/*
 * split_burst: each iteration every rank sends a burst of small checked messages to its right
 * ring neighbour (tags cycling 0, 1, 2), receives its left neighbour's burst in order, then
 * creates a communicator with MPI_Comm_split and frees it. A rank that is done with its burst
 * thus blocks in a communicator's creation, inside the library, while its neighbour may still
 * be receiving from it: the pattern of MPICH's pingping test, which deadlocked the join switch
 * under migration (tests/model/joinswitch.pml BLOCKING_S). Usage:
 *
 *   split_burst ITERATIONS [BURST]
 *
 * At the end each rank prints "rank R of N iterations I ok"; any mismatch prints FAIL and aborts.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

enum { WORDS = 16 };

int main(int argc, char **argv)
{
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long iters = argc > 1 ? atol(argv[1]) : 0;
    int burst = argc > 2 ? atoi(argv[2]) : 64;
    if (iters <= 0 || burst <= 0 || argc > 3) {
        if (rank == 0)
            fprintf(stderr, "usage: split_burst ITERATIONS [BURST]\n");
        MPI_Finalize();
        return 2;
    }
    int right = (rank + 1) % size, left = (rank + size - 1) % size;
    MPI_Request *reqs = malloc(sizeof *reqs * (size_t)burst);
    int *out = malloc(sizeof *out * (size_t)burst * WORDS), in[WORDS];
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < burst; i++) {
            for (int k = 0; k < WORDS; k++)
                out[i * WORDS + k] = (int)(rank * 1000003L + it * 131 + i * 17 + k);
            MPI_Isend(out + i * WORDS, WORDS, MPI_INT, right, i % 3, MPI_COMM_WORLD, &reqs[i]);
        }
        for (int i = 0; i < burst; i++) {
            MPI_Recv(in, WORDS, MPI_INT, left, i % 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            for (int k = 0; k < WORDS; k++) {
                if (in[k] != (int)(left * 1000003L + it * 131 + i * 17 + k)) {
                    fprintf(stderr, "FAIL rank %d iteration %ld message %d word %d: got %d\n", rank, it, i, k, in[k]);
                    MPI_Abort(MPI_COMM_WORLD, 1);
                }
            }
        }
        MPI_Waitall(burst, reqs, MPI_STATUSES_IGNORE);
        MPI_Comm c;
        MPI_Comm_split(MPI_COMM_WORLD, 0, size - rank, &c);
        MPI_Comm_free(&c);
    }
    printf("rank %d of %d iterations %ld ok\n", rank, size, iters);
    free(reqs);
    free(out);
    MPI_Finalize();
    return 0;
}
