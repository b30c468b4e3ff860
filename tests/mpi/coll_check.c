/*
 * coll_check.c: correctness of every MPI collective the ivshim shim implements (Barrier, Bcast,
 * Reduce, Allreduce, Gather, Allgather, Scatter, Alltoall, Reduce_scatter_block,
 * Reduce_scatter) and of the v-variants it passes to the library (Gatherv, Scatterv,
 * Allgatherv, Alltoallv), run by the Go driver tests/collectives natively and on emulated
 * clusters, with and without the shim.
 *
 * Reference: every result is compared with the MPI library's own result for the same inputs,
 * computed in the same run through the nonblocking variant (MPI_Iallreduce + MPI_Wait, ...),
 * which the shim never intercepts, and with a value computed here independently. Integer and
 * data-movement results must match bit for bit; floating-point SUM and PROD within a relative
 * tolerance (the reduction order may differ); MAX, MIN, MINLOC and MAXLOC exactly (ties take
 * the lowest index). Receive buffers carry guard zones that must survive every call.
 *
 * Matrix: datatypes x ops (the combinations MPI allows) x sizes (0, 1, 8 B, 1 KiB, 64 KiB,
 * 1 MiB, and the shim's internal limits 56 B, 16 KiB, 64 KiB, 256 KiB with one element past
 * them) x roots x communicators (world, a dup, reversed and interleaved rank orders, halves,
 * even/odd ranks, pairs and triples spanning hosts, self; for a few collectives also an
 * intercommunicator, one merged from it and one from MPI_Comm_idup) x MPI_IN_PLACE; derived
 * datatypes with holes on either side (also in place); user-defined ops, commutative and not; and sequences
 * that mix collectives, rotate roots and delay random ranks (checked against expected values
 * only: the library's twin would add synchronisation that hides races). Full cross products
 * only where they are cheap: every type/op pair at a small count, every size and communicator
 * with MPI_INT or MPI_BYTE, the other dimensions on a few types, communicators and roots.
 * --full widens every dimension (several times longer); --quick narrows sizes, roots and
 * communicators for MPICH 4.0, which spin-waits, so that 4 ranks on 2 cores cost it
 * milliseconds per collective. The program is written for 4 ranks laid out as 2 hosts x 2 VMs
 * (world ranks {0,1} and {2,3} co-located) and is correct for any size.
 *
 * Output (rank 0, stdout only, deterministic: the same on every run and layout of one MPI
 * library; the counts differ between libraries only by the cases skipped for library bugs):
 *
 *   coll_<collective>: <N> ranks, <C> checks, <F> failures      one line per collective
 *   FAIL <collective> comm=<c> type=<t> op=<o> count=<n> root=<r> ... rank=<world rank> ...
 *
 * Exit status 0 when every check passed, 1 otherwise. Usage:
 *
 *   coll_check [-v] [--timing] [--quick|--full] [--comm=C] [--type=T] [--op=O] [--bytes=B]
 *              [--root=R] [collective...]
 *
 * Filters select a subset (for reproducers); -v makes every rank print each case to stderr
 * before running it, to locate a hang; --timing reports the time of each part on rank 0.
 */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "test_init.h"

/* MPICH defines MPI_STATUS(ES)_IGNORE as small integers cast to pointers; gcc 12 then reports
 * every call passing them as an access to "a region of size 0". The calls are correct. */
#if defined(MPICH) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#endif

/* ---------------------------------------------------------------------------------------------
 * Bookkeeping
 * ------------------------------------------------------------------------------------------- */

enum coll {
	C_BARRIER, C_BCAST, C_REDUCE, C_ALLREDUCE, C_GATHER, C_ALLGATHER, C_SCATTER, C_ALLTOALL,
	C_RSB, C_RS, C_GATHERV, C_SCATTERV, C_ALLGATHERV, C_ALLTOALLV, C_SEQUENCE, NCOLL
};

static const char *const coll_name[NCOLL] = {
	"barrier", "bcast", "reduce", "allreduce", "gather", "allgather", "scatter", "alltoall",
	"reduce_scatter_block", "reduce_scatter", "gatherv", "scatterv", "allgatherv", "alltoallv",
	"sequence",
};

#define FULL (g.level >= 2)
#define LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define QUICK (g.level == 0)

/* Failure lines kept per rank; later failures are only counted. */
#define MAX_LINES 60

static struct {
	int rank, size;          /* in MPI_COMM_WORLD */
	long checks[NCOLL], failures[NCOLL];
	long lines;
	char *log;               /* failure lines, each ending in '\n' */
	size_t len, cap;
	/* filters from the command line */
	bool want_coll[NCOLL];
	const char *f_comm, *f_type, *f_op;
	long f_bytes;
	int f_root;
	bool verbose;
	bool timing;
	/* Matrix size: 0 (--quick) for MPICH, whose 4 ranks on 2 cores spin for milliseconds per
	 * collective; 1 by default; 2 (--full) widens every dimension, several times longer. */
	int level;
	/* MPICH before 4.1.2 crashes in MPI_Reduce(MPI_IN_PLACE) at a non-zero root with more than
	 * MPIR_CVAR_REDUCE_SHORT_MSG_SIZE (2048) bytes of a predefined op (pmodels/mpich#6540), and
	 * MPICH 4.0.2 aborts in MPI_Reduce_scatter(MPI_IN_PLACE) from 512 KiB on when a rank's block
	 * overlaps the start of the buffer ("memcpy argument memory ranges overlap", pairwise
	 * algorithm). Those cases are skipped there, on every layout, so that runs stay comparable. */
	bool mpich_inplace_bugs;
} g;

static void die(const char *what)
{
	fprintf(stderr, "coll_check: rank %d: %s\n", g.rank, what);
	MPI_Abort(MPI_COMM_WORLD, 3);
	exit(3);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		die("out of memory");
	return p;
}

/* A case: what every failure line says about the call that failed. */
struct ctx {
	enum coll coll;
	const char *comm, *type, *op;
	long count;               /* elements per rank (block size for gathers and scatters) */
	int root;                 /* -1: not rooted */
	const char *variant;      /* "inplace", "derived ...", or NULL */
};

static int describe(const struct ctx *cx, char *buf, size_t cap)
{
	int n = snprintf(buf, cap, "%s comm=%s type=%s", coll_name[cx->coll], cx->comm, cx->type);
	if (cx->op)
		n += snprintf(buf + n, cap - (size_t)n, " op=%s", cx->op);
	n += snprintf(buf + n, cap - (size_t)n, " count=%ld", cx->count);
	if (cx->root >= 0)
		n += snprintf(buf + n, cap - (size_t)n, " root=%d", cx->root);
	if (cx->variant)
		n += snprintf(buf + n, cap - (size_t)n, " %s", cx->variant);
	return n;
}

static void log_line(const char *line)
{
	size_t l = strlen(line);
	if (g.len + l + 2 > g.cap) {
		g.cap = 2 * (g.cap + l + 2);
		g.log = realloc(g.log, g.cap);
		if (!g.log)
			die("out of memory");
	}
	memcpy(g.log + g.len, line, l);
	g.len += l;
	g.log[g.len++] = '\n';
	g.log[g.len] = '\0';
}

/* check counts one check of case cx; when ok is false it records "FAIL <case> rank=R <detail>". */
__attribute__((format(printf, 3, 4))) static bool check(const struct ctx *cx, bool ok, const char *fmt, ...)
{
	g.checks[cx->coll]++;
	if (ok)
		return true;
	g.failures[cx->coll]++;
	if (g.lines++ < MAX_LINES) {
		char line[768];
		int n = snprintf(line, sizeof line, "FAIL ");
		n += describe(cx, line + n, sizeof line - (size_t)n);
		n += snprintf(line + n, sizeof line - (size_t)n, " rank=%d ", g.rank);
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
		va_end(ap);
		log_line(line);
	}
	return false;
}

/* Whether the command line's filters select case cx of `bytes` bytes per rank. */
static bool selected(const struct ctx *cx, long bytes)
{
	if (!g.want_coll[cx->coll])
		return false;
	if (g.f_comm && strcmp(g.f_comm, cx->comm) != 0)
		return false;
	if (g.f_type && strcmp(g.f_type, cx->type) != 0)
		return false;
	if (g.f_op && (!cx->op || strcmp(g.f_op, cx->op) != 0))
		return false;
	if (g.f_bytes >= 0 && bytes != g.f_bytes)
		return false;
	return g.f_root < 0 || cx->root < 0 || cx->root == g.f_root;
}

/* begin says whether case cx is selected and announces it under -v. */
static bool begin(const struct ctx *cx, long bytes)
{
	if (!selected(cx, bytes))
		return false;
	if (g.verbose) {
		char buf[512];
		describe(cx, buf, sizeof buf);
		fprintf(stderr, "coll_check: rank %d: %s\n", g.rank, buf);
		fflush(stderr);
	}
	return true;
}

static void wait_req(MPI_Request *q)
{
	MPI_Wait(q, MPI_STATUS_IGNORE);
}

/* ---------------------------------------------------------------------------------------------
 * Datatypes
 * ------------------------------------------------------------------------------------------- */

enum kind { K_SINT, K_UINT, K_FLOAT, K_BOOL, K_CHAR, K_BYTE, K_PAIR };

struct ctype {
	const char *name;
	MPI_Datatype dt;
	enum kind kind;
	size_t size;   /* C size of one element, which is the MPI extent */
	size_t vsize;  /* significant bytes of the value (10 for x87 long double) */
	size_t ioff;   /* pairs: offset of the int index */
	long double (*get)(const void *);
	void (*set)(void *, long double);
};

#define LD_BYTES 10 /* x87 extended precision: the rest of a long double is padding */
#define VSIZE(T) (sizeof(T) == sizeof(long double) ? LD_BYTES : sizeof(T))

#define SCALAR_ACCESSORS(N, T)                                                    \
	static long double get_##N(const void *p)                                     \
	{                                                                             \
		T v;                                                                      \
		memcpy(&v, p, sizeof v);                                                  \
		return (long double)v;                                                    \
	}                                                                             \
	static void set_##N(void *p, long double x)                                   \
	{                                                                             \
		T v = (T)x;                                                               \
		memcpy(p, &v, VSIZE(T));                                                  \
	}

#define SCALARS(X)                                           \
	X(MPI_CHAR, char, K_CHAR)                                \
	X(MPI_SIGNED_CHAR, signed char, K_SINT)                  \
	X(MPI_UNSIGNED_CHAR, unsigned char, K_UINT)              \
	X(MPI_BYTE, unsigned char, K_BYTE)                       \
	X(MPI_SHORT, short, K_SINT)                              \
	X(MPI_UNSIGNED_SHORT, unsigned short, K_UINT)            \
	X(MPI_INT, int, K_SINT)                                  \
	X(MPI_UNSIGNED, unsigned, K_UINT)                        \
	X(MPI_LONG, long, K_SINT)                                \
	X(MPI_UNSIGNED_LONG, unsigned long, K_UINT)              \
	X(MPI_LONG_LONG, long long, K_SINT)                      \
	X(MPI_UNSIGNED_LONG_LONG, unsigned long long, K_UINT)    \
	X(MPI_INT8_T, int8_t, K_SINT)                            \
	X(MPI_INT16_T, int16_t, K_SINT)                          \
	X(MPI_INT32_T, int32_t, K_SINT)                          \
	X(MPI_INT64_T, int64_t, K_SINT)                          \
	X(MPI_UINT8_T, uint8_t, K_UINT)                          \
	X(MPI_UINT16_T, uint16_t, K_UINT)                        \
	X(MPI_UINT32_T, uint32_t, K_UINT)                        \
	X(MPI_UINT64_T, uint64_t, K_UINT)                        \
	X(MPI_FLOAT, float, K_FLOAT)                             \
	X(MPI_DOUBLE, double, K_FLOAT)                           \
	X(MPI_LONG_DOUBLE, long double, K_FLOAT)                 \
	X(MPI_C_BOOL, _Bool, K_BOOL)

/* The value/index pairs of MINLOC and MAXLOC, laid out as MPI defines them. */
#define PAIRS(X)                                \
	X(MPI_2INT, int, p_2int)                    \
	X(MPI_FLOAT_INT, float, p_float_int)        \
	X(MPI_DOUBLE_INT, double, p_double_int)     \
	X(MPI_LONG_INT, long, p_long_int)           \
	X(MPI_SHORT_INT, short, p_short_int)        \
	X(MPI_LONG_DOUBLE_INT, long double, p_long_double_int)

/* N is pasted before it is passed on: MPI_* names are macros that must not expand here. */
#define GEN_SCALAR(N, T, K) SCALAR_ACCESSORS(of_##N, T)
SCALARS(GEN_SCALAR)

#define GEN_PAIR(N, T, S)        \
	struct S {                   \
		T v;                     \
		int i;                   \
	};                           \
	SCALAR_ACCESSORS(of_##N, T)
PAIRS(GEN_PAIR)

enum { NSCALAR = 0
#define COUNT1(...) +1
	SCALARS(COUNT1), NPAIR = 0 PAIRS(COUNT1)
#undef COUNT1
};
#define NTYPE (NSCALAR + NPAIR)

static struct ctype types[NTYPE];

static void types_init(void)
{
	int n = 0;
#define INIT_SCALAR(N, T, K) types[n++] = (struct ctype){#N, N, K, sizeof(T), VSIZE(T), 0, get_of_##N, set_of_##N};
	SCALARS(INIT_SCALAR)
#define INIT_PAIR(N, T, S) \
	types[n++] = (struct ctype){#N, N, K_PAIR, sizeof(struct S), VSIZE(T), offsetof(struct S, i), get_of_##N, set_of_##N};
	PAIRS(INIT_PAIR)
	/* The program's element layout must be the library's, or nothing below means anything. */
	for (int i = 0; i < NTYPE; i++) {
		MPI_Aint lb, extent;
		MPI_Type_get_extent(types[i].dt, &lb, &extent);
		if (lb != 0 || (size_t)extent != types[i].size) {
			char msg[160];
			snprintf(msg, sizeof msg, "%s has lb %ld extent %ld, C says 0 and %zu", types[i].name, (long)lb,
			         (long)extent, types[i].size);
			die(msg);
		}
	}
}

static const struct ctype *type_named(const char *name)
{
	for (int i = 0; i < NTYPE; i++)
		if (strcmp(types[i].name, name) == 0)
			return &types[i];
	die("unknown type in the program's tables");
	return NULL;
}

static uint64_t getbits(const struct ctype *t, const void *p)
{
	uint64_t b = 0;
	memcpy(&b, p, t->size < 8 ? t->size : 8);
	return b;
}

static void setbits(const struct ctype *t, void *p, uint64_t b)
{
	memcpy(p, &b, t->size < 8 ? t->size : 8);
}

static int getidx(const struct ctype *t, const void *p)
{
	int i;
	memcpy(&i, (const char *)p + t->ioff, sizeof i);
	return i;
}

static void setidx(const struct ctype *t, void *p, int i)
{
	memcpy((char *)p + t->ioff, &i, sizeof i);
}

static bool is_signed(const struct ctype *t)
{
	return t->kind == K_SINT || (t->kind == K_CHAR && (char)-1 < 0);
}

/* Largest value of an integer type. */
static long double int_max(const struct ctype *t)
{
	long double m = 1;
	for (size_t b = 0; b < 8 * t->size - is_signed(t); b++)
		m *= 2;
	return m - 1;
}

static uint64_t mix(uint64_t a, uint64_t b)
{
	uint64_t x = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) * 0xc2b2ae3d27d4eb4full;
	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 29;
	return x;
}

/* Formats one element for a failure line. */
static void fmt_elem(const struct ctype *t, const void *p, char *buf, size_t cap)
{
	switch (t->kind) {
	case K_FLOAT:
		snprintf(buf, cap, "%.21Lg", t->get(p));
		break;
	case K_PAIR:
		snprintf(buf, cap, "(%.21Lg,%d)", t->get(p), getidx(t, p));
		break;
	default: {
		uint64_t b = getbits(t, p);
		if (is_signed(t) && t->size < 8 && (b >> (8 * t->size - 1) & 1))
			b |= ~0ull << (8 * t->size);
		if (is_signed(t))
			snprintf(buf, cap, "%lld", (long long)b);
		else
			snprintf(buf, cap, "%llu", (unsigned long long)b);
	}
	}
}

/* Whether two elements carry the same bits in their significant bytes (padding ignored). */
static bool same_bits(const struct ctype *t, const void *a, const void *b)
{
	if (memcmp(a, b, t->vsize) != 0)
		return false;
	return t->kind != K_PAIR || getidx(t, a) == getidx(t, b);
}

/* Element `seed` of the data-movement pattern: every bit of the value significant, floats
 * finite (small multiples of 1/4), booleans 0 or 1. */
static void mv_elem(const struct ctype *t, void *p, uint64_t seed)
{
	switch (t->kind) {
	case K_FLOAT:
		t->set(p, (long double)((int64_t)(seed % 400001) - 200000) / 4);
		break;
	case K_BOOL:
		setbits(t, p, seed & 1);
		break;
	case K_PAIR:
		t->set(p, (long double)((int64_t)(seed % 2001) - 1000));
		setidx(t, p, (int)(seed >> 40));
		break;
	default:
		setbits(t, p, seed);
	}
}

/* Fills n elements of the pattern of sender s for receiver d, element j at position j. */
static void mv_fill(const struct ctype *t, void *buf, size_t n, int s, int d)
{
	for (size_t j = 0; j < n; j++)
		mv_elem(t, (char *)buf + j * t->size, mix((uint64_t)s * 1000003u + (uint64_t)d + 1, j));
}

/* ---------------------------------------------------------------------------------------------
 * Buffers with guard zones: a call that writes outside [data, data+n) is caught.
 * ------------------------------------------------------------------------------------------- */

#define GUARD 64
#define GUARD_BYTE 0xa5
#define INIT_BYTE 0xee

struct gbuf {
	unsigned char *mem;
	unsigned char *p; /* the data */
	size_t n;
};

static struct gbuf galloc(size_t n)
{
	struct gbuf b;
	b.mem = xmalloc(n + 2 * GUARD);
	b.p = b.mem + GUARD;
	b.n = n;
	memset(b.mem, GUARD_BYTE, GUARD);
	memset(b.p, INIT_BYTE, n);
	memset(b.p + n, GUARD_BYTE, GUARD);
	return b;
}

static void greset(struct gbuf *b)
{
	memset(b->p, INIT_BYTE, b->n);
}

static void gfree(struct gbuf *b)
{
	free(b->mem);
	b->mem = b->p = NULL;
}

/* Checks both guard zones of b as one check. */
static void check_guards(const struct ctx *cx, const struct gbuf *b, const char *which)
{
	size_t bad = SIZE_MAX;
	for (size_t i = 0; i < GUARD && bad == SIZE_MAX; i++)
		if (b->mem[i] != GUARD_BYTE)
			bad = i;
	if (bad != SIZE_MAX) {
		check(cx, false, "%s: byte %ld before the buffer was overwritten", which, (long)bad - GUARD);
		return;
	}
	for (size_t i = 0; i < GUARD; i++)
		if (b->p[b->n + i] != GUARD_BYTE) {
			check(cx, false, "%s: byte %zu after the buffer (of %zu) was overwritten", which, i, b->n);
			return;
		}
	check(cx, true, "%s", "");
}

/* Compares n elements of got with want bit for bit (significant bytes); one check. */
static bool check_same(const struct ctx *cx, const char *what, const struct ctype *t, const void *got, const void *want,
                       size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *a = (const char *)got + i * t->size, *b = (const char *)want + i * t->size;
		if (!same_bits(t, a, b)) {
			char gs[64], ws[64];
			fmt_elem(t, a, gs, sizeof gs);
			fmt_elem(t, b, ws, sizeof ws);
			return check(cx, false, "%s: index=%zu got=%s want=%s", what, i, gs, ws);
		}
	}
	return check(cx, true, "%s", what);
}

/* Compares raw bytes (derived datatypes, holes included); one check. */
static bool check_bytes(const struct ctx *cx, const char *what, const void *got, const void *want, size_t n)
{
	const unsigned char *a = got, *b = want;
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return check(cx, false, "%s: byte=%zu got=0x%02x want=0x%02x", what, i, a[i], b[i]);
	return check(cx, true, "%s", what);
}

/* ---------------------------------------------------------------------------------------------
 * Communicators
 * ------------------------------------------------------------------------------------------- */

struct ccomm {
	const char *name;
	MPI_Comm comm; /* MPI_COMM_NULL on ranks outside it */
	int rank, size;
};

enum { CM_WORLD, CM_DUP, CM_REV, CM_INTER, CM_HALF, CM_PARITY, CM_MID, CM_ENDS, CM_TRI, CM_REV3, CM_SELF, NCOMM };
static struct ccomm comms[NCOMM];

/* Communicator sets of the matrices. */
static const int all_comms[] = {CM_WORLD, CM_DUP,  CM_REV, CM_INTER, CM_HALF, CM_PARITY,
                                CM_MID,   CM_ENDS, CM_TRI, CM_REV3,  CM_SELF};
/* Distinct shapes for the shim: multi-host with 2 per host (world, rev, inter), one host (half),
 * 2 hosts with one member each (mid), uneven hosts (tri, rev3). */
static const int shape_comms[] = {CM_WORLD, CM_REV, CM_INTER, CM_HALF, CM_MID, CM_TRI, CM_REV3};
static const int large_comms[] = {CM_WORLD, CM_INTER, CM_HALF, CM_TRI};
/* Two shapes that cover the shim's paths: 2 hosts x 2 (world) and uneven hosts (first3). */
static const int quick_comms[] = {CM_WORLD, CM_TRI};

static bool is_shape(int cmi)
{
	for (int k = 0; k < LEN(shape_comms); k++)
		if (shape_comms[k] == cmi)
			return true;
	return false;
}

static void split(int id, const char *name, int color, int key)
{
	comms[id].name = name;
	MPI_Comm_split(MPI_COMM_WORLD, color, key, &comms[id].comm);
}

static void comms_init(void)
{
	int r = g.rank, n = g.size;
	comms[CM_WORLD] = (struct ccomm){"world", MPI_COMM_WORLD, 0, 0};
	comms[CM_DUP].name = "dup";
	MPI_Comm_dup(MPI_COMM_WORLD, &comms[CM_DUP].comm);
	split(CM_REV, "reversed", 0, n - 1 - r);
	/* Even world ranks first, then odd: comm ranks alternate between the two hosts. */
	split(CM_INTER, "interleaved", 0, (r % 2) * n + r);
	split(CM_HALF, "half", r < n / 2, r);
	split(CM_PARITY, "parity", r % 2, r);
	split(CM_MID, "mid", r == n / 2 - 1 || r == n / 2 ? 0 : MPI_UNDEFINED, r);
	split(CM_ENDS, "ends", r == 0 || r == n - 1 ? 0 : MPI_UNDEFINED, r);
	split(CM_TRI, "first3", n >= 3 && r < 3 ? 0 : MPI_UNDEFINED, r);
	split(CM_REV3, "last3rev", n >= 3 && r >= n - 3 ? 0 : MPI_UNDEFINED, n - 1 - r);
	comms[CM_SELF] = (struct ccomm){"self", MPI_COMM_SELF, 0, 0};
	for (int i = 0; i < NCOMM; i++) {
		if (comms[i].comm == MPI_COMM_NULL)
			continue;
		MPI_Comm_rank(comms[i].comm, &comms[i].rank);
		MPI_Comm_size(comms[i].comm, &comms[i].size);
	}
}

static void comms_free(void)
{
	for (int i = 0; i < NCOMM; i++)
		if (comms[i].comm != MPI_COMM_NULL && comms[i].comm != MPI_COMM_WORLD && comms[i].comm != MPI_COMM_SELF)
			MPI_Comm_free(&comms[i].comm);
}

/* Roots of a rooted collective on a communicator of n ranks: all of them (n is small here),
 * at most 0, a middle one and the last beyond 4; 0 and the last with --quick. */
static int roots_of(int n, int *roots)
{
	if (QUICK) {
		roots[0] = 0;
		roots[1] = n - 1;
		return n > 1 ? 2 : 1;
	}
	if (n <= 4) {
		for (int i = 0; i < n; i++)
			roots[i] = i;
		return n;
	}
	roots[0] = 0;
	roots[1] = n / 2;
	roots[2] = n - 1;
	return 3;
}

/* Element count for a size in bytes: at least one element when bytes > 0. */
static long count_for(long bytes, size_t size)
{
	long c = bytes / (long)size;
	return bytes > 0 && c == 0 ? 1 : c;
}

/* ---------------------------------------------------------------------------------------------
 * Reductions: Allreduce, Reduce, Reduce_scatter_block, Reduce_scatter
 * ------------------------------------------------------------------------------------------- */

enum opk { O_SUM, O_PROD, O_MAX, O_MIN, O_LAND, O_LOR, O_LXOR, O_BAND, O_BOR, O_BXOR, O_MAXLOC, O_MINLOC, NOP };

struct cop {
	const char *name;
	MPI_Op op;
	enum opk k;
};
static struct cop ops[NOP];

static void ops_init(void)
{
	struct cop o[NOP] = {
		{"MPI_SUM", MPI_SUM, O_SUM},       {"MPI_PROD", MPI_PROD, O_PROD},       {"MPI_MAX", MPI_MAX, O_MAX},
		{"MPI_MIN", MPI_MIN, O_MIN},       {"MPI_LAND", MPI_LAND, O_LAND},       {"MPI_LOR", MPI_LOR, O_LOR},
		{"MPI_LXOR", MPI_LXOR, O_LXOR},    {"MPI_BAND", MPI_BAND, O_BAND},       {"MPI_BOR", MPI_BOR, O_BOR},
		{"MPI_BXOR", MPI_BXOR, O_BXOR},    {"MPI_MAXLOC", MPI_MAXLOC, O_MAXLOC}, {"MPI_MINLOC", MPI_MINLOC, O_MINLOC},
	};
	memcpy(ops, o, sizeof o);
}

/* The type/op combinations MPI defines (MPI-3.1 section 5.9.2). */
static bool valid_op(const struct ctype *t, enum opk o)
{
	switch (o) {
	case O_SUM: case O_PROD: case O_MAX: case O_MIN:
		return t->kind == K_SINT || t->kind == K_UINT || t->kind == K_FLOAT;
	case O_LAND: case O_LOR: case O_LXOR:
		return t->kind == K_SINT || t->kind == K_UINT || t->kind == K_BOOL;
	case O_BAND: case O_BOR: case O_BXOR:
		return t->kind == K_SINT || t->kind == K_UINT || t->kind == K_BYTE;
	case O_MAXLOC: case O_MINLOC:
		return t->kind == K_PAIR;
	default:
		return false;
	}
}

/* Input element i of rank r for op o. Values are chosen so that every result is exact and
 * representable for up to a few dozen ranks: sums of small integers, products of 1, 2, 3 and
 * -1, extremes spread over the type's range, logical values with every combination of ranks,
 * dense random bits, and value/index pairs with many ties. Unsigned MAX/MIN inputs stay below
 * the sign bit: the libraries themselves compare some unsigned types as signed there (Open MPI
 * 4.1.2-4.1.4 MPI_UNSIGNED_LONG, open-mpi/ompi#10525; MPICH 4.0.2 MIN, pmodels/mpich#6083), and
 * the shim reduces with the library's own MPI_Reduce_local. */
static void red_elem(const struct ctype *t, enum opk o, int r, size_t i, void *p)
{
	uint64_t k;
	switch (o) {
	case O_SUM:
		k = ((uint64_t)r * 3 + i) % 5;
		t->set(p, t->kind == K_UINT ? (long double)k : (long double)k - 2);
		break;
	case O_PROD: {
		static const int sv[4] = {1, -1, 1, 2}, uv[4] = {1, 3, 1, 2};
		k = ((uint64_t)r + i) % 4;
		t->set(p, t->kind == K_UINT ? uv[k] : sv[k]);
		break;
	}
	case O_MAX: case O_MIN:
		k = ((uint64_t)r * 7 + i * 3) % 11;
		if (t->kind == K_FLOAT)
			t->set(p, ((long double)k - 5) / 4);
		else if (t->kind == K_UINT) /* below the sign bit: see the comment above */
			t->set(p, (long double)k * (int_max(t) / 32 - 1));
		else
			t->set(p, ((long double)k - 5) * (int_max(t) / 8 - 1));
		break;
	case O_LAND: case O_LOR: case O_LXOR:
		k = (i >> (r % 8)) & 1;
		if (t->kind == K_BOOL)
			setbits(t, p, k);
		else
			t->set(p, k ? 1 + ((uint64_t)r + i) % 3 : 0);
		break;
	case O_BAND: case O_BOR: case O_BXOR: {
		uint64_t b = mix((uint64_t)r + 77, i);
		setbits(t, p, o == O_BAND ? b | mix(i, (uint64_t)r + 5) : b);
		break;
	}
	case O_MAXLOC: case O_MINLOC:
		t->set(p, (long double)(((uint64_t)r + i) % 3));
		setidx(t, p, (int)(((uint64_t)r * 7 + i) % 13) - 6);
		break;
	default:
		break;
	}
}

static void red_fill(const struct ctype *t, enum opk o, int r, void *buf, size_t n)
{
	memset(buf, INIT_BYTE, n * t->size);
	for (size_t i = 0; i < n; i++)
		red_elem(t, o, r, i, (char *)buf + i * t->size);
}

/* The reduction over ranks 0..nr-1 of element i, computed here. */
static void red_expect(const struct ctype *t, enum opk o, int nr, size_t i, void *out)
{
	unsigned char e[64];
	long double acc = 0, v;
	uint64_t bits = 0;
	int idx = 0;
	memset(out, INIT_BYTE, t->size);
	for (int r = 0; r < nr; r++) {
		memset(e, 0, sizeof e);
		red_elem(t, o, r, i, e);
		switch (o) {
		case O_SUM: acc = r ? acc + t->get(e) : t->get(e); break;
		case O_PROD: acc = r ? acc * t->get(e) : t->get(e); break;
		case O_MAX: v = t->get(e); acc = r && acc > v ? acc : v; break;
		case O_MIN: v = t->get(e); acc = r && acc < v ? acc : v; break;
		case O_LAND: bits = r ? (bits && getbits(t, e)) : getbits(t, e) != 0; break;
		case O_LOR: bits = r ? (bits || getbits(t, e)) : getbits(t, e) != 0; break;
		case O_LXOR: bits = r ? (!bits != !getbits(t, e)) : getbits(t, e) != 0; break;
		case O_BAND: bits = r ? bits & getbits(t, e) : getbits(t, e); break;
		case O_BOR: bits = r ? bits | getbits(t, e) : getbits(t, e); break;
		case O_BXOR: bits = r ? bits ^ getbits(t, e) : getbits(t, e); break;
		case O_MAXLOC: case O_MINLOC:
			v = t->get(e);
			if (r == 0 || (o == O_MAXLOC ? v > acc : v < acc) || (v == acc && getidx(t, e) < idx)) {
				acc = v;
				idx = getidx(t, e);
			}
			break;
		default: break;
		}
	}
	switch (o) {
	case O_SUM: case O_PROD: case O_MAX: case O_MIN:
		t->set(out, acc);
		break;
	case O_MAXLOC: case O_MINLOC:
		t->set(out, acc);
		setidx(t, out, idx);
		break;
	default:
		setbits(t, out, bits);
	}
}

/* Floating-point SUM and PROD may round differently in another order. */
static bool tolerant(const struct ctype *t, enum opk o)
{
	return t->kind == K_FLOAT && (o == O_SUM || o == O_PROD);
}

static bool close_enough(const struct ctype *t, long double a, long double b)
{
	long double tol = t->size == sizeof(float) ? 1e-5L : t->size == sizeof(double) ? 1e-12L : 1e-15L;
	long double d = a > b ? a - b : b - a, m = b < 0 ? -b : b;
	return d <= tol * (m > 1 ? m : 1);
}

/* Compares n reduced elements; exact unless tolerant(t, o). One check. */
static bool check_red(const struct ctx *cx, const char *what, const struct ctype *t, enum opk o, const void *got,
                      const void *want, size_t n)
{
	if (!tolerant(t, o))
		return check_same(cx, what, t, got, want, n);
	for (size_t i = 0; i < n; i++) {
		const char *a = (const char *)got + i * t->size, *b = (const char *)want + i * t->size;
		if (!close_enough(t, t->get(a), t->get(b))) {
			char gs[64], ws[64];
			fmt_elem(t, a, gs, sizeof gs);
			fmt_elem(t, b, ws, sizeof ws);
			return check(cx, false, "%s: index=%zu got=%s want=%s", what, i, gs, ws);
		}
	}
	return check(cx, true, "%s", what);
}

/* Which reductions a case runs. */
enum {
	F_ALLREDUCE = 1, F_ALLREDUCE_IP = 2, F_REDUCE = 4, F_REDUCE_IP = 8, F_RSB = 16, F_RSB_IP = 32, F_RS = 64,
	F_RS_IP = 128, F_ALL_PLAIN = F_ALLREDUCE | F_REDUCE | F_RSB | F_RS, F_ALL = 255,
	F_LAST_ROOT = 256, /* Reduce at the last rank only */
};

/* Reduce_scatter counts for n ranks summing to L, uneven (weights 1..n) with zeros for small L. */
static void rs_counts(long L, int n, int *counts)
{
	long prev = 0;
	for (int i = 0; i < n; i++) {
		long cum = L * (long)(i + 1) * (i + 2) / ((long)n * (n + 1));
		counts[i] = (int)(cum - prev);
		prev = cum;
	}
}

/* One reduction case: comm cm, type t, op o, L elements per rank. The library's reference is one
 * MPI_Iallreduce of the whole vector; every reduction's result is a slice of it (reductions are
 * elementwise), so it serves Allreduce, Reduce at every root and both reduce-scatters. */
static void red_case(int cmi, const struct ctype *t, const struct cop *o, long L, unsigned fns)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	struct ctx cx = {C_ALLREDUCE, cm->name, t->name, o->name, L, -1, NULL};
	long bytes = L * (long)t->size;
	bool any = false;
	for (enum coll c = C_REDUCE; c <= C_RS; c++) {
		cx.coll = c;
		if ((c == C_ALLREDUCE && (fns & (F_ALLREDUCE | F_ALLREDUCE_IP))) || (c == C_REDUCE && (fns & (F_REDUCE | F_REDUCE_IP))) ||
		    (c == C_RSB && (fns & (F_RSB | F_RSB_IP))) || (c == C_RS && (fns & (F_RS | F_RS_IP))))
			any |= selected(&cx, bytes);
	}
	if (!any)
		return;
	int n = cm->size, me = cm->rank;
	size_t es = t->size, sz = (size_t)L * es;
	unsigned char *in = xmalloc(sz), *exp = xmalloc(sz);
	struct gbuf ref = galloc(sz), out = galloc(sz);
	red_fill(t, o->k, me, in, (size_t)L);
	for (long i = 0; i < L; i++)
		red_expect(t, o->k, n, (size_t)i, exp + (size_t)i * es);

	MPI_Request q;
	cx.coll = C_ALLREDUCE;
	MPI_Iallreduce(in, ref.p, (int)L, t->dt, o->op, cm->comm, &q);
	wait_req(&q);
	/* The library against the independent value: a failure here is the test's or the library's. */
	check_red(&cx, "reference (MPI_Iallreduce) vs expected", t, o->k, ref.p, exp, (size_t)L);

	for (int ip = 0; ip < 2; ip++) {
		cx.variant = ip ? "inplace" : NULL;
		/* Allreduce */
		cx.coll = C_ALLREDUCE;
		cx.root = -1;
		if ((fns & (ip ? F_ALLREDUCE_IP : F_ALLREDUCE)) && begin(&cx, bytes)) {
			greset(&out);
			if (ip)
				memcpy(out.p, in, sz);
			MPI_Allreduce(ip ? MPI_IN_PLACE : in, out.p, (int)L, t->dt, o->op, cm->comm);
			check_red(&cx, "vs reference", t, o->k, out.p, ref.p, (size_t)L);
			check_red(&cx, "vs expected", t, o->k, out.p, exp, (size_t)L);
			check_guards(&cx, &out, "recvbuf");
		}
		/* Reduce at every root */
		cx.coll = C_REDUCE;
		int roots[8], nroots = roots_of(n, roots);
		if (fns & F_LAST_ROOT) {
			roots[0] = n - 1;
			nroots = 1;
		}
		for (int ri = 0; ri < nroots && (fns & (ip ? F_REDUCE_IP : F_REDUCE)); ri++) {
			cx.root = roots[ri];
			if (!begin(&cx, bytes))
				continue;
			greset(&out);
			if (ip && cx.root != 0 && bytes > 2048 && g.mpich_inplace_bugs)
				continue;
			bool at_root = me == cx.root;
			if (ip && at_root)
				memcpy(out.p, in, sz);
			MPI_Reduce(ip && at_root ? MPI_IN_PLACE : in, at_root ? out.p : NULL, (int)L, t->dt, o->op, cx.root, cm->comm);
			if (at_root) {
				check_red(&cx, "vs reference", t, o->k, out.p, ref.p, (size_t)L);
				check_red(&cx, "vs expected", t, o->k, out.p, exp, (size_t)L);
				check_guards(&cx, &out, "recvbuf");
			}
		}
		cx.root = -1;
		/* Reduce_scatter_block: blocks of L/n, the first n*(L/n) elements. */
		cx.coll = C_RSB;
		long b = L / n;
		if ((fns & (ip ? F_RSB_IP : F_RSB)) && begin(&cx, bytes)) {
			greset(&out);
			struct gbuf rb = ip ? out : galloc((size_t)b * es);
			if (ip)
				memcpy(out.p, in, (size_t)b * (size_t)n * es);
			else
				greset(&rb);
			MPI_Reduce_scatter_block(ip ? MPI_IN_PLACE : in, rb.p, (int)b, t->dt, o->op, cm->comm);
			size_t off = (size_t)me * (size_t)b * es;
			check_red(&cx, "vs reference", t, o->k, rb.p, ref.p + off, (size_t)b);
			check_red(&cx, "vs expected", t, o->k, rb.p, exp + off, (size_t)b);
			check_guards(&cx, &rb, "recvbuf");
			if (!ip)
				gfree(&rb);
		}
		/* Reduce_scatter with uneven counts summing to L. */
		cx.coll = C_RS;
		bool rs_bug = ip && bytes >= 512 * 1024 && g.mpich_inplace_bugs;
		if ((fns & (ip ? F_RS_IP : F_RS)) && !rs_bug && begin(&cx, bytes)) {
			int *counts = xmalloc(sizeof(int) * (size_t)n);
			rs_counts(L, n, counts);
			size_t off = 0;
			for (int i = 0; i < me; i++)
				off += (size_t)counts[i] * es;
			greset(&out);
			struct gbuf rb = ip ? out : galloc((size_t)counts[me] * es);
			if (ip)
				memcpy(out.p, in, sz);
			MPI_Reduce_scatter(ip ? MPI_IN_PLACE : in, rb.p, counts, t->dt, o->op, cm->comm);
			check_red(&cx, "vs reference", t, o->k, rb.p, ref.p + off, (size_t)counts[me]);
			check_red(&cx, "vs expected", t, o->k, rb.p, exp + off, (size_t)counts[me]);
			check_guards(&cx, &rb, "recvbuf");
			if (!ip)
				gfree(&rb);
			free(counts);
		}
	}
	free(in);
	free(exp);
	gfree(&ref);
	gfree(&out);
}

static void test_reductions(void)
{
	/* 1. Every type/op pair MPI allows, 5 elements (odd; inline for small types), on world, with
	 * Allreduce and Reduce to the last rank; --full adds Reduce_scatter and 1 KiB of each on an
	 * uneven triple across hosts; --quick takes a third of the pairs (every type, every op). */
	for (int ti = 0; ti < NTYPE; ti++)
		for (int o = 0; o < NOP; o++)
			if (valid_op(&types[ti], (enum opk)o) && (!QUICK || (ti + o) % 3 == 0 || types[ti].kind == K_PAIR)) {
				red_case(CM_WORLD, &types[ti], &ops[o], 5,
				         QUICK ? F_ALLREDUCE : F_ALLREDUCE | F_REDUCE | F_LAST_ROOT | (FULL ? F_RS : 0));
				if (FULL)
					red_case(CM_REV3, &types[ti], &ops[o], count_for(1024, types[ti].size), F_ALLREDUCE | F_RSB);
			}
	/* 2. MPI_INT sums at small sizes on every communicator, every reduction, every root, in place. */
	const struct ctype *ints = type_named("MPI_INT");
	static const long small[] = {0, 1, 8, 57, 1024};
	for (int z = 0; z < LEN(small); z++) {
		if ((!FULL && small[z] == 8) || (QUICK && (small[z] == 1 || small[z] == 57)))
			continue;
		for (int c = 0; c < LEN(all_comms); c++)
			if (!QUICK || is_shape(all_comms[c]))
				red_case(all_comms[c], ints, &ops[O_SUM], count_for(small[z], ints->size), F_ALL);
	}
	/* 3. Types of every kind and layout (1- and 8-byte integers, floating point with padding,
	 * booleans, pairs with padding) on the distinct communicator shapes. */
	static const struct {
		const char *type;
		enum opk op;
	} sweep[] = {
		{"MPI_UNSIGNED_CHAR", O_MAX}, {"MPI_UINT64_T", O_BXOR},       {"MPI_DOUBLE", O_SUM},
		{"MPI_LONG_DOUBLE", O_PROD},  {"MPI_C_BOOL", O_LXOR},         {"MPI_DOUBLE_INT", O_MINLOC},
		{"MPI_SHORT_INT", O_MAXLOC},
	};
	for (int s = 0; s < LEN(sweep); s++) {
		const struct ctype *t = type_named(sweep[s].type);
		for (int z = 0; z < LEN(small); z++) {
			if (!FULL && small[z] != 1024 && (QUICK || small[z] != 8))
				continue;
			for (int c = 0; c < (QUICK ? 2 : LEN(shape_comms)); c++)
				red_case(QUICK ? quick_comms[c] : shape_comms[c], t, &ops[sweep[s].op], count_for(small[z], t->size),
				         F_ALL_PLAIN | (FULL ? 0 : F_LAST_ROOT));
		}
	}
	/* 4. Large sizes and the shim's limits: the inline line (56 B), the slot (64 KiB) and one
	 * element past them (across hosts an allreduce of 64 KiB + 16 B is one stretch whose last
	 * piece is inline), a 1 MiB vector in pieces (four stretches of 256 KiB), 2 MiB and 4
	 * bytes (eight stretches, then one element on its own). */
	static const long large[] = {56, 64, 65536, 65536 + 16, 1 << 20, (2 << 20) + 4};
	static const struct {
		const char *type;
		enum opk op;
	} big[] = {{"MPI_INT", O_SUM}, {"MPI_DOUBLE_INT", O_MINLOC}, {"MPI_DOUBLE", O_MAX}};
	for (int z = 0; z < LEN(large); z++)
		for (int b = 0; b < LEN(big); b++)
			for (int c = 0; c < LEN(large_comms); c++) {
				const struct ctype *t = type_named(big[b].type);
				if ((large[z] >= 1 << 20 && b == 2) || (!FULL && large_comms[c] == CM_HALF))
					continue;
				if (QUICK && (b > 0 || large[z] == 64 || large[z] == 65536 || large[z] > 1 << 20))
					continue;
				red_case(large_comms[c], t, &ops[big[b].op], count_for(large[z], t->size),
				         b == 0 ? F_ALL : F_ALLREDUCE | F_REDUCE | F_LAST_ROOT);
			}
}

/* ---------------------------------------------------------------------------------------------
 * User-defined ops: a commutative one on MPI_INT (a + b + ab mod 2^32, that is (1+a)(1+b) - 1)
 * and a non-commutative one on 2x2 matrices of unsigned ints (product mod 2^32: associative,
 * exact, order-dependent).
 * ------------------------------------------------------------------------------------------- */

static void user_sum(void *in, void *inout, int *len, MPI_Datatype *dt)
{
	(void)dt;
	const unsigned *a = in;
	unsigned *b = inout;
	for (int i = 0; i < *len; i++)
		b[i] = a[i] + b[i] + a[i] * b[i];
}

/* inout = in x inout: MPI combines as in_0 op in_1 op ... in rank order. */
static void mat_mul(const unsigned *a, const unsigned *b, unsigned *c)
{
	unsigned r[4] = {a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3], a[2] * b[0] + a[3] * b[2], a[2] * b[1] + a[3] * b[3]};
	memcpy(c, r, sizeof r);
}

static void user_matmul(void *in, void *inout, int *len, MPI_Datatype *dt)
{
	(void)dt;
	const unsigned *a = in;
	unsigned *b = inout;
	for (int i = 0; i < *len; i++)
		mat_mul(a + 4 * i, b + 4 * i, b + 4 * i);
}

static void mat_elem(int r, size_t i, unsigned *m)
{
	uint64_t x = mix((uint64_t)r + 1000, i);
	for (int k = 0; k < 4; k++)
		m[k] = (unsigned)(x >> (16 * k)) & 0xffu;
}

/* One user-op case: comm cm, `count` elements of the op's type. The reference is the library's
 * MPI_Iallreduce with the same op. */
static void user_case(int cmi, bool commutative, long count)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	MPI_Datatype mat;
	MPI_Type_contiguous(4, MPI_UNSIGNED, &mat);
	MPI_Type_commit(&mat);
	MPI_Op op;
	MPI_Op_create(commutative ? user_sum : user_matmul, commutative, &op);
	MPI_Datatype dt = commutative ? MPI_INT : mat;
	size_t es = commutative ? sizeof(int) : 4 * sizeof(unsigned);
	const char *tname = commutative ? "MPI_INT" : "contiguous(4,MPI_UNSIGNED)";
	const char *oname = commutative ? "user_commutative" : "user_noncommutative";
	int n = cm->size, me = cm->rank;
	struct ctx cx = {C_ALLREDUCE, cm->name, tname, oname, count, -1, NULL};
	size_t sz = (size_t)count * es;
	unsigned char *in = xmalloc(sz), *exp = xmalloc(sz);
	struct gbuf ref = galloc(sz), out = galloc(sz);
	for (long i = 0; i < count; i++) {
		if (commutative) {
			unsigned acc = 0;
			for (int r = 0; r < n; r++) {
				unsigned v = (unsigned)(mix((uint64_t)r, (uint64_t)i) & 0xffff);
				acc = r ? acc + v + acc * v : v;
				if (r == me)
					memcpy(in + (size_t)i * es, &v, sizeof v);
			}
			memcpy(exp + (size_t)i * es, &acc, sizeof acc);
		} else {
			/* in_0 op in_1 op ... with (a op b) = a x b */
			unsigned acc[4], m[4];
			mat_elem(n - 1, (size_t)i, acc);
			for (int r = n - 2; r >= 0; r--) {
				mat_elem(r, (size_t)i, m);
				mat_mul(m, acc, acc);
			}
			mat_elem(me, (size_t)i, m);
			memcpy(in + (size_t)i * es, m, es);
			memcpy(exp + (size_t)i * es, acc, es);
		}
	}
	const struct ctype *cmp = type_named("MPI_UNSIGNED");
	size_t nw = sz / sizeof(unsigned);
	bool run[4];
	enum coll which[4] = {C_ALLREDUCE, C_REDUCE, C_RSB, C_RS};
	bool any = false;
	for (int w = 0; w < 4; w++) {
		cx.coll = which[w];
		any |= run[w] = selected(&cx, (long)sz);
	}
	if (any) {
		MPI_Request q;
		cx.coll = C_ALLREDUCE;
		MPI_Iallreduce(in, ref.p, (int)count, dt, op, cm->comm, &q);
		wait_req(&q);
		check_same(&cx, "reference (MPI_Iallreduce) vs expected", cmp, ref.p, exp, nw);
	}
	if (run[0]) {
		greset(&out);
		MPI_Allreduce(in, out.p, (int)count, dt, op, cm->comm);
		check_same(&cx, "vs reference", cmp, out.p, ref.p, nw);
		check_guards(&cx, &out, "recvbuf");
	}
	cx.coll = C_REDUCE;
	int roots[8], nroots = roots_of(n, roots);
	for (int ri = 0; ri < nroots && run[1]; ri++) {
		cx.root = roots[ri];
		greset(&out);
		bool at_root = me == cx.root;
		if (at_root)
			memcpy(out.p, in, sz);
		/* In place at odd roots (unless MPICH would crash: commutative ops reduce like
		 * predefined ones there), from a separate buffer at even ones. */
		bool ip = at_root && cx.root % 2 && !(commutative && sz > 2048 && g.mpich_inplace_bugs);
		MPI_Reduce(ip ? MPI_IN_PLACE : in, at_root ? out.p : NULL, (int)count, dt, op, cx.root,
		           cm->comm);
		if (at_root) {
			check_same(&cx, "vs reference", cmp, out.p, ref.p, nw);
			check_guards(&cx, &out, "recvbuf");
		}
	}
	cx.root = -1;
	long b = count / n;
	if (run[2]) {
		cx.coll = C_RSB;
		struct gbuf rb = galloc((size_t)b * es);
		MPI_Reduce_scatter_block(in, rb.p, (int)b, dt, op, cm->comm);
		check_same(&cx, "vs reference", cmp, rb.p, ref.p + (size_t)me * (size_t)b * es, (size_t)b * es / sizeof(unsigned));
		check_guards(&cx, &rb, "recvbuf");
		gfree(&rb);
	}
	if (run[3]) {
		cx.coll = C_RS;
		int *counts = xmalloc(sizeof(int) * (size_t)n);
		rs_counts(count, n, counts);
		size_t off = 0;
		for (int i = 0; i < me; i++)
			off += (size_t)counts[i] * es;
		struct gbuf rb = galloc((size_t)counts[me] * es);
		MPI_Reduce_scatter(in, rb.p, counts, dt, op, cm->comm);
		check_same(&cx, "vs reference", cmp, rb.p, ref.p + off, (size_t)counts[me] * es / sizeof(unsigned));
		check_guards(&cx, &rb, "recvbuf");
		gfree(&rb);
		free(counts);
	}
	MPI_Op_free(&op);
	MPI_Type_free(&mat);
	free(in);
	free(exp);
	gfree(&ref);
	gfree(&out);
}

/* Sum of the ints of a strided type: ints 0, 1, 3 and 4 of every 5 (holes at 2). */
static void user_strided_sum(void *in, void *inout, int *len, MPI_Datatype *dt)
{
	(void)dt;
	const int *a = in;
	int *b = inout;
	for (int e = 0; e < *len; e++)
		for (int j = 0; j < 5; j++)
			if (j != 2)
				b[5 * e + j] = (int)((unsigned)a[5 * e + j] + (unsigned)b[5 * e + j]);
}

/* A user op on a strided derived type (Open MPI rejects predefined ops on derived types): the
 * shim must hand it to the library, holes untouched. */
static void derived_red_case(int cmi, long count)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	MPI_Datatype dt;
	MPI_Type_vector(2, 2, 3, MPI_INT, &dt);
	MPI_Type_commit(&dt);
	MPI_Aint lb, ext;
	MPI_Type_get_extent(dt, &lb, &ext);
	MPI_Op op;
	MPI_Op_create(user_strided_sum, 1, &op);
	struct ctx cx = {C_ALLREDUCE, cm->name, "vector(2,2,3,MPI_INT)", "user_strided_sum", count, -1, NULL};
	size_t sz = (size_t)count * (size_t)ext;
	if (begin(&cx, (long)sz)) {
		int *in = xmalloc(sz);
		struct gbuf ref = galloc(sz), out = galloc(sz);
		for (size_t i = 0; i < sz / sizeof(int); i++)
			in[i] = (int)(mix((uint64_t)cm->rank, i) % 1000);
		MPI_Request q;
		MPI_Iallreduce(in, ref.p, (int)count, dt, op, cm->comm, &q);
		wait_req(&q);
		MPI_Allreduce(in, out.p, (int)count, dt, op, cm->comm);
		/* Holes keep INIT_BYTE in both buffers: a byte compare checks them too. */
		check_bytes(&cx, "vs reference", out.p, ref.p, sz);
		check_guards(&cx, &out, "recvbuf");
		free(in);
		gfree(&ref);
		gfree(&out);
	}
	MPI_Op_free(&op);
	MPI_Type_free(&dt);
}

static void test_user_ops(void)
{
	static const long counts[] = {7, 20000, 1, 1024};
	for (int c = 0; c < (QUICK ? 4 : LEN(shape_comms)); c++)
		for (int z = 0; z < (FULL ? 4 : 2); z++) {
			user_case(shape_comms[c], true, counts[z]);
			user_case(shape_comms[c], false, counts[z]);
			derived_red_case(shape_comms[c], counts[z]);
		}
}

/* ---------------------------------------------------------------------------------------------
 * Data movement: Bcast, Gather, Scatter, Allgather, Alltoall
 * ------------------------------------------------------------------------------------------- */

/* Each case fills every send buffer with mv_fill patterns, runs the collective under test and
 * the library's nonblocking twin on identically initialised receive buffers, and compares both
 * with each other and with the pattern the receiver must end up with. */

/* The communicator of a data-movement case with its context set, or NULL when this rank has no
 * part in it or the case is not selected. */
static const struct ccomm *mv_begin(struct ctx *cx, enum coll c, int cmi, const struct ctype *t, long count, int root,
                                    bool ip)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return NULL;
	*cx = (struct ctx){c, cm->name, t->name, NULL, count, root, ip ? "inplace" : NULL};
	return begin(cx, count * (long)t->size) ? cm : NULL;
}

/* n blocks of count elements in one buffer, block s holding what rank s sends (a gather's
 * result). */
static unsigned char *gathered(const struct ctype *t, long count, int n)
{
	size_t blk = (size_t)count * t->size;
	unsigned char *exp = xmalloc(blk * (size_t)n);
	memset(exp, INIT_BYTE, blk * (size_t)n);
	for (int s = 0; s < n; s++)
		mv_fill(t, exp + (size_t)s * blk, (size_t)count, s, 0);
	return exp;
}

/* The collective's result in a against the library's (ref, by the call named) and the expected
 * contents, then a's guard bytes. */
static void check_result(struct ctx *cx, const char *ref, const struct ctype *t, struct gbuf *a, const unsigned char *b,
                         const unsigned char *exp, size_t count)
{
	char what[64];
	snprintf(what, sizeof what, "vs reference (%s)", ref);
	check_same(cx, what, t, a->p, b, count);
	check_same(cx, "vs expected", t, a->p, exp, count);
	check_guards(cx, a, cx->coll == C_BCAST ? "buffer" : "recvbuf");
}

static void bcast_case(int cmi, const struct ctype *t, long count, int root)
{
	struct ctx cx;
	const struct ccomm *cm = mv_begin(&cx, C_BCAST, cmi, t, count, root, false);
	if (!cm)
		return;
	size_t sz = (size_t)count * t->size;
	struct gbuf a = galloc(sz), b = galloc(sz);
	unsigned char *exp = xmalloc(sz);
	memset(exp, INIT_BYTE, sz);
	mv_fill(t, exp, (size_t)count, root, 0);
	if (cm->rank == root) {
		memcpy(a.p, exp, sz);
		memcpy(b.p, exp, sz);
	}
	MPI_Request q;
	MPI_Ibcast(b.p, (int)count, t->dt, root, cm->comm, &q);
	wait_req(&q);
	MPI_Bcast(a.p, (int)count, t->dt, root, cm->comm);
	check_result(&cx, "MPI_Ibcast", t, &a, b.p, exp, (size_t)count);
	gfree(&a);
	gfree(&b);
	free(exp);
}

static void gather_case(int cmi, const struct ctype *t, long count, int root, bool ip)
{
	struct ctx cx;
	const struct ccomm *cm = mv_begin(&cx, C_GATHER, cmi, t, count, root, ip);
	if (!cm)
		return;
	int n = cm->size, me = cm->rank;
	size_t blk = (size_t)count * t->size, all = blk * (size_t)n;
	unsigned char *snd = xmalloc(blk);
	memset(snd, INIT_BYTE, blk);
	mv_fill(t, snd, (size_t)count, me, 0);
	bool at_root = me == root;
	struct gbuf a = galloc(at_root ? all : 0), b = galloc(at_root ? all : 0);
	if (at_root && ip)
		memcpy(a.p + (size_t)me * blk, snd, blk);
	MPI_Request q;
	MPI_Igather(snd, (int)count, t->dt, b.p, (int)count, t->dt, root, cm->comm, &q);
	wait_req(&q);
	MPI_Gather(ip && at_root ? MPI_IN_PLACE : snd, (int)count, t->dt, at_root ? a.p : NULL, (int)count, t->dt, root,
	           cm->comm);
	if (at_root) {
		unsigned char *exp = gathered(t, count, n);
		check_result(&cx, "MPI_Igather", t, &a, b.p, exp, (size_t)count * (size_t)n);
		free(exp);
	}
	free(snd);
	gfree(&a);
	gfree(&b);
}

static void scatter_case(int cmi, const struct ctype *t, long count, int root, bool ip)
{
	struct ctx cx;
	const struct ccomm *cm = mv_begin(&cx, C_SCATTER, cmi, t, count, root, ip);
	if (!cm)
		return;
	int n = cm->size, me = cm->rank;
	size_t blk = (size_t)count * t->size, all = blk * (size_t)n;
	bool at_root = me == root;
	unsigned char *snd = xmalloc(at_root ? all : 0);
	if (at_root) {
		memset(snd, INIT_BYTE, all);
		for (int d = 0; d < n; d++)
			mv_fill(t, snd + (size_t)d * blk, (size_t)count, root, d);
	}
	struct gbuf a = galloc(blk), b = galloc(blk);
	unsigned char *exp = xmalloc(blk);
	memset(exp, INIT_BYTE, blk);
	mv_fill(t, exp, (size_t)count, root, me);
	MPI_Request q;
	MPI_Iscatter(snd, (int)count, t->dt, b.p, (int)count, t->dt, root, cm->comm, &q);
	wait_req(&q);
	if (ip && at_root) {
		/* The root's own block stays in place in the send buffer. */
		unsigned char *keep = xmalloc(all);
		memcpy(keep, snd, all);
		MPI_Scatter(snd, (int)count, t->dt, MPI_IN_PLACE, (int)count, t->dt, root, cm->comm);
		check_bytes(&cx, "send buffer unchanged", snd, keep, all);
		free(keep);
	} else {
		MPI_Scatter(snd, (int)count, t->dt, a.p, (int)count, t->dt, root, cm->comm);
		check_result(&cx, "MPI_Iscatter", t, &a, b.p, exp, (size_t)count);
	}
	free(snd);
	free(exp);
	gfree(&a);
	gfree(&b);
}

static void allgather_case(int cmi, const struct ctype *t, long count, bool ip)
{
	struct ctx cx;
	const struct ccomm *cm = mv_begin(&cx, C_ALLGATHER, cmi, t, count, -1, ip);
	if (!cm)
		return;
	int n = cm->size, me = cm->rank;
	size_t blk = (size_t)count * t->size, all = blk * (size_t)n;
	unsigned char *snd = xmalloc(blk), *exp = gathered(t, count, n);
	memset(snd, INIT_BYTE, blk);
	mv_fill(t, snd, (size_t)count, me, 0);
	struct gbuf a = galloc(all), b = galloc(all);
	if (ip)
		memcpy(a.p + (size_t)me * blk, snd, blk);
	MPI_Request q;
	MPI_Iallgather(snd, (int)count, t->dt, b.p, (int)count, t->dt, cm->comm, &q);
	wait_req(&q);
	MPI_Allgather(ip ? MPI_IN_PLACE : snd, (int)count, t->dt, a.p, (int)count, t->dt, cm->comm);
	check_result(&cx, "MPI_Iallgather", t, &a, b.p, exp, (size_t)count * (size_t)n);
	free(snd);
	free(exp);
	gfree(&a);
	gfree(&b);
}

static void alltoall_case(int cmi, const struct ctype *t, long count, bool ip)
{
	struct ctx cx;
	const struct ccomm *cm = mv_begin(&cx, C_ALLTOALL, cmi, t, count, -1, ip);
	if (!cm)
		return;
	int n = cm->size, me = cm->rank;
	size_t blk = (size_t)count * t->size, all = blk * (size_t)n;
	unsigned char *snd = xmalloc(all), *exp = xmalloc(all);
	memset(snd, INIT_BYTE, all);
	memset(exp, INIT_BYTE, all);
	for (int d = 0; d < n; d++) {
		mv_fill(t, snd + (size_t)d * blk, (size_t)count, me, d);
		mv_fill(t, exp + (size_t)d * blk, (size_t)count, d, me);
	}
	struct gbuf a = galloc(all), b = galloc(all);
	if (ip)
		memcpy(a.p, snd, all);
	MPI_Request q;
	MPI_Ialltoall(snd, (int)count, t->dt, b.p, (int)count, t->dt, cm->comm, &q);
	wait_req(&q);
	MPI_Alltoall(ip ? MPI_IN_PLACE : snd, (int)count, t->dt, a.p, (int)count, t->dt, cm->comm);
	check_result(&cx, "MPI_Ialltoall", t, &a, b.p, exp, (size_t)count * (size_t)n);
	free(snd);
	free(exp);
	gfree(&a);
	gfree(&b);
}

/* Every data-movement collective for one (comm, type, count): at every root, or at the last
 * one only, with and without MPI_IN_PLACE when ip. */
static void move_all(int cmi, const struct ctype *t, long count, bool all_roots, bool ip)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	int roots[8], nroots = roots_of(cm->size, roots);
	if (!all_roots) {
		roots[0] = cm->size - 1;
		nroots = 1;
	}
	for (int r = 0; r < nroots; r++)
		bcast_case(cmi, t, count, roots[r]);
	for (int r = 0; r < nroots; r++)
		for (int i = 0; i <= (int)ip; i++)
			gather_case(cmi, t, count, roots[r], i);
	for (int r = 0; r < nroots; r++)
		for (int i = 0; i <= (int)ip; i++)
			scatter_case(cmi, t, count, roots[r], i);
	for (int i = 0; i <= (int)ip; i++)
		allgather_case(cmi, t, count, i);
	for (int i = 0; i <= (int)ip; i++)
		alltoall_case(cmi, t, count, i);
}

static void test_movement(void)
{
	/* 1. Every type, one element, on world (--full: and 1 KiB on an uneven triple). */
	for (int ti = 0; ti < NTYPE; ti += QUICK ? 2 : 1) {
		const struct ctype *t = &types[ti];
		int last = comms[CM_WORLD].size - 1;
		bcast_case(CM_WORLD, t, 1, last);
		gather_case(CM_WORLD, t, 1, last, false);
		scatter_case(CM_WORLD, t, 1, last, false);
		allgather_case(CM_WORLD, t, 1, false);
		alltoall_case(CM_WORLD, t, 1, false);
		if (!FULL)
			continue;
		long c = count_for(1024, t->size);
		bcast_case(CM_REV3, t, c, 1);
		gather_case(CM_REV3, t, c, 0, false);
		scatter_case(CM_REV3, t, c, 2, false);
		allgather_case(CM_REV3, t, c, false);
		alltoall_case(CM_REV3, t, c, false);
	}
	/* 2. Bytes at small sizes on every communicator; every root and in place at 57 B (one past
	 * the shim's inline line) and, with --full, at every size. */
	const struct ctype *byte = type_named("MPI_BYTE"), *ints = type_named("MPI_INT");
	static const long small[] = {0, 1, 8, 56, 57, 1024};
	for (int z = 0; z < LEN(small); z++) {
		if (!FULL && (small[z] == 8 || small[z] == 56 || (QUICK && small[z] == 1)))
			continue;
		for (int c = 0; c < LEN(all_comms); c++)
			if (!QUICK || is_shape(all_comms[c]))
				move_all(all_comms[c], byte, small[z], FULL || small[z] == 57, FULL || small[z] == 57);
	}
	/* 3. Ints at large sizes and around the shim's piece sizes: a 64 KiB slot carries one piece
	 * per op, shared by 4 ranks in scatter and alltoall (16 KiB each), so 16 KiB, 64 KiB and one
	 * int past each end a piece early; 1 MiB blocks move in many pieces. */
	static const long large[] = {16384, 16384 + 4, 65536, 65536 + 4, 1 << 20};
	for (int z = 0; z < LEN(large); z++)
		for (int c = 0; c < LEN(large_comms); c++)
			if ((FULL || large_comms[c] != CM_HALF) && !(QUICK && (large[z] == 16384 || large[z] == 65536 + 4)))
				move_all(large_comms[c], ints, count_for(large[z], ints->size), FULL, large[z] <= 65536);
}

/* ---------------------------------------------------------------------------------------------
 * Derived datatypes in data movement: senders and receivers use different types with the same
 * type signature, one of them strided; holes in receive buffers must keep their contents.
 * ------------------------------------------------------------------------------------------- */

struct dtype {
	const char *name;
	MPI_Datatype dt;
	int ints;     /* MPI_INTs per element */
	MPI_Aint ext; /* bytes */
	int off[4];   /* int offsets (in ints) of the element's data within its extent */
};

static struct dtype dtypes[4];

static void dtypes_init(void)
{
	MPI_Datatype v, r;
	dtypes[0] = (struct dtype){"MPI_INT", MPI_INT, 1, 0, {0}};
	MPI_Type_contiguous(4, MPI_INT, &dtypes[1].dt);
	dtypes[1] = (struct dtype){"contiguous(4,MPI_INT)", dtypes[1].dt, 4, 0, {0, 1, 2, 3}};
	/* Two blocks of two ints, stride 3, resized to an extent of 7 ints: holes inside and after. */
	MPI_Type_vector(2, 2, 3, MPI_INT, &v);
	MPI_Type_create_resized(v, 0, 7 * (MPI_Aint)sizeof(int), &r);
	MPI_Type_free(&v);
	dtypes[2] = (struct dtype){"resized(vector(2,2,3,MPI_INT),7 ints)", r, 4, 0, {0, 1, 3, 4}};
	/* Contiguous as one element, with a hole after it as several. */
	MPI_Type_contiguous(4, MPI_INT, &v);
	MPI_Type_create_resized(v, 0, 6 * (MPI_Aint)sizeof(int), &r);
	MPI_Type_free(&v);
	dtypes[3] = (struct dtype){"resized(contiguous(4,MPI_INT),6 ints)", r, 4, 0, {0, 1, 2, 3}};
	for (int i = 0; i < 4; i++) {
		MPI_Aint lb;
		if (i)
			MPI_Type_commit(&dtypes[i].dt);
		MPI_Type_get_extent(dtypes[i].dt, &lb, &dtypes[i].ext);
	}
}

/* Writes ints k0.. of a pattern into n elements of d at buf (holes untouched). */
static void d_put(const struct dtype *d, void *buf, long n, uint64_t seed)
{
	int *p = buf;
	long k = 0;
	for (long e = 0; e < n; e++)
		for (int j = 0; j < d->ints; j++, k++)
			p[e * (d->ext / (MPI_Aint)sizeof(int)) + d->off[j]] = (int)mix(seed, (uint64_t)k);
}

/* One derived-type case of collective c: senders use type sd, receivers rd, with `ints` ints
 * per rank block (a multiple of 4). */
static void derived_case(enum coll c, int cmi, const struct dtype *sd, const struct dtype *rd, long ints, int root)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	char variant[160];
	snprintf(variant, sizeof variant, "derived send=%s recv=%s", sd->name, rd->name);
	bool rooted = c == C_BCAST || c == C_GATHER || c == C_SCATTER;
	struct ctx cx = {c, cm->name, "derived", NULL, ints, rooted ? root : -1, variant};
	if (!begin(&cx, ints * (long)sizeof(int)))
		return;
	int n = cm->size, me = cm->rank;
	long sc = ints / sd->ints, rc = ints / rd->ints; /* element counts per block */
	size_t sblk = (size_t)(sc * sd->ext), rblk = (size_t)(rc * rd->ext);
	size_t sall = c == C_SCATTER || c == C_ALLTOALL ? sblk * (size_t)n : sblk;
	size_t rall = c == C_GATHER || c == C_ALLGATHER || c == C_ALLTOALL ? rblk * (size_t)n : rblk;
	if (c == C_BCAST && me == root)
		rall = sblk; /* the root's buffer holds the data in its own type */
	unsigned char *snd = xmalloc(sall), *exp = xmalloc(rall);
	struct gbuf a = galloc(rall), b = galloc(rall);
	memset(snd, INIT_BYTE, sall);
	memset(exp, INIT_BYTE, rall);
	bool at_root = me == root;
	MPI_Request q;
	switch (c) {
	case C_BCAST:
		/* The root sends with sd, everyone else receives with rd. */
		if (at_root) {
			d_put(sd, a.p, sc, (uint64_t)root);
			d_put(sd, b.p, sc, (uint64_t)root);
			d_put(sd, exp, sc, (uint64_t)root);
		} else {
			d_put(rd, exp, rc, (uint64_t)root);
		}
		MPI_Ibcast(b.p, (int)(at_root ? sc : rc), at_root ? sd->dt : rd->dt, root, cm->comm, &q);
		wait_req(&q);
		MPI_Bcast(a.p, (int)(at_root ? sc : rc), at_root ? sd->dt : rd->dt, root, cm->comm);
		break;
	case C_GATHER:
		d_put(sd, snd, sc, (uint64_t)me);
		for (int s = 0; s < n; s++)
			d_put(rd, exp + (size_t)s * rblk, rc, (uint64_t)s);
		MPI_Igather(snd, (int)sc, sd->dt, b.p, (int)rc, rd->dt, root, cm->comm, &q);
		wait_req(&q);
		MPI_Gather(snd, (int)sc, sd->dt, a.p, (int)rc, rd->dt, root, cm->comm);
		break;
	case C_SCATTER:
		for (int d = 0; d < n; d++)
			d_put(sd, snd + (size_t)d * sblk, sc, (uint64_t)(d + 100));
		d_put(rd, exp, rc, (uint64_t)(me + 100));
		MPI_Iscatter(snd, (int)sc, sd->dt, b.p, (int)rc, rd->dt, root, cm->comm, &q);
		wait_req(&q);
		MPI_Scatter(snd, (int)sc, sd->dt, a.p, (int)rc, rd->dt, root, cm->comm);
		break;
	case C_ALLGATHER:
		d_put(sd, snd, sc, (uint64_t)me);
		for (int s = 0; s < n; s++)
			d_put(rd, exp + (size_t)s * rblk, rc, (uint64_t)s);
		MPI_Iallgather(snd, (int)sc, sd->dt, b.p, (int)rc, rd->dt, cm->comm, &q);
		wait_req(&q);
		MPI_Allgather(snd, (int)sc, sd->dt, a.p, (int)rc, rd->dt, cm->comm);
		break;
	case C_ALLTOALL:
		for (int d = 0; d < n; d++) {
			d_put(sd, snd + (size_t)d * sblk, sc, (uint64_t)(me * 1000 + d));
			d_put(rd, exp + (size_t)d * rblk, rc, (uint64_t)(d * 1000 + me));
		}
		MPI_Ialltoall(snd, (int)sc, sd->dt, b.p, (int)rc, rd->dt, cm->comm, &q);
		wait_req(&q);
		MPI_Alltoall(snd, (int)sc, sd->dt, a.p, (int)rc, rd->dt, cm->comm);
		break;
	default:
		break;
	}
	if (c != C_GATHER || at_root) {
		check_bytes(&cx, "vs reference", a.p, b.p, rall);
		check_bytes(&cx, "vs expected", a.p, exp, rall);
		check_guards(&cx, &a, "recvbuf");
	}
	free(snd);
	free(exp);
	gfree(&a);
	gfree(&b);
}

/* The MPI_IN_PLACE form of a gather, allgather, scatter or alltoall of type d, `ints` ints per
 * rank block: the in-place block stays where it is while the others move piece by piece. */
static void derived_inplace_case(enum coll c, int cmi, const struct dtype *d, long ints, int root)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	char variant[160];
	snprintf(variant, sizeof variant, "derived inplace type=%s", d->name);
	bool rooted = c == C_GATHER || c == C_SCATTER;
	struct ctx cx = {c, cm->name, "derived", NULL, ints, rooted ? root : -1, variant};
	if (!begin(&cx, ints * (long)sizeof(int)))
		return;
	int n = cm->size, me = cm->rank;
	bool at_root = me == root;
	long cnt = ints / d->ints;
	size_t blk = (size_t)(cnt * d->ext), all = blk * (size_t)n;
	unsigned char *exp = xmalloc(all), *snd = xmalloc(all);
	struct gbuf a = galloc(all);
	memset(exp, INIT_BYTE, all);
	memset(snd, INIT_BYTE, all);
	size_t check = all; /* bytes of a to compare with exp */
	switch (c) {
	case C_GATHER:
	case C_ALLGATHER:
		for (int s = 0; s < n; s++)
			d_put(d, exp + (size_t)s * blk, cnt, (uint64_t)s);
		d_put(d, snd, cnt, (uint64_t)me);
		d_put(d, a.p + (size_t)me * blk, cnt, (uint64_t)me);
		if (c == C_ALLGATHER)
			MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, a.p, (int)cnt, d->dt, cm->comm);
		else if (at_root)
			MPI_Gather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, a.p, (int)cnt, d->dt, root, cm->comm);
		else
			MPI_Gather(snd, (int)cnt, d->dt, NULL, 0, MPI_DATATYPE_NULL, root, cm->comm);
		if (c == C_GATHER && !at_root)
			check = 0;
		break;
	case C_SCATTER:
		/* The root's block stays in its send buffer (a): all of a is unchanged there. */
		for (int t = 0; t < n; t++)
			d_put(d, (at_root ? exp : snd) + (size_t)t * blk, cnt, (uint64_t)(t + 100));
		if (at_root) {
			for (int t = 0; t < n; t++)
				d_put(d, a.p + (size_t)t * blk, cnt, (uint64_t)(t + 100));
			MPI_Scatter(a.p, (int)cnt, d->dt, MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, root, cm->comm);
		} else {
			d_put(d, exp, cnt, (uint64_t)(me + 100));
			MPI_Scatter(NULL, 0, MPI_DATATYPE_NULL, a.p, (int)cnt, d->dt, root, cm->comm);
			check = blk;
		}
		break;
	case C_ALLTOALL:
		for (int t = 0; t < n; t++) {
			d_put(d, a.p + (size_t)t * blk, cnt, (uint64_t)(me * 1000 + t));
			d_put(d, exp + (size_t)t * blk, cnt, (uint64_t)(t * 1000 + me));
		}
		MPI_Alltoall(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, a.p, (int)cnt, d->dt, cm->comm);
		break;
	default:
		break;
	}
	if (check) {
		check_bytes(&cx, "vs expected", a.p, exp, check);
		check_guards(&cx, &a, "recvbuf");
	}
	free(exp);
	free(snd);
	gfree(&a);
}

static void test_derived(void)
{
	static const enum coll cs[] = {C_BCAST, C_GATHER, C_SCATTER, C_ALLGATHER, C_ALLTOALL};
	static const int pairs[][2] = {{2, 2}, {0, 2}, {3, 3}, {2, 0}, {1, 2}, {1, 1}};
	/* 16384 ints (64 KiB) take several pieces of a scatter's or alltoall's slot share, 40960
	 * (160 KiB) several slots of an area: a derived type moves piece by piece. */
	static const long ints[] = {4, 256, 16384, 40960};
	static const int dcomms[] = {CM_WORLD, CM_HALF, CM_INTER, CM_TRI}; /* half: on one host */
	for (int c = 0; c < LEN(cs); c++)
		for (int p = 0; p < (FULL ? LEN(pairs) : QUICK ? 2 : 3); p++)
			for (int z = 0; z < LEN(ints); z++)
				for (int k = 0; k < (FULL ? LEN(dcomms) : QUICK ? 2 : 3); k++) {
					const struct ccomm *cm = &comms[dcomms[k]];
					int root = cm->size > 0 ? (p + z) % cm->size : 0;
					/* The largest blocks only where cheap enough: broadcasts and gathers. */
					if (z == 3 && (cs[c] == C_ALLTOALL || cs[c] == C_SCATTER))
						continue;
					derived_case(cs[c], dcomms[k], &dtypes[pairs[p][0]], &dtypes[pairs[p][1]], ints[z], root);
					if (pairs[p][0] == pairs[p][1] && cs[c] != C_BCAST)
						derived_inplace_case(cs[c], dcomms[k], &dtypes[pairs[p][0]], ints[z], root);
				}
}

/* ---------------------------------------------------------------------------------------------
 * v-variants (passed to the library by the shim): uneven counts with zeros, displacements in
 * reverse order with gaps; compared with the nonblocking variants and the expected pattern.
 * ------------------------------------------------------------------------------------------- */

/* Counts and displacements (in elements) for n ranks with `base` elements per unit: rank i has
 * base*(i%3) elements; blocks lie in reverse rank order with a gap of one element. */
static long v_layout(int n, long base, int *counts, int *displs)
{
	long pos = 0;
	for (int i = n - 1; i >= 0; i--) {
		counts[i] = (int)(base * (i % 3));
		displs[i] = (int)pos;
		pos += counts[i] + 1;
	}
	return pos;
}

static void vcase(enum coll c, int cmi, long base, int root)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	const struct ctype *t = type_named("MPI_INT");
	struct ctx cx = {c, cm->name, t->name, NULL, base, root, NULL};
	if (!begin(&cx, base * (long)sizeof(int)))
		return;
	int n = cm->size, me = cm->rank;
	int *counts = xmalloc(sizeof(int) * (size_t)n), *displs = xmalloc(sizeof(int) * (size_t)n);
	long span = v_layout(n, base, counts, displs);
	/* Alltoallv: rank s sends base*((s + 2d) % 3) elements to rank d, blocks in reverse order
	 * with gaps of two elements. */
	int *scounts = xmalloc(sizeof(int) * (size_t)n), *sdispls = xmalloc(sizeof(int) * (size_t)n);
	int *rcounts = xmalloc(sizeof(int) * (size_t)n), *rdispls = xmalloc(sizeof(int) * (size_t)n);
	long spos = 0, rpos = 0;
	for (int i = n - 1; i >= 0; i--) {
		scounts[i] = (int)(base * ((me + 2 * i) % 3));
		rcounts[i] = (int)(base * ((i + 2 * me) % 3));
		sdispls[i] = (int)spos;
		rdispls[i] = (int)rpos;
		spos += scounts[i] + 2;
		rpos += rcounts[i] + 2;
	}
	size_t es = sizeof(int);
	size_t slen = 0, rlen = 0;
	switch (c) {
	case C_GATHERV: slen = (size_t)counts[me]; rlen = me == root ? (size_t)span : 0; break;
	case C_SCATTERV: slen = me == root ? (size_t)span : 0; rlen = (size_t)counts[me]; break;
	case C_ALLGATHERV: slen = (size_t)counts[me]; rlen = (size_t)span; break;
	case C_ALLTOALLV: slen = (size_t)spos; rlen = (size_t)rpos; break;
	default: break;
	}
	unsigned char *snd = xmalloc(slen * es), *exp = xmalloc(rlen * es);
	memset(snd, INIT_BYTE, slen * es);
	memset(exp, INIT_BYTE, rlen * es);
	struct gbuf a = galloc(rlen * es), b = galloc(rlen * es);
	MPI_Request q;
	switch (c) {
	case C_GATHERV:
		mv_fill(t, snd, slen, me, 0);
		for (int s = 0; s < n && me == root; s++)
			mv_fill(t, exp + (size_t)displs[s] * es, (size_t)counts[s], s, 0);
		MPI_Igatherv(snd, counts[me], MPI_INT, b.p, counts, displs, MPI_INT, root, cm->comm, &q);
		wait_req(&q);
		MPI_Gatherv(snd, counts[me], MPI_INT, a.p, counts, displs, MPI_INT, root, cm->comm);
		break;
	case C_SCATTERV:
		for (int d = 0; d < n && me == root; d++)
			mv_fill(t, snd + (size_t)displs[d] * es, (size_t)counts[d], root, d);
		mv_fill(t, exp, rlen, root, me);
		MPI_Iscatterv(snd, counts, displs, MPI_INT, b.p, counts[me], MPI_INT, root, cm->comm, &q);
		wait_req(&q);
		MPI_Scatterv(snd, counts, displs, MPI_INT, a.p, counts[me], MPI_INT, root, cm->comm);
		break;
	case C_ALLGATHERV:
		mv_fill(t, snd, slen, me, 0);
		for (int s = 0; s < n; s++)
			mv_fill(t, exp + (size_t)displs[s] * es, (size_t)counts[s], s, 0);
		MPI_Iallgatherv(snd, counts[me], MPI_INT, b.p, counts, displs, MPI_INT, cm->comm, &q);
		wait_req(&q);
		MPI_Allgatherv(snd, counts[me], MPI_INT, a.p, counts, displs, MPI_INT, cm->comm);
		break;
	case C_ALLTOALLV:
		for (int d = 0; d < n; d++) {
			mv_fill(t, snd + (size_t)sdispls[d] * es, (size_t)scounts[d], me, d);
			mv_fill(t, exp + (size_t)rdispls[d] * es, (size_t)rcounts[d], d, me);
		}
		MPI_Ialltoallv(snd, scounts, sdispls, MPI_INT, b.p, rcounts, rdispls, MPI_INT, cm->comm, &q);
		wait_req(&q);
		MPI_Alltoallv(snd, scounts, sdispls, MPI_INT, a.p, rcounts, rdispls, MPI_INT, cm->comm);
		break;
	default:
		break;
	}
	if (c != C_GATHERV || me == root) {
		check_bytes(&cx, "vs reference", a.p, b.p, rlen * es);
		check_bytes(&cx, "vs expected", a.p, exp, rlen * es);
		check_guards(&cx, &a, "recvbuf");
	}
	free(counts);
	free(displs);
	free(scounts);
	free(sdispls);
	free(rcounts);
	free(rdispls);
	free(snd);
	free(exp);
	gfree(&a);
	gfree(&b);
}

/* Blocks of equal, empty type signatures written differently: on even comm ranks 1 element of
 * a zero-size type, on odd ones 0 ints, one way and the other, and in place (MPICH's
 * coll/alltoallw_zeros found Open MPI's Ialltoallv never completing there, so the shim's
 * nonblocking call of MPI_Alltoallv did not either). Blocking calls only: the nonblocking ones
 * hang natively on Open MPI. Nothing moves; the receive buffer stays as it was. */
static void zero_type_case(int cmi)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	struct ctx cx = {C_ALLTOALLV, cm->name, "zero-size", NULL, 0, -1, NULL};
	if (!begin(&cx, 0))
		return;
	int n = cm->size, odd = cm->rank % 2;
	MPI_Datatype z;
	MPI_Type_contiguous(0, MPI_INT, &z);
	MPI_Type_commit(&z);
	int *ones = xmalloc(sizeof(int) * (size_t)n), *zeros = xmalloc(sizeof(int) * (size_t)n);
	MPI_Datatype *zs = xmalloc(sizeof z * (size_t)n), *ints = xmalloc(sizeof z * (size_t)n);
	for (int i = 0; i < n; i++) {
		ones[i] = 1;
		zeros[i] = 0;
		zs[i] = z;
		ints[i] = MPI_INT;
	}
	int snd = 7;
	struct gbuf a = galloc(sizeof(int)), want = galloc(sizeof(int));
	for (int way = 0; way < 2; way++) {
		int zside = odd ^ way; /* this rank's send side is the zero-size one */
		MPI_Alltoallv(&snd, zside ? ones : zeros, zeros, zside ? z : MPI_INT, a.p, zside ? zeros : ones, zeros,
		              zside ? MPI_INT : z, cm->comm);
		MPI_Alltoallw(&snd, zside ? ones : zeros, zeros, zside ? zs : ints, a.p, zside ? zeros : ones, zeros,
		              zside ? ints : zs, cm->comm);
	}
	MPI_Alltoallv(MPI_IN_PLACE, NULL, NULL, MPI_DATATYPE_NULL, a.p, odd ? ones : zeros, zeros, odd ? z : MPI_INT,
	              cm->comm);
	MPI_Alltoallw(MPI_IN_PLACE, NULL, NULL, NULL, a.p, odd ? ones : zeros, zeros, odd ? zs : ints, cm->comm);
	check_bytes(&cx, "untouched", a.p, want.p, sizeof(int));
	check_guards(&cx, &a, "recvbuf");
	MPI_Type_free(&z);
	free(ones);
	free(zeros);
	free(zs);
	free(ints);
	gfree(&a);
	gfree(&want);
}

/* Neighbourhood alltoalls on a periodic ring of the communicator's members: block 0 goes to
 * the rank below, block 1 to the rank above, and block 0 arrives from the rank below's block 1.
 * On a ring of 1 or 2 one process is the neighbour on both sides, where the libraries'
 * nonblocking calls swap the blocks (MPICH's coll/ring_neighbor_alltoall). MPICH 4.0's own
 * blocking Neighbor_alltoallv and _alltoallw swap them too, so those two must give what the
 * library's blocking call gives, called through PMPI (which no interposer sees). */
static void ring_case(int cmi)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	struct ctx cx = {C_ALLTOALLV, cm->name, "ring-neighbors", NULL, 2, -1, NULL};
	if (!begin(&cx, 2 * (long)sizeof(int)))
		return;
	int n = cm->size, me = cm->rank, dims[1] = {n}, periods[1] = {1};
	MPI_Comm ring;
	MPI_Cart_create(cm->comm, 1, dims, periods, 0, &ring);
	int below = (me + n - 1) % n, above = (me + 1) % n;
	int snd[2] = {me * 10, me * 10 + 1}, want[2] = {below * 10 + 1, above * 10}, got[3][2], ref[2][2];
	int counts[2] = {1, 1}, displs[2] = {0, 1};
	MPI_Aint wdispls[2] = {0, sizeof(int)};
	MPI_Datatype types[2] = {MPI_INT, MPI_INT};
	memset(got, 0xff, sizeof got);
	memset(ref, 0xff, sizeof ref);
	MPI_Neighbor_alltoall(snd, 1, MPI_INT, got[0], 1, MPI_INT, ring);
	MPI_Neighbor_alltoallv(snd, counts, displs, MPI_INT, got[1], counts, displs, MPI_INT, ring);
	PMPI_Neighbor_alltoallv(snd, counts, displs, MPI_INT, ref[0], counts, displs, MPI_INT, ring);
	MPI_Neighbor_alltoallw(snd, counts, wdispls, types, got[2], counts, wdispls, types, ring);
	PMPI_Neighbor_alltoallw(snd, counts, wdispls, types, ref[1], counts, wdispls, types, ring);
	check_bytes(&cx, "Neighbor_alltoall", got[0], want, sizeof want);
	check_bytes(&cx, "Neighbor_alltoallv", got[1], ref[0], sizeof want);
	check_bytes(&cx, "Neighbor_alltoallw", got[2], ref[1], sizeof want);
	MPI_Comm_free(&ring);
}

static void test_vvariants(void)
{
	static const long bases[] = {0, 256, 16384, 1};
	static const int vcomms[] = {CM_WORLD, CM_INTER, CM_HALF, CM_TRI, CM_REV3, CM_REV, CM_MID};
	for (int z = 0; z < (FULL ? 4 : 3); z++)
		for (int c = 0; c < (FULL ? LEN(vcomms) : QUICK ? 3 : 5); c++) {
			int cmi = vcomms[c];
			if (comms[cmi].comm == MPI_COMM_NULL)
				continue;
			int n = comms[cmi].size, roots[8], nroots = roots_of(n, roots);
			if (!FULL) { /* the first and the last rank */
				roots[1] = n - 1;
				nroots = n > 1 ? 2 : 1;
			}
			for (int r = 0; r < nroots; r++) {
				vcase(C_GATHERV, cmi, bases[z], roots[r]);
				vcase(C_SCATTERV, cmi, bases[z], roots[r]);
			}
			vcase(C_ALLGATHERV, cmi, bases[z], -1);
			vcase(C_ALLTOALLV, cmi, bases[z], -1);
			if (z == 0) {
				zero_type_case(cmi);
				ring_case(cmi);
			}
		}
}

/* ---------------------------------------------------------------------------------------------
 * Barrier: nobody leaves before the last one enters. A late rank polls for a while before it
 * enters; every other rank sends it a message as soon as it has left. A message that arrives
 * before the late rank entered proves a rank left early. Then many barriers back to back.
 * ------------------------------------------------------------------------------------------- */

#define BARRIER_TAG 4242

static void sleep_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	nanosleep(&ts, NULL);
}

static void barrier_case(int cmi, int late)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	struct ctx cx = {C_BARRIER, cm->name, "-", NULL, 0, late, "late rank"};
	if (!begin(&cx, 0))
		return;
	int n = cm->size, me = cm->rank;
	if (me == late) {
		int early = 0;
		for (int i = 0; i < 20 && !early; i++) {
			sleep_us(500);
			MPI_Iprobe(MPI_ANY_SOURCE, BARRIER_TAG, cm->comm, &early, MPI_STATUS_IGNORE);
		}
		MPI_Barrier(cm->comm);
		int src = -1;
		for (int i = 0; i < n - 1; i++) {
			MPI_Status st;
			int token;
			MPI_Recv(&token, 1, MPI_INT, MPI_ANY_SOURCE, BARRIER_TAG, cm->comm, &st);
			if (src < 0)
				src = st.MPI_SOURCE;
		}
		check(&cx, !early, "comm rank %d left the barrier before the late rank entered it", src);
	} else {
		MPI_Barrier(cm->comm);
		int token = me;
		MPI_Send(&token, 1, MPI_INT, late, BARRIER_TAG, cm->comm);
	}
}

/* A burst of barriers must neither hang nor mix up sequence parities. */
static void barrier_burst(int cmi)
{
	const struct ccomm *cm = &comms[cmi];
	struct ctx cx = {C_BARRIER, cm->name, "-", NULL, 0, -1, "burst"};
	if (cm->comm == MPI_COMM_NULL || !begin(&cx, 0))
		return;
	for (int i = 0; i < (QUICK ? 3 : 10); i++)
		MPI_Barrier(cm->comm);
	MPI_Request q;
	MPI_Ibarrier(cm->comm, &q);
	wait_req(&q);
	check(&cx, true, "%s", "");
}

static void test_barrier(void)
{
	for (int c = 0; c < LEN(all_comms); c++) {
		const struct ccomm *cm = &comms[all_comms[c]];
		if (cm->comm == MPI_COMM_NULL)
			continue;
		int roots[8], nroots = roots_of(cm->size, roots);
		for (int r = 0; r < nroots; r++)
			barrier_case(all_comms[c], roots[r]);
		barrier_burst(all_comms[c]);
	}
}

/* ---------------------------------------------------------------------------------------------
 * Sequence: collectives of different kinds back to back, with random delays in random ranks,
 * so that some ranks run several collectives ahead of others. Checked against expected values
 * only (the library's own results would add synchronisation that hides races).
 * ------------------------------------------------------------------------------------------- */

static void sequence_comm(int cmi, int iters)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	struct ctx cx = {C_SEQUENCE, cm->name, "MPI_INT", NULL, 4, -1, NULL};
	if (!begin(&cx, 16))
		return;
	/* Scatter and Gather ints per rank, changing every iteration: 16 B, 1 KiB, 16 KiB and
	 * 32 KiB + 32 B, so that back-to-back collectives take the shim's different ways between
	 * hosts (through the hosts' leaders, or the root with every member directly, a block in
	 * pieces or whole) with a rank delayed. A root's vector stays within SEQ_VEC ints on large
	 * communicators. */
	static const int seq_counts[] = {4, 256, 4096, 8200};
	enum { SEQ_MAX = 8200, SEQ_VEC = 1 << 18 };
	int n = cm->size, me = cm->rank;
	const struct ctype *t = type_named("MPI_INT");
	size_t vec = (size_t)n * SEQ_MAX < SEQ_VEC ? (size_t)n * SEQ_MAX : SEQ_VEC;
	vec = vec > (size_t)n * 4 ? vec : (size_t)n * 4;
	int *buf = xmalloc(sizeof(int) * SEQ_MAX), *all = xmalloc(sizeof(int) * vec), *exp = xmalloc(sizeof(int) * vec);
	uint64_t rnd = 12345;
	for (int it = 0; it < iters; it++) {
		int root = it % n, cnt = seq_counts[(it + it / n) % LEN(seq_counts)];
		cnt = (size_t)cnt * (size_t)n <= vec ? cnt : (int)(vec / (size_t)n);
		/* The same random draws on every rank: a delay for one rank before one step. */
		rnd = mix(rnd, (uint64_t)it);
		int slow = (int)(rnd % (uint64_t)n), step = (int)(rnd >> 8) % 7;
		long us = (long)(rnd >> 16) % 200;
		char what[64];
		for (int s = 0; s < 7; s++) {
			if (s == step && me == slow) {
				if (us < 100)
					sched_yield();
				else
					sleep_us(us);
			}
			snprintf(what, sizeof what, "iteration %d step %d", it, s);
			switch (s) {
			case 0:
				MPI_Barrier(cm->comm);
				break;
			case 1:
				memset(buf, 0, 4 * sizeof(int));
				if (me == root)
					mv_fill(t, buf, 4, root, it);
				mv_fill(t, exp, 4, root, it);
				MPI_Bcast(buf, 4, MPI_INT, root, cm->comm);
				cx.coll = C_SEQUENCE;
				check_same(&cx, what, t, buf, exp, 4);
				break;
			case 2:
				for (int i = 0; i < 4; i++)
					buf[i] = me + i + it;
				MPI_Reduce(buf, all, 4, MPI_INT, MPI_SUM, root, cm->comm);
				if (me == root) {
					for (int i = 0; i < 4; i++)
						exp[i] = n * (n - 1) / 2 + n * (i + it);
					check_same(&cx, what, t, all, exp, 4);
				}
				break;
			case 3:
				MPI_Barrier(cm->comm);
				break;
			case 4:
				if (me == root)
					for (int i = 0; i < cnt * n; i++)
						all[i] = i * 7 + it;
				MPI_Scatter(all, cnt, MPI_INT, buf, cnt, MPI_INT, root, cm->comm);
				for (int i = 0; i < cnt; i++)
					exp[i] = (me * cnt + i) * 7 + it;
				check_same(&cx, what, t, buf, exp, (size_t)cnt);
				break;
			case 5:
				for (int i = 0; i < 4; i++)
					buf[i] = me * 100 + i + it;
				MPI_Allgather(buf, 4, MPI_INT, all, 4, MPI_INT, cm->comm);
				for (int r = 0; r < n; r++)
					for (int i = 0; i < 4; i++)
						exp[r * 4 + i] = r * 100 + i + it;
				check_same(&cx, what, t, all, exp, (size_t)(4 * n));
				break;
			case 6:
				for (int i = 0; i < cnt; i++)
					buf[i] = me * 3 + i * 5 + it;
				MPI_Gather(buf, cnt, MPI_INT, all, cnt, MPI_INT, root, cm->comm);
				if (me == root) {
					for (int r = 0; r < n; r++)
						for (int i = 0; i < cnt; i++)
							exp[r * cnt + i] = r * 3 + i * 5 + it;
					check_same(&cx, what, t, all, exp, (size_t)cnt * (size_t)n);
				}
				break;
			}
		}
	}
	free(buf);
	free(all);
	free(exp);
}

/* Broadcasts of one int from rotating roots, with an Allreduce every 7th and a Barrier every
 * 5th step: a rank that returns early (a root, a non-root of a rooted collective) runs ahead of
 * ranks still reading, so this is where missed or mixed-up sequence numbers show. One check per
 * step. */
static void rotate_comm(int cmi, int iters)
{
	const struct ccomm *cm = &comms[cmi];
	if (cm->comm == MPI_COMM_NULL)
		return;
	struct ctx cx = {C_SEQUENCE, cm->name, "MPI_INT", NULL, 1, -1, "rotating roots"};
	if (!begin(&cx, 4))
		return;
	int n = cm->size, me = cm->rank;
	for (int it = 0; it < iters; it++) {
		int v = me == it % n ? it : -1, s = 0;
		MPI_Bcast(&v, 1, MPI_INT, it % n, cm->comm);
		if (it % 7 == 0) {
			MPI_Allreduce(&v, &s, 1, MPI_INT, MPI_SUM, cm->comm);
			v = s == n * it ? v : -2;
		}
		if (it % 5 == 0)
			MPI_Barrier(cm->comm);
		check(&cx, v == it, "step %d: got %d", it, v);
	}
}

static void test_sequence(void)
{
	rotate_comm(CM_WORLD, FULL ? 20000 : QUICK ? 150 : 3000);
	rotate_comm(CM_TRI, FULL ? 20000 : QUICK ? 150 : 3000);
	int scale = FULL ? 12 : QUICK ? 1 : 4;
	sequence_comm(CM_WORLD, 12 * scale);
	sequence_comm(CM_HALF, 12 * scale);
	sequence_comm(CM_TRI, 8 * scale);
	sequence_comm(CM_REV, 8 * scale);
	/* Communicators created and freed in a loop reuse each other's shared-memory areas. */
	struct ctx cx = {C_SEQUENCE, "dup-loop", "MPI_INT", "MPI_SUM", 1, -1, NULL};
	if (begin(&cx, 4)) {
		const struct ctype *t = type_named("MPI_INT");
		for (int i = 0; i < 5 * scale; i++) {
			MPI_Comm c;
			MPI_Comm_split(MPI_COMM_WORLD, 0, i % 2 ? g.rank : -g.rank, &c);
			int v = g.rank + i, s = 0, want = g.size * (g.size - 1) / 2 + g.size * i;
			MPI_Allreduce(&v, &s, 1, MPI_INT, MPI_SUM, c);
			check_same(&cx, "allreduce on a fresh communicator", t, &s, &want, 1);
			MPI_Barrier(c);
			MPI_Comm_free(&c);
		}
	}
}

/* ---------------------------------------------------------------------------------------------
 * Communicators the shim treats specially: an intercommunicator between the halves (passed to
 * the library), the intracommunicator merged from it, and one made by MPI_Comm_idup (which the
 * shim does not know). Each runs a few collectives against their nonblocking twins.
 * ------------------------------------------------------------------------------------------- */

/* Allreduce (MPI_INT sum of 8) and Bcast (8 ints from `root`, or MPI_ROOT/MPI_PROC_NULL on an
 * intercommunicator) on comm, each against the library's nonblocking result. */
static void special_case(MPI_Comm comm, const char *name, int root)
{
	const struct ctype *t = type_named("MPI_INT");
	int in[8], a[8], b[8];
	int me, inter;
	MPI_Comm_rank(comm, &me);
	MPI_Comm_test_inter(comm, &inter);
	struct ctx cx = {C_ALLREDUCE, name, t->name, "MPI_SUM", 8, -1, NULL};
	MPI_Request q;
	if (begin(&cx, 32)) {
		for (int i = 0; i < 8; i++)
			in[i] = g.rank * 10 + i;
		MPI_Iallreduce(in, b, 8, MPI_INT, MPI_SUM, comm, &q);
		wait_req(&q);
		MPI_Allreduce(in, a, 8, MPI_INT, MPI_SUM, comm);
		check_same(&cx, "vs reference (MPI_Iallreduce)", t, a, b, 8);
	}
	cx = (struct ctx){C_BCAST, name, t->name, NULL, 8, root, NULL};
	if (begin(&cx, 32)) {
		/* On an intercommunicator the root is rank `root` of the lower half, which passes
		 * MPI_ROOT (its group's others MPI_PROC_NULL); the upper half names it. */
		bool lower = g.rank < g.size / 2;
		int r = !inter ? root : lower ? (me == root ? MPI_ROOT : MPI_PROC_NULL) : root;
		bool sender = inter ? r == MPI_ROOT : me == root;
		for (int i = 0; i < 8; i++)
			a[i] = b[i] = sender ? 1000 + i : -1;
		MPI_Ibcast(b, 8, MPI_INT, r, comm, &q);
		wait_req(&q);
		MPI_Bcast(a, 8, MPI_INT, r, comm);
		check_same(&cx, "vs reference (MPI_Ibcast)", t, a, b, 8);
	}
	cx = (struct ctx){C_BARRIER, name, "-", NULL, 0, -1, NULL};
	if (begin(&cx, 0)) {
		MPI_Barrier(comm);
		check(&cx, true, "%s", "");
	}
}

static void test_special_comms(void)
{
	if (g.size >= 2) {
		MPI_Comm inter, merged;
		int lower = g.rank < g.size / 2;
		MPI_Intercomm_create(comms[CM_HALF].comm, 0, MPI_COMM_WORLD, lower ? g.size / 2 : 0, 77, &inter);
		special_case(inter, "intercomm", 0);
		MPI_Intercomm_merge(inter, !lower, &merged);
		special_case(merged, "merged", g.size - 1);
		MPI_Comm_free(&merged);
		MPI_Comm_free(&inter);
	}
	MPI_Comm idup;
	MPI_Request q;
	MPI_Comm_idup(MPI_COMM_WORLD, &idup, &q);
	wait_req(&q);
	special_case(idup, "idup", g.size / 2);
	MPI_Comm_free(&idup);
}

/* ---------------------------------------------------------------------------------------------
 * Report
 * ------------------------------------------------------------------------------------------- */

/* Gathers counts and failure lines to rank 0 (through the library's nonblocking collectives,
 * not the ones under test), prints the report and returns the exit status. */
static int report(void)
{
	long mine[2 * NCOLL], sum[2 * NCOLL];
	for (int c = 0; c < NCOLL; c++) {
		mine[c] = g.checks[c];
		mine[NCOLL + c] = g.failures[c];
	}
	MPI_Request q;
	MPI_Iallreduce(mine, sum, 2 * NCOLL, MPI_LONG, MPI_SUM, MPI_COMM_WORLD, &q);
	wait_req(&q);
	int len = (int)g.len, *lens = xmalloc(sizeof(int) * (size_t)g.size), *displs = xmalloc(sizeof(int) * (size_t)g.size);
	MPI_Igather(&len, 1, MPI_INT, lens, 1, MPI_INT, 0, MPI_COMM_WORLD, &q);
	wait_req(&q);
	long total = 0;
	for (int r = 0; r < g.size && g.rank == 0; r++) {
		displs[r] = (int)total;
		total += lens[r];
	}
	char *text = xmalloc((size_t)total + 1);
	MPI_Igatherv(g.log ? g.log : "", len, MPI_CHAR, text, lens, displs, MPI_CHAR, 0, MPI_COMM_WORLD, &q);
	wait_req(&q);
	long failures = 0;
	for (int c = 0; c < NCOLL; c++)
		failures += sum[NCOLL + c];
	if (g.rank == 0) {
		for (int c = 0; c < NCOLL; c++)
			if (g.want_coll[c])
				printf("coll_%s: %d ranks, %ld checks, %ld failures\n", coll_name[c], g.size, sum[c], sum[NCOLL + c]);
		text[total] = '\0';
		fputs(text, stdout);
		if (failures > 0)
			printf("(at most %d failure lines per rank are shown)\n", MAX_LINES);
		fflush(stdout);
	}
	free(text);
	free(lens);
	free(displs);
	return failures ? 1 : 0;
}

/* Detects the library bugs the matrix must step around (see struct g). */
static void detect_library(void)
{
	char v[MPI_MAX_LIBRARY_VERSION_STRING];
	int len, major = 0, minor = 0, patch = 0;
	MPI_Get_library_version(v, &len);
	const char *m = strstr(v, "MPICH Version:");
	if (m && sscanf(m + strlen("MPICH Version:"), " %d.%d.%d", &major, &minor, &patch) >= 2)
		g.mpich_inplace_bugs = major < 4 || (major == 4 && (minor < 1 || (minor == 1 && patch < 2)));
}

static void usage(void)
{
	if (g.rank == 0) {
		fprintf(stderr, "usage: coll_check [-v] [--timing] [--quick|--full] [--comm=C] [--type=T] [--op=O] "
		                "[--bytes=B] [--root=R] [collective...]\ncollectives:");
		for (int c = 0; c < NCOLL; c++)
			fprintf(stderr, " %s", coll_name[c]);
		fprintf(stderr, "\n");
	}
	MPI_Finalize();
	exit(2);
}

static void parse_args(int argc, char **argv)
{
	g.f_bytes = -1;
	g.f_root = -1;
	g.level = 1;
	bool any = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-v") == 0)
			g.verbose = true;
		else if (strcmp(a, "--timing") == 0)
			g.timing = true;
		else if (strcmp(a, "--full") == 0)
			g.level = 2;
		else if (strcmp(a, "--quick") == 0)
			g.level = 0;
		else if (strncmp(a, "--comm=", 7) == 0)
			g.f_comm = a + 7;
		else if (strncmp(a, "--type=", 7) == 0)
			g.f_type = a + 7;
		else if (strncmp(a, "--op=", 5) == 0)
			g.f_op = a + 5;
		else if (strncmp(a, "--bytes=", 8) == 0)
			g.f_bytes = atol(a + 8);
		else if (strncmp(a, "--root=", 7) == 0)
			g.f_root = atoi(a + 7);
		else {
			int c = 0;
			while (c < NCOLL && strcmp(coll_name[c], a) != 0)
				c++;
			if (c == NCOLL)
				usage();
			g.want_coll[c] = any = true;
		}
	}
	for (int c = 0; c < NCOLL && !any; c++)
		g.want_coll[c] = true;
}

int main(int argc, char **argv)
{
	test_init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
	MPI_Comm_size(MPI_COMM_WORLD, &g.size);
	parse_args(argc, argv);
	detect_library();
	types_init();
	ops_init();
	comms_init();
	dtypes_init();

	static const struct {
		const char *name;
		void (*run)(void);
	} parts[] = {
		{"barrier", test_barrier},   {"reductions", test_reductions}, {"user ops", test_user_ops},
		{"movement", test_movement}, {"derived", test_derived},       {"v-variants", test_vvariants},
		{"sequence", test_sequence}, {"special communicators", test_special_comms},
	};
	for (int i = 0; i < LEN(parts); i++) {
		double t0 = MPI_Wtime();
		parts[i].run();
		if (g.timing && g.rank == 0)
			fprintf(stderr, "coll_check: %s took %.2f s\n", parts[i].name, MPI_Wtime() - t0);
	}

	int rc = report();
	for (int i = 1; i < 4; i++)
		MPI_Type_free(&dtypes[i].dt);
	comms_free();
	MPI_Finalize();
	return rc;
}
