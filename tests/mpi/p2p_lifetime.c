/*
 * p2p_lifetime: object lifetimes the standard allows and small semantics that are easy to get
 * wrong in an interposer. Pairs are (e, e+1) for even e; every check is made on every layout.
 *
 *  - comm_free_pending: MPI_Comm_free of a duplicate while an Irecv and an Isend on it are
 *    pending; both complete afterwards.
 *  - type_free_pending: MPI_Type_free of a vector type right after MPI_Irecv into it.
 *  - request_free_recv: MPI_Request_free of an active wildcard receive; the message still goes
 *    to it (the next receive from that sender gets the next message).
 *  - inactive_persistent: an inactive persistent request of the library beside an active
 *    request in Waitany/Testany/Waitsome/Testsome is ignored, not completed.
 *  - gather_null_type: MPI_Gather at non-roots with recvtype MPI_DATATYPE_NULL.
 *  - status_error: single-completion calls (Testany and Waitany too) leave status.MPI_ERROR alone.
 *  - arg_errors: tag < 0 and tag > MPI_TAG_UB on a send are errors that go through the
 *    communicator's error handler.
 *  - ssend_matched: MPI_Issend does not complete before the receive is posted.
 *  - bsend_charged: MPI_Bsend larger than the attached buffer fails with MPI_ERR_BUFFER.
 *  - bottom: MPI_BOTTOM with an absolute-address struct type, sending and receiving.
 */
#include "p2p_check.h"

#define TAG 23

static int peer_of(int r) { return r ^ 1; }
static int paired(void) { return peer_of(chk.rank) < chk.size; }

/* Pending operations with the pair partner and with the rank half the world away (another host
 * on the usual layouts), both outstanding when the communicator is freed. */
static void comm_free_pending(void)
{
    MPI_Comm d;
    MPI_Comm_dup(MPI_COMM_WORLD, &d);
    int n = chk.size, half = n / 2, far_to = (chk.rank + half) % n, far_from = (chk.rank - half + n) % n;
    int peer = peer_of(chk.rank), out = 100 + chk.rank, in = -1, far_in = -1;
    MPI_Request rq[4] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL, MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    if (paired()) {
        MPI_Irecv(&in, 1, MPI_INT, peer, TAG, d, &rq[0]);
        MPI_Isend(&out, 1, MPI_INT, peer, TAG, d, &rq[1]);
    }
    MPI_Irecv(&far_in, 1, MPI_INT, far_from, TAG + 9, d, &rq[2]);
    MPI_Isend(&out, 1, MPI_INT, far_to, TAG + 9, d, &rq[3]);
    MPI_Comm_free(&d);
    MPI_Waitall(4, rq, MPI_STATUSES_IGNORE);
    CHECK(!paired() || in == 100 + peer, "comm_free_pending: received %d from the partner", in);
    CHECK(far_in == 100 + far_from && d == MPI_COMM_NULL, "comm_free_pending: received %d from rank %d", far_in, far_from);
}

static void type_free_pending(void)
{
    if (!paired())
        return;
    int peer = peer_of(chk.rank), out[8], in[16];
    for (int i = 0; i < 8; i++)
        out[i] = chk.rank * 10 + i;
    for (int i = 0; i < 16; i++)
        in[i] = -1;
    MPI_Datatype vec;
    MPI_Type_vector(8, 1, 2, MPI_INT, &vec);
    MPI_Type_commit(&vec);
    MPI_Request rq;
    MPI_Irecv(in, 1, vec, peer, TAG, MPI_COMM_WORLD, &rq);
    MPI_Type_free(&vec);
    MPI_Send(out, 8, MPI_INT, peer, TAG, MPI_COMM_WORLD);
    MPI_Wait(&rq, MPI_STATUS_IGNORE);
    int bad = 0;
    for (int i = 0; i < 16; i++)
        bad += in[i] != (i % 2 ? -1 : peer * 10 + i / 2);
    CHECK(bad == 0 && vec == MPI_DATATYPE_NULL, "type_free_pending: %d elements wrong", bad);
}

static void request_free_recv(void)
{
    if (!paired())
        return;
    int peer = peer_of(chk.rank);
    static int sink = -1;
    if (chk.rank % 2 == 0) {
        MPI_Request rq;
        int second = -1;
        MPI_Irecv(&sink, 1, MPI_INT, MPI_ANY_SOURCE, TAG + 1, MPI_COMM_WORLD, &rq);
        MPI_Request_free(&rq);
        CHECK(rq == MPI_REQUEST_NULL, "request_free_recv: handle not nulled");
        MPI_Send(&second, 0, MPI_INT, peer, TAG, MPI_COMM_WORLD); /* go */
        MPI_Recv(&second, 1, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        CHECK(second == 2, "request_free_recv: next receive got %d, expected the second message", second);
    } else {
        int one = 1, two = 2, go;
        MPI_Recv(&go, 0, MPI_INT, peer, TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(&one, 1, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD);
        MPI_Send(&two, 1, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD);
    }
}

static void inactive_persistent(void)
{
    if (!paired())
        return;
    int peer = peer_of(chk.rank), v = -1, out = 7, self = 0, idx = -5, flag = -5, outcount = -5, idxs[2];
    MPI_Request rq[2];
    MPI_Recv_init(&self, 1, MPI_INT, 0, TAG, MPI_COMM_SELF, &rq[0]); /* library's, inactive */
    MPI_Irecv(&v, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD, &rq[1]);
    MPI_Send(&out, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD);
    MPI_Waitany(2, rq, &idx, MPI_STATUS_IGNORE);
    CHECK(idx == 1 && v == 7, "inactive_persistent: Waitany index %d value %d", idx, v);
    MPI_Testany(2, rq, &idx, &flag, MPI_STATUS_IGNORE);
    CHECK(flag == 1 && idx == MPI_UNDEFINED, "inactive_persistent: Testany of inactive and null: flag %d index %d", flag, idx);
    MPI_Irecv(&v, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD, &rq[1]);
    MPI_Send(&out, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD);
    MPI_Waitsome(2, rq, &outcount, idxs, MPI_STATUSES_IGNORE);
    CHECK(outcount == 1 && idxs[0] == 1, "inactive_persistent: Waitsome count %d first %d", outcount, idxs[0]);
    MPI_Testsome(2, rq, &outcount, idxs, MPI_STATUSES_IGNORE);
    CHECK(outcount == MPI_UNDEFINED, "inactive_persistent: Testsome of inactive and null: count %d", outcount);
    CHECK(rq[0] != MPI_REQUEST_NULL, "inactive_persistent: the inactive request was freed");
    MPI_Request_free(&rq[0]);
}

static void gather_null_type(void)
{
    int me = chk.rank, *all = NULL;
    for (int root = 0; root < chk.size; root += chk.size - 1 > 0 ? chk.size - 1 : 1) {
        if (me == root)
            all = chk_alloc(sizeof(int) * (size_t)chk.size);
        int v = me * 3;
        if (me == root)
            MPI_Gather(&v, 1, MPI_INT, all, 1, MPI_INT, root, MPI_COMM_WORLD);
        else
            MPI_Gather(&v, 1, MPI_INT, NULL, 0, MPI_DATATYPE_NULL, root, MPI_COMM_WORLD);
        if (me == root) {
            int bad = 0;
            for (int i = 0; i < chk.size; i++)
                bad += all[i] != i * 3;
            CHECK(bad == 0, "gather_null_type: %d wrong at root %d", bad, root);
            free(all);
            all = NULL;
        }
        if (chk.size == 1)
            break;
    }
}

static void status_error(void)
{
    if (!paired())
        return;
    int peer = peer_of(chk.rank), v = 1, w = -1, flag = 0;
    MPI_Status st;
    MPI_Request rq;
    st.MPI_ERROR = 12345;
    MPI_Sendrecv(&v, 1, MPI_INT, peer, TAG, &w, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD, &st);
    CHECK(st.MPI_ERROR == 12345, "status_error: Sendrecv set MPI_ERROR to %d", st.MPI_ERROR);
    st.MPI_ERROR = 12345;
    MPI_Irecv(&w, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD, &rq);
    MPI_Send(&v, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD);
    MPI_Wait(&rq, &st);
    CHECK(st.MPI_ERROR == 12345, "status_error: Wait set MPI_ERROR to %d", st.MPI_ERROR);
    st.MPI_ERROR = 12345;
    MPI_Irecv(&w, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD, &rq);
    MPI_Send(&v, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD);
    while (!flag)
        MPI_Test(&rq, &flag, &st);
    CHECK(st.MPI_ERROR == 12345, "status_error: Test set MPI_ERROR to %d", st.MPI_ERROR);
    /* Testany and Waitany over the shim's request and the library's own (a receive from
     * MPI_PROC_NULL, which the shim passes on): each completion leaves MPI_ERROR alone. */
    for (int pass = 0; pass < 2; pass++) {
        MPI_Request two[2];
        int none;
        MPI_Irecv(&w, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD, &two[0]);
        MPI_Irecv(&none, 1, MPI_INT, MPI_PROC_NULL, TAG, MPI_COMM_WORLD, &two[1]);
        MPI_Send(&v, 1, MPI_INT, peer, TAG, MPI_COMM_WORLD);
        for (int done = 0; done < 2;) {
            int idx = MPI_UNDEFINED;
            st.MPI_ERROR = 12345;
            if (pass)
                MPI_Waitany(2, two, &idx, &st);
            else
                MPI_Testany(2, two, &idx, &flag, &st);
            if (!pass && !flag)
                continue;
            done++;
            CHECK(st.MPI_ERROR == 12345, "status_error: %s set MPI_ERROR to %d (request %d)", pass ? "Waitany" : "Testany",
                  st.MPI_ERROR, idx);
        }
    }
}

static int handler_calls;
static void count_errors(MPI_Comm *c, int *code, ...)
{
    (void)c;
    (void)code;
    handler_calls++;
}

static void arg_errors(void)
{
    int peer = peer_of(chk.rank), v = 0, *ub = NULL, flag = 0, cls = -1;
    MPI_Comm d;
    MPI_Errhandler eh;
    MPI_Comm_dup(MPI_COMM_WORLD, &d);
    if (!paired()) {
        MPI_Comm_free(&d);
        return;
    }
    MPI_Comm_create_errhandler(count_errors, &eh);
    MPI_Comm_set_errhandler(d, eh);
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    handler_calls = 0;
    int rc = MPI_Send(&v, 1, MPI_INT, peer, -5, d);
    MPI_Error_class(rc, &cls);
    CHECK(rc != MPI_SUCCESS && cls == MPI_ERR_TAG && handler_calls == 1,
          "arg_errors: send with tag -5: class %d, handler called %d times", cls, handler_calls);
    if (flag && *ub < 0x7fffffff) {
        handler_calls = 0;
        rc = MPI_Send(&v, 1, MPI_INT, peer, *ub + 1, d);
        MPI_Error_class(rc, &cls);
        CHECK(rc != MPI_SUCCESS && cls == MPI_ERR_TAG && handler_calls == 1,
              "arg_errors: send with tag MPI_TAG_UB+1: class %d, handler called %d times", cls, handler_calls);
    } else {
        CHECK(1, "arg_errors: MPI_TAG_UB is the largest int");
    }
    MPI_Errhandler_free(&eh);
    MPI_Comm_free(&d);
}

static void ssend_matched(void)
{
    if (!paired())
        return;
    int peer = peer_of(chk.rank), v = 5, w = -1;
    if (chk.rank % 2 == 0) {
        MPI_Request rq;
        int flag = 0, early = 0;
        MPI_Issend(&v, 1, MPI_INT, peer, TAG + 2, MPI_COMM_WORLD, &rq);
        double t0 = MPI_Wtime();
        while (MPI_Wtime() - t0 < 0.05) {
            MPI_Test(&rq, &flag, MPI_STATUS_IGNORE);
            early |= flag;
        }
        MPI_Send(&v, 0, MPI_INT, peer, TAG + 3, MPI_COMM_WORLD); /* now post it */
        if (!flag)
            MPI_Wait(&rq, MPI_STATUS_IGNORE);
        CHECK(!early, "ssend_matched: MPI_Issend completed before the receive was posted");
    } else {
        MPI_Recv(&w, 0, MPI_INT, peer, TAG + 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Recv(&w, 1, MPI_INT, peer, TAG + 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        CHECK(w == 5, "ssend_matched: received %d", w);
    }
}

/* MPICH fails a buffered send that does not fit the attached buffer; Open MPI 4.1 sends it
 * anyway when it can go out at once. Either way the receiver gets what was sent. */
static void bsend_charged(void)
{
    if (!paired())
        return;
    int peer = peer_of(chk.rank), size = 64 + MPI_BSEND_OVERHEAD, cls = -1, sent;
    char *buf = chk_alloc((size_t)size), big[1000] = {0}, small[16] = {0}, in[1000];
    MPI_Buffer_attach(buf, size);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rc = MPI_Bsend(big, (int)sizeof big, MPI_CHAR, peer, TAG + 4, MPI_COMM_WORLD);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Error_class(rc, &cls);
#if defined(MPICH)
    CHECK(cls == MPI_ERR_BUFFER, "bsend_charged: 1000 bytes into a %d-byte buffer: class %d", size, cls);
#else
    CHECK(rc == MPI_SUCCESS || cls == MPI_ERR_BUFFER, "bsend_charged: 1000 bytes into a %d-byte buffer: class %d", size, cls);
#endif
    sent = rc == MPI_SUCCESS;
    MPI_Sendrecv_replace(&sent, 1, MPI_INT, peer, TAG + 5, peer, TAG + 5, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    rc = MPI_Bsend(small, (int)sizeof small, MPI_CHAR, peer, TAG + 4, MPI_COMM_WORLD);
    CHECK(rc == MPI_SUCCESS, "bsend_charged: 16 bytes: %d", rc);
    int n = -1;
    MPI_Status st;
    if (sent) {
        MPI_Recv(in, (int)sizeof in, MPI_CHAR, peer, TAG + 4, MPI_COMM_WORLD, &st);
        MPI_Get_count(&st, MPI_CHAR, &n);
    }
    MPI_Recv(in, (int)sizeof in, MPI_CHAR, peer, TAG + 4, MPI_COMM_WORLD, &st);
    MPI_Get_count(&st, MPI_CHAR, &n);
    CHECK(n == 16, "bsend_charged: last message %d bytes", n);
    void *back;
    int backsize;
    MPI_Buffer_detach(&back, &backsize);
    CHECK(back == buf && backsize == size, "bsend_charged: detach gave %d bytes", backsize);
    free(buf);
}

static void bottom(void)
{
    if (!paired())
        return;
    int peer = peer_of(chk.rank), a[4], b[3], in_a[4] = {-1, -1, -1, -1}, in_b[3] = {-1, -1, -1};
    for (int i = 0; i < 4; i++)
        a[i] = chk.rank * 100 + i;
    for (int i = 0; i < 3; i++)
        b[i] = chk.rank * 100 + 50 + i;
    MPI_Datatype out_t, in_t, types[2] = {MPI_INT, MPI_INT};
    int lens[2] = {4, 3};
    MPI_Aint disp[2];
    MPI_Get_address(a, &disp[0]);
    MPI_Get_address(b, &disp[1]);
    MPI_Type_create_struct(2, lens, disp, types, &out_t);
    MPI_Type_commit(&out_t);
    MPI_Get_address(in_a, &disp[0]);
    MPI_Get_address(in_b, &disp[1]);
    MPI_Type_create_struct(2, lens, disp, types, &in_t);
    MPI_Type_commit(&in_t);
    MPI_Sendrecv(MPI_BOTTOM, 1, out_t, peer, TAG + 5, MPI_BOTTOM, 1, in_t, peer, TAG + 5, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    int bad = 0;
    for (int i = 0; i < 4; i++)
        bad += in_a[i] != peer * 100 + i;
    for (int i = 0; i < 3; i++)
        bad += in_b[i] != peer * 100 + 50 + i;
    CHECK(bad == 0, "bottom: %d of 7 elements wrong", bad);
    MPI_Type_free(&out_t);
    MPI_Type_free(&in_t);
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    comm_free_pending();
    type_free_pending();
    request_free_recv();
    inactive_persistent();
    gather_null_type();
    status_error();
    arg_errors();
    ssend_matched();
    bsend_charged();
    bottom();
    return chk_finish("p2p_lifetime");
}
