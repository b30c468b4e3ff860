/* A derived datatype's typemap as a tree, so that any byte range of its packed form can be
 * copied out of (or into) a buffer of that type: the window of a long derived-type message
 * (datatype.c) packs and unpacks runs that start and end inside an element. MPI_Pack and
 * MPI_Unpack only take whole elements, and the typical halo type is one element (a vector of
 * count 1) as long as the message.
 *
 * The tree is read from MPI_Type_get_envelope / MPI_Type_get_contents. A node is one instance
 * of a type; its packed form is its children's in typemap order, which is the order MPI_Pack
 * uses on a homogeneous machine (tests/mpi/p2p_dtype.c's random types check it against the
 * library's MPI_Pack):
 *   TM_LEAF   a predefined type without holes: size bytes at offset 0;
 *   TM_VEC    count blocks at disp + i*stride, each blocklen instances of child placed
 *             child->extent apart (contiguous, vector, hvector, subarray, resized);
 *   TM_LIST   n entries, each a block of blocklen instances of its child at its disp
 *             (indexed, hindexed, *_block, struct).
 * Other combiners (darray; types made by large-count constructors; predefined types with
 * holes) are not represented: ivs_tm_build returns NULL and datatype.c packs through the
 * library. */
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

enum { TM_LEAF, TM_VEC, TM_LIST };
enum { TM_MAX_DEPTH = 64 };

struct tm_node;

struct tm_ent {
	ptrdiff_t disp;
	uint64_t blocklen;
	uint64_t at; /* packed offset of the entry in one instance of its node */
	struct tm_node *child;
};

struct tm_node {
	int kind;
	uint64_t size;    /* packed bytes of one instance */
	ptrdiff_t extent; /* distance between instances placed one after the other */
	int run;          /* an instance is one run of size bytes at offset first */
	ptrdiff_t first;
	/* TM_VEC */
	uint64_t count, blocklen;
	ptrdiff_t disp, stride;
	struct tm_node *child;
	/* TM_LIST: n entries; with shared (indexed kinds) all of child, which it owns also when
	 * n is 0, else each of its own */
	uint64_t n;
	struct tm_ent *ent;
	int shared;
};

struct ivs_tm {
	int refs;
	struct tm_node *root;
};

static void node_free(struct tm_node *t)
{
	if (!t)
		return;
	if (t->kind == TM_VEC || (t->kind == TM_LIST && t->shared))
		node_free(t->child);
	if (t->kind == TM_LIST) {
		for (uint64_t i = 0; i < t->n && !t->shared; i++)
			node_free(t->ent[i].child);
		free(t->ent);
	}
	free(t);
}

/* Whether instances of c placed c->extent apart, blocklen of them, are one run. */
static int block_is_run(const struct tm_node *c, uint64_t blocklen)
{
	return c->run && (blocklen <= 1 || (ptrdiff_t)c->size == c->extent);
}

/* t is one run if its blocks are (blocklen instances of c, the first at disp) and, when it has
 * more than one, each follows the last at once (abut). */
static void mark_run(struct tm_node *t, const struct tm_node *c, uint64_t blocklen, ptrdiff_t disp, int abut)
{
	if (block_is_run(c, blocklen) && abut) {
		t->run = 1;
		t->first = disp + c->first;
	}
}

static struct tm_node *vec(uint64_t count, uint64_t blocklen, ptrdiff_t disp, ptrdiff_t stride, struct tm_node *c)
{
	struct tm_node *t = calloc(1, sizeof *t);
	if (!t) {
		node_free(c);
		return NULL;
	}
	t->kind = TM_VEC;
	t->count = count;
	t->blocklen = blocklen;
	t->disp = disp;
	t->stride = stride;
	t->child = c;
	t->size = count * blocklen * c->size;
	mark_run(t, c, blocklen, disp, count <= 1 || stride == (ptrdiff_t)(blocklen * c->size));
	return t;
}

/* Whether dt is predefined, which MPI_Type_free must not be given (get_contents returns
 * predefined types as they are): the named ones and those of MPI_Type_create_f90_*. */
static int predefined(MPI_Datatype dt)
{
	int ni, na, nd, comb, large;
	return ivs_dt_envelope(dt, &ni, &na, &nd, &comb, &large) == MPI_SUCCESS &&
	       (comb == MPI_COMBINER_NAMED || comb == MPI_COMBINER_F90_REAL || comb == MPI_COMBINER_F90_COMPLEX ||
	        comb == MPI_COMBINER_F90_INTEGER);
}

static struct tm_node *build(MPI_Datatype dt, int depth);

/* The list node of n blocks: blocklen[i] instances at disp[i] of child[i] (or of child[0] for
 * all, shared). Takes the children. */
static struct tm_node *list(uint64_t n, const int *blocklen, int same_len, const ptrdiff_t *disp,
                            struct tm_node **child, int shared)
{
	struct tm_node *t = calloc(1, sizeof *t);
	struct tm_ent *e = calloc(n ? n : 1, sizeof *e);
	if (!t || !e) {
		free(t);
		free(e);
		return NULL;
	}
	t->kind = TM_LIST;
	t->n = n;
	t->ent = e;
	t->shared = shared;
	t->child = shared ? child[0] : NULL;
	uint64_t at = 0;
	for (uint64_t i = 0; i < n; i++) {
		e[i].disp = disp[i];
		e[i].blocklen = (uint64_t)(same_len ? blocklen[0] : blocklen[i]);
		e[i].child = shared ? child[0] : child[i];
		e[i].at = at;
		at += e[i].blocklen * e[i].child->size;
	}
	t->size = at;
	if (n == 1)
		mark_run(t, e[0].child, e[0].blocklen, e[0].disp, 1);
	return t;
}

/* Subarray: a vector per dimension, the fastest-varying innermost; the starts are a
 * displacement of the outermost. */
static struct tm_node *subarray(const int *ints, struct tm_node *c)
{
	int nd = ints[0];
	const int *sizes = ints + 1, *sub = sizes + nd, *starts = sub + nd;
	int order = ints[1 + 3 * nd];
	ptrdiff_t stride = c->extent, disp = 0;
	struct tm_node *t = c;
	for (int k = 0; k < nd && t; k++) {
		int d = order == MPI_ORDER_C ? nd - 1 - k : k;
		disp += (ptrdiff_t)starts[d] * stride;
		t = k == 0 ? vec(1, (uint64_t)sub[d], 0, 0, t) : vec((uint64_t)sub[d], 1, 0, stride, t);
		stride *= sizes[d];
	}
	return t && nd >= 1 ? vec(1, 1, disp, 0, t) : t;
}

/* The node of a constructed type, from the arguments it was made with. */
static struct tm_node *from_contents(MPI_Datatype dt, int comb, int ni, int na, int nd, int depth)
{
	int *ints = malloc(sizeof *ints * (size_t)(ni ? ni : 1));
	MPI_Aint *aints = malloc(sizeof *aints * (size_t)(na ? na : 1));
	MPI_Datatype *types = malloc(sizeof *types * (size_t)(nd ? nd : 1));
	struct tm_node **kids = calloc((size_t)(nd ? nd : 1), sizeof *kids);
	ptrdiff_t *disp = NULL;
	struct tm_node *t = NULL;
	int got = 0;
	if (!ints || !aints || !types || !kids || PMPI_Type_get_contents(dt, ni, na, nd, ints, aints, types) != MPI_SUCCESS)
		goto out;
	got = 1;
	if (nd < 1) { /* a struct of no blocks */
		t = comb == MPI_COMBINER_STRUCT ? list(0, ints, 1, NULL, kids, 0) : NULL;
		goto out;
	}
	for (int i = 0; i < nd; i++)
		if (!(kids[i] = build(types[i], depth + 1)))
			goto out;
	struct tm_node *c = kids[0];
	switch (comb) {
	case MPI_COMBINER_INDEXED:
	case MPI_COMBINER_HINDEXED:
	case MPI_COMBINER_INDEXED_BLOCK:
	case MPI_COMBINER_HINDEXED_BLOCK:
	case MPI_COMBINER_STRUCT: {
		int n = ints[0];
		int block = comb == MPI_COMBINER_INDEXED_BLOCK || comb == MPI_COMBINER_HINDEXED_BLOCK;
		int bytes = comb != MPI_COMBINER_INDEXED && comb != MPI_COMBINER_INDEXED_BLOCK;
		const int *idisp = ints + (block ? 2 : 1 + n);
		if (!(disp = malloc(sizeof *disp * (size_t)(n ? n : 1))))
			goto out;
		for (int i = 0; i < n; i++)
			disp[i] = bytes ? aints[i] : (ptrdiff_t)idisp[i] * c->extent;
		if ((t = list((uint64_t)n, ints + 1, block, disp, kids, comb != MPI_COMBINER_STRUCT)))
			memset(kids, 0, sizeof *kids * (size_t)nd); /* the list has them */
		goto out;
	}
	case MPI_COMBINER_DUP:
		t = c;
		break;
	case MPI_COMBINER_CONTIGUOUS:
		t = vec(1, (uint64_t)ints[0], 0, 0, c);
		break;
	case MPI_COMBINER_VECTOR:
		t = vec((uint64_t)ints[0], (uint64_t)ints[1], 0, (ptrdiff_t)ints[2] * c->extent, c);
		break;
	case MPI_COMBINER_HVECTOR:
		t = vec((uint64_t)ints[0], (uint64_t)ints[1], 0, aints[0], c);
		break;
	case MPI_COMBINER_SUBARRAY:
		t = subarray(ints, c);
		break;
	default: /* MPI_COMBINER_RESIZED: the extent is all that changes */
		t = vec(1, 1, 0, 0, c);
		break;
	}
	kids[0] = NULL; /* t has it, or vec freed it */
out:
	for (int i = 0; kids && i < nd; i++)
		node_free(kids[i]);
	for (int i = 0; got && i < nd; i++)
		if (!predefined(types[i]))
			PMPI_Type_free(&types[i]);
	free(ints);
	free(aints);
	free(types);
	free(kids);
	free(disp);
	return t;
}

static struct tm_node *build(MPI_Datatype dt, int depth)
{
	int ni, na, nd, comb, large;
	MPI_Count size;
	MPI_Aint lb, extent, tlb, textent;
	if (depth > TM_MAX_DEPTH || ivs_dt_envelope(dt, &ni, &na, &nd, &comb, &large) != MPI_SUCCESS || large ||
	    PMPI_Type_size_x(dt, &size) != MPI_SUCCESS || size < 0 ||
	    PMPI_Type_get_extent(dt, &lb, &extent) != MPI_SUCCESS ||
	    PMPI_Type_get_true_extent(dt, &tlb, &textent) != MPI_SUCCESS)
		return NULL;
	struct tm_node *t;
	switch (comb) {
	case MPI_COMBINER_NAMED:
	case MPI_COMBINER_F90_REAL:
	case MPI_COMBINER_F90_COMPLEX:
	case MPI_COMBINER_F90_INTEGER:
		if (tlb != 0 || textent != (MPI_Aint)size)
			return NULL; /* a pair type with a hole: its bytes are not one run */
		if (!(t = calloc(1, sizeof *t)))
			return NULL;
		t->kind = TM_LEAF;
		t->run = 1;
		break;
	case MPI_COMBINER_DUP:
	case MPI_COMBINER_CONTIGUOUS:
	case MPI_COMBINER_VECTOR:
	case MPI_COMBINER_HVECTOR:
	case MPI_COMBINER_INDEXED:
	case MPI_COMBINER_HINDEXED:
	case MPI_COMBINER_INDEXED_BLOCK:
	case MPI_COMBINER_HINDEXED_BLOCK:
	case MPI_COMBINER_STRUCT:
	case MPI_COMBINER_SUBARRAY:
	case MPI_COMBINER_RESIZED:
		if (!(t = from_contents(dt, comb, ni, na, nd, depth)))
			return NULL;
		break;
	default:
		return NULL;
	}
	if (t->kind == TM_LEAF)
		t->size = (uint64_t)size;
	if (t->size != (uint64_t)size) { /* not the library's reading of the type */
		node_free(t);
		return NULL;
	}
	t->extent = extent;
	return t;
}

struct ivs_tm *ivs_tm_build(MPI_Datatype dt)
{
	struct tm_node *root = build(dt, 0);
	struct ivs_tm *t = root ? malloc(sizeof *t) : NULL;
	if (!t) {
		node_free(root);
		return NULL;
	}
	t->refs = 1;
	t->root = root;
	return t;
}

struct ivs_tm *ivs_tm_ref(struct ivs_tm *t)
{
	if (t)
		t->refs++;
	return t;
}

void ivs_tm_unref(struct ivs_tm *t)
{
	if (t && !--t->refs) {
		node_free(t->root);
		free(t);
	}
}

/* ---- copying a byte range of the packed form ---- */

struct cursor {
	uint8_t *pk;   /* the packed side */
	uint64_t skip; /* packed bytes still to pass over before copying */
	uint64_t left; /* packed bytes still to copy */
	int unpack;
};

static void run(struct cursor *c, uint8_t *mem, uint64_t len)
{
	if (c->skip >= len) {
		c->skip -= len;
		return;
	}
	mem += c->skip;
	len -= c->skip;
	c->skip = 0;
	if (len > c->left)
		len = c->left;
	if (c->unpack)
		ivs_copy(mem, c->pk, len);
	else
		ivs_copy(c->pk, mem, len);
	c->pk += len;
	c->left -= len;
}

static void walk(const struct tm_node *t, uint8_t *base, struct cursor *c);

/* Copy whole runs i, i+1, ... of len bytes at base + i*stride while they fit what is left:
 * returns the next run's index. Short runs get a copy of constant size, which the compiler
 * inlines; a call per run would cost as much as the copy. */
static uint64_t runs(uint8_t *base, ptrdiff_t stride, uint64_t i, uint64_t count, uint64_t len, struct cursor *c)
{
	uint64_t k = c->left / len;
	if (k > count - i)
		k = count - i;
	uint8_t *m = base + (ptrdiff_t)i * stride, *pk = c->pk;
#define RUNS(copy, n)                                        \
	for (uint64_t j = 0; j < k; j++, m += stride, pk += (n)) \
		if (c->unpack)                                   \
			copy(m, pk, (n));                        \
		else                                             \
			copy(pk, m, (n));
	switch (len) {
	case 4:
		RUNS(memcpy, 4);
		break;
	case 8:
		RUNS(memcpy, 8);
		break;
	case 16:
		RUNS(memcpy, 16);
		break;
	default:
		RUNS(ivs_copy, len);
	}
#undef RUNS
	c->pk = pk;
	c->left -= k * len;
	return i + k;
}

static void block(const struct tm_node *ch, uint8_t *at, uint64_t blocklen, struct cursor *c)
{
	if (!ch->size)
		return;
	if (block_is_run(ch, blocklen)) {
		run(c, at + ch->first, blocklen * ch->size);
		return;
	}
	uint64_t j = c->skip / ch->size;
	if (j > blocklen)
		j = blocklen;
	c->skip -= j * ch->size;
	for (; j < blocklen && c->left; j++)
		walk(ch, at + (ptrdiff_t)j * ch->extent, c);
}

static void walk(const struct tm_node *t, uint8_t *base, struct cursor *c)
{
	if (c->skip >= t->size) {
		c->skip -= t->size;
		return;
	}
	if (t->run) {
		run(c, base + t->first, t->size);
		return;
	}
	if (t->kind == TM_VEC) {
		uint64_t bsize = t->blocklen * t->child->size, i = c->skip / bsize;
		c->skip -= i * bsize;
		if (c->skip) /* the rest of a block begun before */
			block(t->child, base + t->disp + (ptrdiff_t)i++ * t->stride, t->blocklen, c);
		if (block_is_run(t->child, t->blocklen)) /* whole blocks: a vector of short runs is the
		                                            common halo type */
			i = runs(base + t->disp + t->child->first, t->stride, i, t->count, bsize, c);
		for (; i < t->count && c->left; i++)
			block(t->child, base + t->disp + (ptrdiff_t)i * t->stride, t->blocklen, c);
		return;
	}
	/* TM_LIST: the last entry that starts at or before skip */
	uint64_t lo = 0, hi = t->n;
	while (hi - lo > 1) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (t->ent[mid].at <= c->skip)
			lo = mid;
		else
			hi = mid;
	}
	c->skip -= t->ent[lo].at;
	for (uint64_t k = lo; k < t->n && c->left; k++)
		block(t->ent[k].child, base + t->ent[k].disp, t->ent[k].blocklen, c);
}

/* Copy the packed bytes [off, off + n) of count elements of the type at buf to pk (pack) or
 * from pk into buf (unpack). The caller keeps off + n within count elements. */
void ivs_tm_copy(const struct ivs_tm *t, void *buf, int count, uint64_t off, uint8_t *pk, uint64_t n, int unpack)
{
	const struct tm_node *r = t->root;
	if (!r->size)
		return;
	struct cursor c = {.pk = pk, .left = n, .unpack = unpack};
	uint64_t i = off / r->size;
	c.skip = off - i * r->size;
	for (; i < (uint64_t)count && c.left; i++)
		walk(r, (uint8_t *)buf + (ptrdiff_t)i * r->extent, &c);
}
