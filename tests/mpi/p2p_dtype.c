/*
 * p2p_dtype: derived datatypes between every pair of ranks (co-located and remote): vector,
 * hvector with a negative stride, indexed, hindexed, struct with holes, contiguous of a derived
 * type, resized; sent derived and received contiguous and the reverse (holes in a receive
 * buffer must stay untouched); a large vector; MPI_Get_count/MPI_Get_elements of partial
 * receives; MPI_Pack/MPI_Unpack round trips locally and through MPI_PACKED messages.
 * Then random nested types (seeded, the same on every rank) in messages of 1 KiB to 2 MiB,
 * one element or many, sent derived to contiguous, contiguous to derived, derived to another
 * derived type and short into a derived receive, with the receive posted before or after the
 * message arrives: every received buffer, holes included, must equal what the library's own
 * MPI_Pack/MPI_Unpack make of the same data.
 */
#include "p2p_check.h"
#include <stddef.h>

enum { TAG = 7 };
#define SENTINEL (-7777)

static int to(int d) { return (chk.rank + d) % chk.size; }
static int from(int d) { return (chk.rank - d + chk.size) % chk.size; }
static int val(int src, int i) { return src * 1000003 + i; }

static MPI_Datatype commit(MPI_Datatype t)
{
    MPI_Type_commit(&t);
    return t;
}

/* xchg sends (sbuf, scount, stype) to to(d) and receives (rbuf, rcount, rtype) from from(d),
 * nonblocking or with MPI_Sendrecv. */
static void xchg(int how, const void *sbuf, int scount, MPI_Datatype stype, void *rbuf, int rcount, MPI_Datatype rtype,
                 int d, MPI_Status *st)
{
    if (how % 2) {
        MPI_Sendrecv(sbuf, scount, stype, to(d), TAG, rbuf, rcount, rtype, from(d), TAG, MPI_COMM_WORLD, st);
        return;
    }
    MPI_Request r[2];
    MPI_Status sts[2];
    MPI_Irecv(rbuf, rcount, rtype, from(d), TAG, MPI_COMM_WORLD, &r[0]);
    MPI_Isend(sbuf, scount, stype, to(d), TAG, MPI_COMM_WORLD, &r[1]);
    MPI_Waitall(2, r, sts);
    *st = sts[0];
}

/* layout_case sends the elements of an int array selected by (count, type) and receives them
 * contiguously, then sends contiguously and receives into the (count, type) layout of an array
 * pre-filled with SENTINEL. sel[k] is the index, relative to base, of the k-th selected
 * element, n their number, span the array length. */
static void layout_case(const char *name, MPI_Datatype type, int count, const int *sel, int n, int base, int span, int d)
{
    int *arr = chk_alloc(sizeof(int) * (size_t)span), *flat = chk_alloc(sizeof(int) * (size_t)n);
    int *mark = calloc((size_t)span, sizeof(int));
    MPI_Status st;
    char what[96];
    for (int how = 0; how < 2; how++) {
        snprintf(what, sizeof what, "%s from %d, %s, derived to contiguous", name, from(d), how ? "Sendrecv" : "Isend/Irecv");
        for (int i = 0; i < span; i++)
            arr[i] = val(chk.rank, i);
        xchg(how, arr + base, count, type, flat, n, MPI_INT, d, &st);
        chk_status(&st, from(d), TAG, MPI_INT, n, what);
        int k = 0;
        while (k < n && flat[k] == val(from(d), base + sel[k]))
            k++;
        CHECK(k == n, "%s: element %d is %d, expected %d", what, k, k < n ? flat[k] : 0, k < n ? val(from(d), base + sel[k]) : 0);

        snprintf(what, sizeof what, "%s from %d, %s, contiguous to derived", name, from(d), how ? "Sendrecv" : "Isend/Irecv");
        for (int k2 = 0; k2 < n; k2++)
            flat[k2] = val(chk.rank, k2);
        for (int i = 0; i < span; i++)
            arr[i] = SENTINEL;
        xchg(how, flat, n, MPI_INT, arr + base, count, type, d, &st);
        int elems = -1;
        MPI_Get_elements(&st, type, &elems);
        CHECK(elems == n, "%s: Get_elements %d, expected %d", what, elems, n);
        memset(mark, 0, sizeof(int) * (size_t)span);
        int bad = -1;
        for (k = 0; k < n; k++) {
            mark[base + sel[k]] = 1;
            if (bad < 0 && arr[base + sel[k]] != val(from(d), k))
                bad = k;
        }
        CHECK(bad < 0, "%s: selected element %d is %d, expected %d", what, bad, bad >= 0 ? arr[base + sel[bad]] : 0,
              bad >= 0 ? val(from(d), bad) : 0);
        int hole = -1;
        for (int i = 0; i < span && hole < 0; i++)
            if (!mark[i] && arr[i] != SENTINEL)
                hole = i;
        CHECK(hole < 0, "%s: hole at index %d was written", what, hole);
    }
    free(arr);
    free(flat);
    free(mark);
}

static void int_layouts(int d)
{
    int *sel = chk_alloc(sizeof(int) * 2 * 65536), n;

    /* vector: 50 blocks of 3 ints every 7 */
    MPI_Datatype vec;
    MPI_Type_vector(50, 3, 7, MPI_INT, &vec);
    vec = commit(vec);
    n = 0;
    for (int b = 0; b < 50; b++)
        for (int j = 0; j < 3; j++)
            sel[n++] = b * 7 + j;
    layout_case("vector", vec, 1, sel, n, 0, 350, d);

    /* two vectors back to back: the second starts at the extent of the first (344 ints) */
    n = 0;
    for (int c = 0; c < 2; c++)
        for (int b = 0; b < 50; b++)
            for (int j = 0; j < 3; j++)
                sel[n++] = c * 346 + b * 7 + j;
    layout_case("2 x vector", vec, 2, sel, n, 0, 700, d);

    /* hvector with a negative stride: the buffer argument points at the last element */
    MPI_Datatype back;
    MPI_Type_create_hvector(40, 1, -2 * (MPI_Aint)sizeof(int), MPI_INT, &back);
    back = commit(back);
    n = 0;
    for (int k = 0; k < 40; k++)
        sel[n++] = -2 * k;
    layout_case("hvector with negative stride", back, 1, sel, n, 80, 81, d);

    /* indexed and hindexed */
    int lens[4] = {1, 3, 2, 5}, disp[4] = {20, 0, 10, 4};
    MPI_Aint hdisp[4];
    for (int i = 0; i < 4; i++)
        hdisp[i] = disp[i] * (MPI_Aint)sizeof(int);
    MPI_Datatype idx, hidx;
    MPI_Type_indexed(4, lens, disp, MPI_INT, &idx);
    MPI_Type_create_hindexed(4, lens, hdisp, MPI_INT, &hidx);
    idx = commit(idx);
    hidx = commit(hidx);
    n = 0;
    for (int b = 0; b < 4; b++)
        for (int j = 0; j < lens[b]; j++)
            sel[n++] = disp[b] + j;
    layout_case("indexed", idx, 1, sel, n, 0, 25, d);
    layout_case("hindexed", hidx, 1, sel, n, 0, 25, d);

    /* contiguous of a derived type: 4 tiles of vector(3,1,2) (extent 5 ints) */
    MPI_Datatype v312, tiles;
    MPI_Type_vector(3, 1, 2, MPI_INT, &v312);
    MPI_Type_contiguous(4, v312, &tiles);
    tiles = commit(tiles);
    n = 0;
    for (int c = 0; c < 2; c++)
        for (int t = 0; t < 4; t++)
            for (int j = 0; j < 3; j++)
                sel[n++] = c * 20 + t * 5 + 2 * j;
    layout_case("contiguous of vector", tiles, 2, sel, n, 0, 40, d);

    /* resized: a column of a 4-wide matrix, extent one int, so that count 4 takes 4 columns */
    MPI_Datatype col, col1;
    MPI_Type_vector(6, 1, 4, MPI_INT, &col);
    MPI_Type_create_resized(col, 0, sizeof(int), &col1);
    col1 = commit(col1);
    n = 0;
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 6; r++)
            sel[n++] = c + 4 * r;
    layout_case("resized column", col1, 4, sel, n, 0, 24, d);

    /* large: 65536 blocks of 2 ints every 3 (512 KiB of payload, more than a ring) */
    MPI_Datatype big;
    MPI_Type_vector(65536, 2, 3, MPI_INT, &big);
    big = commit(big);
    n = 0;
    for (int b = 0; b < 65536; b++)
        for (int j = 0; j < 2; j++)
            sel[n++] = b * 3 + j;
    layout_case("large vector", big, 1, sel, n, 0, 3 * 65536, d);

    MPI_Type_free(&vec);
    MPI_Type_free(&back);
    MPI_Type_free(&idx);
    MPI_Type_free(&hidx);
    MPI_Type_free(&v312);
    MPI_Type_free(&tiles);
    MPI_Type_free(&col);
    MPI_Type_free(&col1);
    MPI_Type_free(&big);
    free(sel);
}

struct rec {
    char c;
    double x;
    int i[3];
    short s;
};

enum { NREC = 10, PACKED_REC = 1 + 8 + 12 + 2 };

static MPI_Datatype rec_type(void)
{
    int lens[4] = {1, 1, 3, 1};
    MPI_Aint disp[4] = {offsetof(struct rec, c), offsetof(struct rec, x), offsetof(struct rec, i), offsetof(struct rec, s)};
    MPI_Datatype types[4] = {MPI_CHAR, MPI_DOUBLE, MPI_INT, MPI_SHORT}, t, r;
    MPI_Type_create_struct(4, lens, disp, types, &t);
    MPI_Type_create_resized(t, 0, sizeof(struct rec), &r);
    MPI_Type_free(&t);
    return commit(r);
}

/* packed_rec_type has the same type signature as rec_type, without holes. */
static MPI_Datatype packed_rec_type(void)
{
    int lens[4] = {1, 1, 3, 1};
    MPI_Aint disp[4] = {0, 1, 9, 21};
    MPI_Datatype types[4] = {MPI_CHAR, MPI_DOUBLE, MPI_INT, MPI_SHORT}, t, r;
    MPI_Type_create_struct(4, lens, disp, types, &t);
    MPI_Type_create_resized(t, 0, PACKED_REC, &r);
    MPI_Type_free(&t);
    return commit(r);
}

static void fill_rec(struct rec *r, int src, int k)
{
    memset(r, 0xA5, sizeof *r);
    r->c = (char)('a' + (src * 3 + k) % 26);
    r->x = val(src, k) + 0.25;
    for (int j = 0; j < 3; j++)
        r->i[j] = val(src, 10 * k + j);
    r->s = (short)(src * 100 + k);
}

static int rec_ok(const struct rec *r, int src, int k)
{
    struct rec want;
    fill_rec(&want, src, k);
    return r->c == want.c && r->x == want.x && r->i[0] == want.i[0] && r->i[1] == want.i[1] && r->i[2] == want.i[2] &&
           r->s == want.s;
}

static int covers(size_t b, size_t off, size_t len) { return b >= off && b - off < len; }

/* holes_ok: the bytes of r outside its fields still hold fill byte 0x5A. */
static int holes_ok(const struct rec *r)
{
    const unsigned char *p = (const unsigned char *)r;
    for (size_t b = 0; b < sizeof *r; b++) {
        int in_field = covers(b, offsetof(struct rec, c), 1) || covers(b, offsetof(struct rec, x), 8) ||
                       covers(b, offsetof(struct rec, i), 12) || covers(b, offsetof(struct rec, s), 2);
        if (!in_field && p[b] != 0x5A)
            return 0;
    }
    return 1;
}

static void structs(int d)
{
    MPI_Datatype rt = rec_type(), pt = packed_rec_type();
    struct rec out[NREC], in[NREC];
    unsigned char flat[NREC * PACKED_REC];
    MPI_Status st;
    for (int how = 0; how < 2; how++) {
        for (int k = 0; k < NREC; k++)
            fill_rec(&out[k], chk.rank, k);
        memset(in, 0x5A, sizeof in);
        xchg(how, out, NREC, rt, in, NREC, rt, d, &st);
        chk_status(&st, from(d), TAG, rt, NREC, "struct with holes");
        int bad = -1, hole = -1;
        for (int k = 0; k < NREC; k++) {
            if (bad < 0 && !rec_ok(&in[k], from(d), k))
                bad = k;
            if (hole < 0 && !holes_ok(&in[k]))
                hole = k;
        }
        CHECK(bad < 0, "struct with holes from %d: record %d differs", from(d), bad);
        CHECK(hole < 0, "struct with holes from %d: a hole of record %d was written", from(d), hole);

        /* struct to the hole-free layout and back */
        memset(flat, 0, sizeof flat);
        xchg(how, out, NREC, rt, flat, NREC, pt, d, &st);
        chk_status(&st, from(d), TAG, pt, NREC, "struct to hole-free struct");
        bad = -1;
        for (int k = 0; k < NREC && bad < 0; k++) {
            struct rec want, got;
            fill_rec(&want, from(d), k);
            memcpy(&got.c, flat + k * PACKED_REC, 1);
            memcpy(&got.x, flat + k * PACKED_REC + 1, 8);
            memcpy(got.i, flat + k * PACKED_REC + 9, 12);
            memcpy(&got.s, flat + k * PACKED_REC + 21, 2);
            if (!rec_ok(&got, from(d), k))
                bad = k;
        }
        CHECK(bad < 0, "struct to hole-free struct from %d: record %d differs", from(d), bad);
        for (int k = 0; k < NREC; k++) {
            struct rec r;
            fill_rec(&r, chk.rank, k);
            memcpy(flat + k * PACKED_REC, &r.c, 1);
            memcpy(flat + k * PACKED_REC + 1, &r.x, 8);
            memcpy(flat + k * PACKED_REC + 9, r.i, 12);
            memcpy(flat + k * PACKED_REC + 21, &r.s, 2);
        }
        memset(in, 0x5A, sizeof in);
        xchg(how, flat, NREC, pt, in, NREC, rt, d, &st);
        bad = -1;
        hole = -1;
        for (int k = 0; k < NREC; k++) {
            if (bad < 0 && !rec_ok(&in[k], from(d), k))
                bad = k;
            if (hole < 0 && !holes_ok(&in[k]))
                hole = k;
        }
        CHECK(bad < 0 && hole < 0, "hole-free struct to struct from %d: record %d differs or hole of %d written", from(d), bad, hole);
    }
    MPI_Type_free(&rt);
    MPI_Type_free(&pt);
}

/* partial: a receive type that the message does not fill completely. */
static void partial(int d)
{
    double out[7], in[15];
    for (int i = 0; i < 15; i++)
        in[i] = -1;
    MPI_Datatype d3, rt = rec_type();
    MPI_Type_contiguous(3, MPI_DOUBLE, &d3);
    d3 = commit(d3);
    for (int i = 0; i < 7; i++)
        out[i] = val(chk.rank, i);
    MPI_Status st;
    xchg(0, out, 7, MPI_DOUBLE, in, 5, d3, d, &st);
    int count = 0, elems = 0;
    MPI_Get_count(&st, d3, &count);
    MPI_Get_elements(&st, d3, &elems);
    CHECK(count == MPI_UNDEFINED && elems == 7, "7 doubles into contiguous(3 doubles) x 5 from %d: count %d elements %d",
          from(d), count, elems);
    int bad = -1;
    for (int i = 0; i < 7 && bad < 0; i++)
        if (in[i] != val(from(d), i))
            bad = i;
    CHECK(bad < 0, "7 doubles into contiguous(3 doubles) x 5 from %d: double %d is %g, expected %d", from(d), bad,
          bad < 0 ? 0 : in[bad], bad < 0 ? 0 : val(from(d), bad));

    /* one and a half records: char, double, 3 ints, short, then char, double */
    struct rec recs[2];
    fill_rec(&recs[0], chk.rank, 0);
    fill_rec(&recs[1], chk.rank, 1);
    unsigned char pk[PACKED_REC + 9];
    memcpy(pk, &recs[0].c, 1);
    memcpy(pk + 1, &recs[0].x, 8);
    memcpy(pk + 9, recs[0].i, 12);
    memcpy(pk + 21, &recs[0].s, 2);
    memcpy(pk + 23, &recs[1].c, 1);
    memcpy(pk + 24, &recs[1].x, 8);
    /* sent as a hole-free record followed by a char and a double: 8 basic elements */
    MPI_Datatype pt = packed_rec_type(), half;
    int lens[3] = {1, 1, 1};
    MPI_Aint disp[3] = {0, PACKED_REC, PACKED_REC + 1};
    MPI_Datatype types[3] = {pt, MPI_CHAR, MPI_DOUBLE};
    MPI_Type_create_struct(3, lens, disp, types, &half);
    half = commit(half);
    struct rec rin[3];
    memset(rin, 0x5A, sizeof rin);
    xchg(1, pk, 1, half, rin, 3, rt, d, &st);
    MPI_Get_count(&st, rt, &count);
    MPI_Get_elements(&st, rt, &elems);
    CHECK(count == MPI_UNDEFINED && elems == 8, "1.5 records from %d: count %d elements %d (expected MPI_UNDEFINED, 8)",
          from(d), count, elems);
    struct rec want;
    fill_rec(&want, from(d), 1);
    CHECK(rec_ok(&rin[0], from(d), 0) && rin[1].c == want.c && rin[1].x == want.x && rin[1].i[0] == 0x5A5A5A5A,
          "1.5 records from %d: record 0 %s, half record char %d double %g, expected %d %g and the rest untouched",
          from(d), rec_ok(&rin[0], from(d), 0) ? "right" : "wrong", rin[1].c, rin[1].x, want.c, want.x);
    MPI_Type_free(&d3);
    MPI_Type_free(&rt);
    MPI_Type_free(&pt);
    MPI_Type_free(&half);
}

/* packing: MPI_Pack a vector, struct records and an int; unpack locally and after sending the
 * packed bytes as MPI_PACKED. */
static void packing(int d)
{
    enum { NV = 40 };
    MPI_Datatype vec, rt = rec_type();
    MPI_Type_vector(NV, 1, 2, MPI_INT, &vec);
    vec = commit(vec);
    int varr[2 * NV], vout[2 * NV], tail = val(chk.rank, 77), tail_in = 0;
    struct rec recs[NREC], rin[NREC];
    for (int i = 0; i < 2 * NV; i++)
        varr[i] = val(chk.rank, i);
    for (int k = 0; k < NREC; k++)
        fill_rec(&recs[k], chk.rank, k);
    int s1, s2, s3;
    MPI_Pack_size(1, vec, MPI_COMM_WORLD, &s1);
    MPI_Pack_size(NREC, rt, MPI_COMM_WORLD, &s2);
    MPI_Pack_size(1, MPI_INT, MPI_COMM_WORLD, &s3);
    int cap = s1 + s2 + s3, pos = 0;
    char *pk = chk_alloc((size_t)cap), *pin = chk_alloc((size_t)cap);
    MPI_Pack(varr, 1, vec, pk, cap, &pos, MPI_COMM_WORLD);
    MPI_Pack(recs, NREC, rt, pk, cap, &pos, MPI_COMM_WORLD);
    MPI_Pack(&tail, 1, MPI_INT, pk, cap, &pos, MPI_COMM_WORLD);
    CHECK(pos > 0 && pos <= cap, "Pack: position %d beyond Pack_size total %d", pos, cap);

    for (int remote = 0; remote < 2; remote++) {
        const char *where = remote ? "sent as MPI_PACKED" : "local";
        int src = remote ? from(d) : chk.rank, n = pos, upos = 0;
        if (remote) {
            MPI_Status st;
            xchg(d, pk, pos, MPI_PACKED, pin, cap, MPI_PACKED, d, &st);
            MPI_Get_count(&st, MPI_PACKED, &n);
            CHECK(n > 0 && n <= cap && st.MPI_SOURCE == from(d), "packed message from %d: %d bytes", from(d), n);
        } else {
            memcpy(pin, pk, (size_t)pos);
        }
        for (int i = 0; i < 2 * NV; i++)
            vout[i] = SENTINEL;
        memset(rin, 0x5A, sizeof rin);
        MPI_Unpack(pin, n, &upos, vout, 1, vec, MPI_COMM_WORLD);
        MPI_Unpack(pin, n, &upos, rin, NREC, rt, MPI_COMM_WORLD);
        MPI_Unpack(pin, n, &upos, &tail_in, 1, MPI_INT, MPI_COMM_WORLD);
        int bad = -1;
        for (int i = 0; i < 2 * NV && bad < 0; i++)
            if (vout[i] != (i % 2 ? SENTINEL : val(src, i)))
                bad = i;
        for (int k = 0; k < NREC && bad < 0; k++)
            if (!rec_ok(&rin[k], src, k) || !holes_ok(&rin[k]))
                bad = 1000 + k;
        CHECK(bad < 0 && tail_in == val(src, 77) && upos == n, "Unpack %s from %d: mismatch at %d, tail %d, position %d of %d",
              where, src, bad, tail_in, upos, n);
    }
    free(pk);
    free(pin);
    MPI_Type_free(&vec);
    MPI_Type_free(&rt);
}

/* ---- random nested types ---- */

enum { RAND_CASES = 16, RAND_MAX_DEPTH = 4 };
#define RAND_MAX_BYTES (2u << 20)

static uint64_t rng_state;
static unsigned rnd(unsigned n) /* 0..n-1 */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(rng_state >> 33) % n;
}

static MPI_Aint type_extent(MPI_Datatype t)
{
    MPI_Aint lb, ext;
    MPI_Type_get_extent(t, &lb, &ext);
    return ext;
}

/* A random type of ints whose instances, placed an extent apart, never overlap (receive types
 * must not), with byte displacements that keep ints aligned. *desc gets its shape. */
static MPI_Datatype rand_type(int depth, char *desc, size_t cap)
{
    MPI_Datatype c, t;
    char sub[256] = "int";
    unsigned kind = depth >= RAND_MAX_DEPTH ? 0 : rnd(depth == 0 ? 8 : 10);
    if (kind == 0 || kind >= 8) {
        snprintf(desc, cap, "int");
        return MPI_INT;
    }
    c = rand_type(depth + 1, sub, sizeof sub);
    MPI_Aint ext = type_extent(c);
    int bl = 1 + (int)rnd(4), n = 1 + (int)rnd(6);
    switch (kind) {
    case 1:
        MPI_Type_contiguous(n, c, &t);
        snprintf(desc, cap, "contig(%d,%s)", n, sub);
        break;
    case 2: {
        int stride = bl + (int)rnd(3);
        MPI_Type_vector(n, bl, stride, c, &t);
        snprintf(desc, cap, "vector(%d,%d,%d,%s)", n, bl, stride, sub);
        break;
    }
    case 3: { /* a negative byte stride */
        MPI_Aint stride = -((MPI_Aint)bl * ext + 4 * (MPI_Aint)rnd(3));
        MPI_Type_create_hvector(n, bl, stride, c, &t);
        snprintf(desc, cap, "hvector(%d,%d,%ld,%s)", n, bl, (long)stride, sub);
        break;
    }
    case 4: {
        int lens[6], disp[6], at = (int)rnd(3);
        for (int i = 0; i < n; i++) {
            lens[i] = (int)rnd(4); /* empty blocks too */
            disp[i] = at;
            at += lens[i] + (int)rnd(3);
        }
        MPI_Type_indexed(n, lens, disp, c, &t);
        snprintf(desc, cap, "indexed(%d,%s)", n, sub);
        break;
    }
    case 5: {
        MPI_Aint disp[6], at = 0;
        for (int i = 0; i < n; i++) {
            disp[i] = at;
            at += (MPI_Aint)bl * ext + 4 * (MPI_Aint)rnd(4);
        }
        MPI_Type_create_hindexed_block(n, bl, disp, c, &t);
        snprintf(desc, cap, "hindexed_block(%d,%d,%s)", n, bl, sub);
        break;
    }
    case 6: { /* a struct of c and ints around it, in memory order */
        MPI_Datatype types[3] = {MPI_INT, c, MPI_INT};
        int lens[3] = {(int)rnd(3), bl, 1 + (int)rnd(2)};
        MPI_Aint disp[3];
        disp[0] = 4 * (MPI_Aint)rnd(2);
        disp[1] = disp[0] + 4 * lens[0] + 4 * (MPI_Aint)rnd(2);
        MPI_Aint lb, tlb, text;
        MPI_Type_get_true_extent(c, &tlb, &text);
        MPI_Type_get_extent(c, &lb, &ext);
        disp[1] -= tlb < 0 ? tlb : 0;
        disp[2] = disp[1] + (bl - 1) * ext + (tlb > 0 ? tlb : 0) + text + 4 * (MPI_Aint)rnd(2);
        MPI_Type_create_struct(3, lens, disp, types, &t);
        snprintf(desc, cap, "struct(%d int,%d %s,%d int)", lens[0], bl, sub, lens[2]);
        break;
    }
    default: { /* 7: a subarray of a 2-d or 3-d array, C or Fortran order */
        int nd = 2 + (int)rnd(2), sizes[3], subs[3], starts[3];
        int order = rnd(2) ? MPI_ORDER_C : MPI_ORDER_FORTRAN;
        for (int i = 0; i < nd; i++) {
            sizes[i] = 2 + (int)rnd(5);
            subs[i] = 1 + (int)rnd((unsigned)sizes[i]);
            starts[i] = (int)rnd((unsigned)(sizes[i] - subs[i] + 1));
        }
        MPI_Type_create_subarray(nd, sizes, subs, starts, order, c, &t);
        snprintf(desc, cap, "subarray(%dd,%s,%s)", nd, order == MPI_ORDER_C ? "C" : "F", sub);
        break;
    }
    }
    if (c != MPI_INT)
        MPI_Type_free(&c);
    if (rnd(4) == 0) { /* a larger extent: a hole after each instance */
        MPI_Aint lb;
        MPI_Type_get_extent(t, &lb, &ext);
        MPI_Datatype r;
        MPI_Type_create_resized(t, lb, ext + 4 * (MPI_Aint)(1 + rnd(8)), &r);
        MPI_Type_free(&t);
        t = r;
        size_t l = strlen(desc);
        snprintf(desc + l, cap - l, "+hole");
    }
    MPI_Type_commit(&t);
    return t;
}

/* A darray of ints, which the shim's typemap does not represent: the library packs it then. */
static MPI_Datatype darray_type(char *desc, size_t cap)
{
    int gs[2] = {64, 100}, dist[2] = {MPI_DISTRIBUTE_BLOCK, MPI_DISTRIBUTE_CYCLIC};
    int darg[2] = {MPI_DISTRIBUTE_DFLT_DARG, 1}, ps[2] = {2, 1};
    MPI_Datatype t;
    MPI_Type_create_darray(2, 1, 2, gs, dist, darg, ps, MPI_ORDER_C, MPI_INT, &t);
    MPI_Type_commit(&t);
    snprintf(desc, cap, "darray(64x100,block x cyclic,1 of 2)");
    return t;
}

/* A buffer for count elements of t: mem holds them all, at is where element 0 goes. */
struct tbuf {
    unsigned char *mem, *at;
    size_t bytes;
};

static struct tbuf tbuf_new(MPI_Datatype t, int count)
{
    MPI_Aint lb, ext, tlb, text;
    MPI_Type_get_extent(t, &lb, &ext);
    MPI_Type_get_true_extent(t, &tlb, &text);
    struct tbuf b;
    b.bytes = (size_t)((count - 1) * ext + text);
    b.mem = chk_alloc(b.bytes + 4);
    b.at = b.mem - tlb;
    return b;
}

/* fill gives the ints of a buffer values unique to (src, position) */
static void tbuf_fill(struct tbuf *b, int src)
{
    for (size_t i = 0; i < b->bytes / 4; i++)
        ((int *)b->mem)[i] = val(src, (int)i);
}

static void tbuf_sentinel(struct tbuf *b)
{
    for (size_t i = 0; i < b->bytes / 4; i++)
        ((int *)b->mem)[i] = SENTINEL;
}

/* The ints a message of count elements of t at b carries, by the library's MPI_Pack. */
static int *lib_pack(struct tbuf *b, MPI_Datatype t, int count, int n)
{
    int *out = chk_alloc(4 * (size_t)n), pos = 0;
    MPI_Pack(b->at, count, t, out, 4 * n, &pos, MPI_COMM_SELF);
    return out;
}

/* What a receive of count elements of t into a SENTINEL-filled buffer must hold after m of
 * the n ints in flat arrived: the library's MPI_Unpack of them, the rest left SENTINEL. */
static struct tbuf lib_unpack(MPI_Datatype t, int count, const int *flat, int m, int n)
{
    struct tbuf b = tbuf_new(t, count);
    tbuf_sentinel(&b);
    int *all = chk_alloc(4 * (size_t)n), pos = 0;
    memcpy(all, flat, 4 * (size_t)m);
    for (int i = m; i < n; i++)
        all[i] = SENTINEL;
    MPI_Unpack(all, 4 * n, &pos, b.at, count, t, MPI_COMM_SELF);
    free(all);
    return b;
}

/* One random case: ranks send to to(1) and receive from from(1). how 0: Irecv before Isend;
 * 1: MPI_Sendrecv; 2: Isend, barrier, Recv (the message waits as unexpected). */
static void rand_xchg(int how, const void *sbuf, int scount, MPI_Datatype stype, void *rbuf, int rcount,
                      MPI_Datatype rtype, MPI_Status *st)
{
    if (how < 2) {
        xchg(how, sbuf, scount, stype, rbuf, rcount, rtype, 1, st);
        return;
    }
    MPI_Request r;
    MPI_Isend(sbuf, scount, stype, to(1), TAG, MPI_COMM_WORLD, &r);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Recv(rbuf, rcount, rtype, from(1), TAG, MPI_COMM_WORLD, st);
    MPI_Wait(&r, MPI_STATUS_IGNORE);
}

/* Whether count elements of t (n ints) write some int twice: Open MPI's extent of a struct with
 * a zero-length block can be shorter than its data, so the generator's own rules do not keep
 * receive types from overlapping. */
static int overlaps(MPI_Datatype t, int count, int n)
{
    struct tbuf b = tbuf_new(t, count);
    memset(b.mem, 0xff, b.bytes);
    int *idx = chk_alloc(4 * (size_t)n), pos = 0;
    for (int i = 0; i < n; i++)
        idx[i] = i;
    MPI_Unpack(idx, 4 * n, &pos, b.at, count, t, MPI_COMM_SELF);
    long written = 0;
    for (size_t i = 0; i < b.bytes / 4; i++)
        written += ((int *)b.mem)[i] != -1;
    free(idx);
    free(b.mem);
    return written != n;
}

/* *t becomes one element of count of them. */
static int one_element(MPI_Datatype *t, int count, char *desc, size_t cap)
{
    MPI_Datatype c;
    MPI_Type_contiguous(count, *t, &c);
    MPI_Type_commit(&c);
    if (*t != MPI_INT)
        MPI_Type_free(t);
    *t = c;
    size_t l = strlen(desc);
    snprintf(desc + l, cap - l, " x%d", count);
    return 1;
}

static void rand_types(void)
{
    for (int k = 0; k < RAND_CASES; k++) {
        char da[512], db[512], what[1200];
        rng_state = 0x5eed0000u + (uint64_t)k;
        /* two types of which n ints, about 1 KiB to 2 MiB, are a whole number of elements each */
        MPI_Datatype a = MPI_DATATYPE_NULL, b = MPI_DATATYPE_NULL;
        long lcm = 0, n = 0;
        int ea = 0, eb = 0, ca = 0, cb = 0;
        while (!n) {
            if (a != MPI_DATATYPE_NULL && a != MPI_INT)
                MPI_Type_free(&a);
            if (b != MPI_DATATYPE_NULL && b != MPI_INT)
                MPI_Type_free(&b);
            a = k == RAND_CASES - 1 ? darray_type(da, sizeof da) : rand_type(0, da, sizeof da);
            b = rand_type(0, db, sizeof db);
            MPI_Type_size(a, &ea);
            MPI_Type_size(b, &eb);
            ea /= 4;
            eb /= 4;
            int l = ea, g = eb;
            while (g) {
                int r = l % g;
                l = g;
                g = r;
            }
            lcm = ea && eb ? (long)ea / l * eb : 0;
            if (!lcm || 4 * lcm > (long)RAND_MAX_BYTES)
                continue;
            unsigned bytes = 1024u << rnd(11); /* log-uniform: the shim packs whole up to 256 KiB */
            long target = (long)(bytes + rnd(bytes)) / 4;
            for (n = lcm; n < target;)
                n += lcm;
            ca = (int)(n / ea);
            cb = (int)(n / eb);
            /* one element as long as the message, at times (the typical halo type) */
            if (rnd(3) == 0 && ca > 1)
                ca = one_element(&a, ca, da, sizeof da);
            if (rnd(3) == 0 && cb > 1)
                cb = one_element(&b, cb, db, sizeof db);
            if (overlaps(b, cb, (int)n))
                n = 0; /* not a valid receive type */
        }
        struct tbuf src = tbuf_new(a, ca);
        tbuf_fill(&src, chk.rank);
        struct tbuf mine = tbuf_new(a, ca); /* what from(1) sends: the same fill of its rank */
        tbuf_fill(&mine, from(1));
        int *want = lib_pack(&mine, a, ca, (int)n);
        int *flat = chk_alloc(4 * (size_t)n), *myflat = lib_pack(&src, a, ca, (int)n);
        MPI_Status st;
        for (int how = 0; how < 3; how++) {
            /* a to contiguous */
            snprintf(what, sizeof what, "random %d (%s x %d, %ld B) derived to contiguous, how %d", k, da, ca, 4 * n, how);
            rand_xchg(how, src.at, ca, a, flat, (int)n, MPI_INT, &st);
            chk_status(&st, from(1), TAG, MPI_INT, (int)n, what);
            long i = 0;
            while (i < n && flat[i] == want[i])
                i++;
            CHECK(i == n, "%s: int %ld is %d, want %d", what, i, i < n ? flat[i] : 0, i < n ? want[i] : 0);
            /* contiguous to b, a to b, and m < n ints to b */
            for (int v = 0; v < 3; v++) {
                int m = v == 2 ? (int)(n - 1 - rnd((unsigned)(n / 2))) : (int)n;
                struct tbuf dst = tbuf_new(b, cb);
                tbuf_sentinel(&dst);
                snprintf(what, sizeof what, "random %d (%s x %d to %s x %d, %d of %ld ints), how %d", k,
                         v == 1 ? da : "int", v == 1 ? ca : m, db, cb, m, n, how);
                if (v == 1)
                    rand_xchg(how, src.at, ca, a, dst.at, cb, b, &st);
                else
                    rand_xchg(how, myflat, m, MPI_INT, dst.at, cb, b, &st);
                CHECK(st.MPI_SOURCE == from(1) && st.MPI_TAG == TAG, "%s: status source %d tag %d", what,
                      st.MPI_SOURCE, st.MPI_TAG);
                int got;
                MPI_Get_count(&st, MPI_INT, &got);
                CHECK(got == m, "%s: MPI_Get_count says %d ints, want %d", what, got, m);
                struct tbuf exp = lib_unpack(b, cb, want, m, (int)n);
                size_t j = 0;
                while (j < dst.bytes / 4 && ((int *)dst.mem)[j] == ((int *)exp.mem)[j])
                    j++;
                CHECK(j == dst.bytes / 4, "%s: int %zu of the receive buffer is %d, want %d", what, j,
                      j < dst.bytes / 4 ? ((int *)dst.mem)[j] : 0, j < dst.bytes / 4 ? ((int *)exp.mem)[j] : 0);
                free(exp.mem);
                free(dst.mem);
            }
        }
        free(flat);
        free(myflat);
        free(want);
        free(src.mem);
        free(mine.mem);
        if (a != MPI_INT)
            MPI_Type_free(&a);
        if (b != MPI_INT)
            MPI_Type_free(&b);
    }
}

/* Types built on an MPI_Type_create_f90_real type, which is predefined: the shim, reading the
 * vector's contents, must not free it. Sent twice, as a vector and received contiguous. */
static void f90_types(void)
{
    enum { N = 1000 };
    MPI_Datatype r8, vec, flat;
    MPI_Type_create_f90_real(15, MPI_UNDEFINED, &r8);
    MPI_Type_vector(N, 1, 2, r8, &vec);
    MPI_Type_commit(&vec);
    MPI_Type_contiguous(N, r8, &flat);
    MPI_Type_commit(&flat);
    double *s = chk_alloc(sizeof(double) * 2 * N), *d = chk_alloc(sizeof(double) * N);
    for (int how = 0; how < 2; how++) {
        for (int i = 0; i < 2 * N; i++)
            s[i] = val(chk.rank, i);
        MPI_Status st;
        xchg(how, s, 1, vec, d, 1, flat, 1, &st);
        int i = 0;
        while (i < N && d[i] == val(from(1), 2 * i))
            i++;
        CHECK(i == N, "vector of an f90 real, %s: element %d is %g, want %d", how ? "Sendrecv" : "Isend/Irecv", i,
              i < N ? d[i] : 0, i < N ? val(from(1), 2 * i) : 0);
    }
    free(s);
    free(d);
    MPI_Type_free(&vec);
    MPI_Type_free(&flat);
}

/* Empty derived types (a halo with no neighbour): a struct and an indexed type of no blocks,
 * and no elements of a pair type with a hole, which the shim's typemap does not represent. */
static void empty_types(void)
{
    MPI_Datatype t[3];
    int lens[1] = {1}, disp[1] = {0};
    MPI_Aint adisp[1] = {0};
    MPI_Datatype types[1] = {MPI_INT};
    MPI_Type_create_struct(0, lens, adisp, types, &t[0]);
    MPI_Type_indexed(0, lens, disp, MPI_INT, &t[1]);
    MPI_Type_contiguous(0, MPI_SHORT_INT, &t[2]);
    int buf[4] = {1, 2, 3, 4}, got[4] = {0, 0, 0, 0};
    for (int k = 0; k < 3; k++) {
        MPI_Type_commit(&t[k]);
        for (int how = 0; how < 2; how++) {
            MPI_Status st;
            xchg(how, buf, 1, t[k], got, 1, t[k], 1, &st);
            int n = -1;
            MPI_Get_count(&st, MPI_BYTE, &n);
            CHECK(st.MPI_SOURCE == from(1) && st.MPI_TAG == TAG && n == 0 && !got[0],
                  "empty type %d, how %d: source %d tag %d bytes %d", k, how, st.MPI_SOURCE, st.MPI_TAG, n);
        }
        MPI_Type_free(&t[k]);
    }
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    for (int d = 1; d < chk.size; d++) {
        int_layouts(d);
        structs(d);
        partial(d);
        packing(d);
    }
    if (chk.size > 1) {
        rand_types();
        f90_types();
        empty_types();
    }
    return chk_finish("p2p_dtype");
}
