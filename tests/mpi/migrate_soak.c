/*
 * migrate_soak: checked traffic of many kinds on several communicators, for tests that migrate
 * VMs while it runs. Usage: migrate_soak ITERATIONS [collectives]
 * ("collectives": only the collectives below, no point-to-point of the program's own)
 *
 * Each iteration every rank:
 *   - on MPI_COMM_WORLD sends a burst of Isends to the ranks 1 and 2 after it and receives its
 *     own with MPI_ANY_SOURCE: every message carries (source, sequence number) and a payload
 *     derived from both, in sizes from 16 bytes to 300 KB (beyond the rings' records);
 *   - on a duplicate of MPI_COMM_WORLD sends to the rank before it with MPI_Issend and receives
 *     from the rank after it by name, then takes one message of the rank after it through
 *     MPI_Mprobe(MPI_ANY_SOURCE) and MPI_Mrecv;
 *   - on the duplicate sends to the rank after it one strided vector (a word in every two, a
 *     type made and freed per message, freed while the send is pending) and receives from the
 *     rank before it into a vector with a word in every three, longer than any message: derived
 *     types, a message that ends inside the receive's element, and above 256 KiB the shim's
 *     windows;
 *   - on a communicator of the even and one of the odd ranks runs MPI_Allreduce and MPI_Bcast
 *     (rotating roots); then, the Bcast's root ahead of the others, blocking library calls
 *     without a nonblocking form on the duplicate (the shim gates them), each first in turn:
 *     MPI_Win_fence around an MPI_Put to the next rank in a window of MPI_Win_allocate;
 *     collective I/O on a file opened on the duplicate (in atomic mode: MPI_File_write_at_all
 *     of its value into one of its two slots, MPI_File_read_at_all of the next rank's value of
 *     the iteration before, checked); MPI_Comm_split of the duplicate into the ranks below and
 *     above the iteration's pivot (its size checked, then freed); an intercommunicator
 *     between the halves (MPI_Intercomm_create, an MPI_Allreduce over it, MPI_Intercomm_merge,
 *     checked); active-target
 *     synchronisation on a second window among the members of the half (MPI_Win_post and
 *     MPI_Win_start on the others, an MPI_Put to the next member, MPI_Win_complete,
 *     MPI_Win_wait, checked); then on the duplicate
 *     MPI_Allgatherv (which only the library runs), MPI_Allgather and MPI_Barrier, and checks
 *     the results;
 * and on MPI_COMM_WORLD an MPI_Allreduce of the error count ends the iteration.
 * Every message is checked on arrival: its source, its sequence number (the next expected from
 * that source on that stream: nothing lost, duplicated or reordered) and every payload word.
 * Rank 0 prints "at iteration I" 200 times along the way (a test paces up to about 100
 * migrations by it).
 * At the end each rank prints
 *
 *   rank R of N iterations I digest D
 *
 * where D hashes everything received, stream by stream in order, and every collective result:
 * the same with and without migrations. Any mismatch prints "FAIL ..." to stderr and aborts.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { BURST = 3, STREAMS = 4 };
static const int sizes[] = {16, 200, 4096, 65544, 300000};
#define NSIZES ((int)(sizeof sizes / sizeof sizes[0]))
#define MAXSIZE 300000

static int rank, size;

static void fail(const char *what, long iter, long got, long want)
{
    fprintf(stderr, "FAIL rank %d iteration %ld: %s: got %ld, want %ld\n", rank, iter, what, got, want);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* Message of stream s from src with sequence number seq: header words, then payload words. */
static int msg_size(int src, uint64_t seq) { return sizes[(src + seq) % NSIZES]; }

static void fill(uint64_t *buf, int bytes, int s, int src, uint64_t seq)
{
    buf[0] = ((uint64_t)s << 32) | (uint32_t)src;
    buf[1] = seq;
    for (int j = 2; j < bytes / 8; j++)
        buf[j] = mix(((uint64_t)s << 56) ^ ((uint64_t)src << 40) ^ (seq << 8) ^ (uint64_t)j);
}

/* Checks one arrival on stream s from comm rank src (world rank wsrc) and folds it into h. */
static void check(const uint64_t *buf, int bytes, int s, int wsrc, uint64_t *next, uint64_t *h, long iter)
{
    if (bytes < 16)
        fail("message too short", iter, bytes, 16);
    if ((int)(buf[0] >> 32) != s || (int)(uint32_t)buf[0] != wsrc)
        fail("stream/source in the message", iter, (long)buf[0], ((long)s << 32) | wsrc);
    if (buf[1] != next[wsrc])
        fail(s == 0 ? "sequence (wildcard stream)" : "sequence", iter, (long)buf[1], (long)next[wsrc]);
    if (bytes != msg_size(wsrc, buf[1]))
        fail("length", iter, bytes, msg_size(wsrc, buf[1]));
    for (int j = 2; j < bytes / 8; j++)
        if (buf[j] != mix(((uint64_t)s << 56) ^ ((uint64_t)wsrc << 40) ^ (buf[1] << 8) ^ (uint64_t)j))
            fail("payload word", iter, j, -1);
    next[wsrc]++;
    h[s * size + wsrc] = mix(h[s * size + wsrc] ^ buf[1] ^ ((uint64_t)bytes << 32));
}

/* Collective I/O of iteration it: writes v into this rank's slot it % 2, reads the next rank's
 * slot of the iteration before and checks it. Atomic mode and the MPI_Barrier on the file's
 * communicator at the end of every iteration order that write before this read, and this read
 * before the next rank overwrites the slot (two iterations on). */
static void file_step(MPI_File fh, long it, int v)
{
    long w = v, r = -1;
    int after = (rank + 1) % size;
    MPI_File_write_at_all(fh, (MPI_Offset)(2 * rank + it % 2) * 8, &w, 1, MPI_LONG, MPI_STATUS_IGNORE);
    MPI_File_read_at_all(fh, (MPI_Offset)(2 * after + (it + 1) % 2) * 8, &r, it > 0, MPI_LONG, MPI_STATUS_IGNORE);
    if (it > 0 && r != after * 1000 + (it - 1) % 1000)
        fail("value read from the file", it, r, after * 1000 + (it - 1) % 1000);
}

/* MPI_Comm_split of dup at a pivot that moves with the iteration; checks the part's size. */
static void split_step(MPI_Comm dup, long it)
{
    int pivot = (int)(it % size), low = rank < pivot, part = -1;
    MPI_Comm c;
    MPI_Comm_split(dup, low, rank, &c);
    MPI_Comm_size(c, &part);
    if (part != (low ? pivot : size - pivot))
        fail("size of the split's part", it, part, low ? pivot : size - pivot);
    MPI_Comm_free(&c);
}

/* An intercommunicator between the two halves (leaders: their rank 0, the highest world rank of
 * each parity, met on dup): an MPI_Allreduce over it (each half gets the sum of the other's v)
 * and MPI_Intercomm_merge (the even half low, each half in its own order), whose size and order
 * are checked; both freed. */
static void inter_step(MPI_Comm half, int hrank, MPI_Comm dup, long it)
{
    MPI_Comm ic, merged;
    int evens = (size + 1) / 2, top_even = 2 * (evens - 1), top_odd = 2 * (size / 2) - 1;
    MPI_Intercomm_create(half, 0, dup, rank % 2 == 0 ? top_odd : top_even, 77, &ic);
    long v = rank * 1000 + it % 1000, sum = -1, want = 0;
    for (int q = 1 - rank % 2; q < size; q += 2)
        want += q * 1000 + it % 1000;
    MPI_Allreduce(&v, &sum, 1, MPI_LONG, MPI_SUM, ic);
    if (sum != want)
        fail("Allreduce over the intercommunicator", it, sum, want);
    MPI_Intercomm_merge(ic, rank % 2, &merged);
    int mrank = -1, msize = -1, wrank = rank % 2 == 0 ? hrank : evens + hrank;
    MPI_Comm_rank(merged, &mrank);
    MPI_Comm_size(merged, &msize);
    if (msize != size || mrank != wrank)
        fail("rank in the merged communicator", it, mrank, wrank);
    MPI_Comm_free(&merged);
    MPI_Comm_free(&ic);
}

/* Active-target synchronisation on w among the members of this rank's half (h, whose group is
 * hg; the window's is all): each exposes its cell to the others and starts an epoch on them all,
 * puts v into the next member's cell only, and checks what the member before put. An origin
 * may wait in MPI_Win_start for every other member of its half, as in a fence on the half. */
static void pscw_step(MPI_Win w, const long *cell, MPI_Group all, MPI_Group hg, int hrank, int hsize, long it, int v)
{
    MPI_Group others;
    MPI_Group_excl(hg, 1, &hrank, &others);
    int hnext = (hrank + 1) % hsize, hprev = (hrank + hsize - 1) % hsize, next = -1, prev = -1;
    MPI_Group_translate_ranks(hg, 1, &hnext, all, &next);
    MPI_Group_translate_ranks(hg, 1, &hprev, all, &prev);
    long put = v;
    MPI_Win_post(others, 0, w);
    MPI_Win_start(others, 0, w);
    if (hsize > 1)
        MPI_Put(&put, 1, MPI_LONG, next, 0, 1, MPI_LONG, w);
    MPI_Win_complete(w);
    MPI_Win_wait(w);
    if (hsize > 1 && *cell != prev * 1000 + it % 1000)
        fail("Put in a post/start epoch", it, *cell, prev * 1000 + it % 1000);
    MPI_Group_free(&others);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long iters = argc > 1 ? atol(argv[1]) : 0;
    int p2p = !(argc > 2 && strcmp(argv[2], "collectives") == 0);
    if (iters <= 0 || size < 3) {
        if (rank == 0)
            fprintf(stderr, "usage: migrate_soak ITERATIONS [collectives] (at least 3 ranks)\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    MPI_Comm dup, half;
    MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    MPI_Comm_split(MPI_COMM_WORLD, rank % 2, -rank, &half); /* reversed order inside */
    int hrank, hsize;
    MPI_Comm_rank(half, &hrank);
    MPI_Comm_size(half, &hsize);

    uint64_t *next = calloc((size_t)STREAMS * size, sizeof *next); /* next sequence per stream, source */
    uint64_t *sent = calloc((size_t)STREAMS * size, sizeof *sent);
    uint64_t *h = calloc((size_t)STREAMS * size, sizeof *h);
    uint64_t *out[2 * BURST + 2], *in[2 * BURST + 2];
    for (int i = 0; i < 2 * BURST + 2; i++) {
        out[i] = malloc(MAXSIZE);
        in[i] = malloc(MAXSIZE);
        if (!out[i] || !in[i])
            fail("malloc", 0, 0, 1);
    }
    uint64_t coll = 0;
    int *gath = malloc(sizeof(int) * (size_t)size), *ones = malloc(sizeof(int) * (size_t)size),
        *at = malloc(sizeof(int) * (size_t)size);
    for (int q = 0; q < size; q++) {
        ones[q] = 1;
        at[q] = size - 1 - q; /* reversed: the displacements matter */
    }
    char *bc = malloc(MAXSIZE);
    uint64_t *sv = calloc(2 * MAXSIZE / 8, 8), *rv = calloc(3 * MAXSIZE / 8, 8), *flat = malloc(MAXSIZE);
    long *wbase;
    MPI_Win win;
    MPI_Win_allocate(sizeof(long), sizeof(long), MPI_INFO_NULL, dup, &wbase, &win);
    *wbase = -1;
    long *pbase;
    MPI_Win pwin;
    MPI_Group dgroup;
    MPI_Win_allocate(sizeof(long), sizeof(long), MPI_INFO_NULL, dup, &pbase, &pwin);
    *pbase = -1;
    MPI_Comm_group(dup, &dgroup);
    MPI_Group hgroup;
    MPI_Comm_group(half, &hgroup);
    /* The file: a name rank 0 picks, in TMPDIR (default /tmp), which every rank must see. */
    char path[512] = "";
    if (rank == 0) {
        const char *dir = getenv("TMPDIR");
        snprintf(path, sizeof path, "%s/migrate_soak-%ld-%ld.dat", dir && *dir ? dir : "/tmp", (long)getpid(),
                 (long)time(NULL));
    }
    MPI_Bcast(path, sizeof path, MPI_CHAR, 0, MPI_COMM_WORLD);
    MPI_File fh;
    if (MPI_File_open(dup, path, MPI_MODE_CREATE | MPI_MODE_RDWR | MPI_MODE_DELETE_ON_CLOSE, MPI_INFO_NULL, &fh) !=
        MPI_SUCCESS)
        fail("MPI_File_open", 0, 1, 0);
    MPI_File_set_atomicity(fh, 1);
    MPI_Datatype rtype3;
    MPI_Type_vector(MAXSIZE / 8, 1, 3, MPI_UINT64_T, &rtype3);
    MPI_Type_commit(&rtype3);

    long it, every = iters / 200 > 0 ? iters / 200 : 1;
    for (it = 0; it < iters; it++) {
        if (rank == 0 && it % every == 0) {
            printf("at iteration %ld\n", it);
            fflush(stdout);
        }
        if (p2p) {
            /* Stream 0: bursts to rank+1 and rank+2 on MPI_COMM_WORLD, received by wildcard. */
            MPI_Request r[4 * BURST + 8];
            int nr = 0;
            for (int b = 0; b < BURST; b++)
                MPI_Irecv(in[b], MAXSIZE, MPI_BYTE, MPI_ANY_SOURCE, 1, MPI_COMM_WORLD, &r[nr++]);
            for (int b = 0; b < BURST; b++)
                MPI_Irecv(in[BURST + b], MAXSIZE, MPI_BYTE, MPI_ANY_SOURCE, 1, MPI_COMM_WORLD, &r[nr++]);
            for (int b = 0; b < 2 * BURST; b++) {
                int to = (rank + 1 + b % 2) % size;
                uint64_t seq = sent[to]++;
                int n = msg_size(rank, seq);
                fill(out[b], n, 0, rank, seq);
                MPI_Isend(out[b], n, MPI_BYTE, to, 1, MPI_COMM_WORLD, &r[nr++]);
            }
            MPI_Status st[4 * BURST + 8];
            MPI_Waitall(nr, r, st);
            /* Wildcard arrivals may interleave the two sources; each source's order must hold. */
            for (int b = 0; b < 2 * BURST; b++) {
                int n;
                MPI_Get_count(&st[b], MPI_BYTE, &n);
                if (st[b].MPI_TAG != 1)
                    fail("tag", it, st[b].MPI_TAG, 1);
                check(in[b], n, 0, st[b].MPI_SOURCE, next, h, it);
            }

            /* Stream 1: synchronous sends to the rank before, on the duplicate. */
            int prev = (rank + size - 1) % size, after = (rank + 1) % size;
            nr = 0;
            uint64_t seq1 = sent[size + prev]++;
            int n1 = msg_size(rank, seq1);
            fill(out[2 * BURST], n1, 1, rank, seq1);
            MPI_Irecv(in[2 * BURST], MAXSIZE, MPI_BYTE, after, 2, dup, &r[nr++]);
            MPI_Issend(out[2 * BURST], n1, MPI_BYTE, prev, 2, dup, &r[nr++]);
            /* Stream 2: a matched probe takes the message of the rank after. */
            uint64_t seq2 = sent[2 * size + prev]++;
            int n2 = msg_size(rank, seq2);
            fill(out[2 * BURST + 1], n2, 2, rank, seq2);
            MPI_Isend(out[2 * BURST + 1], n2, MPI_BYTE, prev, 3, dup, &r[nr++]);
            /* Stream 3: a strided vector to the rank after. */
            uint64_t seq3 = sent[3 * size + after]++;
            int n3 = msg_size(rank, seq3);
            fill(flat, n3, 3, rank, seq3);
            for (int j = 0; j < n3 / 8; j++)
                sv[2 * j] = flat[j];
            MPI_Datatype stype3;
            MPI_Type_vector(n3 / 8, 1, 2, MPI_UINT64_T, &stype3);
            MPI_Type_commit(&stype3);
            MPI_Irecv(rv, 1, rtype3, prev, 4, dup, &r[nr++]);
            MPI_Isend(sv, 1, stype3, after, 4, dup, &r[nr++]);
            MPI_Type_free(&stype3);
            MPI_Message m;
            MPI_Status ms;
            MPI_Mprobe(MPI_ANY_SOURCE, 3, dup, &m, &ms);
            int n;
            MPI_Get_count(&ms, MPI_BYTE, &n);
            if (ms.MPI_SOURCE != after)
                fail("matched probe source", it, ms.MPI_SOURCE, after);
            MPI_Mrecv(in[2 * BURST + 1], n, MPI_BYTE, &m, MPI_STATUS_IGNORE);
            check(in[2 * BURST + 1], n, 2, after, next + 2 * size, h, it);
            MPI_Waitall(nr, r, st);
            MPI_Get_count(&st[0], MPI_BYTE, &n);
            check(in[2 * BURST], n, 1, after, next + size, h, it);
            MPI_Get_count(&st[3], MPI_BYTE, &n);
            if (st[3].MPI_SOURCE != prev || st[3].MPI_TAG != 4)
                fail("source of the vector", it, st[3].MPI_SOURCE, prev);
            for (int j = 0; j < n / 8; j++)
                flat[j] = rv[3 * j];
            check(flat, n, 3, prev, next + 3 * size, h, it);
        }

        /* Collectives on three communicators. */
        long mine[2] = {rank + it, (long)(mix((uint64_t)rank ^ (uint64_t)it) & 0xffff)}, sum[2];
        MPI_Allreduce(mine, sum, 2, MPI_LONG, MPI_SUM, half);
        long want0 = 0, want1 = 0;
        for (int q = rank % 2; q < size; q += 2) {
            want0 += q + it;
            want1 += (long)(mix((uint64_t)q ^ (uint64_t)it) & 0xffff);
        }
        if (sum[0] != want0 || sum[1] != want1)
            fail("Allreduce on the half", it, sum[0], want0);
        int root = (int)(it % hsize), bn = sizes[it % NSIZES];
        for (int j = 0; j < bn; j++)
            bc[j] = hrank == root ? (char)(mix((uint64_t)it * 131 + (uint64_t)j) & 0x7f) : 0;
        MPI_Bcast(bc, bn, MPI_CHAR, root, half);
        for (int j = 0; j < bn; j++)
            if (bc[j] != (char)(mix((uint64_t)it * 131 + (uint64_t)j) & 0x7f))
                fail("Bcast byte", it, j, -1);
        int v = rank * 1000 + (int)(it % 1000);
        /* The Bcast's root returns at once and runs ahead into a blocking call the library runs
         * (a fence), where it waits for the others; those may wait for a migration's agreement
         * on the half, which needs the root's answer: the shim's gate lets it answer
         * (tests/model/collswitch.pml -DGATED_Y). */
        long put = v;
        for (int step = 0; step < 5; step++)
            switch ((it + step) % 5) {
            case 0:
                MPI_Win_fence(0, win);
                MPI_Put(&put, 1, MPI_LONG, (rank + 1) % size, 0, 1, MPI_LONG, win);
                MPI_Win_fence(0, win);
                long wput = ((rank + size - 1) % size) * 1000 + (int)(it % 1000);
                if (*wbase != wput)
                    fail("Put through the window", it, *wbase, wput);
                break;
            case 1:
                file_step(fh, it, v);
                break;
            case 2:
                split_step(dup, it);
                break;
            case 3:
                inter_step(half, hrank, dup, it);
                break;
            default:
                pscw_step(pwin, pbase, dgroup, hgroup, hrank, hsize, it, v);
            }
        /* The same shape into a collective only the library runs. */
        MPI_Allgatherv(&v, 1, MPI_INT, gath, ones, at, MPI_INT, dup);
        for (int q = 0; q < size; q++)
            if (gath[size - 1 - q] != q * 1000 + (int)(it % 1000))
                fail("Allgatherv", it, gath[size - 1 - q], q * 1000 + (int)(it % 1000));
        MPI_Allgather(&v, 1, MPI_INT, gath, 1, MPI_INT, dup);
        for (int q = 0; q < size; q++)
            if (gath[q] != q * 1000 + (int)(it % 1000))
                fail("Allgather", it, gath[q], q * 1000 + (int)(it % 1000));
        MPI_Barrier(dup);
        coll = mix(coll ^ (uint64_t)sum[1] ^ ((uint64_t)bn << 20));
        long errs = 0, all = 0;
        MPI_Allreduce(&errs, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        if (all != 0)
            fail("errors elsewhere", it, all, 0);
    }
    uint64_t d = coll;
    for (int i = 0; i < STREAMS * size; i++)
        d = mix(d ^ h[i] ^ (uint64_t)i);
    printf("rank %d of %d iterations %ld digest %016llx\n", rank, size, it, (unsigned long long)d);
    MPI_Type_free(&rtype3);
    MPI_Win_free(&win);
    MPI_Win_free(&pwin);
    MPI_Group_free(&dgroup);
    MPI_Group_free(&hgroup);
    MPI_File_close(&fh);
    MPI_Comm_free(&half);
    MPI_Comm_free(&dup);
    MPI_Finalize();
    return 0;
}
