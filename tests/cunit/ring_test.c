//go:build ignore

// cunit_test.go compiles this file with gcc; the constraint keeps cgo away from it.

/*
 * Plain-C tests of the pair ring and of the asks for rings made on first use (cgo/front/ring.h):
 * no MPI, no region, no root. A ring here is
 * a zeroed, 64-byte aligned heap block laid out like a ring allocation in a region.
 *
 * Usage: ring_test [soak-seconds [test...]]
 * soak-seconds (default 2) is split between two capacities; naming tests runs only those
 * (check wrap_pad full forged_next_lap forged_across_pad corrupt random want soak).
 * Exits 0 when every test passes; on the first failure prints where and why and exits 1.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ring.h"

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: %s failed: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                      \
			fputc('\n', stderr);                                               \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* A ring as the receiver allocates it: header then data, zeroed, on a 64-byte line. */
struct fixture {
	struct ivshim_ring *ring;
	struct ivs_tx tx;
	struct ivs_rx rx;
};

static struct ivshim_ring *ring_alloc(uint64_t cap)
{
	struct ivshim_ring *r = aligned_alloc(IVS_ALIGN, IVSHIM_RING_DATA_OFF + cap);
	CHECK(r, "out of memory");
	memset(r, 0, IVSHIM_RING_DATA_OFF + cap);
	r->capacity = cap;
	r->state = IVSHIM_RING_OPEN;
	return r;
}

/* Attach both ends to r the way the data plane does: through ivs_ring_check's snapshot. */
static void attach(struct fixture *f, struct ivshim_ring *r)
{
	struct ivs_ring_snap s;
	const char *why = NULL;
	CHECK(ivs_ring_check(r, r->capacity, &s, &why) == 0, "check rejects a good ring: %s", why);
	uint8_t *data = (uint8_t *)r + IVSHIM_RING_DATA_OFF;
	f->ring = r;
	f->tx = (struct ivs_tx){.ring = r, .data = data, .cap = s.cap, .pos = s.tail, .head_cache = s.head};
	f->rx = (struct ivs_rx){.ring = r, .data = data, .cap = s.cap, .pos = s.head};
}

static void fixture_init(struct fixture *f, uint64_t cap) { attach(f, ring_alloc(cap)); }

static void fixture_free(struct fixture *f) { free(f->ring); }

/*
 * Payload of record seq at ring position pos: pseudo-random words, except that every 64-byte
 * line start inside the payload holds the stamp the record a lap later at that line would
 * carry. That is the worst honest payload: if the consumer left it in place, it would greet the
 * consumer as a published record when it gets there before the producer does.
 */
static void make_payload(uint8_t *p, uint32_t len, uint64_t seq, uint64_t pos, uint64_t cap)
{
	for (uint32_t i = 0; i < len; i += 8) {
		uint64_t w = splitmix64(seq * 0x10001 + i);
		memcpy(p + i, &w, len - i < 8 ? len - i : 8);
	}
	uint64_t first = (pos + IVS_REC_HDR + IVS_ALIGN - 1) & ~(uint64_t)(IVS_ALIGN - 1);
	for (uint64_t line = first; line + 8 <= pos + IVS_REC_HDR + len; line += IVS_ALIGN) {
		uint64_t forged = (line + cap) | 1;
		memcpy(p + (line - pos - IVS_REC_HDR), &forged, 8);
	}
}

/* Send record seq with len payload bytes; returns 0 when the ring is full. */
static int send_rec(struct ivs_tx *t, uint16_t kind, uint32_t len, uint64_t seq)
{
	struct ivs_rec *h = ivs_tx_reserve(t, len);
	if (!h)
		return 0;
	CHECK((uint8_t *)h == t->data + (t->pos & (t->cap - 1)), "reserve returned %p, not position %lu",
	      (void *)h, (unsigned long)t->pos);
	h->len = len;
	h->kind = kind;
	h->flags = 0;
	h->tag = (int32_t)seq;
	h->ctx = 7;
	h->total = seq;
	h->cookie = splitmix64(seq);
	make_payload((uint8_t *)h + IVS_REC_HDR, len, seq, t->pos, t->cap);
	ivs_tx_commit(t, h);
	return 1;
}

/* Check that the record peek returned is seq with len payload bytes, then consume it. */
static void check_rec(struct ivs_rx *x, const struct ivs_rec *h, const uint8_t *pl, uint16_t kind, uint32_t len,
		      uint64_t seq)
{
	static _Thread_local uint8_t want[IVS_REC_MAX];
	CHECK(h->kind == kind && h->len == len && h->tag == (int32_t)seq && h->ctx == 7 && h->total == seq &&
		      h->cookie == splitmix64(seq),
	      "record %lu at position %lu: got kind %u len %u total %lu, want kind %u len %u",
	      (unsigned long)seq, (unsigned long)x->pos, h->kind, h->len, (unsigned long)h->total, kind, len);
	make_payload(want, len, seq, x->pos, x->cap);
	CHECK(memcmp(pl, want, len) == 0, "record %lu: payload differs", (unsigned long)seq);
	ivs_rx_consume(x, h->len);
}

/* Receive the next record, which must be seq with len payload bytes, and consume it. Returns 0
 * if nothing is published. */
static int recv_rec(struct ivs_rx *x, uint16_t kind, uint32_t len, uint64_t seq)
{
	struct ivs_rec h;
	const uint8_t *pl;
	int rc = ivs_rx_peek(x, &h, &pl);
	if (rc == 0)
		return 0;
	CHECK(rc == 1, "record %lu at position %lu: peek says corrupt (kind %u len %u)", (unsigned long)seq,
	      (unsigned long)x->pos, h.kind, h.len);
	check_rec(x, &h, pl, kind, len, seq);
	return 1;
}

/* With the ring drained, every line start the consumer passed must read 0, and since the
 * allocation started zeroed that is every line start of the data area. */
static void check_scrubbed(const struct fixture *f)
{
	CHECK(f->rx.pos == f->tx.pos, "ring not drained: head %lu tail %lu", (unsigned long)f->rx.pos,
	      (unsigned long)f->tx.pos);
	for (uint64_t o = 0; o < f->rx.cap; o += IVS_ALIGN) {
		uint64_t w;
		memcpy(&w, f->rx.data + o, 8);
		CHECK(w == 0, "line start %lu holds %#lx after the consumer passed it", (unsigned long)o,
		      (unsigned long)w);
	}
}

/* ivs_ring_check accepts exactly the rings the data plane can use, and snapshots what it checked. */
static void test_check(void)
{
	static const struct {
		uint64_t cap, head, tail, room;
		int ok;
	} cases[] = {
		{1024, 0, 0, 1024, 1},
		{1024, 0, 0, 1023, 0}, /* data area past the end of the mapping */
		{IVS_RING_MIN_CAP, 0, 0, 1 << 20, 1},
		{IVS_RING_MIN_CAP / 2, 0, 0, 1 << 20, 0}, /* no room for a record in an eighth */
		{0, 0, 0, 1 << 20, 0},
		{1, 0, 0, 1 << 20, 0},
		{64, 0, 0, 1 << 20, 0},
		{1000, 0, 0, 1 << 20, 0}, /* not a power of two */
		{1536, 0, 0, 1 << 20, 0},
		{1024, 5 * 1024 + 64, 6 * 1024 + 64, 1024, 1}, /* full, several laps on */
		{1024, 5 * 1024 + 64, 6 * 1024 + 128, 1024, 0}, /* fuller than full */
		{1024, 5 * 1024 + 64, 5 * 1024, 1024, 0}, /* tail behind head */
		{1024, 32, 64, 1024, 0}, /* head off a line */
		{1024, 64, 72, 1024, 0}, /* tail off a line */
	};
	struct ivshim_ring *r = ring_alloc(1024);
	struct ivs_ring_snap s;
	const char *why = NULL;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		r->capacity = cases[i].cap, r->head = cases[i].head, r->tail = cases[i].tail;
		int rc = ivs_ring_check(r, cases[i].room, &s, &why);
		CHECK(rc == (cases[i].ok ? 0 : -1), "case %zu: capacity %lu head %lu tail %lu room %lu: got %d (%s)", i,
		      (unsigned long)cases[i].cap, (unsigned long)cases[i].head, (unsigned long)cases[i].tail,
		      (unsigned long)cases[i].room, rc, rc ? why : "accepted");
		CHECK(rc || (s.cap == cases[i].cap && s.head == cases[i].head && s.tail == cases[i].tail),
		      "case %zu: snapshot differs from the ring", i);
	}
	/* A ring header off its line (still 8-aligned, so the loads themselves are fine). */
	r->capacity = 1024, r->head = r->tail = 0;
	uint8_t *block = aligned_alloc(IVS_ALIGN, IVSHIM_RING_DATA_OFF + IVS_ALIGN);
	CHECK(block, "out of memory");
	memcpy(block + 8, r, IVSHIM_RING_DATA_OFF);
	CHECK(ivs_ring_check((struct ivshim_ring *)(block + 8), 1024, &s, &why) == -1, "accepted a misaligned ring");
	free(block);
	free(r);
	printf("ok check\n");
}

/* Records that do not fit before the end of the data area go behind a PAD at the next lap. */
static void test_wrap_pad(void)
{
	struct fixture f;
	fixture_init(&f, 1024);
	uint32_t len = 384 - IVS_REC_HDR; /* 384-byte records: the third needs a PAD at 768 */
	CHECK(send_rec(&f.tx, IVS_REC_MSG, len, 0), "ring full");
	CHECK(send_rec(&f.tx, IVS_REC_FRAG, len, 1), "ring full");
	CHECK(!send_rec(&f.tx, IVS_REC_FRAG, len, 2), "a third record fits with nothing consumed");
	CHECK(f.tx.pos == 768, "a refused reserve moved the producer to %lu", (unsigned long)f.tx.pos);
	CHECK(recv_rec(&f.rx, IVS_REC_MSG, len, 0), "record 0 missing");
	CHECK(send_rec(&f.tx, IVS_REC_FRAG, len, 2), "no room after consuming record 0");
	CHECK(f.tx.pos == 1024 + 384 && f.ring->tail == 1024 + 384, "producer at %lu tail %lu", (unsigned long)f.tx.pos,
	      (unsigned long)f.ring->tail);
	const struct ivs_rec *pad = (const struct ivs_rec *)(f.rx.data + 768);
	CHECK(pad->stamp == (768 | 1) && pad->kind == IVS_REC_PAD, "no PAD at 768");
	CHECK(recv_rec(&f.rx, IVS_REC_FRAG, len, 1), "record 1 missing");
	CHECK(recv_rec(&f.rx, IVS_REC_FRAG, len, 2), "record 2 missing behind the PAD");
	CHECK(f.ring->head == 1024 + 384, "head %lu", (unsigned long)f.ring->head);
	check_scrubbed(&f);
	fixture_free(&f);
	printf("ok wrap_pad\n");
}

/* A full ring refuses records without writing anything, and takes them again as it drains. */
static void test_full(void)
{
	struct fixture f;
	fixture_init(&f, 1024);
	uint64_t sent = 0, got = 0;
	while (send_rec(&f.tx, IVS_REC_ACK, 0, sent))
		sent++;
	CHECK(sent == 1024 / IVS_ALIGN, "%lu one-line records fit in 1024 bytes", (unsigned long)sent);
	CHECK(f.ring->tail == 1024 && !ivs_tx_reserve(&f.tx, 0), "tail %lu", (unsigned long)f.ring->tail);
	CHECK(recv_rec(&f.rx, IVS_REC_ACK, 0, got++), "record 0 missing");
	CHECK(send_rec(&f.tx, IVS_REC_ACK, 0, sent++), "no room after consuming one record");
	CHECK(!send_rec(&f.tx, IVS_REC_ACK, 0, sent), "room for two after consuming one");
	while (got < sent)
		CHECK(recv_rec(&f.rx, IVS_REC_ACK, 0, got++), "record %lu missing", (unsigned long)got - 1);
	CHECK(!recv_rec(&f.rx, IVS_REC_ACK, 0, got), "a record appeared in a drained ring");
	check_scrubbed(&f);
	fixture_free(&f);

	/* One line in flight at offset 768, the producer at 832: a record that needs a PAD needs
	 * room for both (records beyond ivs_tx_max_payload, which the ring itself does not limit). */
	fixture_init(&f, 1024);
	for (sent = got = 0; sent < 12; sent++)
		CHECK(send_rec(&f.tx, IVS_REC_ACK, 0, sent) && recv_rec(&f.rx, IVS_REC_ACK, 0, got++), "record lost");
	CHECK(send_rec(&f.tx, IVS_REC_ACK, 0, sent++), "ring full");
	CHECK(!send_rec(&f.tx, IVS_REC_MSG, 832 - IVS_REC_HDR, sent), "192 PAD + 832 bytes fit in 960 free");
	CHECK(f.tx.pos == 832 && ((struct ivs_rec *)(f.tx.data + 832))->stamp == 0, "a refused reserve wrote a PAD");
	CHECK(send_rec(&f.tx, IVS_REC_MSG, 768 - IVS_REC_HDR, sent++), "192 PAD + 768 bytes do not fit in 960 free");
	CHECK(recv_rec(&f.rx, IVS_REC_ACK, 0, got++), "the record in flight was overwritten");
	CHECK(recv_rec(&f.rx, IVS_REC_MSG, 768 - IVS_REC_HDR, got++), "the record behind the PAD is missing");
	check_scrubbed(&f);
	fixture_free(&f);
	printf("ok full\n");
}

/* Write at p, inside a payload, the header of a record that the payload pretends to hold. */
static void forge(uint8_t *p, uint64_t stamp)
{
	struct ivs_rec fake = {.stamp = stamp, .len = 8, .kind = IVS_REC_MSG, .tag = 99, .total = 8};
	memcpy(p, &fake, sizeof fake);
}

/* Payload that held, at a line start, the stamp of that line one lap later; the consumer reaches
 * that position before the producer does and must see nothing there. */
static void test_forged_next_lap(void)
{
	struct fixture f;
	fixture_init(&f, 1024);
	struct ivs_rec *h = ivs_tx_reserve(&f.tx, 512 - IVS_REC_HDR);
	memset(h, 0, 512);
	h->len = 512 - IVS_REC_HDR;
	h->kind = IVS_REC_MSG;
	forge((uint8_t *)h + 128, (128 + 1024) | 1);
	ivs_tx_commit(&f.tx, h);
	struct ivs_rec got;
	const uint8_t *pl;
	CHECK(ivs_rx_peek(&f.rx, &got, &pl) == 1 && got.len == 512 - IVS_REC_HDR, "big record missing");
	ivs_rx_consume(&f.rx, got.len);
	uint64_t seq = 0;
	while (f.tx.pos < 1024 + 128) {
		CHECK(send_rec(&f.tx, IVS_REC_ACK, 0, seq), "ring full");
		CHECK(recv_rec(&f.rx, IVS_REC_ACK, 0, seq++), "record %lu missing", (unsigned long)seq - 1);
	}
	CHECK(f.rx.pos == 1024 + 128, "consumer at %lu", (unsigned long)f.rx.pos);
	int rc = ivs_rx_peek(&f.rx, &got, &pl);
	CHECK(rc == 0, "peek at %lu before the producer wrote it returned %d (kind %u tag %d): a phantom record",
	      (unsigned long)f.rx.pos, rc, got.kind, got.tag);
	CHECK(send_rec(&f.tx, IVS_REC_MSG, 8, seq), "ring full");
	CHECK(recv_rec(&f.rx, IVS_REC_MSG, 8, seq), "the genuine record is missing");
	check_scrubbed(&f);
	fixture_free(&f);
	printf("ok forged_next_lap\n");
}

/* The same two laps later, with the forged line inside a PAD's span in between: the producer
 * never writes that line in the PAD's lap, so only the scrub of the first lap protects it. */
static void test_forged_across_pad(void)
{
	struct fixture f;
	fixture_init(&f, 1024);
	struct ivs_rec got;
	const uint8_t *pl;
	uint64_t seq = 0;
	CHECK(send_rec(&f.tx, IVS_REC_FRAG, 512 - IVS_REC_HDR, seq), "ring full");
	CHECK(recv_rec(&f.rx, IVS_REC_FRAG, 512 - IVS_REC_HDR, seq++), "record missing");
	struct ivs_rec *h = ivs_tx_reserve(&f.tx, 448 - IVS_REC_HDR); /* [512, 960) */
	memset(h, 0, 448);
	h->len = 448 - IVS_REC_HDR;
	h->kind = IVS_REC_MSG;
	forge((uint8_t *)h + 128, (640 + 2 * 1024) | 1);
	ivs_tx_commit(&f.tx, h);
	CHECK(ivs_rx_peek(&f.rx, &got, &pl) == 1 && got.len == 448 - IVS_REC_HDR, "big record missing");
	ivs_rx_consume(&f.rx, got.len);
	CHECK(send_rec(&f.tx, IVS_REC_ACK, 0, seq), "ring full"); /* [960, 1024) */
	CHECK(recv_rec(&f.rx, IVS_REC_ACK, 0, seq++), "record missing");
	CHECK(send_rec(&f.tx, IVS_REC_FRAG, 576 - IVS_REC_HDR, seq), "ring full"); /* [1024, 1600) */
	CHECK(recv_rec(&f.rx, IVS_REC_FRAG, 576 - IVS_REC_HDR, seq++), "record missing");
	CHECK(send_rec(&f.tx, IVS_REC_FRAG, 512 - IVS_REC_HDR, seq), "ring full"); /* PAD [1600, 2048) */
	CHECK(f.tx.pos == 2048 + 512, "no PAD: producer at %lu", (unsigned long)f.tx.pos);
	CHECK(recv_rec(&f.rx, IVS_REC_FRAG, 512 - IVS_REC_HDR, seq++), "record behind the PAD missing");
	while (f.tx.pos < 2048 + 640) {
		CHECK(send_rec(&f.tx, IVS_REC_ACK, 0, seq), "ring full");
		CHECK(recv_rec(&f.rx, IVS_REC_ACK, 0, seq++), "record missing");
	}
	int rc = ivs_rx_peek(&f.rx, &got, &pl);
	CHECK(rc == 0, "peek at %lu before the producer wrote it returned %d (kind %u tag %d): a phantom record",
	      (unsigned long)f.rx.pos, rc, got.kind, got.tag);
	check_scrubbed(&f);
	fixture_free(&f);
	printf("ok forged_across_pad\n");
}

/* Publish a hand-made header at the consumer's position, as a hostile or broken peer might. */
static int peek_raw(struct fixture *f, uint64_t stamp, uint16_t kind, uint32_t len)
{
	struct ivs_rec *r = (struct ivs_rec *)(f->rx.data + (f->rx.pos & (f->rx.cap - 1)));
	r->len = len;
	r->kind = kind;
	__atomic_store_n(&r->stamp, stamp, __ATOMIC_RELEASE);
	struct ivs_rec h;
	const uint8_t *pl;
	int rc = ivs_rx_peek(&f->rx, &h, &pl);
	if (rc == 1)
		CHECK(pl + h.len <= f->rx.data + f->rx.cap, "payload runs past the data area");
	return rc;
}

static void test_corrupt(void)
{
	struct fixture f;
	struct ivshim_ring *r = ring_alloc(1024);
	r->head = r->tail = 3 * 1024 + 960; /* one line before the end of the data area */
	attach(&f, r);
	uint64_t pos = f.rx.pos, stamp = pos | 1;
	CHECK(peek_raw(&f, stamp, IVS_REC_MSG, 25) == -1, "len one past the data area accepted");
	CHECK(peek_raw(&f, stamp, IVS_REC_MSG, 0xffffffffu) == -1, "len 2^32-1 accepted");
	CHECK(peek_raw(&f, stamp, IVS_REC_FRAG, 24) == 1, "a record filling the data area exactly refused");
	CHECK(peek_raw(&f, stamp, IVS_REC_MARK, 0) == 1, "a MARK refused");
	uint16_t bad_kinds[] = {0, IVS_REC_MARK + 1, 0xffff};
	for (size_t i = 0; i < sizeof bad_kinds / sizeof bad_kinds[0]; i++)
		CHECK(peek_raw(&f, stamp, bad_kinds[i], 0) == -1, "kind %u accepted", bad_kinds[i]);
	uint64_t not_ours[] = {pos, pos - 1024 + 1, pos + 1024 + 1, pos + 64 + 1, 0};
	for (size_t i = 0; i < sizeof not_ours / sizeof not_ours[0]; i++)
		CHECK(peek_raw(&f, not_ours[i], IVS_REC_MSG, 0) == 0, "stamp %#lx taken for position %#lx",
		      (unsigned long)not_ours[i], (unsigned long)pos);
	CHECK(f.rx.pos == pos && f.ring->head == pos, "the consumer moved");
	fixture_free(&f);

	/* A PAD at offset 0 skips a whole lap, whatever its len says, and the lap after stays inside. */
	fixture_init(&f, 1024);
	CHECK(peek_raw(&f, 1, IVS_REC_PAD, 0xffffffffu) == 0, "nothing is published behind the PAD");
	CHECK(f.rx.pos == 1024 && f.ring->head == 1024, "a PAD at 0 moved the consumer to %lu", (unsigned long)f.rx.pos);
	CHECK(peek_raw(&f, 1024 | 1, IVS_REC_MSG, 985) == -1, "len past the data area accepted after a PAD");
	fixture_free(&f);
	printf("ok corrupt\n");
}

/* Seeded random sizes and interleavings against a model queue, on several capacities. Phases
 * of mostly sending and mostly receiving alternate, so every ring fills and drains. */
static void test_random(void)
{
	enum { OPS = 40000, PHASE = 1000, QMAX = 1 << 13 };
	static struct {
		uint16_t kind;
		uint32_t len;
	} q[QMAX];
	uint64_t caps[] = {IVS_RING_MIN_CAP, 1024, 4096, 64 << 10, 256 << 10};
	uint64_t rng = 42;
	for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
		struct fixture f;
		fixture_init(&f, caps[c]);
		uint64_t cap = caps[c], max = ivs_tx_max_payload(&f.tx), sent = 0, got = 0, refused = 0;
		for (int op = 0; op < OPS; op++) {
			rng = splitmix64(rng);
			int filling = (op / PHASE) & 1;
			if (filling == (rng % 8 != 0)) {
				uint16_t kind = IVS_REC_MSG + (uint16_t)((rng >> 3) % 3);
				uint32_t len = kind == IVS_REC_ACK ? 0 : (uint32_t)((rng >> 8) % (max + 1));
				uint64_t size = ivs_rec_size(len), off = f.tx.pos & (cap - 1);
				uint64_t need = size + (off + size > cap ? cap - off : 0);
				if (!send_rec(&f.tx, kind, len, sent)) {
					CHECK(f.tx.pos + need - f.rx.pos > cap, "refused %lu bytes with %lu free",
					      (unsigned long)need, (unsigned long)(cap - (f.tx.pos - f.rx.pos)));
					refused++;
					continue;
				}
				CHECK(sent - got < QMAX, "model queue overflow");
				q[sent % QMAX].kind = kind;
				q[sent % QMAX].len = len;
				sent++;
			} else {
				for (uint64_t n = 1 + (rng >> 3) % 4; n > 0 && got < sent; n--, got++)
					CHECK(recv_rec(&f.rx, q[got % QMAX].kind, q[got % QMAX].len, got), "record %lu missing",
					      (unsigned long)got);
				if (got == sent)
					CHECK(!recv_rec(&f.rx, 0, 0, got), "a record appeared in a drained ring");
			}
		}
		for (; got < sent; got++)
			CHECK(recv_rec(&f.rx, q[got % QMAX].kind, q[got % QMAX].len, got), "record %lu missing", (unsigned long)got);
		check_scrubbed(&f);
		CHECK(f.tx.pos > 4 * cap && refused > 0, "capacity %lu: %lu bytes and %lu refusals do not wrap and fill it",
		      (unsigned long)cap, (unsigned long)f.tx.pos, (unsigned long)refused);
		fixture_free(&f);
	}
	printf("ok random\n");
}

/* Two threads, one ring: the producer sends checksummed records of seeded random sizes as fast
 * as the ring takes them until the time is up, then an end marker; the consumer checks each. */
struct soak {
	struct fixture f;
	double seconds;
	uint64_t max;     /* payload bound, fixed before the threads start */
	uint64_t records; /* written by the producer, read after join */
};

#define SOAK_END 0xffffffffu

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t soak_len(uint64_t seq, uint64_t max)
{
	uint64_t r = splitmix64(seq ^ 0x5eed);
	return (r & 3) == 0 ? (uint32_t)(r >> 8) % (uint32_t)(max + 1) : (uint32_t)(r >> 8) % 256;
}

static void spin(unsigned *n)
{
	if (++*n % 64 == 0)
		sched_yield(); /* two cores, maybe shared: let the other side run */
}

static void *soak_producer(void *arg)
{
	struct soak *s = arg;
	double end = now() + s->seconds;
	unsigned n = 0;
	uint64_t seq;
	for (seq = 0; (seq & 1023) || now() < end; seq++)
		while (!send_rec(&s->f.tx, seq & 1 ? IVS_REC_FRAG : IVS_REC_MSG, soak_len(seq, s->max), seq))
			spin(&n);
	while (!send_rec(&s->f.tx, IVS_REC_ACK, 0, SOAK_END))
		spin(&n);
	s->records = seq;
	return NULL;
}

static void *soak_consumer(void *arg)
{
	struct soak *s = arg;
	unsigned n = 0;
	for (uint64_t seq = 0;; seq++) {
		struct ivs_rec h;
		const uint8_t *pl;
		int rc;
		while ((rc = ivs_rx_peek(&s->f.rx, &h, &pl)) == 0)
			spin(&n);
		CHECK(rc == 1, "soak record %lu: peek says corrupt (kind %u len %u)", (unsigned long)seq, h.kind, h.len);
		if (h.kind == IVS_REC_ACK && h.total == SOAK_END) {
			ivs_rx_consume(&s->f.rx, h.len);
			return NULL;
		}
		check_rec(&s->f.rx, &h, pl, seq & 1 ? IVS_REC_FRAG : IVS_REC_MSG, soak_len(seq, s->max), seq);
	}
}

static void test_soak(uint64_t cap, double seconds)
{
	struct soak s = {.seconds = seconds};
	fixture_init(&s.f, cap);
	s.max = ivs_tx_max_payload(&s.f.tx);
	pthread_t p, c;
	double start = now();
	CHECK(pthread_create(&c, NULL, soak_consumer, &s) == 0, "pthread_create");
	CHECK(pthread_create(&p, NULL, soak_producer, &s) == 0, "pthread_create");
	pthread_join(p, NULL);
	pthread_join(c, NULL);
	double took = now() - start;
	check_scrubbed(&s.f);
	CHECK(s.records >= 1024, "only %lu records", (unsigned long)s.records);
	printf("ok soak capacity %lu: %lu records, %.1f laps in %.1f s\n", (unsigned long)cap, (unsigned long)s.records,
	       (double)s.f.tx.pos / (double)cap, took);
	fixture_free(&s.f);
}

/* Whether the command line selects the test called name: all run when none is named. */
static int selected(int argc, char **argv, const char *name)
{
	if (argc <= 2)
		return 1;
	for (int a = 2; a < argc; a++)
		if (strcmp(argv[a], name) == 0)
			return 1;
	return 0;
}

/* Rings on first use: WANT_SLOTS sender threads each ask the receiver for their ring (every
 * third one twice) and wait for the answer; one receiver thread takes the asks and answers each
 * sender once, with a "ring" (its header written before the answer) or with NET. Every sender
 * gets exactly its answer and sees the header complete; no ask is lost, none answered twice. */
enum { WANT_SLOTS = 200, WANT_SENDERS_PER_THREAD = 25 };
static uint64_t want_bits[IVSHIM_MAX_SLOTS / 64];
static uint64_t want_pairs[WANT_SLOTS];
static uint64_t want_headers[WANT_SLOTS];
static uint8_t want_answered[WANT_SLOTS]; /* the receiver's own record */

static void *want_senders(void *arg)
{
	uint32_t first = (uint32_t)(uintptr_t)arg;
	for (uint32_t s = first; s < first + WANT_SENDERS_PER_THREAD; s++) {
		ivs_want_ask(want_bits, s);
		if (s % 3 == 0)
			ivs_want_ask(want_bits, s); /* asked again before the answer: one answer all the same */
	}
	for (uint32_t s = first; s < first + WANT_SENDERS_PER_THREAD; s++) {
		uint64_t v;
		while (!(v = ivs_pair_read(&want_pairs[s])))
			sched_yield();
		if (s % 2)
			CHECK(v == 4096 + 64 * (uint64_t)s && want_headers[s] == splitmix64(s),
			      "slot %u: answer %#lx, header %#lx", s, (unsigned long)v, (unsigned long)want_headers[s]);
		else
			CHECK(v == IVSHIM_PAIR_NET, "slot %u: answer %#lx, want NET", s, (unsigned long)v);
	}
	return NULL;
}

static void *want_receiver(void *arg)
{
	(void)arg;
	int n = 0;
	while (n < WANT_SLOTS) {
		int took = 0;
		for (uint32_t k = 0; k < (WANT_SLOTS + 63) / 64; k++) {
			for (uint64_t v = ivs_want_take(want_bits, k); v; v &= v - 1) {
				uint32_t s = k * 64 + (uint32_t)__builtin_ctzll(v);
				CHECK(s < WANT_SLOTS, "ask from slot %u, nobody's", s);
				took = 1;
				if (want_answered[s])
					continue;
				want_answered[s] = 1;
				n++;
				if (s % 2) {
					want_headers[s] = splitmix64(s);
					ivs_pair_answer(&want_pairs[s], 4096 + 64 * (uint64_t)s);
				} else {
					ivs_pair_answer(&want_pairs[s], IVSHIM_PAIR_NET);
				}
			}
		}
		if (!took)
			sched_yield();
	}
	return NULL;
}

static void test_want(void)
{
	for (int round = 0; round < 20; round++) {
		memset(want_bits, 0, sizeof want_bits);
		memset(want_pairs, 0, sizeof want_pairs);
		memset(want_headers, 0, sizeof want_headers);
		memset(want_answered, 0, sizeof want_answered);
		pthread_t rx, tx[WANT_SLOTS / WANT_SENDERS_PER_THREAD];
		CHECK(pthread_create(&rx, NULL, want_receiver, NULL) == 0, "pthread_create");
		for (int i = 0; i < WANT_SLOTS / WANT_SENDERS_PER_THREAD; i++)
			CHECK(pthread_create(&tx[i], NULL, want_senders, (void *)(uintptr_t)(i * WANT_SENDERS_PER_THREAD)) == 0,
			      "pthread_create");
		for (int i = 0; i < WANT_SLOTS / WANT_SENDERS_PER_THREAD; i++)
			pthread_join(tx[i], NULL);
		pthread_join(rx, NULL);
	}
	printf("want: %d senders asked and got their answers, 20 rounds\n", WANT_SLOTS);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(void);
	} tests[] = {
		{"check", test_check},
		{"wrap_pad", test_wrap_pad},
		{"full", test_full},
		{"forged_next_lap", test_forged_next_lap},
		{"forged_across_pad", test_forged_across_pad},
		{"corrupt", test_corrupt},
		{"random", test_random},
		{"want", test_want},
	};
	double soak = argc > 1 ? atof(argv[1]) : 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
		if (selected(argc, argv, tests[i].name))
			tests[i].run();
	if (selected(argc, argv, "soak")) {
		test_soak(1024, soak / 2);
		test_soak(64 << 10, soak / 2);
	}
	return 0;
}
