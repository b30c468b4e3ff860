/*
 * p2p_wait: every completion call — MPI_Wait, MPI_Test, MPI_Waitall, MPI_Testall, MPI_Waitany,
 * MPI_Testany, MPI_Waitsome, MPI_Testsome, MPI_Request_get_status — on arrays that mix receives
 * and sends with every other rank (co-located and remote), MPI_REQUEST_NULL entries, an inactive
 * persistent request and started persistent requests, with statuses and with
 * MPI_STATUS(ES)_IGNORE. Each round also checks the calls on a receive that cannot have
 * completed yet (its sender waits for this rank's go-ahead): tests say "not yet" and leave the
 * request alone.
 */
#include "p2p_check.h"

enum kind { E_NULL, E_RECV, E_SEND, E_INACTIVE, E_PRECV, E_PSEND, E_GATED };
static const char *kind_name[] = {"null", "receive", "send", "inactive persistent", "persistent receive",
                                  "persistent send", "gated receive"};

enum { MAXE = 64, TAG_GO = 1, TAG_GATED = 2, TAG_P = 3, TAG_D = 10, TAG_NEVER = 99 };

enum variant { V_WAITALL, V_WAITALL_IGNORE, V_TESTALL, V_WAITANY, V_TESTANY, V_WAITSOME, V_TESTSOME,
               V_TESTSOME_IGNORE, V_WAIT, V_TEST, V_GET_STATUS, NVARIANT };
static const char *variant_name[] = {"Waitall", "Waitall(STATUSES_IGNORE)", "Testall", "Waitany", "Testany",
                                     "Waitsome", "Testsome", "Testsome(STATUSES_IGNORE)", "Wait", "Test",
                                     "Request_get_status"};

struct entry {
    enum kind kind;
    int peer, tag, len; /* len in bytes */
    unsigned char *buf;
};

static struct round {
    int variant, n;
    struct entry e[MAXE];
    MPI_Request req[MAXE];
    MPI_Status st[MAXE];
    int have_st[MAXE]; /* st[i] was returned by the completion call */
    MPI_Request precv, psend, inactive;
} R;

static int to(int d) { return (chk.rank + d) % chk.size; }
static int from(int d) { return (chk.rank - d + chk.size) % chk.size; }

/* length in bytes of the message of round v for shift d: zero, small, beyond eager limits */
static int msg_len(int v, int d)
{
    static const int lens[] = {16, 80000, 0, 4000, 1};
    return lens[(v + d) % 5];
}

static uint64_t seed(int v, int src, int dst, int tag) { return (uint64_t)((((v * 64 + src) * 64 + dst) * 128) + tag); }

static void add(enum kind k, int peer, int tag, int len)
{
    struct entry *e = &R.e[R.n];
    e->kind = k;
    e->peer = peer;
    e->tag = tag;
    e->len = len;
    e->buf = chk_alloc((size_t)len);
    switch (k) {
    case E_NULL:
        R.req[R.n] = MPI_REQUEST_NULL;
        break;
    case E_RECV:
    case E_GATED:
        MPI_Irecv(e->buf, len, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &R.req[R.n]);
        break;
    case E_SEND:
        chk_fill(e->buf, (size_t)len, seed(R.variant, chk.rank, peer, tag));
        MPI_Isend(e->buf, len, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &R.req[R.n]);
        break;
    case E_INACTIVE:
        MPI_Recv_init(e->buf, len, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &R.inactive);
        R.req[R.n] = R.inactive;
        break;
    case E_PRECV:
        MPI_Recv_init(e->buf, len, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &R.precv);
        MPI_Start(&R.precv);
        R.req[R.n] = R.precv;
        break;
    case E_PSEND:
        chk_fill(e->buf, (size_t)len, seed(R.variant, chk.rank, peer, tag));
        MPI_Send_init(e->buf, len, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &R.psend);
        MPI_Start(&R.psend);
        R.req[R.n] = R.psend;
        break;
    }
    R.have_st[R.n] = 0;
    R.n++;
}

static int is_active(enum kind k) { return k != E_NULL && k != E_INACTIVE; }
static int is_persistent(enum kind k) { return k == E_INACTIVE || k == E_PRECV || k == E_PSEND; }

/* post starts the round's requests in a fixed order that interleaves kinds. */
static void post(int v)
{
    R.variant = v;
    R.n = 0;
    add(E_RECV, from(1), TAG_D + 1, msg_len(v, 1));
    add(E_NULL, 0, 0, 0);
    add(E_SEND, to(1), TAG_D + 1, msg_len(v, 1));
    add(E_INACTIVE, from(1), TAG_NEVER, 8);
    for (int d = 2; d < chk.size && R.n + 6 < MAXE; d++) {
        add(E_SEND, to(d), TAG_D + d, msg_len(v, d));
        add(E_RECV, from(d), TAG_D + d, msg_len(v, d));
    }
    add(E_GATED, from(1), TAG_GATED, 12);
    add(E_PRECV, from(1), TAG_P, 333);
    add(E_NULL, 0, 0, 0);
    add(E_PSEND, to(1), TAG_P, 333);
}

/* gated_checks: the gated receive has not completed, so every test call reports that and
 * leaves requests untouched. */
static void gated_checks(void)
{
    int g = -1;
    for (int i = 0; i < R.n; i++)
        if (R.e[i].kind == E_GATED)
            g = i;
    MPI_Request saved[MAXE], sub[3] = {R.req[g], MPI_REQUEST_NULL, R.inactive}, keep = R.req[g];
    memcpy(saved, R.req, sizeof saved);
    MPI_Status st;
    int flag = -1, idx = -1, out = -1, idxs[MAXE];
    MPI_Testall(R.n, R.req, &flag, R.st);
    CHECK(!flag && memcmp(saved, R.req, sizeof(MPI_Request) * (size_t)R.n) == 0,
          "%s round: Testall before the gated message: flag %d or requests changed", variant_name[R.variant], flag);
    MPI_Test(&R.req[g], &flag, &st);
    CHECK(!flag && R.req[g] == keep, "%s round: Test of the gated receive: flag %d", variant_name[R.variant], flag);
    MPI_Testany(3, sub, &idx, &flag, &st);
    CHECK(!flag && idx == MPI_UNDEFINED && sub[0] == keep,
          "%s round: Testany of gated, null, inactive: flag %d index %d", variant_name[R.variant], flag, idx);
    MPI_Testsome(3, sub, &out, idxs, MPI_STATUSES_IGNORE);
    CHECK(out == 0 && sub[0] == keep, "%s round: Testsome of gated, null, inactive: outcount %d", variant_name[R.variant], out);
    MPI_Request_get_status(R.req[g], &flag, &st);
    CHECK(!flag, "%s round: Request_get_status of the gated receive: flag %d", variant_name[R.variant], flag);
}

/* go_ahead lets the rank before this one send its gated message to us, and waits for the go
 * of the rank after, then sends our gated message to it. Returns the send's request. */
static MPI_Request go_ahead(unsigned char *gated)
{
    MPI_Request r[2], s;
    MPI_Isend(NULL, 0, MPI_BYTE, from(1), TAG_GO, MPI_COMM_WORLD, &r[0]);
    MPI_Irecv(NULL, 0, MPI_BYTE, to(1), TAG_GO, MPI_COMM_WORLD, &r[1]);
    MPI_Waitall(2, r, MPI_STATUSES_IGNORE);
    chk_fill(gated, 12, seed(R.variant, chk.rank, to(1), TAG_GATED));
    MPI_Isend(gated, 12, MPI_BYTE, to(1), TAG_GATED, MPI_COMM_WORLD, &s);
    return s;
}

static int count_active(void)
{
    int n = 0;
    for (int i = 0; i < R.n; i++)
        n += is_active(R.e[i].kind);
    return n;
}

/* record notes a completion of entry i reported by a multiple-completion call. */
static void record(int i, const MPI_Status *st, int *seen, int *done)
{
    if (!CHECK(i >= 0 && i < R.n && is_active(R.e[i].kind) && !seen[i], "%s: completed index %d is not an active request",
               variant_name[R.variant], i))
        return;
    seen[i] = 1;
    (*done)++;
    if (st != NULL) {
        R.st[i] = *st;
        R.have_st[i] = 1;
    }
}

/* complete finishes every request of the round with the round's variant. */
static void complete(void)
{
    int v = R.variant, n = R.n, active = count_active(), done = 0, flag, idx, out, idxs[MAXE], seen[MAXE] = {0};
    MPI_Status sts[MAXE], st;
    switch (v) {
    case V_WAITALL:
        MPI_Waitall(n, R.req, R.st);
        for (int i = 0; i < n; i++)
            R.have_st[i] = 1;
        break;
    case V_WAITALL_IGNORE:
        MPI_Waitall(n, R.req, MPI_STATUSES_IGNORE);
        break;
    case V_TESTALL:
        do
            MPI_Testall(n, R.req, &flag, R.st);
        while (!flag);
        for (int i = 0; i < n; i++)
            R.have_st[i] = 1;
        break;
    case V_WAITANY:
    case V_TESTANY:
        while (done < active) {
            flag = 1;
            if (v == V_WAITANY)
                MPI_Waitany(n, R.req, &idx, &st);
            else
                MPI_Testany(n, R.req, &idx, &flag, &st);
            if (!flag)
                continue;
            if (!CHECK(idx != MPI_UNDEFINED, "%s: MPI_UNDEFINED with %d requests active", variant_name[v], active - done))
                break;
            record(idx, &st, seen, &done);
        }
        flag = 0;
        if (v == V_WAITANY) {
            MPI_Waitany(n, R.req, &idx, &st);
            flag = 1;
        } else {
            MPI_Testany(n, R.req, &idx, &flag, &st);
        }
        CHECK(flag && idx == MPI_UNDEFINED, "%s with nothing active: flag %d index %d", variant_name[v], flag, idx);
        /* MPI wants the empty status from Testany too, but MPICH 4.0 leaves st untouched. */
        if (v == V_WAITANY)
            chk_empty(&st, variant_name[v]);
        break;
    case V_WAITSOME:
    case V_TESTSOME:
    case V_TESTSOME_IGNORE:
        while (done < active) {
            if (v == V_WAITSOME)
                MPI_Waitsome(n, R.req, &out, idxs, sts);
            else
                MPI_Testsome(n, R.req, &out, idxs, v == V_TESTSOME ? sts : MPI_STATUSES_IGNORE);
            if (out == MPI_UNDEFINED) { /* a failure only: the number of calls depends on timing */
                CHECK(0, "%s: MPI_UNDEFINED with %d requests active", variant_name[v], active - done);
                break;
            }
            for (int k = 0; k < out; k++)
                record(idxs[k], v == V_TESTSOME_IGNORE ? NULL : &sts[k], seen, &done);
        }
        if (v == V_WAITSOME)
            MPI_Waitsome(n, R.req, &out, idxs, sts);
        else
            MPI_Testsome(n, R.req, &out, idxs, sts);
        CHECK(out == MPI_UNDEFINED, "%s with nothing active: outcount %d", variant_name[v], out);
        break;
    case V_WAIT:
        for (int i = n - 1; i >= 0; i--) {
            MPI_Wait(&R.req[i], i % 3 == 1 && R.e[i].kind == E_SEND ? MPI_STATUS_IGNORE : &R.st[i]);
            R.have_st[i] = !(i % 3 == 1 && R.e[i].kind == E_SEND);
        }
        break;
    case V_TEST:
        for (int i = 0; i < n; i++) {
            do
                MPI_Test(&R.req[i], &flag, &R.st[i]);
            while (!flag);
            R.have_st[i] = 1;
        }
        break;
    case V_GET_STATUS:
        for (int i = 0; i < n; i++) {
            MPI_Request h = R.req[i];
            do
                MPI_Request_get_status(R.req[i], &flag, &R.st[i]);
            while (!flag);
            R.have_st[i] = 1;
            CHECK(R.req[i] == h, "Request_get_status changed the handle of entry %d (%s)", i, kind_name[R.e[i].kind]);
            if (R.e[i].kind == E_RECV || R.e[i].kind == E_PRECV) {
                MPI_Wait(&R.req[i], &st);
                chk_status(&st, R.e[i].peer, R.e[i].tag, MPI_BYTE, R.e[i].len, "Wait after Request_get_status");
            } else {
                MPI_Wait(&R.req[i], MPI_STATUS_IGNORE);
            }
        }
        break;
    }
}

/* verify checks every entry after completion: data and statuses of receives, handles freed
 * or kept, empty statuses for null and inactive entries. */
static void verify(void)
{
    for (int i = 0; i < R.n; i++) {
        struct entry *e = &R.e[i];
        char what[96];
        snprintf(what, sizeof what, "%s: entry %d (%s, peer %d)", variant_name[R.variant], i, kind_name[e->kind], e->peer);
        if (is_persistent(e->kind))
            CHECK(R.req[i] != MPI_REQUEST_NULL, "%s: persistent handle freed", what);
        else
            CHECK(R.req[i] == MPI_REQUEST_NULL, "%s: handle not MPI_REQUEST_NULL after completion", what);
        switch (e->kind) {
        case E_RECV:
        case E_PRECV:
        case E_GATED: {
            if (R.have_st[i])
                chk_status(&R.st[i], e->peer, e->tag, MPI_BYTE, e->len, what);
            size_t bad = chk_verify(e->buf, (size_t)e->len, seed(R.variant, e->peer, chk.rank, e->tag));
            CHECK(bad == (size_t)e->len, "%s: data differs at byte %zu of %d", what, bad, e->len);
            break;
        }
        case E_NULL:
        case E_INACTIVE:
            if (R.have_st[i])
                chk_empty(&R.st[i], what);
            break;
        default:
            break;
        }
        free(e->buf);
    }
    MPI_Request_free(&R.inactive);
    MPI_Request_free(&R.precv);
    MPI_Request_free(&R.psend);
    CHECK(R.inactive == MPI_REQUEST_NULL && R.precv == MPI_REQUEST_NULL && R.psend == MPI_REQUEST_NULL,
          "%s: Request_free left a handle", variant_name[R.variant]);
}

/* null_only: completion calls on arrays with nothing active return at once. */
static void null_only(void)
{
    MPI_Request r[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL}, p;
    MPI_Status st[2], s;
    int flag = 0, idx = 0, out = 0, idxs[2], buf;
    MPI_Recv_init(&buf, 1, MPI_INT, MPI_ANY_SOURCE, TAG_NEVER, MPI_COMM_WORLD, &p);
    r[1] = p;
    MPI_Wait(&r[0], &s);
    chk_empty(&s, "Wait(MPI_REQUEST_NULL)");
    MPI_Test(&r[0], &flag, &s);
    CHECK(flag, "Test(MPI_REQUEST_NULL): flag false");
    chk_empty(&s, "Test(MPI_REQUEST_NULL)");
    MPI_Wait(&r[1], &s);
    chk_empty(&s, "Wait(inactive persistent)");
    CHECK(r[1] == p, "Wait(inactive persistent) changed the handle");
    flag = 0;
    MPI_Request_get_status(MPI_REQUEST_NULL, &flag, &s);
    CHECK(flag, "Request_get_status(MPI_REQUEST_NULL): flag false");
    chk_empty(&s, "Request_get_status(MPI_REQUEST_NULL)");
    MPI_Waitall(2, r, st);
    chk_empty(&st[0], "Waitall of null entries");
    chk_empty(&st[1], "Waitall of inactive entries");
    flag = 0;
    MPI_Testall(2, r, &flag, MPI_STATUSES_IGNORE);
    CHECK(flag, "Testall of null and inactive: flag false");
    MPI_Waitany(2, r, &idx, &s);
    CHECK(idx == MPI_UNDEFINED, "Waitany of null and inactive: index %d", idx);
    chk_empty(&s, "Waitany of null and inactive");
    flag = 0;
    MPI_Testany(2, r, &idx, &flag, MPI_STATUS_IGNORE);
    CHECK(flag && idx == MPI_UNDEFINED, "Testany of null and inactive: flag %d index %d", flag, idx);
    MPI_Waitsome(2, r, &out, idxs, st);
    CHECK(out == MPI_UNDEFINED, "Waitsome of null and inactive: outcount %d", out);
    MPI_Testsome(2, r, &out, idxs, st);
    CHECK(out == MPI_UNDEFINED, "Testsome of null and inactive: outcount %d", out);
    MPI_Waitall(0, NULL, MPI_STATUSES_IGNORE);
    MPI_Request_free(&p);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    null_only();
    for (int v = 0; v < NVARIANT; v++) {
        post(v);
        gated_checks();
        unsigned char gated[12];
        MPI_Request gs = go_ahead(gated);
        complete();
        MPI_Wait(&gs, MPI_STATUS_IGNORE);
        verify();
        MPI_Barrier(MPI_COMM_WORLD);
    }
    return chk_finish("p2p_wait");
}
