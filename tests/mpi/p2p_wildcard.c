/*
 * p2p_wildcard: MPI_ANY_SOURCE and MPI_ANY_TAG with messages from co-located and remote peers
 * at once. Each rank in turn is the receiver ("root"):
 *  1. every other rank streams K messages; the root takes them with (ANY_SOURCE, ANY_TAG)
 *     and checks statuses, counts and per-source order;
 *  2. the same with two tags, the root draining the later tag first with ANY_SOURCE;
 *  3. a wildcard receive posted before a specific-source receive that matches the same message
 *     gets that message (and the converse), for every peer, with and without ANY_TAG, and a
 *     wildcard pending alongside a specific receive takes a third peer's message, and receives
 *     from one peer posted before and after such a wildcard completed match in posting order;
 *  4. many wildcard receives pre-posted, then two messages from every peer at once: every peer's
 *     first message lands in an earlier-posted receive than its second.
 */
#include "p2p_check.h"

enum { K = 40, BIG = 10000, TAG_CTL = 1, TAG_T = 2, TAG_A = 3, TAG_B = 4, TAG_STREAM = 1000 };

static int stream_len(int seq) { return seq % 8 == 5 ? BIG : 2 + seq % 7; }
static int stream_tag(int src, int seq) { return TAG_STREAM + src * K + seq; }

/* stream sends K messages with per-message tags from every rank but root to root, which
 * receives them with (ANY_SOURCE, ANY_TAG). */
static void any_any_stream(int root)
{
    if (chk.rank != root) {
        MPI_Request req[K];
        int *buf[K];
        for (int seq = 0; seq < K; seq++) {
            int len = stream_len(seq);
            buf[seq] = chk_alloc(sizeof(int) * (size_t)len);
            for (int i = 0; i < len; i++)
                buf[seq][i] = chk.rank * 1000000 + seq * 1000 + i;
            MPI_Isend(buf[seq], len, MPI_INT, root, stream_tag(chk.rank, seq), MPI_COMM_WORLD, &req[seq]);
        }
        MPI_Waitall(K, req, MPI_STATUSES_IGNORE);
        for (int seq = 0; seq < K; seq++)
            free(buf[seq]);
        return;
    }
    int *next = calloc((size_t)chk.size, sizeof(int)), *m = chk_alloc(sizeof(int) * BIG);
    for (int i = 0; i < K * (chk.size - 1); i++) {
        MPI_Status st;
        MPI_Recv(m, BIG, MPI_INT, MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &st);
        int src = st.MPI_SOURCE;
        if (!CHECK(src >= 0 && src < chk.size && src != root && next[src] < K,
                   "any/any stream to %d: message %d has source %d", root, i, src))
            continue;
        int seq = next[src]++, len = stream_len(seq), ok = 1;
        char what[80];
        snprintf(what, sizeof what, "any/any stream to %d: message %d of %d", root, seq, src);
        chk_status(&st, src, stream_tag(src, seq), MPI_INT, len, what);
        for (int j = 0; j < len && ok; j++)
            ok = m[j] == src * 1000000 + seq * 1000 + j;
        CHECK(ok, "%s: payload %d %d ... is not message %d", what, m[0], len > 1 ? m[1] : 0, seq);
    }
    for (int src = 0; src < chk.size; src++)
        if (src != root)
            CHECK(next[src] == K, "any/any stream to %d: %d messages from %d, expected %d", root, next[src], src, K);
    free(next);
    free(m);
}

/* two_tags: every other rank sends K messages alternating tags A and B; root takes all B
 * messages with ANY_SOURCE, then all A messages, and checks per-source order within each tag. */
static void any_source_two_tags(int root)
{
    if (chk.rank != root) {
        int v[K];
        MPI_Request req[K];
        for (int seq = 0; seq < K; seq++) {
            v[seq] = chk.rank * 1000 + seq;
            MPI_Isend(&v[seq], 1, MPI_INT, root, seq % 2 ? TAG_B : TAG_A, MPI_COMM_WORLD, &req[seq]);
        }
        MPI_Waitall(K, req, MPI_STATUSES_IGNORE);
        return;
    }
    int *next = chk_alloc(sizeof(int) * (size_t)chk.size);
    for (int first = 1; first >= 0; first--) {
        int tag = first ? TAG_B : TAG_A;
        for (int src = 0; src < chk.size; src++)
            next[src] = first;
        for (int i = 0; i < K / 2 * (chk.size - 1); i++) {
            int v = -1;
            MPI_Status st;
            MPI_Recv(&v, 1, MPI_INT, MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, &st);
            int src = st.MPI_SOURCE;
            if (!CHECK(src >= 0 && src < chk.size && src != root && next[src] < K,
                       "two tags to %d: tag %d message %d has source %d", root, tag, i, src))
                continue;
            CHECK(st.MPI_TAG == tag && v == src * 1000 + next[src], "two tags to %d: from %d tag %d value %d, expected tag %d value %d",
                  root, src, st.MPI_TAG, v, tag, src * 1000 + next[src]);
            next[src] += 2;
        }
        for (int src = 0; src < chk.size; src++)
            if (src != root)
                CHECK(next[src] == K + first, "two tags to %d: tag %d got %d messages from %d, expected %d", root, tag,
                      (next[src] - first) / 2, src, K / 2);
    }
    free(next);
}

/* go tells peer to send its next message. */
static void go(int peer) { MPI_Send(NULL, 0, MPI_INT, peer, TAG_CTL, MPI_COMM_WORLD); }
static void wait_go(int root) { MPI_Recv(NULL, 0, MPI_INT, root, TAG_CTL, MPI_COMM_WORLD, MPI_STATUS_IGNORE); }

/* posting_order: root posts two receives that both match s's next message, first (a) then (b);
 * a must get s's first message and b its second. wild_first selects which of them is the
 * wildcard; any_tag makes the wildcard MPI_ANY_TAG too. */
static void posting_order(int root, int s, int wild_first, int any_tag)
{
    if (chk.rank == s) {
        for (int v = 1; v <= 2; v++) {
            wait_go(root);
            MPI_Send(&v, 1, MPI_INT, root, TAG_T, MPI_COMM_WORLD);
        }
        return;
    }
    if (chk.rank != root)
        return;
    int va = 0, vb = 0, wtag = any_tag ? MPI_ANY_TAG : TAG_T;
    MPI_Request a, b;
    if (wild_first) {
        MPI_Irecv(&va, 1, MPI_INT, MPI_ANY_SOURCE, wtag, MPI_COMM_WORLD, &a);
        MPI_Irecv(&vb, 1, MPI_INT, s, TAG_T, MPI_COMM_WORLD, &b);
    } else {
        MPI_Irecv(&va, 1, MPI_INT, s, TAG_T, MPI_COMM_WORLD, &a);
        MPI_Irecv(&vb, 1, MPI_INT, MPI_ANY_SOURCE, wtag, MPI_COMM_WORLD, &b);
    }
    char what[80];
    snprintf(what, sizeof what, "%s%s posted before %s, peer %d", wild_first ? "wildcard" : "specific",
             any_tag ? " (any tag)" : "", wild_first ? "specific" : "wildcard", s);
    /* Poll both, so that a message in the wrong receive fails the check instead of hanging. */
    MPI_Status sa, sb;
    int fa = 0, fb = 0;
    go(s);
    do {
        MPI_Test(&a, &fa, &sa);
        if (!fa)
            MPI_Test(&b, &fb, &sb);
    } while (!fa && !fb);
    if (!fb)
        MPI_Test(&b, &fb, &sb);
    CHECK(fa && !fb, "%s: the first message completed the %s posted receive", what, fa ? "first and the second" : "second");
    go(s);
    if (!fa)
        MPI_Wait(&a, &sa);
    if (!fb)
        MPI_Wait(&b, &sb);
    chk_status(&sa, s, TAG_T, MPI_INT, 1, what);
    chk_status(&sb, s, TAG_T, MPI_INT, 1, what);
    CHECK(va == 1 && vb == 2, "%s: the receives got %d and %d, expected 1 and 2", what, va, vb);
}

/* third_party: root posts a wildcard and a specific receive for s; a message from u (neither s
 * nor root) must go to the wildcard and leave the specific receive pending. */
static void third_party(int root, int s, int u)
{
    if (chk.rank == u || chk.rank == s) {
        int v = chk.rank + 100;
        wait_go(root);
        MPI_Send(&v, 1, MPI_INT, root, TAG_T, MPI_COMM_WORLD);
        return;
    }
    if (chk.rank != root)
        return;
    int vw = 0, vs = 0, flag = -1;
    MPI_Request w, sp;
    MPI_Status st;
    char what[80];
    snprintf(what, sizeof what, "wildcard and receive from %d pending, message from %d", s, u);
    MPI_Irecv(&vw, 1, MPI_INT, MPI_ANY_SOURCE, TAG_T, MPI_COMM_WORLD, &w);
    MPI_Irecv(&vs, 1, MPI_INT, s, TAG_T, MPI_COMM_WORLD, &sp);
    go(u);
    MPI_Wait(&w, &st);
    chk_status(&st, u, TAG_T, MPI_INT, 1, what);
    CHECK(vw == u + 100, "%s: wildcard got %d, expected %d", what, vw, u + 100);
    MPI_Test(&sp, &flag, MPI_STATUS_IGNORE);
    CHECK(!flag, "%s: the receive from %d completed before %d sent", what, s, s);
    go(s);
    MPI_Wait(&sp, &st);
    chk_status(&st, s, TAG_T, MPI_INT, 1, what);
    CHECK(vs == s + 100, "%s: specific receive got %d, expected %d", what, vs, s + 100);
}

/* after_wildcard: root posts a wildcard W and a receive R1 from s; a message from u (neither s
 * nor root) completes W; then root posts R2 from s. s's first message must go to R1, posted
 * before R2, whatever either was posted behind. */
static void after_wildcard(int root, int s, int u)
{
    if (chk.rank == u) {
        int v = u + 100;
        wait_go(root);
        MPI_Send(&v, 1, MPI_INT, root, TAG_T, MPI_COMM_WORLD);
        return;
    }
    if (chk.rank == s) {
        int v[2] = {1, 2};
        wait_go(root);
        MPI_Send(&v[0], 1, MPI_INT, root, TAG_T, MPI_COMM_WORLD);
        MPI_Send(&v[1], 1, MPI_INT, root, TAG_T, MPI_COMM_WORLD);
        return;
    }
    if (chk.rank != root)
        return;
    int vw = 0, v1 = 0, v2 = 0;
    MPI_Request w, r[2];
    MPI_Status st, sts[2];
    char what[96];
    snprintf(what, sizeof what, "receives from %d posted before and after a wildcard took %d's message", s, u);
    MPI_Irecv(&vw, 1, MPI_INT, MPI_ANY_SOURCE, TAG_T, MPI_COMM_WORLD, &w);
    MPI_Irecv(&v1, 1, MPI_INT, s, TAG_T, MPI_COMM_WORLD, &r[0]);
    go(u);
    MPI_Wait(&w, &st);
    CHECK(st.MPI_SOURCE == u && vw == u + 100, "%s: wildcard got %d from %d", what, vw, st.MPI_SOURCE);
    MPI_Irecv(&v2, 1, MPI_INT, s, TAG_T, MPI_COMM_WORLD, &r[1]);
    go(s);
    MPI_Waitall(2, r, sts);
    CHECK(v1 == 1 && v2 == 2, "%s: first receive got %d, second %d, expected 1 and 2", what, v1, v2);
}

/* preposted_wildcards: root posts 2(size-1) wildcard receives; then every other rank sends two
 * messages at once. Every source fills exactly two receives, its first message the earlier. */
static void preposted_wildcards(int root)
{
    int n = 2 * (chk.size - 1);
    if (chk.rank != root) {
        MPI_Barrier(MPI_COMM_WORLD);
        int v[2] = {chk.rank * 10, chk.rank * 10 + 1};
        MPI_Request req[2];
        MPI_Isend(&v[0], 1, MPI_INT, root, TAG_T, MPI_COMM_WORLD, &req[0]);
        MPI_Isend(&v[1], 1, MPI_INT, root, TAG_T, MPI_COMM_WORLD, &req[1]);
        MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
        return;
    }
    int *v = chk_alloc(sizeof(int) * (size_t)n), *seen = calloc((size_t)chk.size, sizeof(int));
    MPI_Request *req = chk_alloc(sizeof(MPI_Request) * (size_t)n);
    MPI_Status *st = chk_alloc(sizeof(MPI_Status) * (size_t)n);
    for (int i = 0; i < n; i++)
        MPI_Irecv(&v[i], 1, MPI_INT, MPI_ANY_SOURCE, TAG_T, MPI_COMM_WORLD, &req[i]);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Waitall(n, req, st);
    for (int i = 0; i < n; i++) {
        int src = st[i].MPI_SOURCE;
        if (!CHECK(src >= 0 && src < chk.size && src != root && seen[src] < 2,
                   "pre-posted wildcards at %d: receive %d has source %d", root, i, src))
            continue;
        CHECK(st[i].MPI_TAG == TAG_T && v[i] == src * 10 + seen[src],
              "pre-posted wildcards at %d: receive %d from %d got tag %d value %d, expected value %d", root, i, src,
              st[i].MPI_TAG, v[i], src * 10 + seen[src]);
        seen[src]++;
    }
    for (int src = 0; src < chk.size; src++)
        if (src != root)
            CHECK(seen[src] == 2, "pre-posted wildcards at %d: %d messages from %d, expected 2", root, seen[src], src);
    free(v);
    free(seen);
    free(req);
    free(st);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    for (int root = 0; root < chk.size; root++) {
        any_any_stream(root);
        MPI_Barrier(MPI_COMM_WORLD); /* the root's ANY_TAG receives must not see later phases */
        any_source_two_tags(root);
        for (int d = 1; d < chk.size; d++) {
            int s = (root + d) % chk.size;
            for (int variant = 0; variant < 4; variant++)
                posting_order(root, s, variant & 1, variant >> 1);
            if (chk.size > 2) {
                int u = (s + 1) % chk.size == root ? (s + 2) % chk.size : (s + 1) % chk.size;
                third_party(root, s, u);
                after_wildcard(root, s, u);
            }
        }
        preposted_wildcards(root);
        MPI_Barrier(MPI_COMM_WORLD);
    }
    return chk_finish("p2p_wildcard");
}
