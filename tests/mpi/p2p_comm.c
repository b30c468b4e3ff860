/*
 * p2p_comm: point-to-point on many communicators. With 2 hosts × 2 VMs the halves are
 * communicators within one host and the odd/even split one across hosts.
 *  - MPI_COMM_SELF and sends to oneself;
 *  - dup, split into halves (ranks reversed by key) and into odd/even, create from a reversed
 *    group, create_group on a subset, cart_create (with MPI_PROC_NULL neighbours) and cart_sub:
 *    a ring exchange and an ANY_SOURCE gather on each, statuses in the communicator's ranks;
 *  - the same tag in flight to the same peer on every communicator at once, received in
 *    another order: messages never cross communicators;
 *  - many communicators created, used and freed in a loop;
 *  - an intercommunicator ping-pong with MPI_ANY_SOURCE, then the merged intracommunicator.
 */
#include "p2p_check.h"

enum { TAG = 9, NCHURN = 40, NPING = 20 };

static int to(int d) { return (chk.rank + d) % chk.size; }
static int from(int d) { return (chk.rank - d + chk.size) % chk.size; }

/* world_of returns the world rank of rank r of group g. */
static int world_of(MPI_Group g, int r)
{
    MPI_Group wg;
    int w = MPI_UNDEFINED;
    MPI_Comm_group(MPI_COMM_WORLD, &wg);
    MPI_Group_translate_ranks(g, 1, &r, wg, &w);
    MPI_Group_free(&wg);
    return w;
}

static int comm_world_of(MPI_Comm c, int r)
{
    MPI_Group g;
    MPI_Comm_group(c, &g);
    int w = world_of(g, r);
    MPI_Group_free(&g);
    return w;
}

/* ring passes (comm rank, world rank) to the next rank of c and checks what comes from the
 * previous one; a communicator of one rank sends to itself. */
static void ring(MPI_Comm c, const char *name)
{
    int r, n, out[2], in[2] = {-1, -1};
    MPI_Comm_rank(c, &r);
    MPI_Comm_size(c, &n);
    int next = (r + 1) % n, prev = (r - 1 + n) % n;
    out[0] = r;
    out[1] = chk.rank;
    MPI_Status st;
    MPI_Sendrecv(out, 2, MPI_INT, next, TAG, in, 2, MPI_INT, prev, TAG, c, &st);
    char what[80];
    snprintf(what, sizeof what, "ring on %s", name);
    chk_status(&st, prev, TAG, MPI_INT, 2, what);
    CHECK(in[0] == prev && in[1] == comm_world_of(c, prev), "%s: got (%d, world %d) from %d, expected world %d", what, in[0],
          in[1], prev, comm_world_of(c, prev));
}

/* gather_any: every rank of c sends (comm rank, world rank) to rank 0, which receives them with
 * MPI_ANY_SOURCE and checks each status against its payload. */
static void gather_any(MPI_Comm c, const char *name)
{
    int r, n;
    MPI_Comm_rank(c, &r);
    MPI_Comm_size(c, &n);
    if (r != 0) {
        int out[2] = {r, chk.rank};
        MPI_Send(out, 2, MPI_INT, 0, TAG + 1, c);
        return;
    }
    int *seen = calloc((size_t)n, sizeof(int));
    for (int i = 1; i < n; i++) {
        int in[2];
        MPI_Status st;
        MPI_Recv(in, 2, MPI_INT, MPI_ANY_SOURCE, TAG + 1, c, &st);
        int s = st.MPI_SOURCE, ok = s > 0 && s < n && !seen[s];
        CHECK(ok && in[0] == s && in[1] == comm_world_of(c, s), "ANY_SOURCE on %s: status source %d, payload (%d, world %d)",
              name, s, in[0], in[1]);
        if (ok)
            seen[s] = 1;
    }
    free(seen);
}

static void exercise(MPI_Comm c, const char *name)
{
    ring(c, name);
    gather_any(c, name);
}

static void self(void)
{
    int v = chk.rank + 500, w = -1;
    MPI_Request r;
    MPI_Status st;
    MPI_Isend(&v, 1, MPI_INT, 0, TAG, MPI_COMM_SELF, &r);
    MPI_Recv(&w, 1, MPI_INT, MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_SELF, &st);
    MPI_Wait(&r, MPI_STATUS_IGNORE);
    chk_status(&st, 0, TAG, MPI_INT, 1, "MPI_COMM_SELF");
    CHECK(w == v, "MPI_COMM_SELF: got %d", w);
    w = -1;
    MPI_Issend(&v, 1, MPI_INT, chk.rank, TAG, MPI_COMM_WORLD, &r);
    MPI_Recv(&w, 1, MPI_INT, chk.rank, TAG, MPI_COMM_WORLD, &st);
    MPI_Wait(&r, MPI_STATUS_IGNORE);
    chk_status(&st, chk.rank, TAG, MPI_INT, 1, "Issend to self on MPI_COMM_WORLD");
    CHECK(w == v, "Issend to self on MPI_COMM_WORLD: got %d", w);
}

/* no_crossing sends one message with the same tag to the same peer on every communicator, in
 * order, and receives them in reverse order, on every other communicator with MPI_ANY_SOURCE.
 * The tag depends on d, so that the wildcards cannot take a message of the next round. */
static void no_crossing(MPI_Comm *comms, const char **names, int nc, int d)
{
    MPI_Request *req = chk_alloc(sizeof(MPI_Request) * (size_t)nc);
    int *out = chk_alloc(sizeof(int) * (size_t)nc);
    MPI_Group wg;
    MPI_Comm_group(MPI_COMM_WORLD, &wg);
    for (int i = 0; i < nc; i++) {
        MPI_Group g;
        int dst, w = to(d);
        MPI_Comm_group(comms[i], &g);
        MPI_Group_translate_ranks(wg, 1, &w, g, &dst);
        MPI_Group_free(&g);
        out[i] = chk.rank * 100 + i;
        MPI_Isend(&out[i], 1, MPI_INT, dst, TAG + d, comms[i], &req[i]);
    }
    for (int i = nc - 1; i >= 0; i--) {
        MPI_Group g;
        int src, w = from(d), in = -1;
        MPI_Comm_group(comms[i], &g);
        MPI_Group_translate_ranks(wg, 1, &w, g, &src);
        MPI_Group_free(&g);
        MPI_Status st;
        MPI_Recv(&in, 1, MPI_INT, i % 2 ? MPI_ANY_SOURCE : src, TAG + d, comms[i], &st);
        char what[80];
        snprintf(what, sizeof what, "same tag on %d communicators, %s", nc, names[i]);
        chk_status(&st, src, TAG + d, MPI_INT, 1, what);
        CHECK(in == from(d) * 100 + i, "%s: got message %d from world %d, expected message %d from %d", what, in % 100,
              in / 100, i, from(d));
    }
    MPI_Waitall(nc, req, MPI_STATUSES_IGNORE);
    MPI_Group_free(&wg);
    free(req);
    free(out);
}

/* churn creates, uses and frees communicators in a loop, so that context ids are reused. */
static void churn(void)
{
    for (int i = 0; i < NCHURN; i++) {
        MPI_Comm c;
        if (i % 2)
            MPI_Comm_split(MPI_COMM_WORLD, 0, chk.size - chk.rank, &c);
        else
            MPI_Comm_dup(MPI_COMM_WORLD, &c);
        int r, n, v = i * 1000 + chk.rank, w = -1;
        MPI_Comm_rank(c, &r);
        MPI_Comm_size(c, &n);
        MPI_Status st;
        MPI_Sendrecv(&v, 1, MPI_INT, (r + 1) % n, i, &w, 1, MPI_INT, MPI_ANY_SOURCE, MPI_ANY_TAG, c, &st);
        int prev = (r - 1 + n) % n;
        CHECK(st.MPI_SOURCE == prev && st.MPI_TAG == i && w == i * 1000 + comm_world_of(c, prev),
              "communicator %d of the churn: got %d from %d tag %d", i, w, st.MPI_SOURCE, st.MPI_TAG);
        MPI_Comm_free(&c);
        CHECK(c == MPI_COMM_NULL, "Comm_free left the handle");
    }
}

/* intercomm: even and odd world ranks form the two groups; local rank i ping-pongs with remote
 * rank i, the even side receiving with MPI_ANY_SOURCE. Then the merged communicator. */
static void intercomm(void)
{
    MPI_Comm local, inter, merged;
    int parity = chk.rank % 2, lr, ln, rn;
    MPI_Comm_split(MPI_COMM_WORLD, parity, chk.rank, &local);
    MPI_Intercomm_create(local, 0, MPI_COMM_WORLD, parity ? 0 : 1, 77, &inter);
    MPI_Comm_rank(inter, &lr);
    MPI_Comm_size(inter, &ln);
    MPI_Comm_remote_size(inter, &rn);
    int flag = 0;
    MPI_Comm_test_inter(inter, &flag);
    CHECK(flag && ln == (chk.size + 1 - parity) / 2 && rn == chk.size - ln, "intercommunicator: inter %d, sizes %d/%d", flag, ln, rn);
    MPI_Group rg;
    MPI_Comm_remote_group(inter, &rg);
    if (lr < rn) {
        int peer_world = world_of(rg, lr);
        for (int i = 0; i < NPING; i++) {
            int v = -1, w = -1;
            MPI_Status st;
            if (!parity) {
                v = chk.rank * 1000 + i;
                MPI_Send(&v, 1, MPI_INT, lr, TAG, inter);
                MPI_Recv(&w, 1, MPI_INT, MPI_ANY_SOURCE, TAG, inter, &st);
                CHECK(st.MPI_SOURCE == lr && w == v + 1, "intercomm ping %d: reply %d from remote %d", i, w, st.MPI_SOURCE);
            } else {
                MPI_Recv(&w, 1, MPI_INT, lr, TAG, inter, &st);
                CHECK(st.MPI_SOURCE == lr && w == peer_world * 1000 + i, "intercomm ping %d: %d from remote %d", i, w, st.MPI_SOURCE);
                w++;
                MPI_Send(&w, 1, MPI_INT, lr, TAG, inter);
            }
        }
    }
    MPI_Group_free(&rg);
    MPI_Intercomm_merge(inter, parity, &merged);
    exercise(merged, "merged intercommunicator");
    MPI_Comm_free(&merged);
    MPI_Comm_free(&inter);
    MPI_Comm_free(&local);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    self();

    MPI_Comm dup, halves, oddeven, rev, sub = MPI_COMM_NULL, cart, row;
    MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    MPI_Comm_split(MPI_COMM_WORLD, chk.rank < chk.size / 2, -chk.rank, &halves);
    MPI_Comm_split(MPI_COMM_WORLD, chk.rank % 2, chk.rank, &oddeven);

    MPI_Group wg, rg, sg;
    MPI_Comm_group(MPI_COMM_WORLD, &wg);
    int *ranks = chk_alloc(sizeof(int) * (size_t)chk.size);
    for (int i = 0; i < chk.size; i++)
        ranks[i] = chk.size - 1 - i;
    MPI_Group_incl(wg, chk.size, ranks, &rg);
    MPI_Comm_create(MPI_COMM_WORLD, rg, &rev);
    /* create_group is collective over the group only: world ranks 0 and size-1 */
    int pair[2] = {0, chk.size - 1};
    MPI_Group_incl(wg, 2, pair, &sg);
    if (chk.rank == 0 || chk.rank == chk.size - 1)
        MPI_Comm_create_group(MPI_COMM_WORLD, sg, 5, &sub);

    int dims[2] = {0, 0}, periods[2] = {1, 0}, keep[2] = {0, 1};
    MPI_Dims_create(chk.size, 2, dims);
    MPI_Cart_create(MPI_COMM_WORLD, 2, dims, periods, 0, &cart);
    MPI_Cart_sub(cart, keep, &row);

    exercise(dup, "dup");
    exercise(halves, "halves (reversed)");
    exercise(oddeven, "odd/even");
    exercise(rev, "group-reversed");
    if (sub != MPI_COMM_NULL)
        exercise(sub, "create_group subset");
    exercise(cart, "cart");
    exercise(row, "cart_sub row");

    /* cart neighbours, with MPI_PROC_NULL beyond the edges of the non-periodic dimension */
    for (int dim = 0; dim < 2; dim++) {
        int lo, hi, r, in[2] = {-5, -5};
        MPI_Comm_rank(cart, &r);
        MPI_Cart_shift(cart, dim, 1, &lo, &hi);
        MPI_Status st;
        MPI_Sendrecv(&r, 1, MPI_INT, hi, TAG, &in[0], 1, MPI_INT, lo, TAG, cart, &st);
        CHECK(st.MPI_SOURCE == lo && (lo == MPI_PROC_NULL ? in[0] == -5 : in[0] == lo),
              "cart shift dim %d up: value %d, status source %d, expected %d", dim, in[0], st.MPI_SOURCE, lo);
        MPI_Sendrecv(&r, 1, MPI_INT, lo, TAG, &in[1], 1, MPI_INT, hi, TAG, cart, &st);
        CHECK(st.MPI_SOURCE == hi && (hi == MPI_PROC_NULL ? in[1] == -5 : in[1] == hi),
              "cart shift dim %d down: value %d, status source %d, expected %d", dim, in[1], st.MPI_SOURCE, hi);
    }

    MPI_Comm comms[] = {MPI_COMM_WORLD, dup, rev, cart};
    const char *names[] = {"world", "dup", "group-reversed", "cart"};
    for (int d = 1; d < chk.size; d++)
        no_crossing(comms, names, 4, d);
    MPI_Barrier(MPI_COMM_WORLD);
    int flag = -1;
    MPI_Status st;
    memset(&st, 0, sizeof st);
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st);
    CHECK(!flag, "a message is left on MPI_COMM_WORLD from %d tag %d", st.MPI_SOURCE, st.MPI_TAG);
    MPI_Barrier(MPI_COMM_WORLD);

    churn();
    intercomm();

    MPI_Comm_free(&dup);
    MPI_Comm_free(&halves);
    MPI_Comm_free(&oddeven);
    MPI_Comm_free(&rev);
    if (sub != MPI_COMM_NULL)
        MPI_Comm_free(&sub);
    MPI_Comm_free(&cart);
    MPI_Comm_free(&row);
    MPI_Group_free(&wg);
    MPI_Group_free(&rg);
    MPI_Group_free(&sg);
    free(ranks);
    return chk_finish("p2p_comm");
}
