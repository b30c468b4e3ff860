/* The progress engine: drains inbound rings into posted receives or the unexpected queue,
 * pushes queued sends into outbound rings, and completes matched-probe receives for the
 * network path. Called from every wait loop; never blocks. */
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ivshim.h"

struct ivs_state ivs;

IVS_COLD void ivs_fatal(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "ivshim: fatal on rank %d: %s\n", ivs.world_rank, msg);
	fflush(stderr);
	PMPI_Abort(MPI_COMM_WORLD, 70);
	abort();
}

/* Spin briefly, then give the core away: with more ranks than cores a pure spin starves the
 * very peer being waited for. While yielding, keep the MPI library progressing too: this rank's
 * library sends (to a VM elsewhere, or a co-located rank that does not use the shim, or inside a
 * library collective it has already left) may be what another rank waits for, whatever the
 * layout (a one-host job still has library traffic between its VMs).
 *
 * How long to spin depends on whether the core is shared, which no rank can see across VMs; the
 * yields tell. A yield that returns at once (no other task was runnable here: the peer runs on
 * another core) is a blind window of a syscall (0.6 us in these guests) in which the peer's
 * answer waits: spinning longer is cheaper, so after IVS_FAST_YIELDS such yields in a row the
 * spin doubles, up to IVS_SPIN_MAX. A yield that took several times the fastest one, and over a
 * microsecond, ran another task on this core: spinning only delays it, so the spin drops to
 * IVS_SPIN_MIN (a switch to another task and back takes 3.5 us in these guests). Measured on
 * 2 CPUs, ranks pinned to their own core: PingPong 0 B 0.43 us with a fixed spin of 16, 0.15 us
 * with 64; with 4 ranks on 2 CPUs, a fixed 64 made Barrier 5.5 -> 7.8 us. */
enum {
	IVS_SPIN_MIN = 16,
	IVS_SPIN_MAX = 128,
	IVS_FAST_YIELDS = 16,       /* in a row, to double the spin */
	IVS_YIELD_SWITCHED = 3,     /* a yield this many times the fastest one switched tasks, */
	IVS_YIELD_SWITCHED_NS = 1000 /* if it also took this long: no task switch takes less */
};

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* A wait that goes on ivs.stall_ns (IVSHIM_STALL_SECONDS), and again at every doubling, says
 * what it waits for (stall.c). The wait's first yield sets IVS_WAIT_YIELDED in its *spins and
 * notes the time; a caller that saw progress and zeroes *spins starts anew. */
#define IVS_WAIT_YIELDED (1u << 31)

void ivs_wait_pause(unsigned *spins)
{
	static unsigned limit = IVS_SPIN_MIN, fast = 0; /* fast: yields in a row that switched nothing */
	static uint64_t fastest = UINT64_MAX; /* ns of the fastest yield seen */
	static uint64_t wait_start, stall_next; /* ns: the yielding wait's first yield, next report */
	if ((++*spins & ~IVS_WAIT_YIELDED) < limit) {
		__builtin_ia32_pause();
		return;
	}
	uint64_t t0 = now_ns();
	if (!(*spins & IVS_WAIT_YIELDED)) {
		*spins |= IVS_WAIT_YIELDED;
		wait_start = t0;
		stall_next = ivs.stall_ns;
	} else if (stall_next && t0 - wait_start >= stall_next) {
		ivs_stall_report((double)(t0 - wait_start) * 1e-9);
		stall_next *= 2;
	}
	sched_yield();
	uint64_t took = now_ns() - t0;
	if (took < fastest)
		fastest = took;
	if (took > IVS_YIELD_SWITCHED_NS && took > IVS_YIELD_SWITCHED * fastest) {
		limit = IVS_SPIN_MIN;
		fast = 0;
	} else if (++fast >= IVS_FAST_YIELDS && limit < IVS_SPIN_MAX) {
		limit *= 2;
		fast = 0;
	}
	ivs_lib_wait_poke();
}

/* Messages come from a free list, and one with at most IVS_MSG_SMALL payload bytes buffers
 * them in its own allocation (just past the struct): a small message that arrives before its
 * receive (each direction of PingPing or Exchange, most of the time) then costs no malloc,
 * realloc and two frees, about 180 instructions, a third of its whole path through the shim.
 * Sanitizer builds keep no free list, so a message used after its release is caught. */
enum { IVS_MSG_SMALL = 256 };
#if defined(__SANITIZE_ADDRESS__)
enum { IVS_MSG_KEEP = 0 };
#else
enum { IVS_MSG_KEEP = 256 }; /* released messages kept for reuse */
#endif
static struct ivs_msg *msg_free_list;
static int msg_nfree;

static uint8_t *msg_small(struct ivs_msg *m) { return (uint8_t *)(m + 1); }

/* A message record holding *init. */
struct ivs_msg *ivs_msg_new(const struct ivs_msg *init)
{
	struct ivs_msg *m = msg_free_list;
	if (m) {
		msg_free_list = m->next;
		msg_nfree--;
	} else if (!(m = malloc(sizeof *m + IVS_MSG_SMALL))) {
		ivs_fatal("out of memory for a message record");
	}
	*m = *init;
	return m;
}

static void msg_buf_free(struct ivs_msg *m)
{
	if (m->buf != msg_small(m))
		free(m->buf);
	m->buf = NULL;
	m->buf_cap = 0;
}

void ivs_msg_free(struct ivs_msg *m)
{
	msg_buf_free(m);
	if (msg_nfree >= IVS_MSG_KEEP) {
		free(m);
		return;
	}
	m->next = msg_free_list;
	msg_free_list = m;
	msg_nfree++;
}

int ivs_match(const struct ivs_req *r, const struct ivs_msg *m)
{
	if (r->comm->ctx != m->ctx)
		return 0;
	if (r->tag != MPI_ANY_TAG && r->tag != m->tag)
		return 0;
	if (r->peer == MPI_ANY_SOURCE) {
		struct ivs_peer *p = ivs.peers[m->src_world];
		return r->comm->by_local[p->local] >= 0;
	}
	return r->comm->world[r->peer] == m->src_world;
}

void ivs_post_recv(struct ivs_req *r)
{
	r->prev = ivs.posted_tail;
	r->next = NULL;
	if (ivs.posted_tail)
		ivs.posted_tail->next = r;
	else
		ivs.posted = r;
	ivs.posted_tail = r;
	r->in_posted = 1;
	if (r->recv_mode == IVS_RM_PROBE)
		r->comm->pending_probe++;
}

void ivs_unpost(struct ivs_req *r)
{
	if (!r->in_posted)
		return;
	if (r->prev)
		r->prev->next = r->next;
	else
		ivs.posted = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		ivs.posted_tail = r->prev;
	r->in_posted = 0;
	if (r->recv_mode == IVS_RM_PROBE)
		r->comm->pending_probe--;
}

void ivs_unexp_remove(struct ivs_msg *m)
{
	ivs.nunexp_net -= m->via_lib;
	if (m->prev)
		m->prev->next = m->next;
	else
		ivs.unexp = m->next;
	if (m->next)
		m->next->prev = m->prev;
	else
		ivs.unexp_tail = m->prev;
	m->next = m->prev = NULL;
}

void ivs_unexp_append(struct ivs_msg *m)
{
	m->via_lib = ivs.peers[m->src_world]->rx_net;
	ivs.nunexp_net += m->via_lib;
	m->next = NULL;
	m->prev = ivs.unexp_tail;
	if (ivs.unexp_tail)
		ivs.unexp_tail->next = m;
	else
		ivs.unexp = m;
	ivs.unexp_tail = m;
}

static void recv_complete(struct ivs_req *r, struct ivs_msg *m)
{
	r->st_source = r->comm->by_local[ivs.peers[m->src_world]->local];
	r->st_tag = m->tag;
	r->st_bytes = m->total < r->cap ? m->total : r->cap;
	if (m->total > r->cap)
		r->error = MPI_ERR_TRUNCATE;
	int rc = ivs_dt_recv_finish(r);
	if (rc != MPI_SUCCESS && r->error == MPI_SUCCESS)
		r->error = rc;
	r->state = IVS_DONE;
	if (r->free_on_done)
		ivs_req_release(r);
}

/* Copy payload bytes at message offset `at` into the receive, dropping what exceeds it. */
static void recv_copy(struct ivs_req *r, uint64_t at, const uint8_t *src, uint64_t n)
{
	if (IVS_UNLIKELY(r->packed == IVS_PACKED_WINDOW))
		ivs_dt_recv_bytes(r, at, src, n);
	else if (at < r->cap)
		ivs_copy(r->cbuf + at, src, n < r->cap - at ? n : r->cap - at);
}

/* Put the peer's queued ACKs into the ring as far as it has room. */
static int push_acks(struct ivs_peer *p)
{
	if (IVS_UNLIKELY(!p->tx.ring) && !ivs_pair_tx_ready(p, 0))
		return 0;
	int n = 0;
	while (n < p->nacks && ivs_tx_write(&p->tx, IVS_REC_ACK, 0, 0, 0, 0, p->acks[n], "", 0))
		n++;
	if (n) {
		memmove(p->acks, p->acks + n, sizeof *p->acks * (size_t)(p->nacks - n));
		p->nacks -= n;
		ivs.nacks -= n;
	}
	return n > 0;
}

/* Owe the sender of a synchronous message its ACK. Queued rather than written in place:
 * waiting here for ring space could re-enter the progress engine while it holds a record. */
void ivs_send_ack(int world, uint64_t cookie)
{
	struct ivs_peer *p = ivs.peers[world];
	if (p->nacks == p->acks_cap) {
		int cap = p->acks_cap ? 2 * p->acks_cap : 8;
		uint64_t *a = realloc(p->acks, sizeof *a * (size_t)cap);
		if (!a)
			ivs_fatal("out of memory queueing an acknowledgement");
		p->acks = a;
		p->acks_cap = cap;
	}
	p->acks[p->nacks++] = cookie;
	ivs.nacks++;
	if (p->tx_net)
		ivs.switching = 1; /* migrate.c sends it by the library */
	else if (p->nacks == 1)
		push_acks(p);
}

/* A matched receive takes over an unexpected message (complete or still arriving). */
void ivs_deliver_buffered(struct ivs_req *r, struct ivs_msg *m)
{
	if (!m->probe_comm)
		ivs_unexp_remove(m);
	if (IVS_UNLIKELY(m->is_lib)) {
		ivs_deliver_lib(r, m);
		return;
	}
	recv_copy(r, 0, m->buf, m->got);
	msg_buf_free(m);
	if (m->cookie)
		ivs_send_ack(m->src_world, m->cookie);
	if (m->got == m->total) {
		recv_complete(r, m);
		ivs_msg_free(m);
	} else {
		m->req = r; /* the rest streams straight into r; the ring's rx_cur still points at m */
		r->done = m->got;
	}
}

struct ivs_msg *ivs_unexp_find(const struct ivs_req *r)
{
	for (struct ivs_msg *m = ivs.unexp; m; m = m->next)
		if (ivs_match(r, m))
			return m;
	return NULL;
}

struct ivs_req *ivs_posted_match(struct ivs_msg *m)
{
	for (struct ivs_req *r = ivs.posted; r; r = r->next)
		if ((r->recv_mode == IVS_RM_SHM || r->recv_mode == IVS_RM_PROBE) && ivs_match(r, m))
			return r;
	return NULL;
}

/* Append n payload bytes to an unexpected message's buffer. The buffer grows with the bytes
 * that actually arrived (doubling, so appends stay amortised O(1)), never to the total the
 * sender's header claims: a hostile header cannot make this rank allocate memory it does not
 * also fill. The caller has bounded got + n by total. */
static void unexp_store(int world, struct ivs_msg *m, const uint8_t *src, uint64_t n)
{
	uint64_t need = m->got + n;
	if (!m->buf && m->total <= IVS_MSG_SMALL) { /* need <= total: it never grows */
		m->buf = msg_small(m);
		m->buf_cap = IVS_MSG_SMALL;
	}
	if (need > m->buf_cap || !m->buf) {
		uint64_t cap = m->buf_cap ? m->buf_cap : 4096;
		while (cap < need)
			cap *= 2;
		if (cap > m->total)
			cap = m->total > need ? m->total : need;
		uint8_t *b = realloc(m->buf, cap ? cap : 1);
		if (!b)
			ivs_fatal("cannot buffer %lu bytes of an unexpected message from rank %d", (unsigned long)need, world);
		m->buf = b;
		m->buf_cap = cap;
	}
	if (n)
		ivs_copy(m->buf + m->got, src, n);
	m->got = need;
}

static void on_msg(int world, struct ivs_peer *p, const struct ivs_rec *h, const uint8_t *pl)
{
	if (p->rx_cur)
		ivs_fatal("rank %d started a message before finishing the previous one", world);
	if (h->len > h->total)
		ivs_fatal("rank %d sent %u payload bytes of a %lu-byte message", world, h->len, (unsigned long)h->total);
	struct ivs_msg tmp = {.src_world = world, .ctx = h->ctx, .tag = h->tag, .total = h->total, .got = h->len};
	struct ivs_req *r = ivs_posted_match(&tmp);
	if (r) {
		ivs_unpost(r);
		r->recv_mode = IVS_RM_SHM;
		recv_copy(r, 0, pl, h->len);
		if (h->flags & IVS_F_SYNC)
			ivs_send_ack(world, h->cookie);
		if (h->len == h->total) {
			recv_complete(r, &tmp);
			return;
		}
		struct ivs_msg *m = ivs_msg_new(&tmp);
		m->req = r;
		r->done = h->len;
		p->rx_cur = m;
		return;
	}
	struct ivs_msg *m = ivs_msg_new(&tmp);
	m->got = 0;
	unexp_store(world, m, pl, h->len);
	if (h->flags & IVS_F_SYNC)
		m->cookie = h->cookie ? h->cookie : 1;
	ivs_unexp_append(m);
	if (h->len < h->total)
		p->rx_cur = m;
}

static void on_frag(int world, struct ivs_peer *p, const struct ivs_rec *h, const uint8_t *pl)
{
	struct ivs_msg *m = p->rx_cur;
	if (!m || h->len > m->total - m->got || h->len == 0)
		ivs_fatal("rank %d sent a fragment that belongs to no message", world);
	if (m->req) {
		recv_copy(m->req, m->got, pl, h->len);
		m->req->done += h->len;
		m->got += h->len;
	} else {
		unexp_store(world, m, pl, h->len);
	}
	if (m->got < m->total)
		return;
	p->rx_cur = NULL;
	if (m->req) {
		recv_complete(m->req, m);
		ivs_msg_free(m);
	}
}

/* A receiver matched one of our synchronous sends. Only the rank the send went to may say so:
 * a token arriving from anyone else is ignored like a stale one. */
void ivs_ack_arrived(int world, uint64_t cookie)
{
	struct ivs_req *r = ivs_req_by_cookie(cookie);
	if (!r || r->peer_world != world)
		return; /* stale or foreign token: nothing of ours waits for it */
	r->sync_wait = 0;
	ivs.nsync_wait--;
	if (r->done == r->cap) {
		r->state = IVS_DONE;
		if (r->free_on_done)
			ivs_req_release(r);
	}
}

void ivs_send_done(struct ivs_req *r)
{
	ivs_dt_drop(r);
	if (r->sync_wait)
		return;
	r->state = IVS_DONE;
	if (r->free_on_done)
		ivs_req_release(r);
}

/* Push queued sends to one peer as far as the ring allows. */
static int push_sends(struct ivs_peer *p)
{
	int did = 0;
	struct ivs_req *r;
	if (IVS_UNLIKELY(!p->tx.ring) && !ivs_pair_tx_ready(p, 0))
		return 0;
	while ((r = p->sendq)) {
		uint64_t max = ivs_tx_max_payload(&p->tx);
		do {
			uint64_t n = r->cap - r->done;
			if (n > max)
				n = max;
			const uint8_t *src = ivs_dt_send_bytes(r, &n);
			/* The first record carries the envelope, the others are fragments. */
			int first = r->done == 0 && !r->cookie_sent, sync = first && r->sync;
			if (IVS_UNLIKELY(sync) && !ivs_pair_ack_ready(p)) {
				p->ack_blocked = 1; /* migrate.c's switch closes the direction before it */
				ivs.switching = 1;
				return did;
			}
			if (!ivs_tx_write(&p->tx, first ? IVS_REC_MSG : IVS_REC_FRAG, sync ? IVS_F_SYNC : 0, first ? r->tag : 0,
			                  first ? r->comm->ctx : 0, first ? r->cap : 0, sync ? ivs_req_cookie(r) : 0,
			                  src, n))
				return did;
			r->cookie_sent = 1;
			r->done += n;
			did = 1;
		} while (r->done < r->cap);
		p->sendq = r->next;
		if (!p->sendq)
			p->sendq_tail = NULL;
		r->next = NULL;
		ivs.nsend_queued--;
		ivs_send_done(r);
	}
	return did;
}

void ivs_enqueue_send(struct ivs_req *r)
{
	struct ivs_peer *p = ivs.peers[r->peer_world];
	r->next = NULL;
	if (p->sendq_tail)
		p->sendq_tail->next = r;
	else
		p->sendq = r;
	p->sendq_tail = r;
	ivs.nsend_queued++;
	if (r->sync) {
		r->sync_wait = 1;
		ivs.nsync_wait++;
	}
	push_sends(p);
}

/* A small message straight from the caller's buffer, when nothing is queued before it. */
int ivs_try_send_inline(struct ivs_peer *p, const void *buf, uint64_t n, int tag, uint32_t ctx)
{
	if (IVS_UNLIKELY(!p->tx.ring) || p->sendq || n > ivs_tx_max_payload(&p->tx))
		return 0;
	return ivs_tx_write(&p->tx, IVS_REC_MSG, 0, tag, ctx, n, 0, buf, n);
}

/* The earliest posted probe-mode receive on c that a library message with status st matches,
 * or NULL: that receive was posted first, so the message is its own. */
struct ivs_req *ivs_probe_owner(struct ivs_comm *c, const MPI_Status *st)
{
	for (struct ivs_req *q = ivs.posted; q; q = q->next) {
		if (q->recv_mode != IVS_RM_PROBE || q->comm != c)
			continue;
		if ((q->peer == MPI_ANY_SOURCE || q->peer == st->MPI_SOURCE) &&
		    (q->tag == MPI_ANY_TAG || q->tag == st->MPI_TAG))
			return q;
	}
	return NULL;
}

/* Receive r takes the library message msg (matched by a probe). */
void ivs_net_assign(struct ivs_req *r, MPI_Message *msg)
{
	ivs_unpost(r);
	ivs_dt_drop(r); /* the library unpacks into the user's buffer itself */
	r->recv_mode = IVS_RM_NET;
	int rc = PMPI_Imrecv(r->ubuf, r->count, r->dt, msg, &r->inner);
	if (rc != MPI_SUCCESS) {
		r->error = rc;
		r->state = IVS_DONE;
	}
	if (r->free_on_done) { /* MPI_Request_free'd while waiting: nobody will poll it */
		if (rc == MPI_SUCCESS)
			PMPI_Request_free(&r->inner);
		ivs_req_release(r);
	}
}

/* A probe of this pass that found nothing. */
struct probe_miss {
	const struct ivs_comm *comm;
	int peer, tag;
};
enum { PROBE_MISSES = 8 };

/* Whether one of the pass's misses matches everything r does: r's probe would find nothing
 * either, and a message that arrived since belongs to that earlier receive (the next pass
 * gives it). */
static int probe_covered(const struct probe_miss *m, int n, const struct ivs_req *r)
{
	for (int i = 0; i < n; i++)
		if (m[i].comm == r->comm && (m[i].peer == MPI_ANY_SOURCE || m[i].peer == r->peer) &&
		    (m[i].tag == MPI_ANY_TAG || m[i].tag == r->tag))
			return 1;
	return 0;
}

/* Receives that may be satisfied by the network path are found with a matched probe, in
 * posting order, so that a wildcard receive posted first gets the first matching message.
 * A probe runs the library's progress engine once (with yield_when_idle a yield), so a receive
 * that an earlier one's empty probe covers is not probed: HPCC's RandomAccess posts four
 * MPI_ANY_SOURCE receives and tests them after every update, and with a probe each it took
 * 4x the library's time on 5 ranks. */
static int probe_net(void)
{
	int did = 0, nmiss = 0;
	struct probe_miss miss[PROBE_MISSES];
	struct ivs_req *r = ivs.posted, *next;
	for (; r; r = next) {
		next = r->next;
		if (r->recv_mode != IVS_RM_PROBE || probe_covered(miss, nmiss, r))
			continue;
		int flag = 0;
		MPI_Message msg;
		MPI_Status st;
		int rc = PMPI_Improbe(r->peer, r->tag, r->comm->handle, &flag, &msg, &st);
		if (rc != MPI_SUCCESS) {
			ivs_unpost(r);
			r->error = rc;
			r->state = IVS_DONE;
			continue;
		}
		if (!flag && nmiss < PROBE_MISSES)
			miss[nmiss++] = (struct probe_miss){r->comm, r->peer, r->tag};
		if (flag)
			ivs_count_got(r->comm, st.MPI_SOURCE); /* taken from the library (join.c) */
		if (!flag || ivs_park(r->comm, &st, &msg))
			continue; /* nothing, or a message from a peer whose ring is still to be read */
		/* The message may have arrived after an earlier receive's probe in this pass: it
		 * belongs to the first receive posted that matches it (r at the latest). */
		ivs_net_assign(ivs_probe_owner(r->comm, &st), &msg);
		next = ivs.posted; /* the walk's successor may have been the one just assigned */
		did = 1;
	}
	return did;
}

/* Drain every inbound ring and push what is queued outbound. Never calls the MPI library, so
 * the library's own progress engine may call it (hook.c); the exception is a completed receive
 * of a derived type without a typemap (typemap.c), unpacked by PMPI_Unpack, a local call. */
static int ring_progress(void)
{
	static unsigned rr;
	int did = ivs.released ? 0 : ivs_pair_serve();
	for (int k = 0; k < ivs.nlocal; k++) {
		int i = (int)((rr + (unsigned)k) % (unsigned)ivs.nlocal);
		int world = ivs.local_world[i];
		struct ivs_peer *p = ivs.peers[world];
		struct ivs_rec h;
		const uint8_t *pl;
		for (int budget = p->rx_mark || !p->rx.ring ? 0 : 32; budget > 0; budget--) {
			int rc = ivs_rx_peek(&p->rx, &h, &pl);
			if (rc == 0)
				break;
			if (rc < 0)
				ivs_fatal("corrupt record in the ring from rank %d (kind %u, length %u)", world, h.kind, h.len);
			if (IVS_UNLIKELY(p->rx_net)) /* the first record of a pair made at run time */
				ivs_join_rx_ring(world, p);
			switch (h.kind) {
			case IVS_REC_MSG:
				on_msg(world, p, &h, pl);
				break;
			case IVS_REC_FRAG:
				on_frag(world, p, &h, pl);
				break;
			case IVS_REC_ACK:
				ivs_ack_arrived(world, h.cookie);
				break;
			case IVS_REC_MARK: /* the peer's last record: migrate.c takes over */
				if (p->rx_cur)
					ivs_fatal("rank %d closed its ring in the middle of a message", world);
				p->rx_mark = 1;
				ivs.switching = 1;
				budget = 1;
				break;
			}
			ivs_rx_consume(&p->rx, h.len);
			did = 1;
		}
		if (p->nacks && !p->tx_net)
			did |= push_acks(p);
		if (p->sendq)
			did |= push_sends(p);
	}
	rr++;
	return did;
}

/* The engine is not re-entrant: probe_net calls the library, whose progress engine calls the
 * hook, which must then leave the queues probe_net is walking alone. */
static int in_progress;

int ivs_progress(void)
{
	if (!ivs.enabled || in_progress) {
		if (!in_progress && ivs.job_active && ivs_poll_due(IVS_POLL_PASSES))
			ivs_ctl_poll(); /* a rank without a region may lead a collective switch (migrate.c) */
		return 0;
	}
	in_progress = 1;
	if (IVS_UNLIKELY(ivs.released))
		ivs_rejoin_poll(); /* looks at the clock, and every few ms for its VM's new region */
	int did = ring_progress();
	if (IVS_UNLIKELY(ivs.switching || (!ivs.released && __atomic_load_n(ivs.gen_word, __ATOMIC_RELAXED) != ivs.gen_seen) ||
	                 ivs_poll_due(IVS_POLL_PASSES)))
		did |= ivs_switch_progress();
	if (ivs.posted && ivs.has_net)
		did |= probe_net();
	if (ivs_npairs)
		did |= ivs_pairs_progress();
	in_progress = 0;
	return did;
}

int ivs_progress_rings(void)
{
	if (!ivs.enabled || in_progress)
		return 0;
	in_progress = 1;
	int did = ring_progress();
	in_progress = 0;
	return did;
}
