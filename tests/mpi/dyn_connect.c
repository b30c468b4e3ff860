/*
 * dyn_connect: MPI_Comm_accept and MPI_Comm_connect inside one MPI_COMM_WORLD. The ranks split
 * by parity; world rank 0 opens a port and sends its name to world rank 1; the even half accepts
 * on its communicator, the odd half connects on its own. On the intercommunicator the two halves
 * reduce and exchange messages pairwise, then merge it, reduce and pass a ring on the merged
 * communicator, and disconnect. Rank 0 prints
 *
 *   dyn_connect: <N> ranks, <ok|FAILED>, gated calls <G>
 *
 * where G counts this rank's blocking calls collective over a communicator that the shim gates
 * (the split, the accept or connect, the reduction on the intercommunicator, the merge and the
 * disconnect), which the Go test finds again in every rank's statistics. Needs at least 2 ranks.
 */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    int rank, size, bad = 0, gated = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm half, inter, merged;
    MPI_Comm_split(MPI_COMM_WORLD, rank % 2, rank, &half);
    gated++;
    char port[MPI_MAX_PORT_NAME] = {0};
    if (rank == 0) {
        MPI_Open_port(MPI_INFO_NULL, port);
        MPI_Send(port, MPI_MAX_PORT_NAME, MPI_CHAR, 1, 5, MPI_COMM_WORLD);
    } else if (rank == 1) {
        MPI_Recv(port, MPI_MAX_PORT_NAME, MPI_CHAR, 0, 5, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    if (rank % 2 == 0)
        MPI_Comm_accept(port, MPI_INFO_NULL, 0, half, &inter);
    else
        MPI_Comm_connect(port, MPI_INFO_NULL, 0, half, &inter);
    gated++;

    /* the intercommunicator: every rank gets the sum of the other half's world ranks */
    int hrank, hsize, rsize, sum = -1, want = 0;
    MPI_Comm_rank(half, &hrank);
    MPI_Comm_size(half, &hsize);
    MPI_Comm_remote_size(inter, &rsize);
    bad += hsize + rsize != size;
    for (int r = (rank + 1) % 2; r < size; r += 2)
        want += r;
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, inter);
    gated++;
    bad += sum != want;
    if (hrank < rsize) { /* pairs: the same rank in both halves */
        int got = -1;
        MPI_Sendrecv(&rank, 1, MPI_INT, hrank, 9, &got, 1, MPI_INT, hrank, 9, inter, MPI_STATUS_IGNORE);
        bad += got != 2 * hrank + (rank + 1) % 2;
    }

    /* merged, the even half first: a reduction and a ring */
    int mrank, msize, total = -1, prev = -1;
    MPI_Intercomm_merge(inter, rank % 2, &merged);
    gated++;
    MPI_Comm_rank(merged, &mrank);
    MPI_Comm_size(merged, &msize);
    bad += msize != size;
    MPI_Allreduce(&rank, &total, 1, MPI_INT, MPI_SUM, merged);
    bad += total != size * (size - 1) / 2;
    MPI_Sendrecv(&mrank, 1, MPI_INT, (mrank + 1) % msize, 3, &prev, 1, MPI_INT, (mrank + msize - 1) % msize, 3, merged,
                 MPI_STATUS_IGNORE);
    bad += prev != (mrank + msize - 1) % msize;
    MPI_Comm_free(&merged);

    MPI_Comm_disconnect(&inter);
    gated++;
    if (rank == 0)
        MPI_Close_port(port);
    MPI_Comm_free(&half);
    MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("dyn_connect: %d ranks, %s, gated calls %d\n", size, bad ? "FAILED" : "ok", gated);
    MPI_Finalize();
    return 0;
}
