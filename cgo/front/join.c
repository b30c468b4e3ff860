/* The join switch: a pair of ranks made at run time (migrate.c's peer_join: one of them joined
 * the other's region after a migration) starts on the MPI library both ways and moves each
 * direction to a ring of the region once that cannot reorder, lose or strand a message.
 *
 * Why not at once. A message the sender puts into the ring may not be matched before one it
 * sent earlier by the library that the same receive could match (MPI's non-overtaking rule),
 * and a receive the receiver posted inside the library before the switch waits there for a
 * library message that would never come. Tags make a per-communicator count of messages
 * insufficient: a receive for tag 2 may rightly be served before an earlier message of tag 1.
 * So a direction moves only when it is quiescent: every library message the sender sent to the
 * receiver has been matched there, and no receive of the receiver waits in the library.
 *
 * Counting. On counted communicators (every communicator a rank with a region records: its
 * point-to-point there takes the shim's paths, ivs_comm.counted) each rank counts, per world
 * rank, the library messages it sent (ivs.lib_sent) and those it took from the library (ivs.lib_got:
 * a receive the library completed, counted at its completion; a message taken by matched probe,
 * counted at the probe), and how many of its receives the library holds (ivs.lib_open). Every
 * receive there is the shim's request (a library receive is wrapped: req.lib_count), so each
 * completion is seen; one freed before it completed can never be seen, and ends all switches of
 * this rank (ivs.lib_lost).
 *
 * The exchange, per direction S -> R (the shim's own messages, migrate.c):
 *   S, its direction wholly on the library:     DRAINQ(sent = lib_sent[R], id)
 *   R, from then on posting every receive from S on counted communicators as the shim's own
 *      (matched probe, so none waits inside the library), once lib_got[S] >= sent and
 *      lib_open[S] == 0: makes the ring S -> R (an earlier occupant's pair word emptied), reads
 *      it from now on (AWAIT)                    DRAINED(got = lib_got[S], id)
 *   S, on DRAINED: if lib_sent[R] == got (nothing sent since, all of it matched) and the pair
 *      still shares the region with nobody leaving, maps the ring and sends into it from now on
 *      (sends on counted communicators only); else JOINOFF(id), and asks again later.
 *   R: the first record in the ring moves the direction to the ring (receives from S become
 *      ring receives, posted ones included); JOINOFF takes it back to the library; a new
 *      DRAINQ while awaiting means the answer was not taken, unless the ring holds records.
 *      A library message from S that R finds while awaiting was not matched when R answered.
 *      If the ring holds records, S switched and has closed the ring again since (a leave, an
 *      ACK that could not take the ring): the message is parked (migrate.c ivs_park) until the
 *      MARK, behind what S wrote to the ring. If the ring is empty, S sent it before it could
 *      switch and will not switch on this answer (its count differs): R stops awaiting at once,
 *      as at JOINOFF, and the message is matched (ivs_join_park_await).
 * Nothing S sent by the library is unmatched when its first ring record is written, and R posts
 * nothing into the library meanwhile, so no receive can see a ring message before a library one
 * it could match, and none is left waiting in the library. The ring then behaves as a ring made
 * at start: a leave closes it with a MARK (migrate.c), a synchronous send whose ACK could only
 * take the library closes it the same way (pairs.c), and the direction asks again once it is
 * wholly on the library.
 *
 * A rank in AWAIT does not give its region up (migrate.c's release_ready): S answers every
 * DRAINED with a ring record, JOINOFF or a new DRAINQ, and a leave makes a switched S write its
 * MARK. A direction asks only while both ranks hold slots of the region with no VM flagged. */
#include <stdio.h>
#include <stdlib.h>
#include "ivshim.h"

static uint64_t last_ask; /* ids of this rank's questions */

/* For HURRY_MS after a question either way, both ranks poll the shim's messages at every
 * progress pass (else every IVS_POLL_PASSES): a sender whose program sends between its question
 * and the answer asks again, so the round trip must fit a pause of the program's traffic (an
 * iterative program's wait for its neighbours). Past that the pair waits at the usual pace. */
enum { HURRY_MS = 100 };


/* Whether p's question (either way) is young: migrate.c keeps polling the shim's messages. */
int ivs_join_hurry(const struct ivs_peer *p)
{
	return (p->tx_join == IVS_JTX_ASKED || p->rx_join == IVS_JRX_ASKED) && ivs_now_s() - p->asked_at < HURRY_MS * 1e-3;
}

void ivs_join_init(void)
{
	size_t n = (size_t)ivs.world_size;
	ivs.lib_sent = calloc(n, sizeof *ivs.lib_sent);
	ivs.lib_got = calloc(n, sizeof *ivs.lib_got);
	ivs.lib_open = calloc(n, sizeof *ivs.lib_open);
	if (!ivs.lib_sent || !ivs.lib_got || !ivs.lib_open)
		ivs_fatal("out of memory");
}

/* peer_join: the pair starts anew on the library both ways. */
void ivs_join_reset(struct ivs_peer *p)
{
	p->joined = 1;
	p->tx_join = IVS_JTX_NONE;
	p->rx_join = IVS_JRX_NONE;
	p->rx_asked = 0;
	p->tx_ask = p->rx_ask = p->rx_need = 0;
}

/* Both ranks hold slots of this rank's region, with no VM flagged and no join pending. */
static int pair_shares(int w, const struct ivs_peer *p)
{
	return !ivs.released && !ivs.self_leaving && !p->leave_seen && !p->join_pending && ivs_slot_holds(p->slot, w);
}

/* Whether an earlier occupant of p's slot is still a pair of this rank's that may touch the
 * pair words between the two slots: it has not read its peer's MARK, or its own direction has
 * not closed (it may still wait for the answer in the word). One that is done with both lets go
 * of its rings, which the new pair's may replace (ivshmem's ResetPair frees the old inbound one). */
static int slot_busy(const struct ivs_peer *p)
{
	for (int i = 0; i < ivs.nlocal; i++) {
		struct ivs_peer *q = ivs.peers[ivs.local_world[i]];
		if (q == p || q->slot != p->slot)
			continue;
		if (!q->tx_net || (q->rx.ring && !(q->rx_mark && q->rx_net)))
			return 1;
		q->rx.ring = NULL;
		q->tx.ring = NULL;
	}
	return 0;
}

/* The receive request r that the library held (lib_count) completed or was cancelled. */
void ivs_join_recv_done(struct ivs_req *r)
{
	r->lib_count = 0;
	const struct ivs_comm *c = r->comm;
	if (r->peer == MPI_ANY_SOURCE)
		ivs.lib_open_any--;
	else
		ivs.lib_open[c->world[r->peer]]--;
	int cancelled = 0, src = r->net_st.MPI_SOURCE;
	PMPI_Test_cancelled(&r->net_st, &cancelled);
	if (!cancelled && (src == r->peer || r->peer == MPI_ANY_SOURCE)) /* matched, also when it failed (truncated) */
		ivs_count_got(c, src);
}

/* ... was freed while the library still holds it: its match will never be seen. */
void ivs_join_recv_lost(struct ivs_req *r)
{
	r->lib_count = 0;
	if (!ivs.lib_lost && ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: a receive from rank %d was freed before it completed: pairs made at run time "
		        "keep taking the MPI library\n", ivs.world_rank, r->comm->world[r->peer]);
	ivs.lib_lost = 1;
}

/* The first record of S's ring (or a question that finds the ring written): the direction
 * S -> this rank is on the ring from here on. */
void ivs_join_rx_ring(int w, struct ivs_peer *p)
{
	p->rx_net = 0;
	p->rx_join = IVS_JRX_RING;
	for (struct ivs_msg *m = ivs.unexp; m; m = m->next) { /* its messages on other communicators still come by the library */
		const struct ivs_comm *c;
		if (m->src_world == w && m->via_lib && ((c = ivs_comm_by_ctx(m->ctx)) ? c->counted : m->ctx < ivs.next_ctx)) {
			/* (a communicator freed here since: nothing receives on it any more) */
			m->via_lib = 0;
			ivs.nunexp_net--;
		}
	}
	for (struct ivs_req *r = ivs.posted; r; r = r->next) {
		if (r->recv_mode == IVS_RM_PROBE && r->peer != MPI_ANY_SOURCE && r->comm->counted && r->comm->world[r->peer] == w) {
			r->recv_mode = IVS_RM_SHM;
			r->comm->pending_probe--;
		}
	}
	if (ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: messages from rank %d come by the region again (a pair made at run time)\n",
		        ivs.world_rank, w);
}

/* The peer structure of world rank w, a rank number from a message: NULL out of range. */
static struct ivs_peer *peer_at(int w)
{
	return w >= 0 && w < ivs.world_size ? ivs.peers[w] : NULL;
}

static struct ivs_peer *joined_peer(int w)
{
	struct ivs_peer *p = peer_at(w);
	return p && p->joined ? p : NULL;
}

/* A refusal: DRAINED with a count no sender reaches. */
#define REFUSED UINT64_MAX

/* DRAINQ from w; 0: it waits (migrate.c defers it) until this rank's pair with w is made. */
int ivs_join_on_ask(int w, uint64_t sent, uint64_t id)
{
	if (ivs.finalizing)
		return 1;
	struct ivs_peer *p = peer_at(w);
	if (p && p->join_pending)
		return 0; /* the pair is made anew once its earlier leave is done here */
	if (!p || !p->joined || p->rx_join == IVS_JRX_OFF) {
		ivs_ctl_send(w, IVS_TAG_DRAINED, REFUSED, id, 0); /* a question of an earlier pair, or no ring here */
		return 1;
	}
	if (p->rx_join == IVS_JRX_AWAIT) {
		struct ivs_rec h;
		const uint8_t *pl;
		if (ivs_rx_peek(&p->rx, &h, &pl) != 0) { /* it switched, and wrote since: read first */
			ivs_join_rx_ring(w, p);
		} else {
			p->rx_mark = 1; /* the answer was not taken: the sender stayed on the library */
			ivs_unpark(p);  /* and what it sent meanwhile came by the library alone */
		}
	}
	p->rx_ask = id;
	p->rx_need = sent;
	p->asked_at = ivs_now_s();
	if (p->rx_join == IVS_JRX_RING)
		p->rx_asked = 1; /* taken once this rank has read the ring to its MARK */
	else
		p->rx_join = IVS_JRX_ASKED;
	return 1;
}

void ivs_join_on_drained(int w, uint64_t got, uint64_t id)
{
	struct ivs_peer *p = joined_peer(w);
	if (ivs.finalizing || !p || p->tx_join != IVS_JTX_ASKED || id != p->tx_ask) {
		if (got != REFUSED)
			ivs_ctl_send(w, IVS_TAG_JOINOFF, 0, id, 0); /* an answer to a question of an earlier pair */
		return;
	}
	if (got == REFUSED) { /* not in this region: this pair stays on the library */
		p->tx_join = IVS_JTX_OFF;
		return;
	}
	p->tx_join = IVS_JTX_NONE;
	if (got > ivs.lib_sent[w]) { /* the receiver matched what this rank never counted (a
	                                large-count call): the counts can never meet */
		p->tx_join = IVS_JTX_OFF;
		ivs_ctl_send(w, IVS_TAG_JOINOFF, 0, id, 0);
		return;
	}
	if (ivs.lib_sent[w] != got || !pair_shares(w, p) || !p->closing || !p->tx_net || p->sendq || p->nacks ||
	    !ivs_pair_tx_join(p)) {
		ivs_ctl_send(w, IVS_TAG_JOINOFF, 0, id, 0);
		return;
	}
	p->closing = 0;
	p->tx_net = 0;
	p->tx_join = IVS_JTX_RING;
	if (ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: messages to rank %d take the region again (a pair made at run time; its %lu "
		        "library messages before were all matched first)\n", ivs.world_rank, w, (unsigned long)got);
}

void ivs_join_on_off(int w, uint64_t id)
{
	struct ivs_peer *p = joined_peer(w);
	if (!p || p->rx_join != IVS_JRX_AWAIT || id != p->rx_ask)
		return;
	p->rx_mark = 1; /* nothing was written: the sender did not switch */
	p->rx_join = IVS_JRX_NONE;
	ivs_unpark(p); /* what it sent by the library meanwhile */
}

/* A library message from joined peer p (world rank w) on a counted communicator, found while
 * this rank awaits the first record of the ring it told p to use: 1 if it waits, parked, for
 * p's MARK (p switched, wrote to the ring and closed it again since: the message follows what
 * is in the ring). 0 if the ring is empty: p sent it before it could switch, and will not switch
 * on this answer (the message was not matched when the answer went, so p's count differs from
 * it); this rank stops awaiting now, as at p's JOINOFF. Waiting for that JOINOFF instead could
 * wait forever: p may be blocked in a library call (a communicator's creation) that this rank
 * joins only once its receive got this very message (MPICH's pingping test under migration;
 * tests/model/joinswitch.pml BLOCKING_S). p's records are visible by the time its later library
 * message is: it fences after its MARK (ivs_tx_mark), and writes nothing to the ring after. */
int ivs_join_park_await(int w, struct ivs_peer *p)
{
	struct ivs_rec h;
	const uint8_t *pl;
	if (ivs_rx_peek(&p->rx, &h, &pl) != 0)
		return 1; /* records (a corrupt one is the ring engine's to report) */
	ivs_join_on_off(w, p->rx_ask);
	return 0;
}

/* One step of both directions of joined pair p (world rank w), from migrate.c's progress. */
int ivs_join_step(int w, struct ivs_peer *p)
{
	int did = 0;
	if (ivs.finalizing)
		return 0;
	if (p->tx_join == IVS_JTX_RING && p->tx_net)
		p->tx_join = IVS_JTX_NONE; /* closed again (a leave, an ACK that could not take a ring) */
	if (p->rx_join == IVS_JRX_RING && p->rx_net) { /* its MARK read */
		p->rx_join = p->rx_asked ? IVS_JRX_ASKED : IVS_JRX_NONE;
		p->rx_asked = 0;
	}
	if (p->tx_join == IVS_JTX_NONE && p->closing && p->tx_net && !p->sendq && !p->nacks && !ivs.lib_lost && pair_shares(w, p) &&
	    !slot_busy(p)) { /* (lib_lost: this rank's own counts may miss a message it sent) */
		p->tx_ask = ++last_ask;
		p->tx_join = IVS_JTX_ASKED;
		p->asked_at = ivs_now_s();
		ivs_ctl_send(w, IVS_TAG_DRAINQ, ivs.lib_sent[w], p->tx_ask, 0);
		did = 1;
	}
	if (p->rx_join == IVS_JRX_ASKED && p->rx_mark && p->rx_net && !p->parked && ivs.lib_got[w] >= p->rx_need &&
	    !ivs.lib_open[w] && !ivs.lib_open_any && !ivs.lib_lost && pair_shares(w, p) && !slot_busy(p)) {
		if (!ivs_pair_rx_join(p)) {
			p->rx_join = IVS_JRX_OFF;
			return 1;
		}
		p->rx_mark = 0;
		p->rx_join = IVS_JRX_AWAIT;
		ivs_ctl_send(w, IVS_TAG_DRAINED, ivs.lib_got[w], p->rx_ask, 0);
		did = 1;
	}
	return did;
}

/* Whether p keeps this rank from giving its region up: the peer may still write the ring it
 * was told to use. */
int ivs_join_busy(const struct ivs_peer *p)
{
	return p->rx_join == IVS_JRX_AWAIT;
}

/* MPI_Finalize, on every rank of a job that uses shared memory: the counts every switch relies
 * on, checked against the senders'. A correct program leaves no message unmatched, so each
 * rank must have matched exactly what every sender counted for it; a difference means a path
 * that sends or receives by the library without counting (IVSHIM_VERBOSE prints it; the
 * integration tests look for it). */
void ivs_join_check(void)
{
	size_t n = (size_t)ivs.world_size;
	int mine[2] = {ivs.verbose != 0, ivs.lib_uncounted || ivs.lib_lost}, any[2] = {0, 0};
	PMPI_Allreduce(mine, any, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
	if (!any[0])
		return; /* nobody asked (IVSHIM_VERBOSE): no exchange */
	if (any[1]) {
		if (ivs.verbose)
			fprintf(stderr, "ivshim: rank %d: library message counts not compared: the program cancelled a library request, "
			        "freed an active library receive or made a large-count call\n", ivs.world_rank);
		return;
	}
	uint64_t *to_me = malloc(n * sizeof *to_me);
	int *counts = malloc(n * sizeof *counts); /* which ranks count: those with a region */
	if (!to_me || !counts)
		ivs_fatal("out of memory");
	if (PMPI_Alltoall(ivs.lib_sent, 1, MPI_UINT64_T, to_me, 1, MPI_UINT64_T, MPI_COMM_WORLD) != MPI_SUCCESS ||
	    PMPI_Allgather(&ivs.enabled, 1, MPI_INT, counts, 1, MPI_INT, MPI_COMM_WORLD) != MPI_SUCCESS) {
		free(to_me);
		free(counts);
		return;
	}
	uint64_t total = 0;
	int bad = 0;
	for (size_t w = 0; w < n; w++) {
		total += ivs.lib_got[w];
		if (!ivs.enabled || !counts[w] || (to_me[w] == ivs.lib_got[w] && !ivs.lib_open[w]))
			continue;
		bad = 1;
		if (ivs.verbose)
			fprintf(stderr, "ivshim: rank %d: library messages from rank %zu on counted communicators: %lu sent, %lu matched "
			        "here, %u receives open: the join switch's counts disagree\n", ivs.world_rank, w,
			        (unsigned long)to_me[w], (unsigned long)ivs.lib_got[w], ivs.lib_open[w]);
	}
	if (!bad && ivs.verbose && ivs.enabled)
		fprintf(stderr, "ivshim: rank %d: library message counts agree with every sender's (%lu messages)\n",
		        ivs.world_rank, (unsigned long)total);
	free(to_me);
	free(counts);
}
