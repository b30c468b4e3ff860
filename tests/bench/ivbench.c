/*
 * ivbench: ivshim's IMB-compatible MPI benchmark, plain MPI C with no shim dependency.
 *
 * It implements a subset of the Intel MPI Benchmarks (IMB-MPI1) command line and prints the
 * same blocks, so tools that read IMB output read this:
 *
 *   ivbench [-msglog [min:]max] [-msglen file] [-iter n[,bytes]] [-time s] [-npmin p] [-mem gb]
 *           [-digits d] [-check] [-root_shift on|off] [PingPong PingPing Sendrecv Exchange Barrier Bcast
 *           Reduce Allreduce Allgather Alltoall Gather Scatter]
 *
 *   -msglog  message sizes 0 and 2^min..2^max bytes (default 0:22)
 *   -msglen  message sizes read from a file, one per line, in that order (replaces -msglog);
 *            only rank 0 reads it
 *   -iter    repetitions per size (default 1000), at most bytes/size of them (default 40 MiB):
 *            big messages get fewer repetitions, as in IMB
 *   -time    at most about this many seconds per size (default 0.2; IMB's is 10), estimated
 *            from a pilot run, so a full run stays short on a small machine
 *   -npmin   run collectives on npmin, 2*npmin, 4*npmin, ... and all processes (default 2)
 *   -mem     skip sizes whose buffers need more than this many GiB per process (default 1)
 *   -digits  decimals of the times printed (default 2, as IMB; 0..6): sub-microsecond
 *            latencies need more to be compared
 *   -check   check received data after every repetition (timings then include the check);
 *            by default the warm-up and the last timed repetition of each size are checked
 *   -root_shift  on: the root of Bcast, Reduce, Gather and Scatter moves to the next rank at
 *            every repetition, as IMB's -root_shift on does (default off: rank 0)
 *
 * Benchmark names are case-insensitive; without names all run. Data is checked so that a
 * transport that corrupts or misplaces bytes fails the run: "ivbench: data check failed ..."
 * on stderr and MPI_Abort with code 3. Reductions use MPI_FLOAT and MPI_SUM, as IMB does, on
 * values whose sums are exact.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Defaults, see the usage above. */
enum { DEFAULT_MSGLOG_MIN = 0, DEFAULT_MSGLOG_MAX = 22, DEFAULT_ITER = 1000 };
#define DEFAULT_OVERALL_VOL (40.0 * 1024 * 1024)
#define DEFAULT_TIME_LIMIT 0.2
#define DEFAULT_MEM_GB 1.0
/* At most this many sizes in a -msglen file. */
enum { MAX_LENGTHS = 256 };
/* The pilot that estimates the time per repetition: the fastest of a few short batches, so
 * that one preemption during the pilot does not cut the timed run short. */
enum { PILOT_REPS = 8, PILOT_BATCHES = 4 };
/* Seeds of the data patterns: each sender and each block gets its own. */
enum { SEED_STRIDE = 1024 };

struct options {
    int msglog_min, msglog_max;
    const char *msglen_file;
    uint64_t sizes[MAX_LENGTHS]; /* the message sizes to run, from -msglog or -msglen */
    int nsizes;
    long iter;
    double overall_vol;
    double time_limit;
    int npmin;
    double mem_gb;
    int check_every;
    int digits;        /* decimals of printed times */
    int root_shift;    /* 1: the root moves on by one rank every repetition */
    unsigned selected; /* bit per benchmark */
};

/* One size of one benchmark on one communicator. */
struct run {
    const struct bench *b;
    MPI_Comm comm;
    int rank, p;
    int root, root_shift; /* the root of this repetition; how far it moves for the next */
    size_t bytes;
    unsigned char *sbuf, *rbuf;
};

/* PAIR runs on two processes and prints IMB's "t[usec] Mbytes/sec"; GROUP on npmin .. all
 * processes with t_min, t_max and t_avg (and Mbytes/sec if its messages > 0);
 * BARRIER is GROUP without sizes. */
enum kind { PAIR, GROUP, BARRIER };

struct bench {
    const char *name;
    enum kind kind;
    /* PAIR: the printed time is rank 0's time per repetition times this (PingPong's round
     * trip is halved, as IMB does). */
    double tscale;
    /* Mbytes/sec is messages * bytes / t (t_max for GROUP), messages as IMB counts them per
     * repetition and rank; 0: no bandwidth column. */
    int messages;
    int reduction;                           /* MPI_FLOAT elements: sizes must be multiples of 4 */
    size_t (*sbuf_blocks)(int p);            /* size of sbuf, in message sizes */
    size_t (*rbuf_blocks)(int p);            /* size of rbuf, in message sizes */
    void (*fill)(const struct run *r);       /* fill sbuf before a size */
    void (*op)(const struct run *r);         /* one repetition */
    void (*verify)(const struct run *r);     /* check rbuf after a repetition */
};

static int world_rank;

static unsigned char pattern(long seed, size_t i)
{
    uint32_t x = (uint32_t)i ^ (uint32_t)(i >> 11) ^ (uint32_t)(i >> 23);
    return (unsigned char)(x * 131u + (uint32_t)seed * 71u + 17u);
}

static void fill_pattern(unsigned char *buf, size_t n, long seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = pattern(seed, i);
}

static void fail_check(const struct run *r, size_t at, double got, double want)
{
    fprintf(stderr,
            "ivbench: data check failed: %s, %zu bytes, %d processes, rank %d, byte %zu: got %g, want %g\n",
            r->b->name, r->bytes, r->p, world_rank, at, got, want);
    MPI_Abort(MPI_COMM_WORLD, 3);
}

static void check_pattern(const struct run *r, const unsigned char *buf, size_t n, long seed, size_t base)
{
    for (size_t i = 0; i < n; i++)
        if (buf[i] != pattern(seed, i))
            fail_check(r, base + i, buf[i], pattern(seed, i));
}

static size_t one_block(int p) { (void)p; return 1; }
static size_t no_block(int p) { (void)p; return 0; }
static size_t p_blocks(int p) { return (size_t)p; }
static size_t two_blocks(int p) { (void)p; return 2; }

/* Every rank sends its own pattern (seed: its rank). */
static void own_fill(const struct run *r) { fill_pattern(r->sbuf, r->bytes, r->rank); }

/* PingPong: ranks 0 and 1 of a two-process communicator. */
static void pingpong_op(const struct run *r)
{
    int n = (int)r->bytes;
    if (r->rank == 0) {
        MPI_Send(r->sbuf, n, MPI_BYTE, 1, 1, r->comm);
        MPI_Recv(r->rbuf, n, MPI_BYTE, 1, 1, r->comm, MPI_STATUS_IGNORE);
    } else {
        MPI_Recv(r->rbuf, n, MPI_BYTE, 0, 1, r->comm, MPI_STATUS_IGNORE);
        MPI_Send(r->sbuf, n, MPI_BYTE, 0, 1, r->comm);
    }
}

static void pingpong_verify(const struct run *r) { check_pattern(r, r->rbuf, r->bytes, 1 - r->rank, 0); }

/* PingPing: ranks 0 and 1 send to each other at once (IMB: MPI_Isend, MPI_Recv, MPI_Wait). */
static void pingping_op(const struct run *r)
{
    int n = (int)r->bytes, other = 1 - r->rank;
    MPI_Request req;
    MPI_Isend(r->sbuf, n, MPI_BYTE, other, 1, r->comm, &req);
    MPI_Recv(r->rbuf, n, MPI_BYTE, other, 1, r->comm, MPI_STATUS_IGNORE);
    MPI_Wait(&req, MPI_STATUS_IGNORE);
}

/* Sendrecv and Exchange: a periodic chain; every rank sends its own pattern. */
static int left_of(const struct run *r) { return (r->rank + r->p - 1) % r->p; }
static int right_of(const struct run *r) { return (r->rank + 1) % r->p; }

/* Sendrecv: every rank sends to its right neighbour and receives from its left (IMB). */
static void sendrecv_op(const struct run *r)
{
    int n = (int)r->bytes;
    MPI_Sendrecv(r->sbuf, n, MPI_BYTE, right_of(r), 1, r->rbuf, n, MPI_BYTE, left_of(r), 1, r->comm,
                 MPI_STATUS_IGNORE);
}

static void sendrecv_verify(const struct run *r) { check_pattern(r, r->rbuf, r->bytes, left_of(r), 0); }

/* Exchange: every rank sends to both neighbours and receives from both (IMB: two MPI_Isend,
 * two MPI_Recv, MPI_Waitall); block 0 of rbuf comes from the left, block 1 from the right. */
static void exchange_op(const struct run *r)
{
    int n = (int)r->bytes;
    MPI_Request req[2];
    MPI_Status st[2]; /* not MPI_STATUSES_IGNORE: GCC 12 misreads MPICH's as a zero-size array */
    MPI_Isend(r->sbuf, n, MPI_BYTE, left_of(r), 1, r->comm, &req[0]);
    MPI_Isend(r->sbuf, n, MPI_BYTE, right_of(r), 1, r->comm, &req[1]);
    MPI_Recv(r->rbuf, n, MPI_BYTE, left_of(r), 1, r->comm, MPI_STATUS_IGNORE);
    MPI_Recv(r->rbuf + r->bytes, n, MPI_BYTE, right_of(r), 1, r->comm, MPI_STATUS_IGNORE);
    MPI_Waitall(2, req, st);
}

static void exchange_verify(const struct run *r)
{
    check_pattern(r, r->rbuf, r->bytes, left_of(r), 0);
    check_pattern(r, r->rbuf + r->bytes, r->bytes, right_of(r), r->bytes);
}

static void barrier_op(const struct run *r) { MPI_Barrier(r->comm); }

static void nothing(const struct run *r) { (void)r; }

/* Bcast: the root sends sbuf (every rank's holds the same pattern), the others receive into
 * rbuf. */
static void bcast_fill(const struct run *r) { fill_pattern(r->sbuf, r->bytes, 0); }

static void bcast_op(const struct run *r)
{
    MPI_Bcast(r->rank == r->root ? r->sbuf : r->rbuf, (int)r->bytes, MPI_BYTE, r->root, r->comm);
}

static void bcast_verify(const struct run *r)
{
    if (r->rank != r->root)
        check_pattern(r, r->rbuf, r->bytes, 0, 0);
}

/* Reductions: element i of rank k is (k+1)*(i%13+1), so the sum is (i%13+1)*p(p+1)/2, exact. */
static void reduce_fill(const struct run *r)
{
    float *s = (float *)r->sbuf;
    for (size_t i = 0; i < r->bytes / sizeof(float); i++)
        s[i] = (float)((r->rank + 1) * (int)(i % 13 + 1));
}

static void check_sum(const struct run *r)
{
    const float *d = (const float *)r->rbuf;
    float ranks = (float)r->p * (float)(r->p + 1) / 2;
    for (size_t i = 0; i < r->bytes / sizeof(float); i++) {
        float want = (float)(i % 13 + 1) * ranks;
        if (d[i] != want)
            fail_check(r, i * sizeof(float), d[i], want);
    }
}

static void reduce_op(const struct run *r)
{
    MPI_Reduce(r->sbuf, r->rbuf, (int)(r->bytes / sizeof(float)), MPI_FLOAT, MPI_SUM, r->root, r->comm);
}

static void reduce_verify(const struct run *r)
{
    if (r->rank == r->root)
        check_sum(r);
}

static void allreduce_op(const struct run *r)
{
    MPI_Allreduce(r->sbuf, r->rbuf, (int)(r->bytes / sizeof(float)), MPI_FLOAT, MPI_SUM, r->comm);
}

/* Allgather and Gather: every rank contributes its own pattern (own_fill); block k must be rank
 * k's. */
static void check_blocks_by_rank(const struct run *r)
{
    for (int k = 0; k < r->p; k++)
        check_pattern(r, r->rbuf + (size_t)k * r->bytes, r->bytes, k, (size_t)k * r->bytes);
}

static void allgather_op(const struct run *r)
{
    MPI_Allgather(r->sbuf, (int)r->bytes, MPI_BYTE, r->rbuf, (int)r->bytes, MPI_BYTE, r->comm);
}

static void gather_op(const struct run *r)
{
    MPI_Gather(r->sbuf, (int)r->bytes, MPI_BYTE, r->rbuf, (int)r->bytes, MPI_BYTE, r->root, r->comm);
}

static void gather_verify(const struct run *r)
{
    if (r->rank == r->root)
        check_blocks_by_rank(r);
}

/* Alltoall and Scatter: the block from rank k to rank j has seed k*SEED_STRIDE + j. */
static void addressed_fill(const struct run *r)
{
    for (int j = 0; j < r->p; j++)
        fill_pattern(r->sbuf + (size_t)j * r->bytes, r->bytes, (long)r->rank * SEED_STRIDE + j);
}

static void alltoall_op(const struct run *r)
{
    MPI_Alltoall(r->sbuf, (int)r->bytes, MPI_BYTE, r->rbuf, (int)r->bytes, MPI_BYTE, r->comm);
}

static void alltoall_verify(const struct run *r)
{
    for (int k = 0; k < r->p; k++)
        check_pattern(r, r->rbuf + (size_t)k * r->bytes, r->bytes, (long)k * SEED_STRIDE + r->rank,
                      (size_t)k * r->bytes);
}

static void scatter_op(const struct run *r)
{
    MPI_Scatter(r->sbuf, (int)r->bytes, MPI_BYTE, r->rbuf, (int)r->bytes, MPI_BYTE, r->root, r->comm);
}

static void scatter_verify(const struct run *r)
{
    check_pattern(r, r->rbuf, r->bytes, (long)r->root * SEED_STRIDE + r->rank, 0);
}

/* In IMB's order. Every rank allocates the root's buffers, as IMB does. */
static const struct bench benches[] = {
    {"PingPong", PAIR, 0.5, 1, 0, one_block, one_block, own_fill, pingpong_op, pingpong_verify},
    {"PingPing", PAIR, 1, 1, 0, one_block, one_block, own_fill, pingping_op, pingpong_verify},
    {"Sendrecv", GROUP, 1, 2, 0, one_block, one_block, own_fill, sendrecv_op, sendrecv_verify},
    {"Exchange", GROUP, 1, 4, 0, one_block, two_blocks, own_fill, exchange_op, exchange_verify},
    {"Barrier", BARRIER, 1, 0, 0, no_block, no_block, nothing, barrier_op, nothing},
    {"Bcast", GROUP, 1, 0, 0, one_block, one_block, bcast_fill, bcast_op, bcast_verify},
    {"Reduce", GROUP, 1, 0, 1, one_block, one_block, reduce_fill, reduce_op, reduce_verify},
    {"Allreduce", GROUP, 1, 0, 1, one_block, one_block, reduce_fill, allreduce_op, check_sum},
    {"Allgather", GROUP, 1, 0, 0, one_block, p_blocks, own_fill, allgather_op, check_blocks_by_rank},
    {"Alltoall", GROUP, 1, 0, 0, p_blocks, p_blocks, addressed_fill, alltoall_op, alltoall_verify},
    {"Gather", GROUP, 1, 0, 0, one_block, p_blocks, own_fill, gather_op, gather_verify},
    {"Scatter", GROUP, 1, 0, 0, p_blocks, one_block, addressed_fill, scatter_op, scatter_verify},
};
enum { NBENCH = sizeof benches / sizeof benches[0] };

static void usage(void)
{
    if (world_rank != 0)
        return;
    fprintf(stderr, "usage: ivbench [-msglog [min:]max] [-msglen file] [-iter n[,bytes]] [-time s] [-npmin p]"
                    " [-mem gb] [-digits d] [-check] [-root_shift on|off] [benchmark...]\nbenchmarks:");
    for (int i = 0; i < NBENCH; i++)
        fprintf(stderr, " %s", benches[i].name);
    fprintf(stderr, "\n");
}

static int parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double min, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v >= min))
        return -1;
    *out = v;
    return 0;
}

/* parse_msglog accepts "max" or "min:max", 0 <= min <= max <= 30. */
static int parse_msglog(const char *s, struct options *o)
{
    char buf[64];
    long lo = 0, hi;
    snprintf(buf, sizeof buf, "%s", s);
    char *colon = strchr(buf, ':');
    if (colon != NULL) {
        *colon = '\0';
        if (parse_long(buf, 0, 30, &lo) != 0)
            return -1;
        s = colon + 1;
    } else {
        s = buf;
    }
    if (parse_long(s, lo, 30, &hi) != 0)
        return -1;
    o->msglog_min = (int)lo;
    o->msglog_max = (int)hi;
    return 0;
}

/* parse_switch returns 1 for on, 1, yes or enable, 0 for off, 0, no or disable (IMB's words),
 * -1 for anything else. */
static int parse_switch(const char *s)
{
    static const char *const on[] = {"on", "1", "yes", "enable"}, *const off[] = {"off", "0", "no", "disable"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, on[i]) == 0)
            return 1;
        if (strcasecmp(s, off[i]) == 0)
            return 0;
    }
    return -1;
}

/* parse_iter accepts "n" or "n,overall_bytes". */
static int parse_iter(const char *s, struct options *o)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    char *comma = strchr(buf, ',');
    if (comma != NULL) {
        *comma = '\0';
        if (parse_double(comma + 1, 1, &o->overall_vol) != 0)
            return -1;
    }
    return parse_long(buf, 1, 1000000000L, &o->iter);
}

static int parse_args(int argc, char **argv, struct options *o)
{
    *o = (struct options){.msglog_min = DEFAULT_MSGLOG_MIN, .msglog_max = DEFAULT_MSGLOG_MAX,
                          .iter = DEFAULT_ITER, .overall_vol = DEFAULT_OVERALL_VOL, .time_limit = DEFAULT_TIME_LIMIT,
                          .npmin = 2, .mem_gb = DEFAULT_MEM_GB, .digits = 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        int bad = 0;
        if (strcmp(a, "-check") == 0) {
            o->check_every = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "-help") == 0)
            return -1;
        if (a[0] == '-') {
            if (strcmp(a, "-msglog") != 0 && strcmp(a, "-msglen") != 0 && strcmp(a, "-iter") != 0 &&
                strcmp(a, "-time") != 0 && strcmp(a, "-npmin") != 0 && strcmp(a, "-mem") != 0 &&
                strcmp(a, "-digits") != 0 && strcmp(a, "-root_shift") != 0) {
                if (world_rank == 0)
                    fprintf(stderr, "ivbench: unknown option %s\n", a);
                return -1;
            }
            if (v == NULL)
                bad = 1;
            else if (strcmp(a, "-msglog") == 0)
                bad = parse_msglog(v, o);
            else if (strcmp(a, "-msglen") == 0)
                o->msglen_file = v;
            else if (strcmp(a, "-iter") == 0)
                bad = parse_iter(v, o);
            else if (strcmp(a, "-time") == 0)
                bad = parse_double(v, 1e-6, &o->time_limit);
            else if (strcmp(a, "-npmin") == 0) {
                bad = parse_long(v, 1, 1 << 20, &n);
                o->npmin = (int)n;
            } else if (strcmp(a, "-root_shift") == 0) {
                o->root_shift = parse_switch(v);
                bad = o->root_shift < 0;
            } else if (strcmp(a, "-digits") == 0) {
                bad = parse_long(v, 0, 6, &n);
                o->digits = (int)n;
            } else
                bad = parse_double(v, 1e-6, &o->mem_gb);
            if (bad) {
                if (world_rank == 0)
                    fprintf(stderr, "ivbench: bad or missing value for %s\n", a);
                return -1;
            }
            i++;
            continue;
        }
        int found = 0;
        for (int b = 0; b < NBENCH; b++)
            if (strcasecmp(a, benches[b].name) == 0) {
                o->selected |= 1u << b;
                found = 1;
            }
        if (!found) {
            if (world_rank == 0)
                fprintf(stderr, "ivbench: unknown benchmark %s\n", a);
            return -1;
        }
    }
    if (o->selected == 0)
        o->selected = (1u << NBENCH) - 1;
    return 0;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n > 0 ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "ivbench: rank %d: out of memory for %zu bytes\n", world_rank, n);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return p;
}

/* Poison rbuf so that a repetition that delivers nothing fails the check. */
static void poison(const struct run *r)
{
    memset(r->rbuf, 0xA5, r->b->rbuf_blocks(r->p) * r->bytes);
}

/* timed runs reps repetitions and returns this rank's seconds per repetition. The root starts
 * at rank 0 and moves on by r->root_shift after each repetition; r->root is the last one's. */
static double timed(struct run *r, long reps, int check_every)
{
    MPI_Barrier(r->comm);
    double t0 = MPI_Wtime();
    for (long i = 0; i < reps; i++) {
        r->root = (int)(i * r->root_shift % r->p);
        if (check_every)
            poison(r);
        r->b->op(r);
        if (check_every)
            r->b->verify(r);
    }
    return (MPI_Wtime() - t0) / (double)reps;
}

/* repetitions returns how many repetitions to time, the same on every rank of r->comm. */
static long repetitions(struct run *r, const struct options *o)
{
    long reps = o->iter;
    if (r->bytes > 0 && (double)reps * (double)r->bytes > o->overall_vol) {
        reps = (long)(o->overall_vol / (double)r->bytes);
        if (reps < 1)
            reps = 1;
    }
    long batch = reps < PILOT_REPS ? reps : PILOT_REPS;
    double pilot = timed(r, batch, 0), slowest;
    for (int i = 1; i < PILOT_BATCHES && reps > batch; i++) {
        double t = timed(r, batch, 0);
        if (t < pilot)
            pilot = t;
    }
    MPI_Allreduce(&pilot, &slowest, 1, MPI_DOUBLE, MPI_MAX, r->comm);
    if (slowest * (double)reps > o->time_limit) {
        reps = (long)(o->time_limit / slowest);
        if (reps < 1)
            reps = 1;
    }
    return reps;
}

/* measure runs one size and prints its row on rank 0 of r->comm. */
static void measure(struct run *r, const struct options *o)
{
    const struct bench *b = r->b;
    int d = o->digits;
    r->sbuf = xmalloc(b->sbuf_blocks(r->p) * r->bytes);
    r->rbuf = xmalloc(b->rbuf_blocks(r->p) * r->bytes);
    b->fill(r);
    poison(r);
    b->op(r); /* warm-up, checked */
    b->verify(r);
    long reps = repetitions(r, o);
    poison(r);
    double t = timed(r, reps, o->check_every);
    b->verify(r);
    free(r->sbuf);
    free(r->rbuf);

    double tmin, tmax, tsum;
    MPI_Reduce(&t, &tmin, 1, MPI_DOUBLE, MPI_MIN, 0, r->comm);
    MPI_Reduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, 0, r->comm);
    MPI_Reduce(&t, &tsum, 1, MPI_DOUBLE, MPI_SUM, 0, r->comm);
    if (r->rank != 0)
        return;
    if (b->kind == PAIR) {
        double us = t * b->tscale * 1e6; /* rank 0's time */
        printf("%13zu%13ld%13.*f%13.2f\n", r->bytes, reps, d, us, us > 0 ? b->messages * (double)r->bytes / us : 0);
    } else if (b->kind == BARRIER) {
        printf("%13ld%13.*f%13.*f%13.*f\n", reps, d, tmin * 1e6, d, tmax * 1e6, d, tsum / r->p * 1e6);
    } else {
        printf("%13zu%13ld%13.*f%13.*f%13.*f", r->bytes, reps, d, tmin * 1e6, d, tmax * 1e6, d, tsum / r->p * 1e6);
        if (b->messages > 0)
            printf("%13.2f", tmax > 0 ? b->messages * (double)r->bytes / (tmax * 1e6) : 0);
        printf("\n");
    }
    fflush(stdout);
}

static void print_block_header(const struct bench *b, int p, int world)
{
    printf("\n#----------------------------------------------------------------\n");
    printf("# Benchmarking %s\n# #processes = %d\n", b->name, p);
    if (world > p)
        printf("# ( %d additional processes waiting in MPI_Barrier)\n", world - p);
    printf("#----------------------------------------------------------------\n");
    if (b->kind == PAIR)
        printf("%13s%13s%13s%13s\n", "#bytes", "#repetitions", "t[usec]", "Mbytes/sec");
    else if (b->kind == BARRIER)
        printf("%13s%13s%13s%13s\n", "#repetitions", "t_min[usec]", "t_max[usec]", "t_avg[usec]");
    else if (b->messages > 0)
        printf("%13s%13s%13s%13s%13s%13s\n", "#bytes", "#repetitions", "t_min[usec]", "t_max[usec]", "t_avg[usec]",
               "Mbytes/sec");
    else
        printf("%13s%13s%13s%13s%13s\n", "#bytes", "#repetitions", "t_min[usec]", "t_max[usec]", "t_avg[usec]");
    fflush(stdout);
}

/* read_lengths reads a -msglen file into o->sizes: one size per line, blank lines ignored. It
 * returns -1 with a message on stderr if the file cannot be read or holds a bad line. */
static int read_lengths(struct options *o)
{
    FILE *f = fopen(o->msglen_file, "r");
    if (f == NULL) {
        perror(o->msglen_file);
        return -1;
    }
    char line[128];
    int n = 0, bad = 0;
    for (int lineno = 1; !bad && fgets(line, sizeof line, f) != NULL; lineno++) {
        char *s = line + strspn(line, " \t\r\n");
        if (*s == '\0')
            continue;
        s[strcspn(s, " \t\r\n")] = '\0';
        long v;
        bad = n == MAX_LENGTHS || parse_long(s, 0, 1L << 30, &v) != 0;
        if (bad)
            fprintf(stderr, "ivbench: %s line %d: want a size of 0..2^30 bytes, at most %d sizes\n", o->msglen_file,
                    lineno, MAX_LENGTHS);
        else
            o->sizes[n++] = (uint64_t)v;
    }
    if (!bad && n == 0) {
        fprintf(stderr, "ivbench: %s holds no size\n", o->msglen_file);
        bad = 1;
    }
    fclose(f);
    o->nsizes = n;
    return bad ? -1 : 0;
}

/* set_sizes fills o->sizes on every rank: 0 and 2^msglog_min .. 2^msglog_max, or the -msglen
 * file as rank 0 read it. It returns -1 on every rank if rank 0 could not read the file. */
static int set_sizes(struct options *o)
{
    if (o->msglen_file == NULL) {
        o->nsizes = 0;
        o->sizes[o->nsizes++] = 0;
        for (int lg = o->msglog_min; lg <= o->msglog_max; lg++)
            o->sizes[o->nsizes++] = (uint64_t)1 << lg;
        return 0;
    }
    if (world_rank == 0 && read_lengths(o) != 0)
        o->nsizes = -1;
    MPI_Bcast(&o->nsizes, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (o->nsizes < 0)
        return -1;
    MPI_Bcast(o->sizes, o->nsizes, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    return 0;
}

/* run_block runs benchmark b on the first p processes; the others wait in the barrier. */
static void run_block(const struct bench *b, int p, int world, const struct options *o)
{
    MPI_Comm comm;
    MPI_Comm_split(MPI_COMM_WORLD, world_rank < p ? 0 : MPI_UNDEFINED, world_rank, &comm);
    if (world_rank == 0)
        print_block_header(b, p, world);
    if (comm != MPI_COMM_NULL) {
        struct run r = {.b = b, .comm = comm, .p = p, .root_shift = o->root_shift};
        MPI_Comm_rank(comm, &r.rank);
        double limit = o->mem_gb * 1024 * 1024 * 1024;
        /* Barrier has no size: it runs once. */
        int nsizes = b->kind == BARRIER ? 1 : o->nsizes;
        for (int i = 0; i < nsizes; i++) {
            r.bytes = b->kind == BARRIER ? 0 : (size_t)o->sizes[i];
            if (b->reduction && r.bytes % sizeof(float) != 0)
                continue;
            size_t blocks = b->sbuf_blocks(p) + b->rbuf_blocks(p);
            if ((double)blocks * (double)r.bytes > limit) {
                if (world_rank == 0)
                    printf("# %zu bytes skipped: buffers would exceed -mem %.3g GiB\n", r.bytes, o->mem_gb);
                continue;
            }
            measure(&r, o);
        }
        MPI_Comm_free(&comm);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

int main(int argc, char **argv)
{
    int world;
    struct options o;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (parse_args(argc, argv, &o) != 0) {
        usage();
        MPI_Finalize();
        return 1;
    }
    if (set_sizes(&o) != 0) {
        MPI_Finalize();
        return 1;
    }
    if (world_rank == 0) {
        char version[MPI_MAX_LIBRARY_VERSION_STRING];
        int len;
        MPI_Get_library_version(version, &len);
        version[strcspn(version, "\n")] = '\0';
        printf("#----------------------------------------------------------------\n");
        printf("#    ivbench: IMB-compatible MPI benchmark (subset of IMB-MPI1)\n");
        printf("#----------------------------------------------------------------\n");
        printf("# MPI library                    :   %s\n", version);
        uint64_t min = o.sizes[0], max = o.sizes[0];
        for (int i = 1; i < o.nsizes; i++) {
            min = o.sizes[i] < min ? o.sizes[i] : min;
            max = o.sizes[i] > max ? o.sizes[i] : max;
        }
        printf("# Minimum message length in bytes:   %llu\n", (unsigned long long)min);
        printf("# Maximum message length in bytes:   %llu\n", (unsigned long long)max);
        printf("# MPI_Datatype                   :   MPI_BYTE\n");
        printf("# MPI_Datatype for reductions    :   MPI_FLOAT\n");
        printf("# MPI_Op                         :   MPI_SUM\n");
        printf("# Root of rooted collectives     :   %s\n", o.root_shift ? "moves every repetition (-root_shift on)" : "rank 0");
        printf("# Repetitions: at most %ld, %.0f bytes, %.3g s per message size\n", o.iter, o.overall_vol,
               o.time_limit);
        printf("# Data check: %s\n#\n# List of Benchmarks to run:\n",
               o.check_every ? "every repetition" : "warm-up and last repetition");
        for (int b = 0; b < NBENCH; b++)
            if (o.selected & (1u << b))
                printf("# %s\n", benches[b].name);
        fflush(stdout);
    }
    for (int i = 0; i < NBENCH; i++) {
        const struct bench *b = &benches[i];
        if (!(o.selected & (1u << i)))
            continue;
        if (b->kind == PAIR) {
            if (world < 2) {
                if (world_rank == 0)
                    printf("\n# %s needs 2 processes; skipped\n", b->name);
                continue;
            }
            run_block(b, 2, world, &o);
            continue;
        }
        int p = o.npmin < world ? o.npmin : world;
        for (; p < world; p *= 2)
            run_block(b, p, world, &o);
        run_block(b, world, world, &o);
    }
    if (world_rank == 0) {
        printf("\n\n# All processes entering MPI_Finalize\n\n");
        fflush(stdout);
    }
    MPI_Finalize();
    return 0;
}
