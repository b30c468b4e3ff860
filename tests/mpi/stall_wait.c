/*
 * stall_wait: two waits that last, for the shim's stall report (IVSHIM_STALL_SECONDS). Rank 1
 * waits in MPI_Recv for a message rank 0 sends only after sleeping SECONDS (argv[1], default 3)
 * outside MPI, then in MPI_Ssend for rank 0 to post its receive after sleeping again. Run with
 * ranks 0 and 1 co-located, rank 1 spends both waits in the shim's wait loop, and its stall
 * report must name a posted receive from rank 0 with tag TAG_RECV, then a synchronous send that
 * awaits its ACK; rank 0, asleep outside MPI, must report nothing. Ranks beyond 1 only take part
 * in the report.
 */
#include <stdlib.h>
#include <unistd.h>
#include "p2p_check.h"

enum { TAG_RECV = 7, TAG_SSEND = 8, N = 1000 };

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    int seconds = argc > 1 ? atoi(argv[1]) : 3;
    int *buf = chk_alloc(N * sizeof *buf);
    if (chk.rank == 0) {
        sleep((unsigned)seconds);
        chk_fill(buf, N * sizeof *buf, 1);
        MPI_Send(buf, N, MPI_INT, 1, TAG_RECV, MPI_COMM_WORLD);
        sleep((unsigned)seconds);
        MPI_Status st;
        MPI_Recv(buf, N, MPI_INT, 1, TAG_SSEND, MPI_COMM_WORLD, &st);
        chk_status(&st, 1, TAG_SSEND, MPI_INT, N, "the synchronous send's receive");
        size_t bad = chk_verify(buf, N * sizeof *buf, 2);
        CHECK(bad == N * sizeof *buf, "the synchronous send's payload differs at byte %zu", bad);
    } else if (chk.rank == 1) {
        MPI_Status st;
        MPI_Recv(buf, N, MPI_INT, 0, TAG_RECV, MPI_COMM_WORLD, &st);
        chk_status(&st, 0, TAG_RECV, MPI_INT, N, "the late send's receive");
        size_t bad = chk_verify(buf, N * sizeof *buf, 1);
        CHECK(bad == N * sizeof *buf, "the late send's payload differs at byte %zu", bad);
        chk_fill(buf, N * sizeof *buf, 2);
        MPI_Ssend(buf, N, MPI_INT, 0, TAG_SSEND, MPI_COMM_WORLD);
    }
    free(buf);
    return chk_finish("stall_wait");
}
