/* Rings on first use (ivshmem/ivshim_region.h, "Pair words"). A pair of co-located ranks has no
 * ring until its sender first needs one (a message or an ACK to write): the sender sets its bit
 * in the receiver's ring_wanted and keeps what it has queued; the receiver, at its next progress
 * (the library's progress hook included, so a receiver blocked in a library call answers too),
 * makes the ring through the control plane and publishes it in the pair word, or publishes
 * IVSHIM_PAIR_NET when the region has no room left; the sender maps the ring and pushes its
 * queue, or sends the queue by the library, in order, and every later message too. So region
 * memory grows with the pairs that talk, not with the square of the group.
 *
 * A pair word is written by its receiver only, once per session: 0 -> ring or 0 -> NET. Nothing
 * crosses the library before the answer: until it, the sender's messages wait in its queue, so a
 * direction that ends on the library has nothing in a ring to order against (no MARK needed).
 *
 * A migration (migrate.c) closes pairs that may not have their rings yet: the receiver of a
 * direction without a ring answers NET at once (ivs_pair_rx_net) and makes no ring for it later;
 * the sender of a direction without a mapped ring waits for the answer before it closes
 * (ivs_pair_tx_resolve): its queued messages must go in first wherever the answer sends them,
 * and a ring the receiver made needs the MARK. tests/model/firstuse.pml checks this. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include "ivshim.h"

static void rx_make(struct ivs_peer *p);
static int *slot_world; /* slot -> world rank of a co-located peer, -1 for any other slot */

/* At start, for the peers the control plane gave; at a rejoin (migrate.c), for none yet. */
void ivs_pairs_init(void)
{
	free(slot_world);
	slot_world = malloc(sizeof *slot_world * ivs.nslots);
	if (!slot_world)
		ivs_fatal("out of memory");
	for (uint32_t s = 0; s < ivs.nslots; s++)
		slot_world[s] = -1;
	if (ivs.released)
		return;
	for (int i = 0; i < ivs.nlocal; i++) {
		int w = ivs.local_world[i];
		uint32_t s = ivs.peers[w]->slot;
		if (s >= ivs.nslots)
			ivs_fatal("control plane gave slot %u for rank %d, the region has %u", s, w, ivs.nslots);
		slot_world[s] = w;
	}
}

/* Slot holds world rank world now, if it held was (-1: whatever it held). Slots out of the
 * region are ignored (a peer's slot of a region this rank left). */
void ivs_pairs_slot(uint32_t slot, int world, int was)
{
	if (slot < ivs.nslots && (was < 0 || slot_world[slot] == was))
		slot_world[slot] = world;
}

static inline uint64_t *pair_word(uint32_t sender, uint32_t receiver)
{
	return &ivs.pairs[(uint64_t)sender * ivs.nslots + receiver];
}

/* ---- the sender's side ---- */

/* The ring at region offset off from slot sender to slot receiver, checked before use: it must
 * lie in the region, be well formed and name this pair (the control plane checked the
 * allocation; another VM may have changed the header since, so the snapshot *snap is what the
 * private view is built from). Anything else stops the rank: the region is corrupt. */
static struct ivshim_ring *ring_at(uint64_t off, uint32_t sender, uint32_t receiver, int world, const char *dir,
                                   struct ivs_ring_snap *snap)
{
	const char *why = NULL;
	struct ivshim_ring *r = (struct ivshim_ring *)(ivs.base + off);
	if (off < IVSHIM_HEADER_SIZE || off % IVS_ALIGN || off > ivs.size - IVSHIM_RING_DATA_OFF)
		why = "offset outside the region";
	else if (ivs_ring_check(r, ivs.size - off - IVSHIM_RING_DATA_OFF, snap, &why) == 0 &&
	         (__atomic_load_n(&r->sender_slot, __ATOMIC_RELAXED) != sender ||
	          __atomic_load_n(&r->receiver_slot, __ATOMIC_RELAXED) != receiver))
		why = "the ring names another pair";
	if (why)
		ivs_fatal("%s ring of rank %d at region offset %#lx: %s", dir, world, (unsigned long)off, why);
	return r;
}

static void tx_map(struct ivs_peer *p, uint64_t off)
{
	struct ivs_ring_snap s;
	p->tx.ring = ring_at(off, ivs.self_slot, p->slot, p->world, "outbound", &s);
	p->tx.data = (uint8_t *)p->tx.ring + IVSHIM_RING_DATA_OFF;
	p->tx.cap = s.cap;
	p->tx.pos = s.tail;
	p->tx.head_cache = s.head;
}

/* The queued sends of a direction that takes the library, issued in their order. Each stays
 * a shim request (its handle is the user's) that completes with its library request; one
 * nobody waits for (freed, a buffered send's copy) is completed by ivs_pair_progress. */
static struct ivs_req *netsends; /* linked through next */

static void send_by_library(struct ivs_req *r)
{
	/* The bytes are the packed form of the user's data: sent as MPI_PACKED, which a receive
	 * of any type matching the signature accepts. A window (datatype.c) still has the user's
	 * buffer and type: the library packs those itself. */
	MPI_Datatype t = MPI_PACKED, big = MPI_DATATYPE_NULL;
	const void *buf = r->cbuf;
	int count = (int)r->cap;
	if (r->packed == IVS_PACKED_WINDOW) {
		ivs_dt_drop(r);
		buf = r->ubuf;
		count = r->count;
		t = r->dt;
	} else if (r->cap > INT_MAX) { /* count is an int: whole blocks of 1 MiB, then the rest */
		MPI_Datatype parts[2] = {MPI_BYTE, MPI_BYTE}, block;
		PMPI_Type_contiguous(1 << 20, MPI_BYTE, &block);
		parts[0] = block;
		int lens[2] = {(int)(r->cap >> 20), (int)(r->cap & ((1u << 20) - 1))};
		MPI_Aint disp[2] = {0, (MPI_Aint)(r->cap & ~(uint64_t)((1u << 20) - 1))};
		PMPI_Type_create_struct(2, lens, disp, parts, &big);
		PMPI_Type_commit(&big);
		PMPI_Type_free(&block);
		t = big;
		count = 1;
	}
	int rc = r->sync ? PMPI_Issend(buf, count, t, r->peer, r->tag, r->comm->handle, &r->inner)
	                 : PMPI_Isend(buf, count, t, r->peer, r->tag, r->comm->handle, &r->inner);
	if (big != MPI_DATATYPE_NULL)
		PMPI_Type_free(&big);
	ivs.stats.messages[IVSHIM_PATH_SHM]--;
	ivs.stats.bytes[IVSHIM_PATH_SHM] -= r->cap;
	ivs.stats.messages[IVSHIM_PATH_NET]++;
	ivs.stats.bytes[IVSHIM_PATH_NET] += r->cap;
	r->net_send = 1;
	if (ivs_count_sent(r->comm, r->peer, rc) != MPI_SUCCESS) {
		r->error = rc;
		r->inner = MPI_REQUEST_NULL;
	}
	r->next = netsends;
	netsends = r;
	ivs.switching = 1; /* ivs_pair_progress completes it if nobody waits */
}

/* The receiver answered NET: the queue goes by the library, and so does everything after it. */
static void tx_to_library(struct ivs_peer *p)
{
	struct ivs_req *r;
	p->closing = 1;
	p->tx_net = 1;
	p->tx_want = 0;
	while ((r = p->sendq)) {
		p->sendq = r->next;
		ivs.nsend_queued--;
		if (r->sync_wait) { /* the library's synchronous send waits for the match itself */
			r->sync_wait = 0;
			ivs.nsync_wait--;
		}
		send_by_library(r);
	}
	p->sendq_tail = NULL;
	if (p->nacks)
		ivs.switching = 1; /* migrate.c sends them by the library */
}

/* Whether the outbound ring to p is mapped now, asking for it if not yet asked. A NET answer
 * is acted on only where the library may be called (lib_ok): the library's progress hook
 * leaves it to the next ivs_progress. */
int ivs_pair_tx_ready(struct ivs_peer *p, int lib_ok)
{
	if (p->tx.ring)
		return 1;
	uint64_t v = ivs_pair_read(pair_word(ivs.self_slot, p->slot));
	if (v == 0) {
		if (!p->tx_want && !p->closing) { /* a closing direction without a ring gets none */
			ivs_want_ask(ivs.slots[p->slot].ring_wanted, ivs.self_slot);
			p->tx_want = 1;
		}
		return 0;
	}
	if (v == IVSHIM_PAIR_NET) {
		if (lib_ok)
			tx_to_library(p);
		else
			ivs.switching = 1;
		return 0;
	}
	tx_map(p, v);
	p->tx_want = 0;
	return 1;
}

/* At a migration's close of the direction to p (migrate.c): 1 once the direction may close, its
 * pair word answered: with a ring, which then takes the queue and the MARK, or with NET, after
 * which the direction already is on the library. Asked or not: the receiver may have made the
 * ring unasked (ivs_pair_ack_ready) and then waits for the MARK; without a ring it answers NET
 * when it sees the flag itself (tests/model/firstuse.pml). */
int ivs_pair_tx_resolve(struct ivs_peer *p)
{
	if (p->tx.ring || p->tx_net)
		return 1;
	ivs_pair_tx_ready(p, 1);
	return p->tx.ring || p->tx_net;
}

/* Completion of a send that went by the library (send_by_library). */
int ivs_pair_send_poll(struct ivs_req *r)
{
	if (r->state == IVS_DONE)
		return 1;
	int flag = 1;
	if (r->inner != MPI_REQUEST_NULL) {
		int rc = PMPI_Test(&r->inner, &flag, MPI_STATUS_IGNORE);
		if (rc != MPI_SUCCESS) {
			r->error = rc;
			flag = 1;
		}
	}
	if (!flag)
		return 0;
	for (struct ivs_req **pp = &netsends; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	}
	r->next = NULL;
	ivs_send_done(r);
	return 1;
}

/* A synchronous send through the ring needs its ACK back through the peer's ring to this rank:
 * an ACK that had to take the library would wait while the peer sits in a blocking library
 * call (the library's progress hook never calls the library), and the sender with it. So before
 * the first record of a synchronous send goes in, the reverse ring must exist: this rank makes
 * it (it is its receiver) if the peer has not asked yet. Without one (no room, or the reverse
 * direction closed), the direction closes: a MARK after what is in the ring, then the
 * synchronous send and everything after it by the library (ivs_pair_close_for_ack). */
int ivs_pair_ack_ready(struct ivs_peer *p)
{
	if (p->closing)
		return 1; /* closing for a migration: newer messages already took the library, so the
		             queue goes into the ring before the MARK (its ACKs by the library) */
	if (p->rx.ring)
		return !p->rx_mark;
	if (p->rx_mark || p->leave_seen || ivs.released)
		return 0;
	rx_make(p);
	return p->rx.ring != NULL;
}

/* migrate.c's switch: close a direction whose synchronous send could not be answered by ring.
 * Returns 1 once done. */
int ivs_pair_close_for_ack(struct ivs_peer *p)
{
	if (!p->tx.ring || p->tx_net) { /* closed meanwhile: the queue has gone its way */
		p->ack_blocked = 0;
		return 1;
	}
	if (!ivs_tx_mark(&p->tx))
		return 0; /* the ring is full: the receiver makes room */
	if (p->nacks)
		ivs.switching = 1;
	tx_to_library(p);
	p->ack_blocked = 0;
	if (ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: messages to rank %d take the MPI library from a synchronous send on: "
		        "no ring from rank %d to answer it\n", ivs.world_rank, p->world, p->world);
	return 1;
}

/* ---- the receiver's side ---- */

/* No ring from p's rank will be made here: say NET, and read its messages from the library
 * from now on (migrate.c's on_mark does the switch of posted receives). */
void ivs_pair_rx_net(struct ivs_peer *p)
{
	ivs_pair_answer(pair_word(p->slot, ivs.self_slot), IVSHIM_PAIR_NET);
	p->rx_mark = 1;
	ivs.switching = 1;
}

/* Make this rank's inbound ring from p through the control plane and map it; 0 if there is none
 * (the reason printed). */
static int rx_map(struct ivs_peer *p)
{
	char err[256] = "";
	uint64_t off = ivs.ctl_ring(p->slot, p->joined, err, sizeof err);
	if (!off) {
		static int warned;
		if (!warned++ || ivs.verbose)
			fprintf(stderr, "ivshim: rank %d: no ring from rank %d: %s; its messages to this rank take the MPI library\n",
			        ivs.world_rank, p->world, err);
		return 0;
	}
	struct ivs_ring_snap s;
	p->rx.ring = ring_at(off, p->slot, ivs.self_slot, p->world, "inbound", &s);
	p->rx.data = (uint8_t *)p->rx.ring + IVSHIM_RING_DATA_OFF;
	p->rx.cap = s.cap;
	p->rx.pos = s.head;
	return 1;
}

static void rx_make(struct ivs_peer *p)
{
	if (!rx_map(p))
		ivs_pair_rx_net(p);
}

/* join.c: the inbound ring from p, a pair made at run time, made now or kept from an earlier
 * try in this region (the sender did not switch then: nothing is in it). */
int ivs_pair_rx_join(struct ivs_peer *p)
{
	return p->rx.ring || rx_map(p);
}

/* join.c: the outbound ring to p, which p made for this pair (DRAINED), mapped; 0 if the pair
 * word holds none. */
int ivs_pair_tx_join(struct ivs_peer *p)
{
	if (p->tx.ring)
		return 1;
	uint64_t v = ivs_pair_read(pair_word(ivs.self_slot, p->slot));
	if (v == 0 || v == IVSHIM_PAIR_NET)
		return 0;
	tx_map(p, v);
	p->tx_want = 0;
	return 1;
}

/* Answer the senders that asked for their ring. The bits come from shared memory: one that names
 * no co-located peer of this job, or a pair that has its answer already, is ignored. */
int ivs_pair_serve(void)
{
	uint64_t *bits = ivs.slots[ivs.self_slot].ring_wanted;
	int did = 0;
	for (uint32_t k = 0; k < (ivs.nslots + 63) / 64; k++) {
		for (uint64_t v = ivs_want_take(bits, k); v; v &= v - 1) {
			uint32_t s = k * 64 + (uint32_t)__builtin_ctzll(v);
			int w = s < ivs.nslots ? slot_world[s] : -1;
			struct ivs_peer *p = w >= 0 ? ivs.peers[w] : NULL;
			if (!p || p->rx.ring || p->rx_mark || p->leave_seen)
				continue;
			rx_make(p);
			did = 1;
		}
	}
	return did;
}

/* Sends that went by the library complete here (or in the wait of whoever waits for one first).
 * Returns whether any is left. */
int ivs_pair_progress(void)
{
	for (struct ivs_req *r = netsends, *next; r; r = next) {
		next = r->next;
		ivs_pair_send_poll(r);
	}
	return netsends != NULL;
}
