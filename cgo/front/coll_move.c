/* Collectives: moving bytes among the co-located members through the area, in pieces that fit
 * it. Every co-located member calls these with the same sizes, so all go through the same ops.
 * Each member's buffers are views (coll.h): a derived type's typemap moves its pieces straight
 * between the user's buffer and the area. */
#include <string.h>
#include "coll.h"

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
 * member i (at NULL: i*n). A receiver's own src may already be where it belongs. */
void ivs_coll_collect(struct ivs_coll *k, int to, const struct ivs_view *src, uint64_t n, const struct ivs_view *dst,
                      const int *at)
{
	for (uint64_t off = 0; off < n; off += k->slot) {
		uint64_t len = ivs_min_u64(n - off, k->slot), s = ivs_coll_op_begin(k, len);
		if (to != k->li)
			ivs_view_get(src, off, ivs_coll_data(k, k->li, s, len), len);
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		if (to != IVS_EVERYONE && to != k->li)
			continue;
		for (int i = 0; i < k->nl; i++) {
			uint64_t d = (uint64_t)(at ? at[i] : i) * n + off;
			if (i != k->li) {
				ivs_coll_await_member(k, i, s);
				ivs_view_put(dst, d, ivs_coll_data(k, i, s, len), len);
			} else {
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
