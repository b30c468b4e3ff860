/* Collectives: moving bytes among the co-located members through the area, in pieces that fit
 * it. Every co-located member calls these with the same sizes, so all go through the same ops. */
#include <string.h>
#include "coll.h"

/* n bytes of member `from` reach member `to` (or every member): from src to dst, or, with t, the
 * packed bytes [at, at + n) of t's message between its buffer and the area. */
static void spread(struct ivs_coll *k, int from, int to, const uint8_t *src, uint64_t n, uint8_t *dst,
                   const struct ivs_typed *t, uint64_t at)
{
	for (uint64_t off = 0; off < n; off += k->slot) {
		uint64_t len = ivs_min_u64(n - off, k->slot), s = ivs_coll_op_begin(k, len);
		if (k->li == from) {
			uint8_t *in = ivs_coll_data(k, from, s, len);
			if (t)
				ivs_tm_copy(t->tm, t->buf, t->count, at + off, in, len, 0);
			else
				ivs_copy(in, src + off, len);
		}
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		if (k->li != from && (to == IVS_EVERYONE || to == k->li)) {
			ivs_coll_await_member(k, from, s);
			uint8_t *out = ivs_coll_data(k, from, s, len);
			if (t)
				ivs_tm_copy(t->tm, t->buf, t->count, at + off, out, len, 1);
			else
				ivs_copy(dst + off, out, len);
		}
	}
}

/* n bytes of member `from` at src reach member `to` (or every member) at dst. */
void ivs_coll_spread(struct ivs_coll *k, int from, int to, const uint8_t *src, uint64_t n, uint8_t *dst)
{
	spread(k, from, to, src, n, dst, NULL, 0);
}

void ivs_coll_spread_typed(struct ivs_coll *k, int from, int to, const struct ivs_typed *t, uint64_t at, uint64_t n)
{
	spread(k, from, to, NULL, n, NULL, t, at);
}

/* Every member's n bytes at src reach member `to` (or every member) at dst + at[i]*n for
 * member i (at NULL: i*n). A receiver's own src may already be where it belongs. */
void ivs_coll_collect(struct ivs_coll *k, int to, const uint8_t *src, uint64_t n, uint8_t *dst, const int *at)
{
	for (uint64_t off = 0; off < n; off += k->slot) {
		uint64_t len = ivs_min_u64(n - off, k->slot), s = ivs_coll_op_begin(k, len);
		if (to != k->li)
			ivs_copy(ivs_coll_data(k, k->li, s, len), src + off, len);
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		if (to != IVS_EVERYONE && to != k->li)
			continue;
		for (int i = 0; i < k->nl; i++) {
			uint8_t *d = dst + (uint64_t)(at ? at[i] : i) * n + off;
			if (i != k->li) {
				ivs_coll_await_member(k, i, s);
				ivs_copy(d, ivs_coll_data(k, i, s, len), len);
			} else if (d != src + off) {
				ivs_copy(d, src + off, len);
			}
		}
	}
}

/* Member `from` holds a block of n bytes for every member i at src + at[i]*n (at NULL: i*n);
 * each member receives its block at dst (NULL: keeps nothing). */
void ivs_coll_distribute(struct ivs_coll *k, int from, const uint8_t *src, uint64_t n, uint8_t *dst, const int *at)
{
	uint64_t step = k->slot / (uint64_t)k->nl;
	for (uint64_t off = 0; off < n; off += step) {
		uint64_t len = ivs_min_u64(n - off, step), s = ivs_coll_op_begin(k, len * (uint64_t)k->nl);
		uint8_t *area = ivs_coll_data(k, from, s, len * (uint64_t)k->nl);
		if (k->li == from) {
			for (int i = 0; i < k->nl; i++)
				if (i != from)
					ivs_copy(area + (uint64_t)i * len, src + (uint64_t)(at ? at[i] : i) * n + off, len);
			ivs_coll_publish(ivs_coll_line(k, from, s), s);
			if (dst)
				ivs_copy(dst + off, src + (uint64_t)(at ? at[from] : from) * n + off, len);
			continue;
		}
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		if (dst) {
			ivs_coll_await_member(k, from, s);
			ivs_copy(dst + off, area + (uint64_t)k->li * len, len);
		}
	}
}

/* Alltoall among the members of a single-host communicator (local index = comm rank): block i
 * of n bytes at src goes to member i, and member i's block for this rank lands at dst + i*n.
 * src and dst must not overlap. */
void ivs_coll_exchange(struct ivs_coll *k, const uint8_t *src, uint64_t n, uint8_t *dst)
{
	uint64_t step = k->slot / (uint64_t)k->nl, me = (uint64_t)k->li;
	for (uint64_t off = 0; off < n; off += step) {
		uint64_t len = ivs_min_u64(n - off, step), s = ivs_coll_op_begin(k, len * (uint64_t)k->nl);
		uint8_t *mine = ivs_coll_data(k, k->li, s, len * (uint64_t)k->nl);
		for (int d = 0; d < k->nl; d++)
			if (d != k->li)
				ivs_copy(mine + (uint64_t)d * len, src + (uint64_t)d * n + off, len);
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		ivs_copy(dst + me * n + off, src + me * n + off, len);
		for (int i = 0; i < k->nl; i++)
			if (i != k->li) {
				ivs_coll_await_member(k, i, s);
				ivs_copy(dst + (uint64_t)i * n + off, ivs_coll_data(k, i, s, len * (uint64_t)k->nl) + me * len, len);
			}
	}
}
