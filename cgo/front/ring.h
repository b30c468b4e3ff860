/*
 * Pair rings: the per-message transport between two ranks sharing a region.
 *
 * A ring (struct ivshim_ring in ivshmem/ivshim_region.h) carries records (ivshmem/ivshim_ring.h)
 * from one sender to one receiver. Records start on 64-byte lines and never wrap: when a record
 * does not fit before the end of the data area, the sender first writes a PAD record covering
 * the rest.
 *
 * Ordering contract (single producer, single consumer):
 *   - The producer writes a record's header fields and payload, then stores its stamp
 *     (= the record's ring position | 1) with RELEASE. The stamp is the only publication: the
 *     consumer never reads ring->tail, so a small message costs one cache line.
 *   - The consumer loads the stamp at its position with ACQUIRE; a stamp other than
 *     (position | 1) means "nothing yet". After copying a record out it zeroes the first word
 *     of every line the record occupied, then stores ring->head = its new position with RELEASE.
 *   - The producer reloads ring->head (ACQUIRE) only when its cached copy shows too little room;
 *     it writes only below head + capacity.
 *   - ring->tail is stored RELAXED after each commit. It is informational only: nobody reads
 *     data on the strength of it (the consumer trusts stamps alone); it tells a producer that
 *     attaches to an existing ring where to continue, and diagnostics how full the ring is.
 *
 * Why payload cannot forge a stamp. Let the consumer be at position P (ring->head == P), and
 * o = P & (capacity - 1). Claim: the word at data[o] is 0 or the stamp the producer stored for P.
 *   1. The producer writes data[o] for a position Q = P (mod capacity) only while filling Q, and
 *      only after seeing head > Q - capacity, so Q < P + capacity. If Q >= P then Q == P, which
 *      both sides see as a record start, and the producer writes a record's first word only as
 *      its stamp.
 *   2. Every earlier write, for Q <= P - capacity, is to a line start the consumer has passed.
 *      If Q lay in a record, ivs_rx_consume zeroed it; if Q was a PAD's own line, ivs_rx_peek
 *      zeroed it. The zeroing follows the consumer's ACQUIRE of that record's stamp, so it
 *      overwrites the producer's write, and precedes its RELEASE of head past Q, so it precedes
 *      the producer's next write to o. The other lines of a PAD's span the producer did not
 *      write in that lap; their last write is from an earlier lap, zeroed the same way when the
 *      record occupying them was consumed, or the allocator's zeroing of a new ring.
 * A stamp is odd, so 0 never matches. This covers honest peers; a hostile peer can store any
 * stamp, which is why everything read after the stamp is validated. A ring attached with
 * head != 0 relies on its earlier consumer having kept the rule.
 * The cost is one 8-byte store per 64-byte line consumed (256 for a 16 KiB record), to lines the
 * consumer has just read.
 *
 * Bounds: the consumer's position is always a multiple of IVS_ALIGN (checked at attach, then
 * advanced by whole records or to the end of the data area), so off < capacity is a line start
 * and capacity - off - IVS_REC_HDR cannot wrap. ivs_rx_peek accepts only len that fits before
 * the end of the data area; the header, the payload and the lines ivs_rx_consume zeroes
 * (ivs_rec_size rounds to a line, capacity is whole lines) therefore stay inside it, whatever a
 * peer writes. A len above ivs_tx_max_payload breaks the protocol but endangers nothing, so it
 * is not checked.
 */
#ifndef IVSHIM_FRONT_RING_H
#define IVSHIM_FRONT_RING_H

#include <stdint.h>
#include <string.h>
#include "copy.h"
#include "ivshim_ring.h"

#define IVS_REC_MAX (16u << 10) /* bytes of the largest record a producer writes */

static inline uint64_t ivs_rec_size(uint64_t len) { return (IVS_REC_HDR + len + IVS_ALIGN - 1) & ~(uint64_t)(IVS_ALIGN - 1); }

/* A ring's shared words as read once by ivs_ring_check. */
struct ivs_ring_snap {
	uint64_t cap;  /* capacity: power of two >= IVS_RING_MIN_CAP, fits the mapping */
	uint64_t head; /* multiple of IVS_ALIGN */
	uint64_t tail; /* multiple of IVS_ALIGN, tail - head <= cap */
};

/* Attach-time check of a ring that another party initialised and can still rewrite. room is the
 * number of mapped bytes from the ring's data area (r + IVSHIM_RING_DATA_OFF) to the end of the
 * mapping. Reads capacity, head (ACQUIRE) and tail (ACQUIRE) once each into *s; the caller
 * builds its private views from *s and never rereads those words, since the peer may change
 * them after the check. Returns 0 if the ring is usable, else -1 with *why naming the broken
 * rule (a static string). */
static inline int ivs_ring_check(const struct ivshim_ring *r, uint64_t room, struct ivs_ring_snap *s, const char **why)
{
	s->cap = __atomic_load_n(&r->capacity, __ATOMIC_RELAXED);
	s->head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
	s->tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
	if ((uintptr_t)r % IVS_ALIGN)
		*why = "ring header not on a 64-byte line";
	else if (s->cap < IVS_RING_MIN_CAP || (s->cap & (s->cap - 1)))
		*why = "capacity below IVS_RING_MIN_CAP or not a power of two";
	else if (s->cap > room)
		*why = "data area runs past the end of the region";
	else if (s->head % IVS_ALIGN || s->tail % IVS_ALIGN)
		*why = "head or tail not a multiple of 64";
	else if (s->tail - s->head > s->cap)
		*why = "tail - head exceeds the capacity";
	else
		return 0;
	return -1;
}

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

/* Producer: reserve room for a record with len <= ivs_tx_max_payload(t) payload bytes. Returns
 * the header to fill, or NULL when the ring is full right now (having written nothing). Writes a
 * PAD record first if needed. This and ivs_tx_commit are the halves of ivs_tx_write, the front
 * library's one writer of records; tests/cunit calls them apart to build records of its own. */
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

/* Producer: write one record and publish it; every record the front library sends goes through
 * here (and the PAD a wrap needs through ivs_tx_reserve). The header gets kind, flags, tag, ctx,
 * total and cookie as given (0 where struct ivs_rec says the kind has no use for a field), the
 * payload len <= ivs_tx_max_payload(t) bytes from payload. Returns 1, or 0 when the ring has no
 * room right now (having written nothing). Inline, so that the small-message path pays no call
 * and no store it did not make when it filled the header itself. */
static inline int ivs_tx_write(struct ivs_tx *t, uint16_t kind, uint16_t flags, int32_t tag, uint32_t ctx,
			       uint64_t total, uint64_t cookie, const void *payload, uint64_t len)
{
	struct ivs_rec *r = ivs_tx_reserve(t, len);
	if (!r)
		return 0;
	r->len = (uint32_t)len;
	r->kind = kind;
	r->flags = flags;
	r->tag = tag;
	r->ctx = ctx;
	r->total = total;
	r->cookie = cookie;
	/* An empty message may come from a NULL buffer, which memcpy must not see; expecting bytes
	 * keeps the small-message path straight. */
	if (__builtin_expect(len != 0, 1))
		ivs_copy((uint8_t *)r + IVS_REC_HDR, payload, len);
	ivs_tx_commit(t, r);
	return 1;
}

/* Producer: the MARK that closes t, the sender's last record on it (migrate.c, pairs.c); 0 when
 * the ring has no room right now. What the sender sends after it goes by the library, and a
 * receiver that finds such a message looks at the ring to tell whether the sender had written
 * to it (join.c's ivs_join_park_await): the fence makes every record, the MARK included, visible
 * before anything this rank does next, the library's send included. */
static inline int ivs_tx_mark(struct ivs_tx *t)
{
	if (!ivs_tx_write(t, IVS_REC_MARK, 0, 0, 0, 0, 0, "", 0))
		return 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return 1;
}

/* Largest payload one record may carry on t: a record takes at most an eighth of the ring, so
 * several are in flight; cap >= IVS_RING_MIN_CAP keeps this positive. */
static inline uint64_t ivs_tx_max_payload(const struct ivs_tx *t)
{
	uint64_t m = t->cap / 8;
	if (m > IVS_REC_MAX)
		m = IVS_REC_MAX;
	return m - IVS_REC_HDR;
}

/* Consumer: zero the first word of each line in data[off, off + size) before head passes it. */
static inline void ivs_rx_scrub(struct ivs_rx *x, uint64_t off, uint64_t size)
{
	for (uint64_t o = off; o < off + size; o += IVS_ALIGN)
		__atomic_store_n((uint64_t *)(x->data + o), 0, __ATOMIC_RELAXED);
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
			ivs_rx_scrub(x, off, IVS_ALIGN);
			x->pos += x->cap - off;
			__atomic_store_n(&x->ring->head, x->pos, __ATOMIC_RELEASE);
			continue;
		}
		if (h->len > x->cap - off - IVS_REC_HDR || h->kind < IVS_REC_MSG || h->kind > IVS_REC_MARK)
			return -1;
		*payload = (const uint8_t *)r + IVS_REC_HDR;
		return 1;
	}
}

/* Consumer: release the record returned by ivs_rx_peek; len is the length validated there. */
static inline void ivs_rx_consume(struct ivs_rx *x, uint32_t len)
{
	uint64_t size = ivs_rec_size(len);
	ivs_rx_scrub(x, x->pos & (x->cap - 1), size);
	x->pos += size;
	__atomic_store_n(&x->ring->head, x->pos, __ATOMIC_RELEASE);
}

/* Rings on first use (ivshim_region.h, "Pair words"; the protocol is cgo/front/pairs.c's).
 * A sender asks the receiver for the ring by setting its own slot's bit in the receiver's
 * ring_wanted words; the receiver takes a word's bits at once and answers each sender in the
 * pair word, after which the sender reads the answer. The words are shared with every other VM
 * of the job: the receiver checks each bit it takes against its own peers. */
static inline void ivs_want_ask(uint64_t *wanted, uint32_t sender)
{
	__atomic_fetch_or(&wanted[sender / 64], 1ull << (sender % 64), __ATOMIC_RELEASE);
}

/* The bits of word k set since the last take, now cleared: 0 (one load) when there are none. */
static inline uint64_t ivs_want_take(uint64_t *wanted, uint32_t k)
{
	if (__atomic_load_n(&wanted[k], __ATOMIC_RELAXED) == 0)
		return 0;
	return __atomic_exchange_n(&wanted[k], 0, __ATOMIC_ACQUIRE);
}

/* The receiver's answer, once: a ring's offset (its header written before) or IVSHIM_PAIR_NET. */
static inline void ivs_pair_answer(uint64_t *word, uint64_t answer)
{
	__atomic_store_n(word, answer, __ATOMIC_RELEASE);
}

/* The sender's read of the answer: 0 while there is none. */
static inline uint64_t ivs_pair_read(const uint64_t *word)
{
	return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

#endif
