/*
 * p2p_probe: MPI_Probe, MPI_Iprobe, MPI_Mprobe, MPI_Improbe, MPI_Mrecv and MPI_Imrecv between
 * every pair of ranks and with MPI_ANY_SOURCE/MPI_ANY_TAG, MPI_Get_count/MPI_Get_elements on
 * the statuses they return, probes of MPI_PROC_NULL, and probes that must not see a message a
 * receive posted earlier has matched.
 */
#include "p2p_check.h"

enum { NSIZE = 5, TAG_CTL = 1, TAG_ABSENT = 2, TAG_M = 3, TAG_LATE = 4, TAG_POSTED = 5, TAG_SIZE = 10, TAG_ANY = 100 };

static const int sizes[NSIZE] = {0, 1, 100, 10000, 300000};

static int value(int src, int tag, int i) { return src * 1000003 + tag * 10007 + i; }

static int *make(int tag, int n)
{
    int *b = chk_alloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        b[i] = value(chk.rank, tag, i);
    return b;
}

static int check_data(const int *b, int n, int src, int tag, const char *what)
{
    int i = 0;
    while (i < n && b[i] == value(src, tag, i))
        i++;
    return CHECK(i == n, "%s: element %d of %d is %d, expected %d", what, i, n, i < n ? b[i] : 0, i < n ? value(src, tag, i) : 0);
}

/* check_counts checks MPI_Get_count and MPI_Get_elements of a status for a message of n ints,
 * in ints, bytes and a 3-int contiguous type. */
static void check_counts(const MPI_Status *st, int n, MPI_Datatype int3, const char *what)
{
    int c_int, c_byte, c_3, e_int, e_3;
    MPI_Count ex_3;
    MPI_Get_count(st, MPI_INT, &c_int);
    MPI_Get_count(st, MPI_BYTE, &c_byte);
    MPI_Get_count(st, int3, &c_3);
    MPI_Get_elements(st, MPI_INT, &e_int);
    MPI_Get_elements(st, int3, &e_3);
    MPI_Get_elements_x(st, int3, &ex_3);
    int want3 = n % 3 ? MPI_UNDEFINED : n / 3;
    CHECK(c_int == n && c_byte == 4 * n && c_3 == want3 && e_int == n && e_3 == n && ex_3 == n,
          "%s: counts int %d byte %d int3 %d, elements int %d int3 %d/%lld; expected %d %d %d, %d %d", what, c_int,
          c_byte, c_3, e_int, e_3, (long long)ex_3, n, 4 * n, want3, n, n);
}

/* probe_sizes: each rank sends messages of every size to the rank d after it, which probes
 * them largest tag first, checks the status twice (Probe, then Iprobe) and receives with the
 * probed source and tag. */
static void probe_sizes(int d, MPI_Datatype int3)
{
    int to = (chk.rank + d) % chk.size, from = (chk.rank - d + chk.size) % chk.size;
    MPI_Request req[NSIZE];
    int *out[NSIZE];
    for (int i = 0; i < NSIZE; i++) {
        out[i] = make(TAG_SIZE + i, sizes[i]);
        MPI_Isend(out[i], sizes[i], MPI_INT, to, TAG_SIZE + i, MPI_COMM_WORLD, &req[i]);
    }
    for (int i = NSIZE - 1; i >= 0; i--) {
        char what[64];
        snprintf(what, sizeof what, "probe %d ints from %d", sizes[i], from);
        MPI_Status st, st2;
        int flag = 0;
        MPI_Probe(from, TAG_SIZE + i, MPI_COMM_WORLD, &st);
        chk_status(&st, from, TAG_SIZE + i, MPI_INT, sizes[i], what);
        check_counts(&st, sizes[i], int3, what);
        MPI_Iprobe(from, TAG_SIZE + i, MPI_COMM_WORLD, &flag, &st2);
        CHECK(flag, "%s: Iprobe after Probe found nothing", what);
        if (flag)
            chk_status(&st2, from, TAG_SIZE + i, MPI_INT, sizes[i], what);
        else
            chk.checks++;
        int n;
        MPI_Get_count(&st, MPI_INT, &n);
        if (n < 0 || n > sizes[NSIZE - 1])
            n = 0;
        int *in = chk_alloc(sizeof(int) * (size_t)n);
        MPI_Recv(in, n, MPI_INT, st.MPI_SOURCE, st.MPI_TAG, MPI_COMM_WORLD, &st2);
        chk_status(&st2, from, TAG_SIZE + i, MPI_INT, sizes[i], what);
        check_data(in, n, from, TAG_SIZE + i, what);
        free(in);
    }
    MPI_Waitall(NSIZE, req, MPI_STATUSES_IGNORE);
    for (int i = 0; i < NSIZE; i++)
        free(out[i]);
}

/* iprobe_absent: a message not sent yet is not found by Iprobe or Improbe, specific or
 * wildcard; once sent it is found by polling. */
static void iprobe_absent(int d)
{
    int to = (chk.rank + d) % chk.size, from = (chk.rank - d + chk.size) % chk.size;
    int flag = -1, v = value(chk.rank, TAG_LATE, 0), got = 0;
    MPI_Status st;
    MPI_Message msg;
    MPI_Iprobe(from, TAG_LATE, MPI_COMM_WORLD, &flag, &st);
    CHECK(!flag, "Iprobe from %d found a message not sent yet", from);
    MPI_Iprobe(MPI_ANY_SOURCE, TAG_LATE, MPI_COMM_WORLD, &flag, &st);
    CHECK(!flag, "Iprobe from ANY_SOURCE found a message not sent yet");
    MPI_Improbe(from, TAG_LATE, MPI_COMM_WORLD, &flag, &msg, &st);
    CHECK(!flag, "Improbe from %d found a message not sent yet", from); /* msg is undefined then */
    MPI_Iprobe(from, TAG_ABSENT, MPI_COMM_WORLD, &flag, &st);
    CHECK(!flag, "Iprobe from %d found a message never sent", from);
    /* Everybody has probed: now send, and poll until it is there. */
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Send(&v, 1, MPI_INT, to, TAG_LATE, MPI_COMM_WORLD);
    do
        MPI_Iprobe(MPI_ANY_SOURCE, TAG_LATE, MPI_COMM_WORLD, &flag, &st);
    while (!flag);
    chk_status(&st, from, TAG_LATE, MPI_INT, 1, "Iprobe ANY_SOURCE after send");
    MPI_Recv(&got, 1, MPI_INT, from, TAG_LATE, MPI_COMM_WORLD, &st);
    CHECK(got == value(from, TAG_LATE, 0), "late message from %d: %d", from, got);
    MPI_Iprobe(from, TAG_ABSENT, MPI_COMM_WORLD, &flag, &st);
    CHECK(!flag, "Iprobe from %d found a message never sent", from);
    MPI_Barrier(MPI_COMM_WORLD);
}

/* probe_any: every rank but root sends three messages of different sizes; root probes with
 * (ANY_SOURCE, ANY_TAG) and receives what each probe found. */
static void probe_any(int root)
{
    if (chk.rank != root) {
        MPI_Request req[3];
        int *out[3];
        for (int k = 0; k < 3; k++) {
            out[k] = make(TAG_ANY + k, sizes[k + 1] + chk.rank);
            MPI_Isend(out[k], sizes[k + 1] + chk.rank, MPI_INT, root, TAG_ANY + k, MPI_COMM_WORLD, &req[k]);
        }
        MPI_Waitall(3, req, MPI_STATUSES_IGNORE);
        for (int k = 0; k < 3; k++)
            free(out[k]);
    } else {
        int *next = calloc((size_t)chk.size, sizeof(int));
        for (int i = 0; i < 3 * (chk.size - 1); i++) {
            MPI_Status st;
            MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &st);
            int src = st.MPI_SOURCE;
            if (!CHECK(src >= 0 && src < chk.size && src != root && next[src] < 3, "probe any at %d: source %d", root, src)) {
                chk.checks += 2;
                continue;
            }
            int k = next[src]++, n = sizes[k + 1] + src;
            char what[64];
            snprintf(what, sizeof what, "probe any at %d, message %d of %d", root, k, src);
            chk_status(&st, src, TAG_ANY + k, MPI_INT, n, what);
            int *in = chk_alloc(sizeof(int) * (size_t)n);
            MPI_Recv(in, n, MPI_INT, src, st.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            check_data(in, n, src, st.MPI_TAG, what);
            free(in);
        }
        free(next);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* mprobe_pair: the rank d after each rank gets two messages with one tag. A matched probe takes
 * the first out of matching: a receive then gets the second, and MPI_Mrecv the first. Then the
 * same with Improbe and MPI_Imrecv. */
static void mprobe_pair(int d)
{
    int to = (chk.rank + d) % chk.size, from = (chk.rank - d + chk.size) % chk.size;
    for (int nonblocking = 0; nonblocking <= 1; nonblocking++) {
        int a[5], b[7], ia[5] = {0}, ib[7] = {0}, flag = 0;
        for (int i = 0; i < 5; i++)
            a[i] = value(chk.rank, 1, i);
        for (int i = 0; i < 7; i++)
            b[i] = value(chk.rank, 2, i);
        MPI_Request req[2], r;
        MPI_Isend(a, 5, MPI_INT, to, TAG_M, MPI_COMM_WORLD, &req[0]);
        MPI_Isend(b, 7, MPI_INT, to, TAG_M, MPI_COMM_WORLD, &req[1]);
        MPI_Message msg = MPI_MESSAGE_NULL;
        MPI_Status st;
        const char *how = nonblocking ? "Improbe/Imrecv" : "Mprobe/Mrecv";
        if (nonblocking) {
            do
                MPI_Improbe(from, TAG_M, MPI_COMM_WORLD, &flag, &msg, &st);
            while (!flag);
        } else {
            MPI_Mprobe(from, TAG_M, MPI_COMM_WORLD, &msg, &st);
        }
        CHECK(msg != MPI_MESSAGE_NULL && msg != MPI_MESSAGE_NO_PROC, "%s from %d: no message handle", how, from);
        chk_status(&st, from, TAG_M, MPI_INT, 5, how);
        /* The probed message is no longer matchable: a probe sees the second one. */
        MPI_Probe(from, TAG_M, MPI_COMM_WORLD, &st);
        chk_status(&st, from, TAG_M, MPI_INT, 7, "Probe after a matched probe");
        MPI_Recv(ib, 7, MPI_INT, from, TAG_M, MPI_COMM_WORLD, &st);
        chk_status(&st, from, TAG_M, MPI_INT, 7, "Recv after a matched probe");
        check_data(ib, 7, from, 2, "Recv after a matched probe");
        if (nonblocking) {
            MPI_Imrecv(ia, 5, MPI_INT, &msg, &r);
            CHECK(msg == MPI_MESSAGE_NULL, "%s: message handle not reset", how);
            MPI_Wait(&r, &st);
        } else {
            MPI_Mrecv(ia, 5, MPI_INT, &msg, &st);
            CHECK(msg == MPI_MESSAGE_NULL, "%s: message handle not reset", how);
        }
        chk_status(&st, from, TAG_M, MPI_INT, 5, how);
        check_data(ia, 5, from, 1, how);
        MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
    }
}

/* mprobe_any: every rank but root sends two messages; root takes all of them out of matching
 * with Mprobe(ANY_SOURCE, ANY_TAG) first, then receives them in reverse order. */
static void mprobe_any(int root)
{
    if (chk.rank != root) {
        int *v[2];
        MPI_Request req[2];
        for (int k = 0; k < 2; k++) {
            v[k] = make(TAG_ANY + k, 3 + k * 5000);
            MPI_Isend(v[k], 3 + k * 5000, MPI_INT, root, TAG_ANY + k, MPI_COMM_WORLD, &req[k]);
        }
        MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
        free(v[0]);
        free(v[1]);
    } else {
        int n = 2 * (chk.size - 1), *next = calloc((size_t)chk.size, sizeof(int));
        MPI_Message *msg = chk_alloc(sizeof(MPI_Message) * (size_t)n);
        int *src = chk_alloc(sizeof(int) * (size_t)n), *k = chk_alloc(sizeof(int) * (size_t)n);
        for (int i = 0; i < n; i++) {
            MPI_Status st;
            MPI_Mprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &msg[i], &st);
            src[i] = st.MPI_SOURCE;
            k[i] = -1;
            if (!CHECK(src[i] >= 0 && src[i] < chk.size && src[i] != root && next[src[i]] < 2,
                       "Mprobe any at %d: source %d", root, src[i])) {
                chk.checks++;
                continue;
            }
            k[i] = next[src[i]]++;
            chk_status(&st, src[i], TAG_ANY + k[i], MPI_INT, 3 + k[i] * 5000, "Mprobe any");
        }
        for (int i = n - 1; i >= 0; i--) {
            MPI_Status st;
            int len = k[i] < 0 ? 0 : 3 + k[i] * 5000;
            int *in = chk_alloc(sizeof(int) * 5003);
            MPI_Mrecv(in, 5003, MPI_INT, &msg[i], &st);
            if (k[i] < 0) {
                chk.checks += 2;
            } else {
                chk_status(&st, src[i], TAG_ANY + k[i], MPI_INT, len, "Mrecv of Mprobe any");
                check_data(in, len, src[i], TAG_ANY + k[i], "Mrecv of Mprobe any");
            }
            free(in);
        }
        free(next);
        free(msg);
        free(src);
        free(k);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* posted_first: a receive posted before its message was sent matches the message when it
 * arrives, so no probe may see it, let alone take it (a specific or wildcard receive, from
 * every peer). The sender reports on another tag once it has sent, to give the message time to
 * arrive while root probes. */
static void posted_first(int root, int s, int wild)
{
    if (chk.rank == s) {
        int v = value(s, TAG_POSTED, 0);
        MPI_Recv(NULL, 0, MPI_INT, root, TAG_CTL, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(&v, 1, MPI_INT, root, TAG_POSTED, MPI_COMM_WORLD);
        MPI_Send(NULL, 0, MPI_INT, root, TAG_CTL, MPI_COMM_WORLD);
        return;
    }
    if (chk.rank != root)
        return;
    int v = 0, seen = 0, taken = 0, flag, c = 0;
    MPI_Request r;
    MPI_Status st;
    MPI_Message msg;
    MPI_Irecv(&v, 1, MPI_INT, wild ? MPI_ANY_SOURCE : s, TAG_POSTED, MPI_COMM_WORLD, &r);
    MPI_Send(NULL, 0, MPI_INT, s, TAG_CTL, MPI_COMM_WORLD);
    MPI_Recv(NULL, 0, MPI_INT, s, TAG_CTL, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    for (int i = 0; i < 20; i++) {
        MPI_Iprobe(MPI_ANY_SOURCE, TAG_POSTED, MPI_COMM_WORLD, &flag, &st);
        seen += flag;
        MPI_Improbe(i % 2 ? s : MPI_ANY_SOURCE, TAG_POSTED, MPI_COMM_WORLD, &flag, &msg, &st);
        if (flag) {
            int dummy;
            MPI_Mrecv(&dummy, 1, MPI_INT, &msg, MPI_STATUS_IGNORE);
            taken++;
        }
    }
    CHECK(!seen && !taken, "%s receive from %d posted before the message was sent: probes saw it %d times, took it %d times",
          wild ? "ANY_SOURCE" : "specific", s, seen, taken);
    if (taken) { /* the receive cannot complete any more */
        MPI_Cancel(&r);
        MPI_Wait(&r, &st);
        MPI_Test_cancelled(&st, &c);
    } else {
        MPI_Wait(&r, &st);
    }
    CHECK(!c && v == value(s, TAG_POSTED, 0), "%s receive from %d posted before the message was sent: got %d",
          wild ? "ANY_SOURCE" : "specific", s, v);
}

/* chk_proc_null checks the status of an operation on MPI_PROC_NULL. */
static void chk_proc_null(const MPI_Status *st, const char *what)
{
    int n = -1;
    MPI_Get_count(st, MPI_INT, &n);
    CHECK(st->MPI_SOURCE == MPI_PROC_NULL && st->MPI_TAG == MPI_ANY_TAG && n == 0,
          "%s: status source %d tag %d count %d, expected MPI_PROC_NULL, MPI_ANY_TAG, 0", what, st->MPI_SOURCE,
          st->MPI_TAG, n);
}

static void proc_null(void)
{
    MPI_Status st;
    MPI_Message msg;
    MPI_Request r;
    int flag = 0, buf[2] = {42, 43};
    MPI_Probe(MPI_PROC_NULL, 5, MPI_COMM_WORLD, &st);
    chk_proc_null(&st, "Probe(MPI_PROC_NULL)");
    MPI_Iprobe(MPI_PROC_NULL, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st);
    CHECK(flag, "Iprobe(MPI_PROC_NULL): flag false");
    chk_proc_null(&st, "Iprobe(MPI_PROC_NULL)");
    MPI_Mprobe(MPI_PROC_NULL, 5, MPI_COMM_WORLD, &msg, &st);
    CHECK(msg == MPI_MESSAGE_NO_PROC, "Mprobe(MPI_PROC_NULL): message is not MPI_MESSAGE_NO_PROC");
    chk_proc_null(&st, "Mprobe(MPI_PROC_NULL)");
    MPI_Mrecv(buf, 2, MPI_INT, &msg, &st);
    chk_proc_null(&st, "Mrecv(MPI_MESSAGE_NO_PROC)");
    CHECK(msg == MPI_MESSAGE_NULL && buf[0] == 42 && buf[1] == 43, "Mrecv(MPI_MESSAGE_NO_PROC): handle or buffer changed");
    flag = 0;
    MPI_Improbe(MPI_PROC_NULL, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &msg, &st);
    CHECK(flag && msg == MPI_MESSAGE_NO_PROC, "Improbe(MPI_PROC_NULL): flag %d or message not MPI_MESSAGE_NO_PROC", flag);
    chk_proc_null(&st, "Improbe(MPI_PROC_NULL)");
    MPI_Imrecv(buf, 2, MPI_INT, &msg, &r);
    MPI_Wait(&r, &st);
    chk_proc_null(&st, "Imrecv(MPI_MESSAGE_NO_PROC)");
    CHECK(buf[0] == 42 && buf[1] == 43, "Imrecv(MPI_MESSAGE_NO_PROC): buffer changed");
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    MPI_Datatype int3;
    MPI_Type_contiguous(3, MPI_INT, &int3);
    MPI_Type_commit(&int3);
    proc_null();
    for (int d = 1; d < chk.size; d++) {
        probe_sizes(d, int3);
        iprobe_absent(d);
        mprobe_pair(d);
    }
    for (int root = 0; root < chk.size; root++) {
        probe_any(root);
        mprobe_any(root);
        for (int d = 1; d < chk.size; d++)
            for (int wild = 0; wild < 2; wild++)
                posted_first(root, (root + d) % chk.size, wild);
    }
    MPI_Type_free(&int3);
    return chk_finish("p2p_probe");
}
