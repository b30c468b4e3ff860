/*
 * p2p_order: non-overtaking under many tags. Every rank streams NMSG messages to every other
 * rank over NTAG tags, mixing small, eager-sized and rendezvous-sized messages and standard and
 * synchronous sends, and receives them
 *  1. as unexpected messages, with blocking receives in descending tag order;
 *  2. with receives pre-posted in descending tag order before anything is sent;
 *  3. with MPI_ANY_TAG from each source, which must see the exact send order.
 * Within (source, tag, communicator) the k-th receive must get the k-th message sent.
 */
#include "p2p_check.h"

enum { NMSG = 120, NTAG = 7, HDR = 5, MAXLEN = 20000 };

/* msg_len is the length in ints of message seq: mostly small, some beyond common eager limits. */
static int msg_len(int seq)
{
    if (seq % 40 == 39)
        return MAXLEN;
    if (seq % 10 == 3)
        return 2048;
    return HDR + 3 + seq % 5;
}

static int msg_tag(int src, int seq) { return 1 + (seq * 5 + src * 3) % NTAG; }

static uint64_t msg_seed(int phase, int src, int dst, int seq)
{
    return (((uint64_t)phase * 4096 + (uint64_t)src) * 4096 + (uint64_t)dst) * 65536 + (uint64_t)seq;
}

/* make_msg allocates and fills message seq from this rank to dst. */
static int *make_msg(int phase, int dst, int seq)
{
    int len = msg_len(seq), *m = chk_alloc(sizeof(int) * (size_t)len);
    m[0] = chk.rank;
    m[1] = dst;
    m[2] = seq;
    m[3] = msg_tag(chk.rank, seq);
    m[4] = len;
    chk_fill(m + HDR, sizeof(int) * (size_t)(len - HDR), msg_seed(phase, chk.rank, dst, seq));
    return m;
}

/* check_msg checks a received message and its status against message seq from src. */
static void check_msg(int phase, const int *m, const MPI_Status *st, int src, int seq)
{
    int len = msg_len(seq), tag = msg_tag(src, seq);
    char what[96];
    snprintf(what, sizeof what, "phase %d message %d from %d", phase, seq, src);
    chk_status(st, src, tag, MPI_INT, len, what);
    if (!CHECK(m[0] == src && m[1] == chk.rank && m[2] == seq && m[3] == tag && m[4] == len,
               "%s: got header src %d dst %d seq %d tag %d len %d", what, m[0], m[1], m[2], m[3], m[4]))
        return;
    size_t n = sizeof(int) * (size_t)(len - HDR), bad = chk_verify(m + HDR, n, msg_seed(phase, src, chk.rank, seq));
    CHECK(bad == n, "%s: payload differs at byte %zu of %zu", what, bad, n);
}

/* send_all starts NMSG messages to every other rank, every fourth one synchronous. */
static void send_all(int phase, MPI_Request *reqs, int **bufs)
{
    int n = 0;
    for (int seq = 0; seq < NMSG; seq++)
        for (int d = 1; d < chk.size; d++) {
            int dst = (chk.rank + d) % chk.size;
            bufs[n] = make_msg(phase, dst, seq);
            if (seq % 4 == 2)
                MPI_Issend(bufs[n], msg_len(seq), MPI_INT, dst, msg_tag(chk.rank, seq), MPI_COMM_WORLD, &reqs[n]);
            else
                MPI_Isend(bufs[n], msg_len(seq), MPI_INT, dst, msg_tag(chk.rank, seq), MPI_COMM_WORLD, &reqs[n]);
            n++;
        }
}

static void finish_sends(MPI_Request *reqs, int **bufs, int n)
{
    MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE);
    for (int i = 0; i < n; i++)
        free(bufs[i]);
}

/* unexpected_desc_tags: everything is sent first; each source is drained tag by tag, highest
 * tag first, with blocking receives. */
static void unexpected_desc_tags(int nout, MPI_Request *sreq, int **sbuf, int *rbuf)
{
    send_all(1, sreq, sbuf);
    for (int d = 1; d < chk.size; d++) {
        int src = (chk.rank - d + chk.size) % chk.size;
        for (int tag = NTAG; tag >= 1; tag--)
            for (int seq = 0; seq < NMSG; seq++) {
                if (msg_tag(src, seq) != tag)
                    continue;
                MPI_Status st;
                MPI_Recv(rbuf, MAXLEN, MPI_INT, src, tag, MPI_COMM_WORLD, &st);
                check_msg(1, rbuf, &st, src, seq);
            }
    }
    finish_sends(sreq, sbuf, nout);
}

/* preposted_desc_tags: every receive is posted, in descending tag order, before any rank sends. */
static void preposted_desc_tags(int nout, MPI_Request *sreq, int **sbuf)
{
    int nin = nout, n = 0;
    int *seqs = chk_alloc(sizeof(int) * (size_t)nin), *srcs = chk_alloc(sizeof(int) * (size_t)nin);
    int **rbufs = chk_alloc(sizeof(int *) * (size_t)nin);
    MPI_Request *rreq = chk_alloc(sizeof(MPI_Request) * (size_t)nin);
    MPI_Status *st = chk_alloc(sizeof(MPI_Status) * (size_t)nin);
    for (int d = 1; d < chk.size; d++) {
        int src = (chk.rank - d + chk.size) % chk.size;
        for (int tag = NTAG; tag >= 1; tag--)
            for (int seq = 0; seq < NMSG; seq++) {
                if (msg_tag(src, seq) != tag)
                    continue;
                rbufs[n] = chk_alloc(sizeof(int) * MAXLEN);
                MPI_Irecv(rbufs[n], MAXLEN, MPI_INT, src, tag, MPI_COMM_WORLD, &rreq[n]);
                seqs[n] = seq;
                srcs[n] = src;
                n++;
            }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    send_all(2, sreq, sbuf);
    MPI_Waitall(nin, rreq, st);
    for (int i = 0; i < nin; i++) {
        check_msg(2, rbufs[i], &st[i], srcs[i], seqs[i]);
        free(rbufs[i]);
    }
    finish_sends(sreq, sbuf, nout);
    free(seqs);
    free(srcs);
    free(rbufs);
    free(rreq);
    free(st);
}

/* any_tag_in_order: receiving with MPI_ANY_TAG from one source yields the send order. */
static void any_tag_in_order(int nout, MPI_Request *sreq, int **sbuf, int *rbuf)
{
    send_all(3, sreq, sbuf);
    for (int d = 1; d < chk.size; d++) {
        int src = (chk.rank + d) % chk.size;
        for (int seq = 0; seq < NMSG; seq++) {
            MPI_Status st;
            MPI_Recv(rbuf, MAXLEN, MPI_INT, src, MPI_ANY_TAG, MPI_COMM_WORLD, &st);
            check_msg(3, rbuf, &st, src, seq);
        }
    }
    finish_sends(sreq, sbuf, nout);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    int nout = NMSG * (chk.size - 1);
    MPI_Request *sreq = chk_alloc(sizeof(MPI_Request) * (size_t)nout);
    int **sbuf = chk_alloc(sizeof(int *) * (size_t)nout);
    int *rbuf = chk_alloc(sizeof(int) * MAXLEN);

    unexpected_desc_tags(nout, sreq, sbuf, rbuf);
    MPI_Barrier(MPI_COMM_WORLD);
    preposted_desc_tags(nout, sreq, sbuf);
    MPI_Barrier(MPI_COMM_WORLD);
    any_tag_in_order(nout, sreq, sbuf, rbuf);

    free(sreq);
    free(sbuf);
    free(rbuf);
    return chk_finish("p2p_order");
}
