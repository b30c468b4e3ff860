/* Collectives: moving bytes among the co-located members through the area, in pieces that fit
 * it. Every co-located member calls these with the same sizes, so all go through the same ops.
 * Each member's buffers are views (coll.h): a derived type's typemap moves its pieces straight
 * between the user's buffer and the area. */
#include <stdlib.h>
#include <string.h>
#include "coll.h"

/* ---- user buffers as views ---- */

/* ivs_coll_buf of a buffer that is not contiguous, or is to be copied */
int ivs_coll_buf_other(struct ivs_buf *u, const void *buf, int count, MPI_Datatype dt, uint64_t n, enum ivs_buf_mode mode,
                       int typed, MPI_Comm comm)
{
	*u = (struct ivs_buf){0};
	if (mode != IVS_BUF_COPY && typed && ivs_dt_bytes(dt, count) == n && (u->v.tm = ivs_dt_typemap(dt, buf))) {
		u->v.buf = (void *)buf;
		u->v.count = count;
		return MPI_SUCCESS;
	}
	u->scratch = 1;
	u->v.p = ivs_coll_alloc(n);
	int rc = mode == IVS_BUF_OUT ? MPI_SUCCESS : ivs_dt_pack(buf, count, dt, u->v.p, n, comm);
	if (rc != MPI_SUCCESS)
		memset(u->v.p, 0, n); /* what the others get: zeros, not stale heap */
	return rc;
}

/* ivs_coll_buf_done of a scratch copy or a typemap */
int ivs_coll_buf_release(struct ivs_buf *u, int rc, void *buf, int count, MPI_Datatype dt, uint64_t n, MPI_Comm comm)
{
	if (u->scratch) {
		if (rc == MPI_SUCCESS && buf)
			rc = ivs_dt_unpack(u->v.p, n, buf, count, dt, comm);
		free(u->v.p);
	}
	ivs_tm_unref(u->v.tm);
	*u = (struct ivs_buf){0};
	return rc;
}

/* ---- moving views' bytes through the area ---- */

/* The packed bytes [sat, sat + n) of src to [dat, dat + n) of dst (a member's own block). */
static void move(const struct ivs_view *dst, uint64_t dat, const struct ivs_view *src, uint64_t sat, uint64_t n)
{
	if (src->p && dst->p && src->p + sat == dst->p + dat) /* in place */
		return;
	if (src->p) {
		ivs_view_put(dst, dat, src->p + sat, n);
		return;
	}
	if (dst->p) {
		ivs_view_get(src, sat, dst->p + dat, n);
		return;
	}
	uint8_t bounce[4096]; /* both derived: through a small buffer */
	for (uint64_t off = 0; off < n; off += sizeof bounce) {
		uint64_t len = ivs_min_u64(n - off, sizeof bounce);
		ivs_view_get(src, sat + off, bounce, len);
		ivs_view_put(dst, dat + off, bounce, len);
	}
}

void ivs_coll_spread(struct ivs_coll *k, int from, int to, const struct ivs_view *v, uint64_t at, uint64_t n)
{
	for (uint64_t off = 0; off < n; off += k->slot) {
		uint64_t len = ivs_min_u64(n - off, k->slot), s = ivs_coll_op_begin(k, len);
		if (k->li == from)
			ivs_view_get(v, at + off, ivs_coll_data(k, from, s, len), len);
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		if (k->li != from && (to == IVS_EVERYONE || to == k->li)) {
			ivs_coll_await_member(k, from, s);
			ivs_view_put(v, at + off, ivs_coll_data(k, from, s, len), len);
		}
	}
}

/* Every member's n bytes of src reach member `to` (or every member) at bytes at[i]*n of dst for
 * member i (at NULL: i*n). A receiver's src may already be where it belongs, or be NULL: its
 * block is in dst already (in place). */
void ivs_coll_collect(struct ivs_coll *k, int to, const struct ivs_view *src, uint64_t n, const struct ivs_view *dst,
                      const int *at)
{
	const struct ivs_view *mine = src ? src : dst;
	uint64_t mine_at = src ? 0 : (uint64_t)(at ? at[k->li] : k->li) * n;
	for (uint64_t off = 0; off < n; off += k->slot) {
		uint64_t len = ivs_min_u64(n - off, k->slot), s = ivs_coll_op_begin(k, len);
		if (to != k->li)
			ivs_view_get(mine, mine_at + off, ivs_coll_data(k, k->li, s, len), len);
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		if (to != IVS_EVERYONE && to != k->li)
			continue;
		for (int i = 0; i < k->nl; i++) {
			uint64_t d = (uint64_t)(at ? at[i] : i) * n + off;
			if (i != k->li) {
				ivs_coll_await_member(k, i, s);
				ivs_view_put(dst, d, ivs_coll_data(k, i, s, len), len);
			} else if (src) {
				move(dst, d, src, off, len);
			}
		}
	}
}

/* Member `from` holds a block of n bytes for every member i at bytes at[i]*n of src (at NULL:
 * i*n); each member receives its block in dst (NULL: keeps nothing). */
void ivs_coll_distribute(struct ivs_coll *k, int from, const struct ivs_view *src, uint64_t n, const struct ivs_view *dst,
                         const int *at)
{
	uint64_t step = k->slot / (uint64_t)k->nl;
	for (uint64_t off = 0; off < n; off += step) {
		uint64_t len = ivs_min_u64(n - off, step), s = ivs_coll_op_begin(k, len * (uint64_t)k->nl);
		uint8_t *area = ivs_coll_data(k, from, s, len * (uint64_t)k->nl);
		if (k->li == from) {
			for (int i = 0; i < k->nl; i++)
				if (i != from)
					ivs_view_get(src, (uint64_t)(at ? at[i] : i) * n + off, area + (uint64_t)i * len, len);
			ivs_coll_publish(ivs_coll_line(k, from, s), s);
			if (dst)
				move(dst, off, src, (uint64_t)(at ? at[from] : from) * n + off, len);
			continue;
		}
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		if (dst) {
			ivs_coll_await_member(k, from, s);
			ivs_view_put(dst, off, area + (uint64_t)k->li * len, len);
		}
	}
}

/* Alltoall among the members of a single-host communicator (local index = comm rank): block i
 * of n bytes of src goes to member i, and member i's block for this rank lands at bytes i*n of
 * dst. src and dst must not overlap. */
void ivs_coll_exchange(struct ivs_coll *k, const struct ivs_view *src, uint64_t n, const struct ivs_view *dst)
{
	uint64_t step = k->slot / (uint64_t)k->nl, me = (uint64_t)k->li;
	for (uint64_t off = 0; off < n; off += step) {
		uint64_t len = ivs_min_u64(n - off, step), s = ivs_coll_op_begin(k, len * (uint64_t)k->nl);
		uint8_t *mine = ivs_coll_data(k, k->li, s, len * (uint64_t)k->nl);
		for (int d = 0; d < k->nl; d++)
			if (d != k->li)
				ivs_view_get(src, (uint64_t)d * n + off, mine + (uint64_t)d * len, len);
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		move(dst, me * n + off, src, me * n + off, len);
		for (int i = 0; i < k->nl; i++)
			if (i != k->li) {
				ivs_coll_await_member(k, i, s);
				ivs_view_put(dst, (uint64_t)i * n + off, ivs_coll_data(k, i, s, len * (uint64_t)k->nl) + me * len, len);
			}
	}
}
