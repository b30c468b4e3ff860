/* Collectives: an intra-host phase in the communicator's shared-memory area (coll.h), an
 * inter-host phase among one leader per host through PMPI on a leaders' communicator, and an
 * intra-host release. A communicator whose members all share one host never touches PMPI for
 * data. Data larger than the area moves in pieces. Whatever the fast path does not cover
 * (user ops, non-predefined reduction types, v-variants, byte counts beyond INT_MAX) goes to
 * the MPI library; every such decision depends only on arguments MPI requires to match on all ranks,
 * so all members take the same path.
 *
 * Reduction order: contributions are combined in comm rank order within a host (every rank of
 * a single-host communicator computes the same bits), then across hosts by the library's own
 * MPI_Allreduce/MPI_Reduce over the leaders. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"
#include "coll.h"

static uint64_t *left_word(uint8_t *area, int nl, int i)
{
	return &((struct ivs_cleft *)(area + ivs_area_left_off((uint64_t)nl, (uint64_t)i)))->left;
}

static struct ivs_cline *cline(struct ivs_coll *k, int i, uint64_t s)
{
	return (struct ivs_cline *)(k->area + ivs_area_line_off((uint64_t)i, s));
}

static struct ivs_cline *rline(struct ivs_coll *k, uint64_t s)
{
	return cline(k, k->nl, s);
}

static uint8_t *slot(struct ivs_coll *k, int i, uint64_t s)
{
	return k->area + ivs_area_slot_off((uint64_t)k->nl, (uint64_t)i, s);
}

static uint8_t *resbuf(struct ivs_coll *k, uint64_t s)
{
	return k->area + ivs_area_res_off((uint64_t)k->nl, s);
}

/* Where member i's data of n bytes for op s lives: its line, or its slot if larger. */
static uint8_t *data_of(struct ivs_coll *k, int i, uint64_t s, uint64_t n)
{
	return n <= IVS_INLINE ? cline(k, i, s)->data : slot(k, i, s);
}

static uint8_t *result_of(struct ivs_coll *k, uint64_t s, uint64_t n)
{
	return n <= IVS_INLINE ? rline(k, s)->data : resbuf(k, s);
}

static void publish(struct ivs_cline *l, uint64_t s)
{
	__atomic_store_n(&l->seq, s, __ATOMIC_RELEASE);
}

/* Wait until line l carries op s, keeping the rings drained meanwhile (a co-located peer
 * blocked sending to us must get to this collective too). */
static void await(struct ivs_cline *l, uint64_t s)
{
	unsigned spins = 0;
	uint64_t v;
	while ((v = __atomic_load_n(&l->seq, __ATOMIC_ACQUIRE)) != s) {
		if (v > s && v - s < (1ull << 62))
			ivs_fatal("collective area: a peer claims op %lu while this rank is at %lu", (unsigned long)v, (unsigned long)s);
		if (!ivs_progress())
			ivs_wait_pause(&spins);
	}
}

/* Wait for member i's line for op s, and remember that i got that far. */
static void await_member(struct ivs_coll *k, int i, uint64_t s)
{
	await(cline(k, i, s), s);
	k->seen[i] = s;
}

static void await_all(struct ivs_coll *k, uint64_t s)
{
	for (int i = 0; i < k->nl; i++)
		if (i != k->li)
			await_member(k, i, s);
}

/* Start the next op, which publishes or reads at most n bytes per buffer. Its buffers were
 * last used by op s-DEPTH (lines) or, when n does not fit a line, op s-2 (slots and results);
 * before this rank writes anything (a sequence number or data), every co-located member must
 * have finished that op, which it shows by publishing the next one. Without this wait a
 * member that returns early (a non-root of Reduce) could run ahead and overwrite a line a slow
 * member still waits on. A member found behind is waited for until it has published s-1, the
 * most this rank can ask for, so that the next DEPTH-1 inline ops need not look again. */
static uint64_t op_begin(struct ivs_coll *k, uint64_t n)
{
	uint64_t s = ++k->seq;
	uint64_t reuse = n <= IVS_INLINE ? IVS_DEPTH : 2;
	if (s <= reuse)
		return s;
	for (int i = 0; i < k->nl; i++) {
		if (i == k->li || k->seen[i] >= s - reuse + 1)
			continue; /* known to be far enough already: no need to touch its line */
		struct ivs_cline *l = cline(k, i, s - 1);
		unsigned spins = 0;
		uint64_t v;
		while ((v = __atomic_load_n(&l->seq, __ATOMIC_ACQUIRE)) < s - 1)
			if (!ivs_progress())
				ivs_wait_pause(&spins);
		k->seen[i] = v;
	}
	return s;
}

static int net_complete(int rc, MPI_Request *req)
{
	return rc == MPI_SUCCESS ? ivs_net_wait(req, MPI_STATUS_IGNORE) : rc;
}

static int cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/* ---- per-communicator set-up (collective, at the first collective on the communicator) ---- */

struct coll_info {
	int64_t host_key; /* world rank of the lowest co-located world rank: names the host */
	int64_t ok;       /* this rank's host has its area (or needs none) */
	int64_t area;     /* leader: region offset of the area */
};

static void coll_free(struct ivs_coll *k)
{
	free(k->lranks);
	free(k->host_of);
	free(k->host_first);
	free(k->pos);
	free(k->seen);
	free(k);
}

static void reap_areas(void);

static struct ivs_coll *coll_setup(struct ivs_comm *c)
{
	struct ivs_coll *k = calloc(1, sizeof *k);
	struct coll_info *all = malloc(sizeof *all * (size_t)c->size);
	if (!k || !all)
		ivs_fatal("out of memory");
	k->lcomm = MPI_COMM_NULL;
	k->lranks = malloc(sizeof(int) * (size_t)(ivs.nlocal + 1));
	k->host_of = malloc(sizeof(int) * (size_t)c->size);
	k->host_first = calloc((size_t)c->size + 1, sizeof(int));
	k->pos = malloc(sizeof(int) * (size_t)c->size);
	k->seen = calloc((size_t)ivs.nlocal + 1, sizeof(uint64_t));
	if (!k->lranks || !k->host_of || !k->host_first || !k->pos || !k->seen)
		ivs_fatal("out of memory");
	for (int i = 0; i < ivs.nlocal; i++)
		if (c->by_local[i] >= 0)
			k->lranks[k->nl++] = c->by_local[i];
	if (k->nl == 0)
		k->lranks[k->nl++] = c->rank;
	qsort(k->lranks, (size_t)k->nl, sizeof(int), cmp_int);
	for (int i = 0; i < k->nl; i++)
		if (k->lranks[i] == c->rank)
			k->li = i;
	struct coll_info me = {.host_key = c->world[k->lranks[0]], .ok = 1, .area = 0};
	char err[256] = "";
	if (k->nl > 1 && k->li == 0) {
		reap_areas();
		uint64_t off = ivs.ctl_alloc(ivs_area_size((uint64_t)k->nl), err, sizeof err);
		me.ok = off != 0;
		me.area = (int64_t)off;
		if (!off && ivs.verbose)
			fprintf(stderr, "ivshim: rank %d: no collective area (%s): collectives use the library\n", ivs.world_rank, err);
	}
	MPI_Request req;
	int rc = net_complete(PMPI_Iallgather(&me, sizeof me, MPI_BYTE, all, sizeof me, MPI_BYTE, c->handle, &req), &req);
	if (rc != MPI_SUCCESS)
		ivs_fatal("collective set-up exchange failed (%d)", rc);
	k->usable = 1;
	int nh = 0;
	int64_t *keys = malloc(sizeof(int64_t) * (size_t)c->size);
	int *count = calloc((size_t)c->size, sizeof(int));
	if (!keys || !count)
		ivs_fatal("out of memory");
	for (int r = 0; r < c->size; r++) {
		k->usable &= all[r].ok != 0;
		int h = 0;
		while (h < nh && keys[h] != all[r].host_key)
			h++;
		if (h == nh)
			keys[nh++] = all[r].host_key;
		k->host_of[r] = h;
		count[h]++;
	}
	k->nhosts = nh;
	k->myhost = k->host_of[c->rank];
	for (int h = 0; h < nh; h++) {
		k->host_first[h + 1] = k->host_first[h] + count[h];
		if (count[h] > k->maxnl)
			k->maxnl = count[h];
	}
	memset(count, 0, sizeof(int) * (size_t)c->size);
	for (int r = 0; r < c->size; r++)
		k->pos[r] = k->host_first[k->host_of[r]] + count[k->host_of[r]]++;
	if (count[k->myhost] != k->nl)
		ivs_fatal("collective set-up: %d co-located members here, %d by the exchange", k->nl, count[k->myhost]);
	free(keys);
	free(count);
	uint64_t off = (uint64_t)all[k->lranks[0]].area;
	free(all);
	if (k->usable) {
		if (k->nl == 1) {
			k->area = calloc(1, ivs_area_size(1));
			if (!k->area)
				ivs_fatal("out of memory");
		} else {
			if (off < IVSHIM_HEADER_SIZE || off % IVS_ALIGN || off > ivs.size || ivs_area_size((uint64_t)k->nl) > ivs.size - off)
				ivs_fatal("collective area offset %#lx from the leader lies outside the region", (unsigned long)off);
			k->area = ivs.base + off;
			k->area_off = off;
		}
		if (nh > 1 && PMPI_Comm_split(c->handle, k->li == 0 ? 0 : MPI_UNDEFINED, k->myhost, &k->lcomm) != MPI_SUCCESS)
			ivs_fatal("cannot create the leaders' communicator");
	} else if (me.area) {
		ivs.ctl_free((uint64_t)me.area, err, sizeof err);
	}
	return k;
}

static struct ivs_coll *coll_of(struct ivs_comm *c)
{
	if (IVS_UNLIKELY(!c->coll))
		c->coll = coll_setup(c);
	return c->coll->usable ? c->coll : NULL;
}

/* Areas of freed communicators that this rank led on its host, waiting until every co-located
 * member has said it left (its left word) before they go back to the region: MPI_Comm_free
 * must not wait for the others, and nobody may still read an area that is reused. */
static struct zombie {
	uint8_t *area;
	uint64_t off;
	int nl;
} *zombies;
static int nzombies, zombies_cap;

static void reap_areas(void)
{
	for (int z = 0; z < nzombies;) {
		struct zombie *e = &zombies[z];
		int i = 0;
		while (i < e->nl && __atomic_load_n(left_word(e->area, e->nl, i), __ATOMIC_ACQUIRE))
			i++;
		if (i < e->nl) {
			z++;
			continue;
		}
		char err[256];
		if (ivs.ctl_free(e->off, err, sizeof err) != 0 && ivs.verbose)
			fprintf(stderr, "ivshim: rank %d: free collective area: %s\n", ivs.world_rank, err);
		*e = zombies[--nzombies];
	}
}

/* MPI_Comm_free of c: this rank leaves the area at once; its host's leader returns the area to
 * the region once every member has left (reap_areas, at this and later set-ups and frees). */
void ivs_coll_forget(struct ivs_comm *c)
{
	struct ivs_coll *k = c->coll;
	if (!k)
		return;
	if (k->usable && k->nl == 1) {
		free(k->area);
	} else if (k->usable) {
		__atomic_store_n(left_word(k->area, k->nl, k->li), 1, __ATOMIC_RELEASE);
		if (k->li == 0) {
			if (nzombies == zombies_cap) {
				zombies_cap = zombies_cap ? 2 * zombies_cap : 8;
				zombies = realloc(zombies, sizeof *zombies * (size_t)zombies_cap);
				if (!zombies)
					ivs_fatal("out of memory");
			}
			zombies[nzombies++] = (struct zombie){.area = k->area, .off = k->area_off, .nl = k->nl};
		}
		reap_areas();
	}
	if (k->usable && k->lcomm != MPI_COMM_NULL)
		PMPI_Comm_free(&k->lcomm);
	coll_free(k);
	c->coll = NULL;
}

/* The record of comm if its collectives take the shared-memory path. */
static struct ivs_comm *coll_comm(MPI_Comm comm, struct ivs_coll **k)
{
	if (IVS_LIKELY(!ivs.job_active))
		return NULL;
	struct ivs_comm *c = ivs_comm_get(comm);
	if (!c || c->coll_lib || !(*k = coll_of(c)))
		return NULL;
	return c;
}

/* ---- barrier ---- */

static int barrier(struct ivs_coll *k)
{
	uint64_t s = op_begin(k, 0);
	publish(cline(k, k->li, s), s);
	if (k->nhosts == 1) {
		await_all(k, s);
		return MPI_SUCCESS;
	}
	if (k->li == 0) {
		await_all(k, s);
		MPI_Request req;
		int rc = net_complete(PMPI_Ibarrier(k->lcomm, &req), &req);
		publish(rline(k, s), s);
		return rc;
	}
	await(rline(k, s), s);
	return MPI_SUCCESS;
}

/* ---- moving bytes through the area, in pieces that fit it ----
 * Every co-located member calls these with the same sizes, so all go through the same ops. */

#define EVERYONE (-1)

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static void *must_alloc(uint64_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		ivs_fatal("out of memory (%lu bytes for a collective)", (unsigned long)n);
	return p;
}

/* n bytes of member `from` at src reach member `to` (or every member) at dst. */
static void spread(struct ivs_coll *k, int from, int to, const uint8_t *src, uint64_t n, uint8_t *dst)
{
	for (uint64_t off = 0; off < n; off += IVS_SLOT) {
		uint64_t len = min_u64(n - off, IVS_SLOT), s = op_begin(k, len);
		if (k->li == from)
			memcpy(data_of(k, from, s, len), src + off, len);
		publish(cline(k, k->li, s), s);
		if (k->li != from && (to == EVERYONE || to == k->li)) {
			await_member(k, from, s);
			memcpy(dst + off, data_of(k, from, s, len), len);
		}
	}
}

/* Every member's n bytes at src reach member `to` (or every member) at dst + at[i]*n for
 * member i (at NULL: i*n). A receiver's own src may already be where it belongs. */
static void collect(struct ivs_coll *k, int to, const uint8_t *src, uint64_t n, uint8_t *dst, const int *at)
{
	for (uint64_t off = 0; off < n; off += IVS_SLOT) {
		uint64_t len = min_u64(n - off, IVS_SLOT), s = op_begin(k, len);
		if (to != k->li)
			memcpy(data_of(k, k->li, s, len), src + off, len);
		publish(cline(k, k->li, s), s);
		if (to != EVERYONE && to != k->li)
			continue;
		for (int i = 0; i < k->nl; i++) {
			uint8_t *d = dst + (uint64_t)(at ? at[i] : i) * n + off;
			if (i != k->li) {
				await_member(k, i, s);
				memcpy(d, data_of(k, i, s, len), len);
			} else if (d != src + off) {
				memcpy(d, src + off, len);
			}
		}
	}
}

/* Member `from` holds a block of n bytes for every member i at src + at[i]*n (at NULL: i*n);
 * each member receives its block at dst (NULL: keeps nothing). */
static void distribute(struct ivs_coll *k, int from, const uint8_t *src, uint64_t n, uint8_t *dst, const int *at)
{
	uint64_t step = IVS_SLOT / (uint64_t)k->nl;
	for (uint64_t off = 0; off < n; off += step) {
		uint64_t len = min_u64(n - off, step), s = op_begin(k, len * (uint64_t)k->nl);
		uint8_t *area = data_of(k, from, s, len * (uint64_t)k->nl);
		if (k->li == from) {
			for (int i = 0; i < k->nl; i++)
				if (i != from)
					memcpy(area + (uint64_t)i * len, src + (uint64_t)(at ? at[i] : i) * n + off, len);
			publish(cline(k, from, s), s);
			if (dst)
				memcpy(dst + off, src + (uint64_t)(at ? at[from] : from) * n + off, len);
			continue;
		}
		publish(cline(k, k->li, s), s);
		if (dst) {
			await_member(k, from, s);
			memcpy(dst + off, area + (uint64_t)k->li * len, len);
		}
	}
}

/* Alltoall among the members of a single-host communicator (local index = comm rank): block i
 * of n bytes at src goes to member i, and member i's block for this rank lands at dst + i*n.
 * src and dst must not overlap. */
static void exchange(struct ivs_coll *k, const uint8_t *src, uint64_t n, uint8_t *dst)
{
	uint64_t step = IVS_SLOT / (uint64_t)k->nl, me = (uint64_t)k->li;
	for (uint64_t off = 0; off < n; off += step) {
		uint64_t len = min_u64(n - off, step), s = op_begin(k, len * (uint64_t)k->nl);
		uint8_t *mine = data_of(k, k->li, s, len * (uint64_t)k->nl);
		for (int d = 0; d < k->nl; d++)
			if (d != k->li)
				memcpy(mine + (uint64_t)d * len, src + (uint64_t)d * n + off, len);
		publish(cline(k, k->li, s), s);
		memcpy(dst + me * n + off, src + me * n + off, len);
		for (int i = 0; i < k->nl; i++)
			if (i != k->li) {
				await_member(k, i, s);
				memcpy(dst + (uint64_t)i * n + off, data_of(k, i, s, len * (uint64_t)k->nl) + me * len, len);
			}
	}
}

/* ---- broadcast of contiguous bytes ---- */

/* The local index of comm rank root, -1 if it is on another host. */
static int root_local(struct ivs_coll *k, int root)
{
	for (int i = 0; i < k->nl; i++)
		if (k->lranks[i] == root)
			return i;
	return -1;
}

static int leaders_bcast(struct ivs_coll *k, uint8_t *data, uint64_t len, int root_host)
{
	MPI_Request req;
	return net_complete(PMPI_Ibcast(data, (int)len, MPI_BYTE, root_host, k->lcomm, &req), &req);
}

/* In pieces of one slot: the root's host spreads each piece while its leader passes it on to
 * the other hosts' leaders, which spread it on theirs. */
static int bcast_bytes(struct ivs_coll *k, uint8_t *data, uint64_t n, int root)
{
	int root_host = k->host_of[root], root_li = root_local(k, root);
	int src_li = root_li >= 0 ? root_li : 0; /* whose area this host copies from */
	int rc = MPI_SUCCESS;
	for (uint64_t off = 0; off < n; off += IVS_SLOT) {
		uint64_t len = min_u64(n - off, IVS_SLOT);
		if (root_li < 0 && k->li == 0 && rc == MPI_SUCCESS)
			rc = leaders_bcast(k, data + off, len, root_host);
		spread(k, src_li, EVERYONE, data + off, len, data + off);
		if (root_li >= 0 && k->li == 0 && k->nhosts > 1 && rc == MPI_SUCCESS)
			rc = leaders_bcast(k, data + off, len, root_host);
	}
	return rc;
}

/* ---- reductions ---- */

static int predefined_op(MPI_Op op)
{
	return op == MPI_SUM || op == MPI_PROD || op == MPI_MAX || op == MPI_MIN || op == MPI_LAND || op == MPI_LOR ||
	       op == MPI_LXOR || op == MPI_BAND || op == MPI_BOR || op == MPI_BXOR || op == MPI_MAXLOC || op == MPI_MINLOC;
}

struct red {
	uint64_t span, extent;
	ptrdiff_t lb;
};

/* Whether (count, dt, op) reduces on the fast path; the same answer on every rank. */
static int reducible(int count, MPI_Datatype dt, MPI_Op op, struct red *r)
{
	return predefined_op(op) && ivs_dt_span(dt, count, &r->span, &r->lb, &r->extent) && r->extent <= IVS_SLOT;
}

/* Combine the co-located contributions of op s into acc (elements cnt of dt), in local order. */
static int reduce_local(struct ivs_coll *k, uint64_t s, uint64_t span, uint8_t *acc, int cnt, MPI_Datatype dt, MPI_Op op)
{
	memcpy(acc, data_of(k, 0, s, span), span);
	for (int i = 1; i < k->nl; i++) {
		int rc = PMPI_Reduce_local(data_of(k, i, s, span), acc, cnt, dt, op);
		if (rc != MPI_SUCCESS)
			return rc;
	}
	return MPI_SUCCESS;
}

/* One piece of an allreduce (root < 0) or reduce: cnt elements at sb -> rb. */
static int reduce_piece(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *sb, uint8_t *rb, int cnt, uint64_t span,
                        MPI_Datatype dt, MPI_Op op, int root)
{
	uint64_t s = op_begin(k, span);
	memcpy(data_of(k, k->li, s, span), sb, span);
	publish(cline(k, k->li, s), s);
	int rc = MPI_SUCCESS;
	if (k->nhosts == 1) {
		if (root < 0 || root == c->rank) {
			await_all(k, s);
			rc = reduce_local(k, s, span, rb, cnt, dt, op);
		}
		return rc;
	}
	int root_host = root < 0 ? -1 : k->host_of[root];
	if (k->li == 0) {
		uint8_t *acc = malloc(span ? span : 1);
		if (!acc)
			return MPI_ERR_NO_MEM;
		await_all(k, s);
		rc = reduce_local(k, s, span, acc, cnt, dt, op);
		MPI_Request req;
		if (rc == MPI_SUCCESS && root < 0)
			rc = net_complete(PMPI_Iallreduce(MPI_IN_PLACE, acc, cnt, dt, op, k->lcomm, &req), &req);
		else if (rc == MPI_SUCCESS)
			rc = net_complete(PMPI_Ireduce(k->myhost == root_host ? MPI_IN_PLACE : acc, acc, cnt, dt, op, root_host, k->lcomm, &req), &req);
		if (rc == MPI_SUCCESS && (root < 0 || k->myhost == root_host)) {
			if (root < 0 || root == c->rank)
				memcpy(rb, acc, span);
			if (root < 0 || root != c->rank) {
				memcpy(result_of(k, s, span), acc, span);
				publish(rline(k, s), s);
			}
		}
		free(acc);
		return rc;
	}
	if (root < 0 || root == c->rank) {
		await(rline(k, s), s);
		memcpy(rb, result_of(k, s, span), span);
	}
	return MPI_SUCCESS;
}

static int reduce_common(struct ivs_coll *k, struct ivs_comm *c, const void *sbuf, void *rbuf, int count,
                         MPI_Datatype dt, MPI_Op op, int root, const struct red *r)
{
	int per = (int)(IVS_SLOT / r->extent);
	if (per < 1)
		per = 1;
	int done = 0;
	do {
		int cnt = count - done < per ? count - done : per;
		uint64_t span = cnt ? (uint64_t)(cnt - 1) * r->extent + (r->span - (uint64_t)(count - 1) * r->extent) : 0;
		const uint8_t *sb = (const uint8_t *)sbuf + r->lb + (ptrdiff_t)((uint64_t)done * r->extent);
		uint8_t *rb = rbuf ? (uint8_t *)rbuf + r->lb + (ptrdiff_t)((uint64_t)done * r->extent) : NULL;
		int rc = reduce_piece(k, c, sb, rb, cnt, span, dt, op, root);
		if (rc != MPI_SUCCESS)
			return rc;
		done += cnt;
	} while (done < count);
	return MPI_SUCCESS;
}

/* ---- gathers, scatters and alltoall across hosts ----
 * A host's leader collects its members' blocks through the area, the leaders move them with
 * the library's v-collective over the leaders' communicator (host-grouped order: a host's
 * members in comm rank order, hosts in order), and the leader hands the results out through
 * the area. A leader's library error is returned after the intra-host phases, which still run
 * so that its host's members do not wait forever. */

/* The leaders' per-host byte counts and displacements for `per` bytes per member. */
static int *leader_counts(struct ivs_coll *k, uint64_t per)
{
	int *cd = must_alloc(sizeof(int) * 2 * (uint64_t)k->nhosts);
	for (int h = 0; h < k->nhosts; h++) {
		cd[h] = (int)((uint64_t)(k->host_first[h + 1] - k->host_first[h]) * per);
		cd[k->nhosts + h] = (int)((uint64_t)k->host_first[h] * per);
	}
	return cd;
}

/* Blocks of n bytes between comm rank order (ranked[r]) and host-grouped order (grouped[pos[r]]). */
static void regroup(struct ivs_coll *k, int size, uint8_t *grouped, uint8_t *ranked, uint64_t n, int to_grouped)
{
	for (int r = 0; r < size; r++) {
		uint8_t *g = grouped + (uint64_t)k->pos[r] * n, *o = ranked + (uint64_t)r * n;
		memcpy(to_grouped ? g : o, to_grouped ? o : g, n);
	}
}

/* Gather to root, or allgather if root < 0, across hosts. */
static int gather_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root)
{
	int everyone = root < 0, root_host = everyone ? -1 : k->host_of[root];
	int root_li = everyone ? EVERYONE : root_local(k, root), gets = everyone || k->myhost == root_host;
	uint64_t all = n * (uint64_t)c->size;
	uint8_t *mine = k->li == 0 ? must_alloc(n * (uint64_t)k->nl) : NULL;
	uint8_t *grouped = gets && (everyone || k->li == 0 || k->li == root_li) ? must_alloc(all) : NULL;
	int rc = MPI_SUCCESS;
	collect(k, 0, src, n, mine, NULL);
	if (k->li == 0) {
		int *cd = leader_counts(k, n), count = (int)(n * (uint64_t)k->nl);
		MPI_Request req;
		rc = net_complete(everyone ? PMPI_Iallgatherv(mine, count, MPI_BYTE, grouped, cd, cd + k->nhosts, MPI_BYTE, k->lcomm, &req)
		                           : PMPI_Igatherv(mine, count, MPI_BYTE, grouped, cd, cd + k->nhosts, MPI_BYTE, root_host,
		                                           k->lcomm, &req),
		                  &req);
		free(cd);
	}
	if (gets && root_li != 0) /* the leader has it: on to the root, or to everyone */
		spread(k, 0, root_li, grouped, all, grouped);
	if (everyone || c->rank == root)
		regroup(k, c->size, grouped, dst, n, 0);
	free(grouped);
	free(mine);
	return rc;
}

static int scatter_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root)
{
	int root_host = k->host_of[root], root_li = root_local(k, root), at_root_host = k->myhost == root_host;
	uint64_t all = n * (uint64_t)c->size;
	uint8_t *grouped = at_root_host && (k->li == 0 || k->li == root_li) ? must_alloc(all) : NULL;
	uint8_t *mine = k->li == 0 ? must_alloc(n * (uint64_t)k->nl) : NULL;
	int rc = MPI_SUCCESS;
	if (c->rank == root)
		regroup(k, c->size, grouped, (uint8_t *)src, n, 1);
	if (at_root_host && root_li != 0)
		spread(k, root_li, 0, grouped, all, grouped);
	if (k->li == 0) {
		int *cd = leader_counts(k, n);
		MPI_Request req;
		rc = net_complete(PMPI_Iscatterv(grouped, cd, cd + k->nhosts, MPI_BYTE, mine, (int)(n * (uint64_t)k->nl),
		                                 MPI_BYTE, root_host, k->lcomm, &req), &req);
		free(cd);
	}
	distribute(k, 0, mine, n, dst, NULL);
	free(grouped);
	free(mine);
	return rc;
}

/* The leaders' alltoall: in[i][r] is the block local member i sends to comm rank r, out[j][r]
 * the block local member j receives from comm rank r. For each destination host the leader
 * sends [local member][destination member] blocks; from a source host it receives
 * [source member][local member] blocks, so the block from rank r to local member j lands at
 * (pos[r]*nl + j)*n. */
static int leaders_alltoall(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *in, uint8_t *out, uint64_t n)
{
	uint64_t row = n * (uint64_t)c->size, nl = (uint64_t)k->nl;
	uint8_t *snd = must_alloc(nl * row), *rcv = must_alloc(nl * row);
	int nh = k->nhosts, *cd = must_alloc(sizeof(int) * 4 * (uint64_t)nh);
	for (int h = 0; h < nh; h++) {
		uint64_t members = (uint64_t)(k->host_first[h + 1] - k->host_first[h]);
		cd[h] = cd[2 * nh + h] = (int)(nl * members * n);
		cd[nh + h] = cd[3 * nh + h] = (int)(nl * (uint64_t)k->host_first[h] * n);
	}
	for (int r = 0; r < c->size; r++) {
		int h = k->host_of[r];
		uint64_t members = (uint64_t)(k->host_first[h + 1] - k->host_first[h]), j = (uint64_t)(k->pos[r] - k->host_first[h]);
		for (uint64_t i = 0; i < nl; i++)
			memcpy(snd + (uint64_t)cd[nh + h] + (i * members + j) * n, in + i * row + (uint64_t)r * n, n);
	}
	MPI_Request req;
	int rc = net_complete(PMPI_Ialltoallv(snd, cd, cd + nh, MPI_BYTE, rcv, cd + 2 * nh, cd + 3 * nh, MPI_BYTE, k->lcomm,
	                                      &req), &req);
	for (int r = 0; r < c->size && rc == MPI_SUCCESS; r++)
		for (uint64_t j = 0; j < nl; j++)
			memcpy(out + j * row + (uint64_t)r * n, rcv + ((uint64_t)k->pos[r] * nl + j) * n, n);
	free(snd);
	free(rcv);
	free(cd);
	return rc;
}

static int alltoall_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n)
{
	uint64_t row = n * (uint64_t)c->size; /* one member's send or receive buffer */
	uint8_t *in = NULL, *out = NULL;
	int rc = MPI_SUCCESS;
	if (k->li == 0) {
		in = must_alloc(row * (uint64_t)k->nl);
		out = must_alloc(row * (uint64_t)k->nl);
	}
	collect(k, 0, src, row, in, NULL);
	if (k->li == 0)
		rc = leaders_alltoall(k, c, in, out, n);
	distribute(k, 0, out, row, dst, NULL);
	free(in);
	free(out);
	return rc;
}

/* ---- user buffers as bytes ---- */

enum flat_mode {
	FLAT_OUT,  /* bytes to be received */
	FLAT_IN,   /* bytes to be sent: the user's or a packed copy */
	FLAT_COPY, /* bytes to be sent, always a copy (the buffer is also received into) */
};

/* The bytes of count elements of dt at buf: the user's memory when they are contiguous (and
 * no copy is asked for), else a scratch buffer. */
struct flat {
	uint8_t *p;
	int scratch;
};

static int flat_view(struct flat *f, const void *buf, int count, MPI_Datatype dt, uint64_t n, enum flat_mode mode,
                     MPI_Comm comm)
{
	uint64_t bytes;
	ptrdiff_t lb;
	f->scratch = mode == FLAT_COPY || !ivs_dt_contig(dt, count, &bytes, &lb) || bytes != n;
	if (!f->scratch) {
		f->p = (uint8_t *)buf + lb;
		return MPI_SUCCESS;
	}
	f->p = must_alloc(n);
	return mode == FLAT_OUT ? MPI_SUCCESS : ivs_dt_pack(buf, count, dt, f->p, n, comm);
}

/* Done with f: a scratch buffer is unpacked into buf (if buf and all went well) and freed. */
static int flat_done(struct flat *f, int rc, void *buf, int count, MPI_Datatype dt, uint64_t n, MPI_Comm comm)
{
	if (f->scratch) {
		if (rc == MPI_SUCCESS && buf)
			rc = ivs_dt_unpack(f->p, n, buf, count, dt, comm);
		free(f->p);
		f->scratch = 0;
	}
	return rc;
}

/* ---- the library's path, without starving the rings ---- */

#define NET_COLL(blocking, nonblocking)                                  \
	do {                                                                 \
		ivs.stats.collectives_net += ivs.job_active;                     \
		if (!ivs_busy())                                                 \
			return blocking;                                             \
		MPI_Request req_;                                                \
		return net_complete(nonblocking, &req_);                         \
	} while (0)

/* ---- interposers ---- */

int MPI_Barrier(MPI_Comm comm)
{
	struct ivs_coll *k;
	if (coll_comm(comm, &k)) {
		ivs.stats.collectives_shm++;
		return barrier(k);
	}
	NET_COLL(PMPI_Barrier(comm), PMPI_Ibarrier(comm, &req_));
}

int MPI_Bcast(void *buf, int count, MPI_Datatype dt, int root, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	uint64_t n = ivs_dt_bytes(dt, count), bytes;
	ptrdiff_t lb;
	if (!c || root < 0 || root >= c->size)
		NET_COLL(PMPI_Bcast(buf, count, dt, root, comm), PMPI_Ibcast(buf, count, dt, root, comm, &req_));
	ivs.stats.collectives_shm++;
	if (n == 0) /* the same on every rank: type signatures match */
		return MPI_SUCCESS;
	if (ivs_dt_contig(dt, count, &bytes, &lb) && bytes == n)
		return bcast_bytes(k, (uint8_t *)buf + lb, n, root);
	uint8_t *tmp = malloc(n ? n : 1);
	if (!tmp)
		return MPI_ERR_NO_MEM;
	int rc = c->rank == root ? ivs_dt_pack(buf, count, dt, tmp, n, comm) : MPI_SUCCESS;
	if (rc == MPI_SUCCESS)
		rc = bcast_bytes(k, tmp, n, root);
	if (rc == MPI_SUCCESS && c->rank != root)
		rc = ivs_dt_unpack(tmp, n, buf, count, dt, comm);
	free(tmp);
	return rc;
}

int MPI_Allreduce(const void *sbuf, void *rbuf, int count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	struct red r;
	if (!c || !reducible(count, dt, op, &r))
		NET_COLL(PMPI_Allreduce(sbuf, rbuf, count, dt, op, comm), PMPI_Iallreduce(sbuf, rbuf, count, dt, op, comm, &req_));
	ivs.stats.collectives_shm++;
	if (count == 0)
		return MPI_SUCCESS;
	return reduce_common(k, c, sbuf == MPI_IN_PLACE ? rbuf : sbuf, rbuf, count, dt, op, -1, &r);
}

int MPI_Reduce(const void *sbuf, void *rbuf, int count, MPI_Datatype dt, MPI_Op op, int root, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	struct red r;
	if (!c || root < 0 || root >= c->size || !reducible(count, dt, op, &r))
		NET_COLL(PMPI_Reduce(sbuf, rbuf, count, dt, op, root, comm), PMPI_Ireduce(sbuf, rbuf, count, dt, op, root, comm, &req_));
	ivs.stats.collectives_shm++;
	if (count == 0)
		return MPI_SUCCESS;
	if (sbuf == MPI_IN_PLACE)
		sbuf = rbuf;
	return reduce_common(k, c, sbuf, c->rank == root ? rbuf : NULL, count, dt, op, root, &r);
}

/* Reduce_scatter variants: a hierarchical allreduce of the whole vector, then each rank keeps
 * its block. */
static int reduce_scatter_common(struct ivs_coll *k, struct ivs_comm *c, const void *sbuf, void *rbuf, const int *counts,
                                 int block, MPI_Datatype dt, MPI_Op op)
{
	int total = 0, mine = 0;
	for (int i = 0; i < c->size; i++) {
		int n = counts ? counts[i] : block;
		if (i < c->rank)
			mine += n;
		total += n;
	}
	struct red r;
	reducible(total, dt, op, &r);
	uint8_t *tmp = malloc(r.span ? r.span : 1);
	if (!tmp)
		return MPI_ERR_NO_MEM;
	const void *src = sbuf == MPI_IN_PLACE ? rbuf : sbuf;
	int rc = total ? reduce_common(k, c, src, tmp - r.lb, total, dt, op, -1, &r) : MPI_SUCCESS;
	int my = counts ? counts[c->rank] : block;
	if (rc == MPI_SUCCESS && my > 0) {
		uint64_t n = (uint64_t)(my - 1) * r.extent + (r.span - (uint64_t)(total - 1) * r.extent);
		memcpy((uint8_t *)rbuf + r.lb, tmp + (uint64_t)mine * r.extent, n);
	}
	free(tmp);
	return rc;
}

int MPI_Reduce_scatter_block(const void *sbuf, void *rbuf, int count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	struct red r;
	if (!c || !reducible(count, dt, op, &r))
		NET_COLL(PMPI_Reduce_scatter_block(sbuf, rbuf, count, dt, op, comm),
		         PMPI_Ireduce_scatter_block(sbuf, rbuf, count, dt, op, comm, &req_));
	ivs.stats.collectives_shm++;
	return reduce_scatter_common(k, c, sbuf, rbuf, NULL, count, dt, op);
}

int MPI_Reduce_scatter(const void *sbuf, void *rbuf, const int counts[], MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	struct red r;
	if (!c || !reducible(1, dt, op, &r))
		NET_COLL(PMPI_Reduce_scatter(sbuf, rbuf, counts, dt, op, comm),
		         PMPI_Ireduce_scatter(sbuf, rbuf, counts, dt, op, comm, &req_));
	ivs.stats.collectives_shm++;
	return reduce_scatter_common(k, c, sbuf, rbuf, counts, 0, dt, op);
}

/* Across hosts a leader holds four buffers of its members' alltoall rows (send, receive, and
 * both regrouped); beyond this size each, the library's own alltoall is used. It bounds the
 * leaders' int counts too. The decision takes the largest host, so it is the same everywhere. */
#define IVS_LEADER_ROWS (64ull << 20)

/* Byte counts the fast path handles: the library's counts are ints. */
static int too_big(uint64_t bytes)
{
	return bytes > INT_MAX;
}

/* Gather to root, or allgather if root < 0, of n bytes per rank. */
static int gather_common(struct ivs_coll *k, struct ivs_comm *c, const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf,
                         int rcount, MPI_Datatype rdt, int root, uint64_t n)
{
	ivs.stats.collectives_shm++;
	if (n == 0)
		return MPI_SUCCESS;
	int gets = root < 0 || c->rank == root;
	uint64_t all = n * (uint64_t)c->size;
	struct flat in = {0}, out = {0};
	/* The receive arguments matter only where the result goes (a gather's non-roots may pass
	 * MPI_DATATYPE_NULL); in place, this rank's block is where the result goes. */
	int rc = gets ? flat_view(&out, rbuf, rcount * c->size, rdt, all, FLAT_OUT, c->handle) : MPI_SUCCESS;
	if (rc == MPI_SUCCESS && sbuf == MPI_IN_PLACE) {
		MPI_Aint lb, ext;
		PMPI_Type_get_extent(rdt, &lb, &ext);
		rc = flat_view(&in, (uint8_t *)rbuf + (ptrdiff_t)c->rank * rcount * ext, rcount, rdt, n, FLAT_IN, c->handle);
	} else if (rc == MPI_SUCCESS) {
		rc = flat_view(&in, sbuf, scount, sdt, n, FLAT_IN, c->handle);
	}
	if (rc == MPI_SUCCESS && k->nhosts == 1)
		collect(k, root < 0 ? EVERYONE : root_local(k, root), in.p, n, out.p, k->lranks);
	else if (rc == MPI_SUCCESS)
		rc = gather_hosts(k, c, in.p, out.p, n, root);
	flat_done(&in, rc, NULL, 0, sdt, n, c->handle);
	return flat_done(&out, rc, gets ? rbuf : NULL, rcount * c->size, rdt, all, c->handle);
}

int MPI_Allgather(const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf, int rcount, MPI_Datatype rdt, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	uint64_t n = ivs_dt_bytes(rdt, rcount);
	if (!c || too_big(n * (uint64_t)c->size))
		NET_COLL(PMPI_Allgather(sbuf, scount, sdt, rbuf, rcount, rdt, comm),
		         PMPI_Iallgather(sbuf, scount, sdt, rbuf, rcount, rdt, comm, &req_));
	return gather_common(k, c, sbuf, scount, sdt, rbuf, rcount, rdt, -1, n);
}

int MPI_Gather(const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf, int rcount, MPI_Datatype rdt, int root, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	int at_root = c && c->rank == root;
	uint64_t n = at_root && sbuf == MPI_IN_PLACE ? ivs_dt_bytes(rdt, rcount) : ivs_dt_bytes(sdt, scount);
	if (!c || root < 0 || root >= c->size || too_big(n * (uint64_t)c->size))
		NET_COLL(PMPI_Gather(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm),
		         PMPI_Igather(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm, &req_));
	return gather_common(k, c, sbuf, scount, sdt, rbuf, rcount, rdt, root, n);
}

int MPI_Scatter(const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf, int rcount, MPI_Datatype rdt, int root, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	int at_root = c && c->rank == root;
	uint64_t n = at_root && rbuf == MPI_IN_PLACE ? ivs_dt_bytes(sdt, scount) : ivs_dt_bytes(rdt, rcount);
	if (!c || root < 0 || root >= c->size || too_big(n * (uint64_t)c->size))
		NET_COLL(PMPI_Scatter(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm),
		         PMPI_Iscatter(sbuf, scount, sdt, rbuf, rcount, rdt, root, comm, &req_));
	ivs.stats.collectives_shm++;
	if (n == 0)
		return MPI_SUCCESS;
	struct flat in = {0}, out = {0};
	int rc = at_root ? flat_view(&in, sbuf, scount * c->size, sdt, n * (uint64_t)c->size, FLAT_IN, comm) : MPI_SUCCESS;
	if (rc == MPI_SUCCESS && rbuf != MPI_IN_PLACE)
		rc = flat_view(&out, rbuf, rcount, rdt, n, FLAT_OUT, comm);
	if (rc == MPI_SUCCESS && k->nhosts == 1)
		distribute(k, root_local(k, root), in.p, n, out.p, k->lranks);
	else if (rc == MPI_SUCCESS)
		rc = scatter_hosts(k, c, in.p, out.p, n, root);
	flat_done(&in, rc, NULL, 0, sdt, n, comm);
	return flat_done(&out, rc, rbuf, rcount, rdt, n, comm);
}

int MPI_Alltoall(const void *sbuf, int scount, MPI_Datatype sdt, void *rbuf, int rcount, MPI_Datatype rdt, MPI_Comm comm)
{
	struct ivs_coll *k;
	struct ivs_comm *c = coll_comm(comm, &k);
	uint64_t n = ivs_dt_bytes(rdt, rcount), row = c ? n * (uint64_t)c->size : 0;
	if (!c || too_big(row) || (k->nhosts > 1 && row * (uint64_t)k->maxnl > IVS_LEADER_ROWS))
		NET_COLL(PMPI_Alltoall(sbuf, scount, sdt, rbuf, rcount, rdt, comm),
		         PMPI_Ialltoall(sbuf, scount, sdt, rbuf, rcount, rdt, comm, &req_));
	ivs.stats.collectives_shm++;
	if (n == 0)
		return MPI_SUCCESS;
	struct flat in = {0}, out = {0};
	int rc = sbuf == MPI_IN_PLACE ? flat_view(&in, rbuf, rcount * c->size, rdt, row, FLAT_COPY, comm)
	                              : flat_view(&in, sbuf, scount * c->size, sdt, row, FLAT_IN, comm);
	if (rc == MPI_SUCCESS)
		rc = flat_view(&out, rbuf, rcount * c->size, rdt, row, FLAT_OUT, comm);
	if (rc == MPI_SUCCESS && k->nhosts == 1)
		exchange(k, in.p, n, out.p);
	else if (rc == MPI_SUCCESS)
		rc = alltoall_hosts(k, c, in.p, out.p, n);
	flat_done(&in, rc, NULL, 0, sdt, row, comm);
	return flat_done(&out, rc, rbuf, rcount * c->size, rdt, row, comm);
}
