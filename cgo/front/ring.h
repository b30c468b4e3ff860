/*
 * Pair rings: the per-message transport between two ranks sharing a region.
 *
 * A ring (struct ivshim_ring in ivshmem/ivshim_region.h) carries records (ivshmem/ivshim_ring.h)
 * from one sender to one receiver. Records start on 64-byte boundaries and never wrap: when a
 * record does not fit before the end of the data area, the sender first writes a PAD record
 * covering the rest.
 *
 * Ordering contract (single producer, single consumer):
 *   - The producer writes a record's header fields and payload, then stores its stamp
 *     (= the record's ring position | 1) with RELEASE. The stamp is the only publication: the
 *     consumer never reads ring->tail on the fast path, so a small message costs one cache line.
 *   - The consumer loads the stamp at its position with ACQUIRE; a stamp other than
 *     (position | 1) means "nothing yet" (stale records of earlier laps carry other positions).
 *     After copying a record out it stores ring->head = its new position with RELEASE.
 *   - The producer reloads ring->head (ACQUIRE) only when its cached copy shows too little room.
 *   - ring->tail is stored RELAXED after each commit. It is informational only: nobody reads
 *     data on the strength of it (the consumer trusts stamps alone); it tells a producer that
 *     attaches to an existing ring where to continue, and diagnostics how full the ring is.
 * Everything the consumer reads is untrusted: lengths and kinds are checked before use.
 */
#ifndef IVSHIM_FRONT_RING_H
#define IVSHIM_FRONT_RING_H

#include <stdint.h>
#include <string.h>
#include "ivshim_ring.h"

static inline uint64_t ivs_rec_size(uint64_t len) { return (IVS_REC_HDR + len + IVS_ALIGN - 1) & ~(uint64_t)(IVS_ALIGN - 1); }

/* Private view of one direction of a pair, kept by the rank that uses it. */
struct ivs_tx {
	struct ivshim_ring *ring;
	uint8_t *data;
	uint64_t cap;
	uint64_t pos;        /* next record position (ring->tail follows it) */
	uint64_t head_cache; /* last ring->head seen */
};

struct ivs_rx {
	struct ivshim_ring *ring;
	uint8_t *data;
	uint64_t cap;
	uint64_t pos;        /* next record position (mirrors ring->head) */
};

/* Producer: reserve room for a record with len payload bytes. Returns the header to fill, or
 * NULL when the ring is full right now. Writes a PAD record first if needed. */
static inline struct ivs_rec *ivs_tx_reserve(struct ivs_tx *t, uint64_t len)
{
	uint64_t size = ivs_rec_size(len);
	uint64_t off = t->pos & (t->cap - 1);
	uint64_t pad = (off + size > t->cap) ? t->cap - off : 0;
	if (t->pos + pad + size - t->head_cache > t->cap) {
		t->head_cache = __atomic_load_n(&t->ring->head, __ATOMIC_ACQUIRE);
		if (t->pos + pad + size - t->head_cache > t->cap)
			return NULL;
	}
	if (pad) {
		struct ivs_rec *p = (struct ivs_rec *)(t->data + off);
		p->kind = IVS_REC_PAD;
		p->len = 0;
		__atomic_store_n(&p->stamp, t->pos | 1, __ATOMIC_RELEASE);
		t->pos += pad;
		off = 0;
	}
	return (struct ivs_rec *)(t->data + off);
}

/* Producer: publish the record reserved last. */
static inline void ivs_tx_commit(struct ivs_tx *t, struct ivs_rec *r)
{
	uint64_t pos = t->pos;
	t->pos += ivs_rec_size(r->len);
	__atomic_store_n(&r->stamp, pos | 1, __ATOMIC_RELEASE);
	__atomic_store_n(&t->ring->tail, t->pos, __ATOMIC_RELAXED);
}

/* Largest payload one record may carry on t. */
static inline uint64_t ivs_tx_max_payload(const struct ivs_tx *t)
{
	uint64_t m = t->cap / 8;
	if (m > (16u << 10))
		m = 16u << 10;
	return m - IVS_REC_HDR;
}

/* Consumer: copy the header of the record at the current position into *h (a private copy,
 * so a peer rewriting the ring cannot change what was checked) and point *payload at its
 * payload. Returns 1 for a record, 0 if none is published, -1 for a record that breaks the
 * format. A published PAD is consumed here. */
static inline int ivs_rx_peek(struct ivs_rx *x, struct ivs_rec *h, const uint8_t **payload)
{
	for (;;) {
		uint64_t off = x->pos & (x->cap - 1);
		struct ivs_rec *r = (struct ivs_rec *)(x->data + off);
		if (__atomic_load_n(&r->stamp, __ATOMIC_ACQUIRE) != (x->pos | 1))
			return 0;
		memcpy(h, r, sizeof *h);
		if (h->kind == IVS_REC_PAD) {
			x->pos += x->cap - off;
			__atomic_store_n(&x->ring->head, x->pos, __ATOMIC_RELEASE);
			continue;
		}
		if (h->len > x->cap - off - IVS_REC_HDR || h->kind < IVS_REC_MSG || h->kind > IVS_REC_ACK)
			return -1;
		*payload = (const uint8_t *)r + IVS_REC_HDR;
		return 1;
	}
}

/* Consumer: release the record returned by ivs_rx_peek; len is the length validated there. */
static inline void ivs_rx_consume(struct ivs_rx *x, uint32_t len)
{
	x->pos += ivs_rec_size(len);
	__atomic_store_n(&x->ring->head, x->pos, __ATOMIC_RELEASE);
}

#endif
