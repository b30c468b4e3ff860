/*
 * huge_dtype: one message of more than 2 GiB, described by an int count of a derived datatype,
 * between world ranks 0 and 1, both ways: sent from blocks with holes and received into a
 * contiguous derived type, then the reverse, which must leave the receive buffer's holes
 * untouched. Nothing may be truncated at 2^31 bytes, and the runs of PMPI_Pack calls the shim
 * splits such a message into must join up (2049 elements of 1 MiB: one run of 2047, one of 2).
 * Other ranks only take part in the report. Ranks 0 and 1 need about 4.2 GiB of memory each,
 * which is why it is not among the p2p_* programs every layout runs (tests/conformance runs it).
 */
#include "p2p_check.h"

enum { TAG = 11 };
#define BLOCK ((size_t)1 << 20) /* bytes in one element */
#define GAP ((size_t)4096)      /* hole after each block of the strided type */
#define COUNT 2049              /* elements: 2049 MiB > INT_MAX bytes */
#define HOLE 0xa5u

/* word i of a message gets a value unique to (seed, i); cheap enough for gigabytes */
static uint64_t word(uint64_t seed, size_t i) { return (seed * 0x9e3779b97f4a7c15ull) ^ (i * 0xbf58476d1ce4e5b9ull); }

/* The element types: BLOCK contiguous bytes, and the same bytes followed by a GAP-byte hole. */
static MPI_Datatype dense, strided;

static void fill(unsigned char *base, size_t stride, uint64_t seed)
{
    for (size_t b = 0; b < COUNT; b++) {
        uint64_t *w = (uint64_t *)(base + b * stride);
        for (size_t i = 0; i < BLOCK / 8; i++)
            w[i] = word(seed, b * (BLOCK / 8) + i);
    }
}

/* verify checks the blocks of a received message, and that the holes kept HOLE, as one check each. */
static void verify(const unsigned char *base, size_t stride, uint64_t seed, const char *what)
{
    size_t bad = 0, bad_at = 0, holes = 0;
    for (size_t b = 0; b < COUNT; b++) {
        const uint64_t *w = (const uint64_t *)(base + b * stride);
        for (size_t i = 0; i < BLOCK / 8; i++)
            if (w[i] != word(seed, b * (BLOCK / 8) + i) && !bad++)
                bad_at = (b * (BLOCK / 8) + i) * 8;
        for (size_t i = BLOCK; i < stride; i++)
            holes += base[b * stride + i] != HOLE;
    }
    CHECK(bad == 0, "%s: %zu words differ, the first at byte %zu of %zu", what, bad, bad_at, BLOCK * COUNT);
    if (stride > BLOCK)
        CHECK(holes == 0, "%s: %zu bytes of the receive buffer's holes were written", what, holes);
}

/* transfer moves COUNT elements from rank `from` (type stype) to rank `to` (type rtype). */
static void transfer(int from, int to, MPI_Datatype stype, size_t sstride, MPI_Datatype rtype, size_t rstride,
                     uint64_t seed, const char *what)
{
    if (chk.rank == from) {
        unsigned char *buf = chk_alloc(sstride * COUNT);
        fill(buf, sstride, seed);
        MPI_Request r;
        MPI_Isend(buf, COUNT, stype, to, TAG, MPI_COMM_WORLD, &r);
        MPI_Wait(&r, MPI_STATUS_IGNORE);
        free(buf);
    } else if (chk.rank == to) {
        unsigned char *buf = chk_alloc(rstride * COUNT);
        memset(buf, HOLE, rstride * COUNT);
        MPI_Status st;
        MPI_Recv(buf, COUNT, rtype, from, TAG, MPI_COMM_WORLD, &st);
        chk_status(&st, from, TAG, rtype, COUNT, what);
        verify(buf, rstride, seed, what);
        free(buf);
    }
}

int main(int argc, char **argv)
{
    chk_init(&argc, &argv);
    MPI_Datatype block;
    MPI_Type_contiguous((int)BLOCK, MPI_BYTE, &dense);
    MPI_Type_commit(&dense);
    MPI_Type_contiguous((int)BLOCK, MPI_BYTE, &block);
    MPI_Type_create_resized(block, 0, (MPI_Aint)(BLOCK + GAP), &strided);
    MPI_Type_commit(&strided);
    MPI_Type_free(&block);

    transfer(0, 1, strided, BLOCK + GAP, dense, BLOCK, 1, "strided to dense, rank 0 to 1");
    MPI_Barrier(MPI_COMM_WORLD);
    transfer(1, 0, dense, BLOCK, strided, BLOCK + GAP, 2, "dense to strided, rank 1 to 0");

    MPI_Type_free(&dense);
    MPI_Type_free(&strided);
    return chk_finish("huge_dtype");
}
