/*
 * dyn_spawn: communicators whose members come from two MPI_COMM_WORLDs. Two parents spawn two
 * children, merge the intercommunicator, and run a reduction, a ring exchange, a wildcard receive
 * and a barrier on the merged communicator and on a split of it that mixes the worlds. The shim
 * must leave such communicators to the library on both sides without any exchange of its own
 * (the children may run in pass-through, or without the shim). Rank 0 of the merged
 * communicator prints one line.
 */
#include <mpi.h>
#include <stdio.h>

static int exercise(MPI_Comm c)
{
    int rank, size, sum = -1, got = -1, any = -1, bad = 0;
    MPI_Comm_rank(c, &rank);
    MPI_Comm_size(c, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, c);
    bad += sum != size * (size - 1) / 2;
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    MPI_Sendrecv(&rank, 1, MPI_INT, next, 7, &got, 1, MPI_INT, prev, 7, c, MPI_STATUS_IGNORE);
    bad += got != prev;
    if (rank == 0) {
        for (int i = 1; i < size; i++) {
            MPI_Status st;
            MPI_Recv(&any, 1, MPI_INT, MPI_ANY_SOURCE, 8, c, &st);
            bad += any != st.MPI_SOURCE * 10;
        }
    } else {
        int v = rank * 10;
        MPI_Send(&v, 1, MPI_INT, 0, 8, c);
    }
    MPI_Barrier(c);
    MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_SUM, c);
    return bad;
}

int main(int argc, char **argv)
{
    MPI_Comm parent, inter, merged, mixed;
    MPI_Init(&argc, &argv);
    MPI_Comm_get_parent(&parent);
    int child = parent != MPI_COMM_NULL;
    if (!child)
        MPI_Comm_spawn(argv[0], MPI_ARGV_NULL, 2, MPI_INFO_NULL, 0, MPI_COMM_WORLD, &inter, MPI_ERRCODES_IGNORE);
    MPI_Intercomm_merge(child ? parent : inter, child, &merged);
    int rank, size;
    MPI_Comm_rank(merged, &rank);
    MPI_Comm_size(merged, &size);
    int bad = exercise(merged);
    MPI_Comm_split(merged, rank % 2, rank, &mixed); /* parents and children in both halves */
    bad += exercise(mixed);
    if (rank == 0)
        printf("dyn_spawn: %d ranks, %s\n", size, bad ? "FAILED" : "ok");
    MPI_Comm_free(&mixed);
    MPI_Comm_free(&merged);
    MPI_Comm_free(child ? &parent : &inter);
    MPI_Finalize();
    return 0;
}
