/*
 * p2p_check.h: the bookkeeping shared by the point-to-point conformance programs
 * (tests/mpi/p2p_*.c). The Go test tests/conformance runs them on emulated clusters with and
 * without the shim and compares their reports; they run natively just as well.
 *
 * Every program checks all it receives itself. chk_finish() gathers the per-rank counts and
 * failure lines to rank 0, which prints
 *
 *   p2p_<topic>: <N> ranks, <C> checks, <F> failures
 *   FAIL rank <r>: <what>          (one per failed check, at most CHK_MAX_LINES per rank)
 *
 * and every rank returns non-zero from main when any rank failed. The output is deterministic:
 * a program counts the same checks whatever the MPI library, the transport and the timing
 * (no check is counted inside a polling loop, and where MPI allows two outcomes — cancelling a
 * send — both branches count alike). Nothing else is written to stdout.
 *
 * The programs are written for 4 ranks on 2 hosts × 2 VMs (world ranks {0,1} and {2,3}
 * co-located), so that every pattern mixes shared-memory and network peers, but they are correct
 * for any layout and any size >= 2. By hand, natively:
 *
 *   mpicc.openmpi -O2 -std=c11 -Wall -Wextra -o /tmp/p2p_order tests/mpi/p2p_order.c
 *   mpirun.openmpi --allow-run-as-root --oversubscribe -np 4 --mca mpi_yield_when_idle 1 /tmp/p2p_order
 *
 * Forcing Open MPI onto TCP in one OS (--mca btl tcp,self), also pass --mca btl_tcp_if_include lo:
 * striping large messages over several interfaces, Open MPI 4.1 corrupts receives into derived
 * datatypes (p2p_dtype) and can hang in truncated or large receives (p2p_modes, p2p_large).
 */
#ifndef P2P_CHECK_H
#define P2P_CHECK_H

#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test_init.h"

/* MPICH defines MPI_STATUS(ES)_IGNORE as small integers cast to pointers; gcc 12 then reports
 * every call passing them as an access to "a region of size 0". The calls are correct. */
#if defined(MPICH) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#endif

/* Failure lines kept per rank; later failures are only counted. */
#define CHK_MAX_LINES 40

static struct {
    int rank, size;
    long checks, failures;
    char *log; /* failure lines, each ending in '\n' */
    size_t len, cap;
} chk;

/* chk_init initialises MPI and the bookkeeping. A job of one rank cannot test anything
 * point-to-point: it is reported and fails. */
static inline void chk_init(int *argc, char ***argv)
{
    test_init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &chk.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &chk.size);
    if (chk.size < 2) {
        if (chk.rank == 0)
            printf("p2p: needs at least 2 ranks, got %d\n", chk.size);
        MPI_Finalize();
        exit(2);
    }
}

/* chk_append adds one formatted line to the rank's failure log. */
static inline void chk_append(const char *fmt, va_list ap)
{
    char line[512];
    int n = snprintf(line, sizeof line, "FAIL rank %d: ", chk.rank);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    size_t l = strlen(line);
    if (chk.len + l + 2 > chk.cap) {
        chk.cap = 2 * (chk.cap + l + 2);
        chk.log = realloc(chk.log, chk.cap);
        if (chk.log == NULL) {
            fprintf(stderr, "p2p: out of memory\n");
            MPI_Abort(MPI_COMM_WORLD, 3);
        }
    }
    memcpy(chk.log + chk.len, line, l);
    chk.len += l;
    chk.log[chk.len++] = '\n';
    chk.log[chk.len] = '\0';
}

/* chk_check counts one check; when ok is false it records the formatted description. Returns
 * ok so that callers can skip checks that depend on this one, as long as they skip them the
 * same way on every run. */
__attribute__((format(printf, 2, 3))) static inline int chk_check(int ok, const char *fmt, ...)
{
    chk.checks++;
    if (ok)
        return 1;
    if (chk.failures++ < CHK_MAX_LINES) {
        va_list ap;
        va_start(ap, fmt);
        chk_append(fmt, ap);
        va_end(ap);
    }
    return 0;
}

#define CHECK(cond, ...) chk_check(!!(cond), __VA_ARGS__)

/* chk_status checks the source, tag and element count (in units of dt) of a receive status as
 * one check. */
static inline int chk_status(const MPI_Status *st, int source, int tag, MPI_Datatype dt, int count, const char *what)
{
    int n = -1;
    MPI_Get_count(st, dt, &n);
    return CHECK(st->MPI_SOURCE == source && st->MPI_TAG == tag && n == count,
                 "%s: status source %d tag %d count %d, expected source %d tag %d count %d", what,
                 st->MPI_SOURCE, st->MPI_TAG, n, source, tag, count);
}

/* chk_empty checks that st is the empty status MPI returns for null and inactive requests. */
static inline int chk_empty(const MPI_Status *st, const char *what)
{
    int n = -1, cancelled = -1;
    MPI_Get_count(st, MPI_BYTE, &n);
    MPI_Test_cancelled(st, &cancelled);
    return CHECK(st->MPI_SOURCE == MPI_ANY_SOURCE && st->MPI_TAG == MPI_ANY_TAG && n == 0 && !cancelled,
                 "%s: status source %d tag %d count %d cancelled %d, expected the empty status", what,
                 st->MPI_SOURCE, st->MPI_TAG, n, cancelled);
}

/* chk_fill writes a pattern unique to (seed, byte offset) into n bytes. */
static inline void chk_fill(void *buf, size_t n, uint64_t seed)
{
    unsigned char *p = buf;
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0) {
            x ^= x >> 31;
            x *= 0xbf58476d1ce4e5b9ull;
            x ^= x >> 29;
        }
        p[i] = (unsigned char)(x >> (8 * (i % 8)));
    }
}

/* chk_verify returns the offset of the first byte of buf that differs from chk_fill's pattern
 * for seed, or n when all match. */
static inline size_t chk_verify(const void *buf, size_t n, uint64_t seed)
{
    const unsigned char *p = buf;
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0) {
            x ^= x >> 31;
            x *= 0xbf58476d1ce4e5b9ull;
            x ^= x >> 29;
        }
        if (p[i] != (unsigned char)(x >> (8 * (i % 8))))
            return i;
    }
    return n;
}

/* chk_alloc is malloc that aborts the job when memory runs out. */
static inline void *chk_alloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "p2p: cannot allocate %zu bytes\n", n);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    return p;
}

/* chk_finish gathers every rank's counts and failure lines to rank 0, which prints the report,
 * finalises MPI and returns the exit status for main: 0 when no rank failed. */
static inline int chk_finish(const char *name)
{
    long mine[3] = {chk.checks, chk.failures, (long)chk.len}, *all = NULL;
    int *lens = NULL, *displs = NULL;
    char *text = NULL;
    if (chk.rank == 0) {
        all = chk_alloc(3 * sizeof(long) * (size_t)chk.size);
        lens = chk_alloc(sizeof(int) * (size_t)chk.size);
        displs = chk_alloc(sizeof(int) * (size_t)chk.size);
    }
    MPI_Gather(mine, 3, MPI_LONG, all, 3, MPI_LONG, 0, MPI_COMM_WORLD);
    long total = 0, checks = 0, failures = 0;
    if (chk.rank == 0) {
        for (int r = 0; r < chk.size; r++) {
            checks += all[3 * r];
            failures += all[3 * r + 1];
            lens[r] = (int)all[3 * r + 2];
            displs[r] = (int)total;
            total += all[3 * r + 2];
        }
        text = chk_alloc((size_t)total + 1);
    }
    MPI_Gatherv(chk.log, (int)chk.len, MPI_CHAR, text, lens, displs, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (chk.rank == 0) {
        text[total] = '\0';
        printf("%s: %d ranks, %ld checks, %ld failures\n", name, chk.size, checks, failures);
        fputs(text, stdout);
        for (int r = 0; r < chk.size; r++)
            if (all[3 * r + 1] > CHK_MAX_LINES)
                printf("FAIL rank %d: %ld more failures not shown\n", r, all[3 * r + 1] - CHK_MAX_LINES);
        fflush(stdout);
    }
    MPI_Bcast(&failures, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    free(all);
    free(lens);
    free(displs);
    free(text);
    free(chk.log);
    MPI_Finalize();
    return failures == 0 ? 0 : 1;
}

#endif
