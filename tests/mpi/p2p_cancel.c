/*
 * p2p_cancel: MPI_Cancel with every other rank (co-located and remote) and with MPI_ANY_SOURCE.
 *  - An unmatched receive must be cancelled (MPI_Test_cancelled true, completed through Wait,
 *    Test, Waitall or Waitany), and a message sent afterwards goes to the next receive.
 *  - A send (standard small, standard large, synchronous) may or may not be cancelled; only
 *    what MPI mandates is checked: if reported cancelled its message is never received,
 *    otherwise it is received exactly once. Both outcomes count the same checks.
 *  - A persistent receive can be cancelled and then started again and used.
 *  - A receive that already completed cannot be cancelled.
 */
#include "p2p_check.h"

enum { TAG_CTL = 1, TAG_UNMATCHED = 2, TAG_ANY = 3, TAG_SEND = 4, TAG_PERSIST = 5, TAG_DONE = 6, BIG = 50000 };

static int to(int d) { return (chk.rank + d) % chk.size; }
static int from(int d) { return (chk.rank - d + chk.size) % chk.size; }

/* complete_cancelled completes a cancelled receive with one of several calls and returns its
 * status. */
static void complete_cancelled(MPI_Request *r, int how, MPI_Status *st)
{
    int flag = 0, idx;
    switch (how % 4) {
    case 0:
        MPI_Wait(r, st);
        break;
    case 1:
        do
            MPI_Test(r, &flag, st);
        while (!flag);
        break;
    case 2:
        MPI_Waitall(1, r, st);
        break;
    default:
        MPI_Waitany(1, r, &idx, st);
        break;
    }
}

/* unmatched_recv: receives nobody has sent to are cancelled; messages sent afterwards on the
 * same tag go to new receives. */
static void unmatched_recv(int d)
{
    int v = -1, w = -1, one = chk.rank * 100 + d;
    MPI_Request r, s[2];
    MPI_Status st;
    int c = 0;
    MPI_Irecv(&v, 1, MPI_INT, from(d), TAG_UNMATCHED, MPI_COMM_WORLD, &r);
    MPI_Cancel(&r);
    complete_cancelled(&r, d, &st);
    MPI_Test_cancelled(&st, &c);
    CHECK(c && r == MPI_REQUEST_NULL && v == -1, "cancel of an unmatched receive from %d: cancelled %d, value %d", from(d), c, v);

    MPI_Irecv(&w, 1, MPI_INT, MPI_ANY_SOURCE, d % 2 ? MPI_ANY_TAG : TAG_ANY, MPI_COMM_WORLD, &r);
    MPI_Cancel(&r);
    complete_cancelled(&r, d + 1, &st);
    MPI_Test_cancelled(&st, &c);
    CHECK(c && w == -1, "cancel of an unmatched ANY_SOURCE receive: cancelled %d, value %d", c, w);

    /* Nobody sends before everybody has cancelled. */
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Isend(&one, 1, MPI_INT, to(d), TAG_UNMATCHED, MPI_COMM_WORLD, &s[0]);
    MPI_Isend(&one, 1, MPI_INT, to(d), TAG_ANY, MPI_COMM_WORLD, &s[1]);
    MPI_Recv(&v, 1, MPI_INT, from(d), TAG_UNMATCHED, MPI_COMM_WORLD, &st);
    chk_status(&st, from(d), TAG_UNMATCHED, MPI_INT, 1, "receive after a cancelled receive");
    MPI_Test_cancelled(&st, &c);
    CHECK(v == from(d) * 100 + d && !c, "receive after a cancelled receive: value %d cancelled %d", v, c);
    MPI_Recv(&w, 1, MPI_INT, MPI_ANY_SOURCE, TAG_ANY, MPI_COMM_WORLD, &st);
    chk_status(&st, from(d), TAG_ANY, MPI_INT, 1, "ANY_SOURCE receive after a cancelled one");
    CHECK(w == from(d) * 100 + d, "ANY_SOURCE receive after a cancelled one: value %d", w);
    MPI_Waitall(2, s, MPI_STATUSES_IGNORE);
    MPI_Barrier(MPI_COMM_WORLD);
}

/* cancel_send tries to cancel a send of n ints to to(d) before the receiver posts anything, and
 * tells the receiver the outcome. The receiver has two receives posted for the tag; the sender
 * then sends a second message B. Cancelled: the first receive gets B and the second must be
 * cancellable; not cancelled: the first gets A, the second B. */
static void cancel_send(int d, int n, int sync)
{
    int *a = chk_alloc(sizeof(int) * (size_t)n), *ra = chk_alloc(sizeof(int) * (size_t)n), b = -(chk.rank + 1), rb = 0;
    for (int i = 0; i < n; i++)
        a[i] = chk.rank * 1000000 + i;
    MPI_Request sa, ctl[3], r1, r2;
    MPI_Status st;
    int cancelled = 0, peer_cancelled = -1, c2 = 0;
    char what[80];
    snprintf(what, sizeof what, "%s send of %d ints from %d", sync ? "synchronous" : "standard", n, from(d));

    if (sync)
        MPI_Issend(a, n, MPI_INT, to(d), TAG_SEND, MPI_COMM_WORLD, &sa);
    else
        MPI_Isend(a, n, MPI_INT, to(d), TAG_SEND, MPI_COMM_WORLD, &sa);
    MPI_Cancel(&sa);
    MPI_Isend(NULL, 0, MPI_INT, to(d), TAG_CTL, MPI_COMM_WORLD, &ctl[0]);

    MPI_Recv(NULL, 0, MPI_INT, from(d), TAG_CTL, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Irecv(ra, n, MPI_INT, from(d), TAG_SEND, MPI_COMM_WORLD, &r1);
    MPI_Irecv(&rb, 1, MPI_INT, from(d), TAG_SEND, MPI_COMM_WORLD, &r2);

    MPI_Wait(&sa, &st);
    MPI_Test_cancelled(&st, &cancelled);
    MPI_Isend(&cancelled, 1, MPI_INT, to(d), TAG_CTL, MPI_COMM_WORLD, &ctl[1]);
    MPI_Isend(&b, 1, MPI_INT, to(d), TAG_SEND, MPI_COMM_WORLD, &ctl[2]);

    MPI_Recv(&peer_cancelled, 1, MPI_INT, from(d), TAG_CTL, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Wait(&r1, &st);
    if (peer_cancelled) {
        chk_status(&st, from(d), TAG_SEND, MPI_INT, 1, what);
        CHECK(ra[0] == -(from(d) + 1), "%s, reported cancelled: first receive got %d, expected the second message", what, ra[0]);
        MPI_Cancel(&r2);
        MPI_Wait(&r2, &st);
        MPI_Test_cancelled(&st, &c2);
        CHECK(c2, "%s, reported cancelled: a second message arrived or the spare receive was not cancelled", what);
    } else {
        chk_status(&st, from(d), TAG_SEND, MPI_INT, n, what);
        int i = 0;
        while (i < n && ra[i] == from(d) * 1000000 + i)
            i++;
        CHECK(i == n, "%s, not cancelled: first receive differs at element %d", what, i);
        MPI_Wait(&r2, &st);
        CHECK(rb == -(from(d) + 1), "%s, not cancelled: second receive got %d", what, rb);
    }
    MPI_Waitall(3, ctl, MPI_STATUSES_IGNORE);
    free(a);
    free(ra);
    MPI_Barrier(MPI_COMM_WORLD);
}

/* persistent_recv: a started persistent receive is cancelled, started again and used. */
static void persistent_recv(int d)
{
    int v = -1, one = chk.rank * 7 + d, c = 1;
    MPI_Request p, s;
    MPI_Status st;
    MPI_Recv_init(&v, 1, MPI_INT, from(d), TAG_PERSIST, MPI_COMM_WORLD, &p);
    MPI_Start(&p);
    MPI_Cancel(&p);
    MPI_Wait(&p, &st);
    MPI_Test_cancelled(&st, &c);
    CHECK(c && p != MPI_REQUEST_NULL && v == -1, "cancel of a started persistent receive from %d: cancelled %d", from(d), c);
    MPI_Start(&p);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Isend(&one, 1, MPI_INT, to(d), TAG_PERSIST, MPI_COMM_WORLD, &s);
    MPI_Wait(&p, &st);
    MPI_Test_cancelled(&st, &c);
    chk_status(&st, from(d), TAG_PERSIST, MPI_INT, 1, "persistent receive restarted after cancel");
    CHECK(!c && v == from(d) * 7 + d, "persistent receive restarted after cancel: cancelled %d value %d", c, v);
    MPI_Request_free(&p);
    MPI_Wait(&s, MPI_STATUS_IGNORE);
}

/* completed_recv: a receive known to be complete (Request_get_status) is not cancelled. */
static void completed_recv(int d)
{
    int n = d % 2 ? BIG : 3;
    int *out = chk_alloc(sizeof(int) * (size_t)n), *in = chk_alloc(sizeof(int) * (size_t)n), flag = 0, c = 1;
    for (int i = 0; i < n; i++)
        out[i] = chk.rank + i;
    MPI_Request r, s;
    MPI_Status st;
    MPI_Irecv(in, n, MPI_INT, from(d), TAG_DONE, MPI_COMM_WORLD, &r);
    MPI_Isend(out, n, MPI_INT, to(d), TAG_DONE, MPI_COMM_WORLD, &s);
    do
        MPI_Request_get_status(r, &flag, MPI_STATUS_IGNORE);
    while (!flag);
    MPI_Cancel(&r);
    MPI_Wait(&r, &st);
    MPI_Test_cancelled(&st, &c);
    int i = 0;
    while (i < n && in[i] == from(d) + i)
        i++;
    chk_status(&st, from(d), TAG_DONE, MPI_INT, n, "cancel of a completed receive");
    CHECK(!c && i == n, "cancel of a completed receive of %d ints from %d: cancelled %d, data differs at %d", n, from(d), c, i);
    MPI_Wait(&s, MPI_STATUS_IGNORE);
    free(out);
    free(in);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    for (int d = 1; d < chk.size; d++) {
        unmatched_recv(d);
        cancel_send(d, 1, 0);
        cancel_send(d, BIG, 0);
        cancel_send(d, 1, 1);
        cancel_send(d, BIG, 1);
        persistent_recv(d);
        completed_recv(d);
    }
    return chk_finish("p2p_cancel");
}
