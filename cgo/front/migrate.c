/* The path switch at a migration: when the broker flags a VM of this host leaving (its entry in
 * the region's VM table, announced by a bump of the header's generation word), every pair of
 * co-located ranks with a rank of that VM moves to the MPI library, every communicator whose
 * collectives use an area in the region with such a rank re-plans them without its area,
 * and each rank of the leaving VM then gives the region back (its slot released, the mapping
 * gone), which is what the broker's drain waits for. The protocol is tests/model/migrate.pml's
 * (leave part). A rank that gave its region up joins the region of its VM's new host (or of
 * its own, after a rollback) when it finds one (try_rejoin); the pairs that join makes start
 * on the library and move to rings by join.c's switch.
 *
 * Pairs, per direction (struct ivs_peer):
 *   close    on the flag, both ranks of the pair (each sees it in the region): new sends take the
 *            library at once; what is queued for the ring goes in first, then the owed ACKs,
 *            then a MARK record, the sender's last record on that ring (tx_net). ACKs owed
 *            after the MARK go by the library on the shim's own communicator (ivs.ctlcomm).
 *   read     the receiver reads the ring up to the MARK (rx_mark, ring engine), then: posted
 *            receives that may match the peer look for library messages from then on
 *            (probe mode), and the peer's library messages taken out early are handed on
 *            (rx_net). Early ones: a matched probe of the library (a wildcard receive, a
 *            user's probe) that finds a message of a peer whose MARK is not read yet parks it
 *            (ivs_park): it was sent after everything in the ring, so it waits for the MARK.
 *            Nothing else takes library messages from a peer that is still on the ring.
 *   release  a rank of the leaving VM: all its pairs closed both ways, nothing owed, no
 *            collective of its own using the region: ivshim_ctl_release.
 *
 * Collectives. Which plan a collective takes must be the same on every member, also on
 * members on other hosts that never see the flag. Each member counts the collectives it begins
 * on the communicator (ivs_comm.ncoll, the same sequence on all members). A member that sees
 * the flag for a communicator whose area holds a rank of the leaving VM asks the
 * communicator's rank 0 (ASK); rank 0 asks every member (QUERY); each answers with a limit
 * l = j + s, j its count, s its slack (REPLY), and may begin collectives there up to index
 * l - 1 before it knows the decision; rank 0 sends k = the largest limit (DECIDE), and
 * collective k sets up a new plan, on every member (coll_area.c: a rank of a leaving VM is a
 * host of its own there, with no area in the region). Every member's collectives below k keep the old
 * plan, so none mixes plans. The next leave that touches the new plan's area is a new round
 * (ivs_comm.sw_round, carried by every message). A new round begins only once its coordinator
 * has re-planned, and every member re-plans before its part of the set-up's exchange, so no
 * member can see a round it has not reached; messages of one would wait (a safety net), and
 * those of rounds a member left behind are ignored (a late ASK). The model checks three rounds (tests/model/collswitch.pml, ROUNDS=3; two in make test). A member that freed the
 * communicator answers "never" (all its collectives took the old plan, and so must everyone's;
 * the communicator is gone soon everywhere).
 * Where a rank answers: the shim's own waits on library requests poll these messages
 * (ivs_may_block), so a rank waiting in a receive, a send, a probe or a collective answers:
 * the library's collectives, the ones only it runs included (coll_lib.c), are called
 * nonblocking and completed by that wait on every communicator the shim recorded without a
 * member at MPI_THREAD_MULTIPLE, except those that move no byte (coll.h). A rank X blocked
 * inside a library call the shim leaves blocking (one of those collectives, one on a
 * communicator the shim did not record, communicator creation, one-sided synchronisation,
 * collective I/O)
 * cannot answer, and it may be waiting for a member W that waits for the decision: X ran ahead
 * of W on this communicator (a root of Bcast, a non-root of Reduce) and now waits in that call
 * on another communicator, which W joins after its next collective here. Why a slack: with a
 * slack of 1 W runs that collective. That covers an X that answered before it blocked, not one
 * the query reached only after: W's slack may be spent by then (tests/model/collswitch.pml
 * finds that deadlock with BLOCKING_Y; the README states the limit; the agreement's safety is
 * model-checked without assumptions, its deadlock freedom with answers in library
 * collectives). The slack costs the leaving
 * rank one more collective of the program there before it can release, which a communicator
 * the program does not use at the moment (a duplicate of MPI_COMM_WORLD beside the one it
 * works on) would never give: a member whose last collective there lies RECENT progress
 * steps back answers with no slack (it is not running on that communicator, so it would not
 * wait at once either). Messages of this exchange are answered from the progress engine and at
 * collective entries, so a rank that stays outside MPI delays the switch (the broker's
 * deadline then rolls the migration back). A rank of the leaving VM releases once it has begun
 * collective k - 1 on each such communicator and left it (or freed it).
 *
 * A communicator whose collectives are set up while a VM leaves plans without its ranks' areas
 * from the start (each member says in the set-up's exchange whether its own VM is leaving);
 * one whose area holds a rank flagged only after the set-up asks (ivs_coll_setup_done). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

/* ---- the region's VM table, as this rank reads it ---- */

static double leave_seen_at; /* when this rank saw its own VM flagged (for the release message) */

/* A released rank looks for its VM's new region 10 ms after it let go, then at intervals that
 * double up to 200 ms (in a guest a look scans the PCI devices in sysfs). */
enum { REJOIN_FIRST_MS = 10, REJOIN_MAX_MS = 200 };
static double rejoin_next, rejoin_gap;


void ivs_migrate_init(void)
{
	const struct ivshim_region_header *h = (const struct ivshim_region_header *)ivs.base;
	ivs.gen_word = &h->generation;
	ivs.gen_seen = ~__atomic_load_n(ivs.gen_word, __ATOMIC_ACQUIRE); /* scan at the first progress */
}

/* Whether the VM of the rank in slot s is flagged leaving. Slot and VM entries are untrusted:
 * an index out of range means "not leaving". */
static int slot_leaving(uint32_t s)
{
	if (s >= ivs.nslots)
		return 0;
	uint32_t vm = __atomic_load_n(&ivs.slots[s].vm_index, __ATOMIC_RELAXED);
	return vm < ivs.nvms && __atomic_load_n(&ivs.vms[vm].state, __ATOMIC_ACQUIRE) == IVSHIM_VM_LEAVING;
}

/* For a collective set-up (coll_area.c): this rank's VM is leaving or has left, by the region
 * now (not only by what the last scan saw); a rank without a region never is. */
int ivs_self_gone(void)
{
	if (ivs.released || ivs.self_leaving)
		return 1;
	return ivs.slots && slot_leaving(ivs.self_slot);
}

/* ... and co-located peer p's VM, as far as this rank can tell: flagged, or p gave its slot
 * up (released: its VM may be gone from the table already). */
int ivs_peer_leaving(const struct ivs_peer *p)
{
	if (p->leave_seen)
		return 1;
	if (ivs.released || p->slot >= ivs.nslots)
		return 0;
	const struct ivshim_slot *s = &ivs.slots[p->slot];
	return slot_leaving(p->slot) || __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != IVSHIM_SLOT_ACTIVE ||
	       __atomic_load_n(&s->world_rank, __ATOMIC_RELAXED) != (uint32_t)p->world;
}

/* ---- the shim's own messages (ivs.ctlcomm, world ranks) ---- */

enum { TAG_ACK = 1, TAG_ASK, TAG_QUERY, TAG_REPLY, TAG_DECIDE, TAG_JOINED, TAG_ADOPT, TAG_ANEW, TAG_ANEW_OK }; /* join.c's follow */
_Static_assert((int)TAG_ANEW_OK < (int)IVS_TAG_DRAINQ, "join.c's tags come after migrate.c's");
#define NEVER UINT64_MAX /* REPLY of a member that freed the communicator, and the DECIDE it makes */
#define SLACK 1          /* collectives a member may begin after its REPLY, before the DECIDE */
#define RECENT (1u << 16) /* progress steps (ivs.ctl_tick) since a communicator's last collective
                             within which a member counts as running on it */

struct ctl_msg {
	uint64_t a;     /* ACK: the cookie; JOINED: the sender's slot; ADOPT: an area's offset; DRAINQ,
	                   DRAINED: a count of library messages (join.c); ANEW, ANEW_OK: the
	                   receiver's slot; else the communicator's context id */
	uint64_t b;     /* REPLY, DECIDE: a collective count; ADOPT: the area's members; DRAINQ,
	                   DRAINED, JOINOFF: the question's id; ANEW, ANEW_OK: the sender's slot */
	uint64_t round; /* the agreement's round on that communicator (ivs_comm.sw_round); ADOPT: the
	                   sender's region (ivs_region_tag); ANEW: whether the sender's VM was the one
	                   flagged */
};

/* Sends in flight, each with its buffer, until the library is done with them. */
struct outbox {
	struct ctl_msg m;
	MPI_Request req;
};
static struct outbox **out;
static int nout, out_cap;

static void ctl_send(int world, int tag, uint64_t a, uint64_t b, uint64_t round)
{
	if (nout == out_cap) {
		out_cap = out_cap ? 2 * out_cap : 16;
		out = realloc(out, sizeof *out * (size_t)out_cap);
		if (!out)
			ivs_fatal("out of memory");
	}
	struct outbox *e = malloc(sizeof *e);
	if (!e)
		ivs_fatal("out of memory");
	e->m = (struct ctl_msg){a, b, round};
	if (PMPI_Isend(&e->m, sizeof e->m, MPI_BYTE, world, tag, ivs.ctlcomm, &e->req) != MPI_SUCCESS)
		ivs_fatal("cannot send the shim's message (tag %d) to rank %d", tag, world);
	out[nout++] = e;
}

void ivs_ctl_send(int world, int tag, uint64_t a, uint64_t b, uint64_t round)
{
	ctl_send(world, tag, a, b, round);
}

/* Completed sends leave the outbox; returns how many are still in flight. */
static int outbox_progress(void)
{
	for (int i = 0; i < nout;) {
		int flag = 0;
		if (PMPI_Test(&out[i]->req, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS)
			ivs_fatal("the shim's message to a peer failed");
		if (flag) {
			free(out[i]);
			out[i] = out[--nout];
		} else {
			i++;
		}
	}
	return nout;
}

/* ---- collectives: the agreement ---- */

static int ncoord;   /* communicators this rank (as rank 0) is gathering counts for */
static int nwaiting; /* communicators where this rank waits for the decision */
static int ndecided; /* communicators decided, with collectives left on the old plan */

static void on_decide(struct ivs_comm *c, uint64_t k)
{
	if (c->sw == IVS_SW_WAITING)
		nwaiting--;
	if (k != NEVER && k < c->ncoll)
		ivs_fatal("collective switch: the decision (index %lu) lies behind this rank's %lu collectives",
		          (unsigned long)k, (unsigned long)c->ncoll);
	c->sw = IVS_SW_DECIDED;
	c->sw_k = k;
	ndecided += k != NEVER;
	if (ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: collectives of a communicator of %d ranks re-plan %s\n",
		        ivs.world_rank, c->size, k == NEVER ? "never (it is being freed)" : "at the agreed collective");
}

static void on_reply(struct ivs_comm *c, uint64_t j)
{
	if (c->sw_coord != 1)
		return;
	if (j > c->sw_max)
		c->sw_max = j;
	if (++c->sw_replies < c->size)
		return;
	c->sw_coord = 2;
	ncoord--;
	for (int i = 0; i < c->size; i++) {
		if (c->world[i] == ivs.world_rank)
			on_decide(c, c->sw_max);
		else
			ctl_send(c->world[i], TAG_DECIDE, c->ctx, c->sw_max, c->sw_round);
	}
}

static void on_query(struct ivs_comm *c)
{
	if (c->sw < IVS_SW_WAITING) {
		c->sw = IVS_SW_WAITING;
		c->sw_limit = c->ncoll + (ivs.ctl_tick - c->last_tick < RECENT ? SLACK : 0);
		nwaiting++;
	}
	if (c->world[0] == ivs.world_rank)
		on_reply(c, c->sw_limit);
	else
		ctl_send(c->world[0], TAG_REPLY, c->ctx, c->sw_limit, c->sw_round);
}

static void on_ask(struct ivs_comm *c)
{
	if (c->sw_coord)
		return;
	c->sw_coord = 1;
	ncoord++;
	c->sw_replies = 0;
	c->sw_max = 0;
	for (int i = 0; i < c->size; i++) {
		if (c->world[i] == ivs.world_rank)
			on_query(c);
		else
			ctl_send(c->world[i], TAG_QUERY, c->ctx, 0, c->sw_round);
	}
}

static void ask(struct ivs_comm *c, void *arg)
{
	(void)arg;
	if (c->sw != IVS_SW_NONE || !ivs_coll_needs_switch(c))
		return;
	c->sw = IVS_SW_ASKED;
	if (c->world[0] == ivs.world_rank)
		on_ask(c);
	else
		ctl_send(c->world[0], TAG_ASK, c->ctx, 0, c->sw_round);
}

/* A communicator's collectives were just set up: a pair of its area may have closed during the
 * set-up's exchange (the scan then found no area to ask about). */
void ivs_coll_setup_done(struct ivs_comm *c)
{
	ask(c, NULL);
}

/* Messages about a communicator this rank has not created yet wait here. */
static struct deferred {
	int src, tag;
	struct ctl_msg m;
} *deferred;
static int ndeferred, deferred_cap;

static void on_joined(int w, uint64_t slot);
static void on_anew(int w, uint64_t self_slot, uint64_t slot, uint64_t leaving);
static void on_anew_ok(int w, uint64_t self_slot, uint64_t slot);

/* Handle one message; 0 if it must wait for its communicator to be created here. */
static int dispatch(int src, int tag, const struct ctl_msg *m)
{
	if (tag == TAG_ACK) {
		ivs_ack_arrived(src, m->a);
		return 1;
	}
	if (tag == TAG_JOINED) {
		on_joined(src, m->a);
		return 1;
	}
	if (tag == TAG_ANEW) {
		on_anew(src, m->a, m->b, m->round);
		return 1;
	}
	if (tag == TAG_ANEW_OK) {
		on_anew_ok(src, m->a, m->b);
		return 1;
	}
	switch (tag) {
	case IVS_TAG_DRAINQ:
		return ivs_join_on_ask(src, m->a, m->b);
	case IVS_TAG_DRAINED:
		ivs_join_on_drained(src, m->a, m->b);
		return 1;
	case IVS_TAG_JOINOFF:
		ivs_join_on_off(src, m->b);
		return 1;
	}
	if (tag == TAG_ADOPT) {
		if (m->round == ivs_region_tag()) /* else: this rank has left that region since */
			ivs_coll_adopt(m->a, m->b);
		return 1;
	}
	if (m->a > UINT32_MAX)
		return 1; /* not a context id: ignored */
	struct ivs_comm *c = ivs_comm_by_ctx((uint32_t)m->a);
	if (!c) {
		/* Context ids grow: one below next_ctx was created here and has been freed. */
		if (m->a >= ivs.next_ctx && m->a != 0)
			return 0;
		if (tag == TAG_QUERY)
			ctl_send(src, TAG_REPLY, m->a, NEVER, m->round);
		return 1;
	}
	/* A round this rank has not reached waits until it re-planned there (it is behind on this
	 * communicator: its collectives up to the last round's index need no answer from anyone
	 * waiting for this one); one it has left behind is over (a late ASK). */
	if (m->round > c->sw_round)
		return 0;
	if (m->round < c->sw_round)
		return 1;
	switch (tag) {
	case TAG_ASK:
		if (c->world[0] == ivs.world_rank)
			on_ask(c);
		break;
	case TAG_QUERY:
		if (c->world[0] == src)
			on_query(c);
		break;
	case TAG_REPLY:
		on_reply(c, m->b);
		break;
	case TAG_DECIDE:
		if (c->world[0] == src && c->sw != IVS_SW_DECIDED && c->sw != IVS_SW_DONE)
			on_decide(c, m->b);
		break;
	}
	return 1;
}

static void defer(int src, int tag, const struct ctl_msg *m)
{
	if (ndeferred == deferred_cap) {
		deferred_cap = deferred_cap ? 2 * deferred_cap : 8;
		deferred = realloc(deferred, sizeof *deferred * (size_t)deferred_cap);
		if (!deferred)
			ivs_fatal("out of memory");
	}
	deferred[ndeferred++] = (struct deferred){src, tag, *m};
}

/* One step of a wait that needs the shim's own messages answered meanwhile (an agreement, the
 * drain at MPI_Finalize): poll them, make progress, pause when nothing moved. */
void ivs_ctl_wait_step(unsigned *spins)
{
	ivs_ctl_poll();
	if (!ivs_progress())
		ivs_wait_pause(spins);
}

/* Receive and handle the shim's messages that have arrived. Any thread state, any time the
 * rank is in MPI outside the library's own progress engine. */
void ivs_ctl_poll(void)
{
	if (ivs.ctlcomm == MPI_COMM_NULL)
		return;
	for (int i = 0; i < ndeferred;) {
		struct deferred d = deferred[i];
		if (dispatch(d.src, d.tag, &d.m))
			deferred[i] = deferred[--ndeferred];
		else
			i++;
	}
	for (;;) {
		int flag = 0;
		MPI_Status st;
		if (PMPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, ivs.ctlcomm, &flag, &st) != MPI_SUCCESS || !flag)
			return;
		struct ctl_msg m = {0, 0, 0};
		int n = 0;
		PMPI_Get_count(&st, MPI_BYTE, &n);
		if (PMPI_Recv(&m, sizeof m, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, ivs.ctlcomm, MPI_STATUS_IGNORE) != MPI_SUCCESS ||
		    n != (int)sizeof m)
			continue; /* a malformed message: ignored */
		if (!dispatch(st.MPI_SOURCE, st.MPI_TAG, &m))
			defer(st.MPI_SOURCE, st.MPI_TAG, &m);
	}
}

/* c's collectives below the decision are done here: this rank leaves the old plan (never
 * touching its area again) and sets up a new one at its next collective there, and the next
 * agreement on c is a new round. */
static void replan(struct ivs_comm *c)
{
	ivs_coll_forget(c); /* its left word, and the leader's reaping */
	ndecided--;
	c->sw = IVS_SW_NONE;
	c->sw_coord = 0;
	c->sw_round++;
}

/* At a collective entry on c with an agreement under way: wait for the decision if this
 * collective (index c->ncoll) is beyond what the answer allows, and leave the old plan if the
 * decision says this collective takes the new one. */
void ivs_coll_switch_point(struct ivs_comm *c)
{
	unsigned spins = 0;
	while (c->sw == IVS_SW_WAITING && c->ncoll >= c->sw_limit) {
		ivs_ctl_wait_step(&spins);
	}
	if (c->sw == IVS_SW_DECIDED && c->ncoll >= c->sw_k)
		replan(c);
}

/* Outside any collective, a communicator whose collectives below the decision have all been
 * run here is done with its area already (a rank of a leaving VM need not wait for the
 * program's next collective there to release). */
static void replan_if_done(struct ivs_comm *c, void *arg)
{
	(void)arg;
	if (c->sw == IVS_SW_DECIDED && c->ncoll >= c->sw_k)
		replan(c);
}

/* MPI_Comm_free of a communicator this rank is gathering counts for: members that answered
 * wait for the decision at their next collective there, so it is finished first. */
void ivs_coll_agreement_finish(struct ivs_comm *c)
{
	unsigned spins = 0;
	while (c->sw_coord == 1) {
		ivs_ctl_wait_step(&spins);
	}
	if (c->sw == IVS_SW_WAITING)
		nwaiting--;
	if (c->sw == IVS_SW_DECIDED && c->sw_k != NEVER)
		ndecided--;
	c->sw = IVS_SW_DONE;
}

/* ---- pairs ---- */

/* Library messages from a peer that is still on the ring are parked until its MARK. So are
 * those on counted communicators from a joined peer whose ring this rank awaits (join.c): the
 * peer sent all it had sent by the library before it switched, and this rank matched all of
 * that, so such a message came after its answer. If it switched, the message follows what it
 * wrote to the ring (it closed the ring again: a leave, an ACK that could not take the ring),
 * and waits for the MARK; if not, JOINOFF or its next question hands the message on
 * (ivs_unpark). */
int ivs_park(struct ivs_comm *c, const MPI_Status *st, MPI_Message *msg)
{
	if (st->MPI_SOURCE < 0 || st->MPI_SOURCE >= c->size)
		return 0;
	int w = c->world[st->MPI_SOURCE];
	struct ivs_peer *p = ivs_park_peer(c, w);
	if (!p)
		return 0;
	struct ivs_msg *m = ivs_msg_new(&(struct ivs_msg){0});
	MPI_Count n = 0;
	PMPI_Get_elements_x(st, MPI_BYTE, &n);
	m->is_lib = 1;
	m->lib = *msg;
	m->lib_st = *st;
	m->src_world = w;
	m->ctx = c->ctx;
	m->tag = st->MPI_TAG;
	m->total = m->got = n > 0 ? (uint64_t)n : 0;
	if (p->parked_tail)
		p->parked_tail->next = m;
	else
		p->parked = m;
	p->parked_tail = m;
	*msg = MPI_MESSAGE_NULL;
	ivs.switching = 1;
	return 1;
}

/* A receive takes a library message that was parked or queued as unexpected. */
void ivs_deliver_lib(struct ivs_req *r, struct ivs_msg *m)
{
	ivs_net_assign(r, &m->lib);
	ivs_msg_free(m);
}

static void mark_comm(struct ivs_comm *c, void *arg)
{
	struct ivs_peer *p = arg;
	if (c->by_local[p->local] >= 0)
		c->has_net = 1;
}

/* The peer's MARK was read: from now on its messages come by the library. */
static void on_mark(int w, struct ivs_peer *p)
{
	p->rx_net = 1;
	for (struct ivs_msg *m = ivs.unexp; m; m = m->next) { /* ring messages not received yet */
		if (m->src_world == w && !m->via_lib) {
			m->via_lib = 1;
			ivs.nunexp_net++;
		}
	}
	ivs.has_net = 1;
	ivs_comm_each(mark_comm, p);
	for (struct ivs_req *r = ivs.posted; r; r = r->next) {
		if (r->recv_mode != IVS_RM_SHM)
			continue;
		if (r->peer == MPI_ANY_SOURCE ? r->comm->by_local[p->local] >= 0 : r->comm->world[r->peer] == w) {
			r->recv_mode = IVS_RM_PROBE;
			r->comm->pending_probe++;
		}
	}
	ivs_unpark(p);
}

/* Parked messages, in the order the library gave them, go to the first receive posted that
 * matches, else to the unexpected queue (ahead of anything the library holds). */
void ivs_unpark(struct ivs_peer *p)
{
	for (struct ivs_msg *m = p->parked, *next; m; m = next) {
		next = m->next;
		m->next = NULL;
		struct ivs_req *r = ivs_posted_match(m);
		if (r)
			ivs_deliver_lib(r, m);
		else
			ivs_unexp_append(m);
	}
	p->parked = p->parked_tail = NULL;
}

/* ---- leaving ---- */

static void count_in_region(struct ivs_comm *c, void *arg)
{
	*(int *)arg += ivs_coll_in_region(c);
}

/* Whether this rank may give the region up now. Not inside a collective (set-up included: its
 * area may be in use before the communicator's record shows it), except at a collective's
 * entry, before it touches anything (at_entry). */
static int release_ready(int at_entry)
{
	if (ivs.coll_depth > at_entry)
		return 0;
	for (int i = 0; i < ivs.nlocal; i++) {
		struct ivs_peer *p = ivs.peers[ivs.local_world[i]];
		if (!p->tx_net || !p->rx_net || p->nacks || ivs_join_busy(p))
			return 0;
	}
	int n = 0;
	ivs_comm_each(count_in_region, &n);
	return n == 0;
}

/* Whether slot of this rank's region holds world rank w of this job instance now. The slot is
 * untrusted: anything else is "no". */
int ivs_slot_holds(uint32_t slot, int w)
{
	if (ivs.released || !ivs.slots || slot >= ivs.nslots || w < 0 || w >= ivs.world_size || w == ivs.world_rank)
		return 0;
	const struct ivshim_region_header *h = (const struct ivshim_region_header *)ivs.base;
	const struct ivshim_slot *s = &ivs.slots[slot];
	return __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == IVSHIM_SLOT_ACTIVE &&
	       __atomic_load_n(&s->world_rank, __ATOMIC_RELAXED) == (uint32_t)w &&
	       __atomic_load_n(&s->world_size, __ATOMIC_RELAXED) == (uint32_t)ivs.world_size &&
	       __atomic_load_n(&s->session, __ATOMIC_RELAXED) == __atomic_load_n(&h->session, __ATOMIC_ACQUIRE);
}

/* Names this rank's current region and its session, for ADOPT: an offset means something only
 * in the region it came from (an heir may have moved on since). */
uint64_t ivs_region_tag(void)
{
	if (ivs.released || !ivs.slots)
		return 0;
	const struct ivshim_region_header *h = (const struct ivshim_region_header *)ivs.base;
	uint64_t t = ivs.host_id[0] ^ (ivs.host_id[1] << 17 | ivs.host_id[1] >> 47) ^ __atomic_load_n(&h->session, __ATOMIC_ACQUIRE);
	return t ? t : 1;
}

void ivs_ctl_adopt_send(int world, uint64_t off, int nl, uint64_t tag)
{
	ctl_send(world, TAG_ADOPT, off, (uint64_t)nl, tag);
}

/* The first look for a region to join comes REJOIN_FIRST_MS from now. */
static void rejoin_soon(void)
{
	rejoin_gap = REJOIN_FIRST_MS * 1e-3 / 2;
	rejoin_next = ivs_now_s() + REJOIN_FIRST_MS * 1e-3;
}

/* A rank that found no device at MPI_Init while ranks of its job share memory elsewhere (its VM
 * was being migrated, or its device not plugged yet) starts as a rank that released its region:
 * every pair on the library, its traffic counted, and it joins its VM's region once plugged. */
void ivs_migrate_start_released(void)
{
	ivs.enabled = 1;
	ivs.released = 1;
	rejoin_soon();
	/* Itself, as a rank with a region has itself among its co-located peers (so communicators
	 * count it, p2p.c's wildcard receives included): its messages to itself take the library,
	 * as after a release; its slot comes with the join. */
	struct ivs_peer *me = calloc(1, sizeof *me);
	if (!me)
		ivs_fatal("out of memory");
	me->world = ivs.world_rank;
	me->slot = UINT32_MAX;
	me->local = ivs.nlocal;
	me->closing = me->tx_net = me->rx_mark = me->rx_net = me->leave_seen = 1;
	ivs.local_world[ivs.nlocal++] = ivs.world_rank;
	ivs.peers[ivs.world_rank] = me;
}

static void release(void)
{
	char err[256] = "";
	int heir = -1; /* a rank of this region whose VM stays: it takes over the areas this rank led */
	for (int i = 0; i < ivs.nlocal && heir < 0; i++) {
		struct ivs_peer *p = ivs.peers[ivs.local_world[i]];
		if (ivs_slot_holds(p->slot, p->world) && !slot_leaving(p->slot))
			heir = p->world;
	}
	uint64_t tag = ivs_region_tag();
	int rc = ivs.ctl_release(err, sizeof err);
	ivs.released = 1; /* whatever the outcome: the mapping may be gone */
	rejoin_soon();
	/* Every pair is on the library both ways: nothing may point into the old mapping when this
	 * rank joins another region. */
	for (int i = 0; i < ivs.nlocal; i++) {
		struct ivs_peer *p = ivs.peers[ivs.local_world[i]];
		p->tx.ring = NULL;
		p->rx.ring = NULL;
	}
	ivs.slots = NULL;
	ivs.pairs = NULL;
	ivs.vms = NULL;
	ivs.nslots = ivs.nvms = 0;
	ivs_coll_region_released(heir, tag);
	if (rc != 0)
		fprintf(stderr, "ivshim: rank %d: releasing the region: %s\n", ivs.world_rank, err);
	fprintf(stderr, "ivshim: rank %d: moved its traffic with %d co-located ranks to the MPI library and released the "
	        "region %.1f ms after its VM was flagged leaving\n", ivs.world_rank, ivs.nlocal - 1, (ivs_now_s() - leave_seen_at) * 1e3);
	if (ivs.verbose) /* the statistics at each move: what went through regions before it */
		fprintf(stderr, "ivshim: rank %d: region traffic before the move: %lu messages sent through a region\n",
		        ivs.world_rank, (unsigned long)ivs.stats.messages[IVSHIM_PATH_SHM]);
}

/* ---- joining a region again ---- */

/* Whether this rank's pair with p is wholly on the library: both directions switched, nothing
 * owed or held for the ring any more. */
static int pair_on_library(const struct ivs_peer *p)
{
	return p->tx_net && p->rx_net && !p->nacks && !p->parked && !p->sendq && !ivs_join_busy(p);
}

/* World rank w shares this rank's region from now on, in slot (checked: slot_holds). Their pair
 * starts on the library both ways (a pair that never had rings, or whose rings closed when one
 * of them left) and each direction moves to a ring once it has drained (join.c). Every
 * communicator with both re-plans its collectives, so their host's group shares an area
 * (ivs_coll_needs_switch counts joins). A
 * pair still switching to the library from an earlier leave (this rank has not read the peer's
 * MARK yet, or still owes it something) takes the join once that is done. */
static void peer_join(int w, uint32_t slot)
{
	struct ivs_peer *p = ivs.peers[w];
	if (!p) {
		if (ivs.nlocal >= ivs.world_size)
			return;
		p = calloc(1, sizeof *p);
		if (!p)
			ivs_fatal("out of memory");
		p->world = w;
		p->local = ivs.nlocal;
		p->closing = p->tx_net = p->rx_mark = p->rx_net = 1;
		ivs.local_world[ivs.nlocal++] = w;
		ivs.peers[w] = p;
		ivs_comm_add_local(p);
	} else if (!pair_on_library(p)) {
		p->join_pending = 1;
		p->join_slot = slot;
		ivs.switching = 1;
		return;
	}
	p->join_pending = 0;
	p->anew_sent = 0;
	/* The pair's rings (if any) closed at the leave and lie in memory given back since: nothing
	 * may take them for mapped. */
	p->tx.ring = NULL;
	p->rx.ring = NULL;
	ivs_pairs_slot(p->slot, -1, w);
	p->slot = slot;
	p->leave_seen = 0;
	p->joins++;
	ivs_join_reset(p);
	ivs_pairs_slot(slot, w, -1);
	if (slot_leaving(slot)) { /* joined, and flagged leaving already */
		p->leave_seen = 1;
		p->leaves++;
	}
	if (ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: rank %d shares its region (slot %u) from now on: their messages take the "
		        "MPI library until each direction has drained, then the region; their collectives re-plan to share it\n", ivs.world_rank, w, slot);
	ivs_comm_each(ask, NULL);
}

/* JOINED from w: it joined this rank's region, in slot (its own reading of the region; checked
 * against this rank's). Late news (w left again, or this rank did) is dropped. */
static void on_joined(int w, uint64_t slot)
{
	if (slot > UINT32_MAX || !ivs_slot_holds((uint32_t)slot, w))
		return;
	const struct ivs_peer *p = ivs.peers[w];
	if (p && p->slot == slot && !p->leave_seen && !p->join_pending)
		return; /* it found this rank when it joined, and this rank found it too */
	peer_join(w, (uint32_t)slot);
}

/* A leave seen (the region's flag, or ANEW): both directions of p move to the library. A
 * direction waiting for its ring closes once the receiver answered (pairs.c); one without a
 * ring gets none, and says so to its sender. */
static void close_pair(struct ivs_peer *p)
{
	p->leave_seen = 1;
	p->leaves++;
	if (ivs_pair_tx_resolve(p))
		p->closing = 1;
	/* The MARK at once where nothing is queued before it: from now on new messages take the
	 * library, and none may precede the MARK while the ring holds no record (a receiver
	 * awaiting a join switch's first record takes a library message found with the ring empty
	 * for one sent before the sender switched: join.c ivs_join_park_await). Where something
	 * is queued, the ring holds records already (it takes anything at once while it has room),
	 * except behind a synchronous send waiting for a ring to answer it (ack_blocked): that
	 * close writes the MARK first too. */
	if (p->ack_blocked) /* a synchronous send heads the queue, the ring maybe empty */
		ivs_pair_close_for_ack(p); /* the MARK, then the queue by the library, in order */
	else if (p->closing && p->tx.ring && !p->tx_net && !p->sendq && !p->nacks && ivs_tx_mark(&p->tx))
		p->tx_net = 1;
	if (!p->rx.ring && !p->rx_mark)
		ivs_pair_rx_net(p);
}

/* A flag taken back (the broker rolled a move back) that one rank of a pair saw and the other did
 * not (it was outside MPI through the whole drain): the one that saw it closed the pair, and
 * nothing else would open it again, since only a release and a join make a pair anew. So the
 * rank that saw it sends ANEW (the peer's slot and its own, as it reads the region; whether it
 * saw its own VM flagged):
 *   - from a rank of another VM: the peer closes its side too, makes the pair anew once it is on
 *     the library (peer_join) and answers ANEW_OK, on which the sender makes it anew too. A peer
 *     that saw its own flag drops it: it releases and joins again, and its JOINED makes the pair
 *     anew at the sender, which has kept its leave_seen for that.
 *   - from a rank of the flagged VM (it saw its flag, and waits for the peer's MARK to release):
 *     the peer closes its side, so the sender can release; its JOINED makes the pair anew.
 * News of another slot than the pair's (late, or a rank that left since) is dropped. */
static struct ivs_peer *anew_peer(int w, uint64_t self_slot, uint64_t slot)
{
	struct ivs_peer *p = w >= 0 && w < ivs.world_size && w != ivs.world_rank ? ivs.peers[w] : NULL;
	if (!p || ivs.released || ivs.self_leaving || self_slot != ivs.self_slot || slot != p->slot || p->join_pending ||
	    !ivs_slot_holds(p->slot, w))
		return NULL;
	return p;
}

static void on_anew(int w, uint64_t self_slot, uint64_t slot, uint64_t leaving)
{
	struct ivs_peer *p = anew_peer(w, self_slot, slot);
	if (!p)
		return;
	if (!p->leave_seen) {
		close_pair(p);
		ivs.switching = 1;
	}
	if (ivs.verbose)
		fprintf(stderr, leaving ? "ivshim: rank %d: rank %d saw its VM flagged leaving, which this rank did not see before "
		                          "the flag was taken back: their pair moves to the library until it joins again\n"
		                        : "ivshim: rank %d: rank %d saw this rank's VM flagged leaving before the flag was taken "
		                          "back: their pair is made anew\n", ivs.world_rank, w);
	if (leaving)
		return;
	peer_join(w, p->slot);
	ctl_send(w, TAG_ANEW_OK, slot, self_slot, 0);
}

static void on_anew_ok(int w, uint64_t self_slot, uint64_t slot)
{
	struct ivs_peer *p = anew_peer(w, self_slot, slot);
	if (p && p->leave_seen && p->anew_sent)
		peer_join(w, p->slot);
}

/* A released rank looks for the region of the host its VM runs on now (ivshim_ctl_rejoin): the
 * VM arrived there, or its migration rolled back. Once in, every rank of the job it finds there
 * becomes a co-located peer (peer_join) and learns of the join by a JOINED message, so both
 * sides re-plan their collectives. */
static void try_rejoin(void)
{
	double now = ivs_now_s();
	if (now < rejoin_next)
		return;
	rejoin_gap = rejoin_gap * 2 < REJOIN_MAX_MS * 1e-3 ? rejoin_gap * 2 : REJOIN_MAX_MS * 1e-3;
	rejoin_next = now + rejoin_gap;
	struct ivshim_ctl_rejoin_args a;
	memset(&a, 0, sizeof a);
	int rc = ivs.ctl_rejoin(&a);
	if (rc != 0) { /* each new reason once: nothing to join yet only with IVSHIM_VERBOSE; looked
	                  at again later either way (a region being set up, a device not yet given
	                  to the rank's group) */
		static char lasts[2][sizeof a.error];
		char *last = lasts[rc < 0];
		if ((rc < 0 || ivs.verbose) && strcmp(last, a.error) != 0) {
			snprintf(last, sizeof a.error, "%s", a.error);
			fprintf(stderr, rc < 0 ? "ivshim: rank %d: cannot join its VM's region after a migration (its traffic stays on "
			                         "the MPI library meanwhile; trying again): %s\n"
			                       : "ivshim: rank %d: no region to join yet: %s\n", ivs.world_rank, a.error);
		}
		return;
	}
	ivs.base = a.region_base;
	ivs.size = a.region_size;
	ivs_region_tables(a.self_slot);
	ivs_pairs_init(); /* no peer mapped yet: peer_join maps them */
	ivs.released = 0;
	ivs.self_leaving = 0;
	ivs_migrate_init();
	struct ivs_peer *me = ivs.peers[ivs.world_rank];
	if (me) {
		me->slot = a.self_slot;
		me->leave_seen = 0;
	}
	int found = 0;
	for (uint32_t s = 0; s < ivs.nslots; s++) {
		int w = (int)__atomic_load_n(&ivs.slots[s].world_rank, __ATOMIC_RELAXED);
		if (s == ivs.self_slot || !ivs_slot_holds(s, w))
			continue;
		peer_join(w, s);
		ctl_send(w, TAG_JOINED, ivs.self_slot, 0, 0);
		found++;
	}
	if (ivs.self_leaves)
		fprintf(stderr, "ivshim: rank %d: joined the region of its VM's host again (%.1f ms after its VM was flagged leaving): %d "
		        "ranks of the job there; their messages move to the region once drained, their collectives share it\n",
		        ivs.world_rank, (now - leave_seen_at) * 1e3, found);
	else
		fprintf(stderr, "ivshim: rank %d: joined its VM's region, which it had no device for at MPI_Init: %d ranks of the "
		        "job there; their messages move to the region once drained, their collectives share it\n", ivs.world_rank, found);
}

/* For a rank whose progress runs inside collectives only. */
void ivs_rejoin_poll(void)
{
	if (ivs.released && ivs.ctl_rejoin)
		try_rejoin();
}

/* The generation word moved: which pairs close now. */
static void scan(void)
{
	ivs.gen_seen = __atomic_load_n(ivs.gen_word, __ATOMIC_ACQUIRE);
	int self = slot_leaving(ivs.self_slot), closed = 0;
	if (self && !ivs.self_leaving) {
		ivs.self_leaving = 1;
		ivs.self_leaves++;
		leave_seen_at = ivs_now_s();
	}
	for (int i = 0; i < ivs.nlocal; i++) {
		int w = ivs.local_world[i];
		struct ivs_peer *p = ivs.peers[w];
		if (!p->leave_seen && (self || slot_leaving(p->slot))) {
			close_pair(p);
			closed++;
		} else if (!p->anew_sent && !p->join_pending && !slot_leaving(p->slot) && ivs_slot_holds(p->slot, w) &&
		           (ivs.self_leaving ? !self : p->leave_seen)) {
			/* A flag taken back (a rollback), with the peer in its slot: it may not have seen
			 * it (on_anew). A rank of the flagged VM asks every such peer, not only those whose
			 * MARK it still waits for: one it awaits a first ring record from (join.c's AWAIT)
			 * holds its release too, and this scan is the only one the rollback brings. A peer
			 * that closed already ignores it. */
			if (ivs.verbose)
				fprintf(stderr, "ivshim: rank %d: the VM of %s is no longer flagged leaving (the migration rolled "
				        "back), and rank %d kept its slot: asking it to close their pair too\n", ivs.world_rank,
				        ivs.self_leaving ? "this rank" : "its peer", w);
			p->anew_sent = 1;
			ctl_send(w, TAG_ANEW, p->slot, ivs.self_slot, ivs.self_leaving);
		}
	}
	if (closed) {
		ivs.switching = 1;
		if (self) /* the user learns why this rank's traffic changes path, and what it waits for */
			fprintf(stderr, "ivshim: rank %d: its VM is flagged leaving (a migration): moving its traffic with %d "
			        "co-located ranks to the MPI library, then releasing the region (at its next MPI calls: a rank "
			        "outside MPI past the broker's deadline makes the migration roll back)\n", ivs.world_rank, ivs.nlocal - 1);
		else if (ivs.verbose)
			fprintf(stderr, "ivshim: rank %d: a co-located VM is flagged leaving: moving its traffic with %d ranks "
			        "there to the MPI library\n", ivs.world_rank, closed);
		ivs_comm_each(ask, NULL);
	}
}

int ivs_switch_progress(void)
{
	int did = 0, busy = 0, any_closed = 0;
	if (!ivs.released && __atomic_load_n(ivs.gen_word, __ATOMIC_RELAXED) != ivs.gen_seen)
		scan();
	ivs_ctl_poll();
	for (int i = 0; i < ivs.nlocal; i++) {
		int w = ivs.local_world[i];
		struct ivs_peer *p = ivs.peers[w];
		if (IVS_UNLIKELY(p->join_pending)) {
			if (!ivs_slot_holds(p->join_slot, w))
				p->join_pending = 0; /* it left again */
			else if (pair_on_library(p))
				peer_join(w, p->join_slot);
			busy |= p->join_pending;
		}
		if (IVS_UNLIKELY(p->joined)) {
			did |= ivs_join_step(w, p);
			busy |= ivs_join_hurry(p);
		}
		if (IVS_UNLIKELY(!p->tx.ring) && !p->closing && (p->tx_want || p->sendq || p->nacks) && !ivs.released)
			did |= ivs_pair_tx_ready(p, 1); /* an answer the ring engine left here: NET (also one
			                                   the receiver gave before this rank asked) */
		if (IVS_UNLIKELY(p->ack_blocked))
			did |= ivs_pair_close_for_ack(p);
		if (p->leave_seen && !p->closing && ivs_pair_tx_resolve(p))
			p->closing = 1;
		if (!p->closing && !p->rx_mark && !p->leave_seen)
			continue;
		any_closed = 1;
		if (p->closing && !p->tx_net) {
			if (!p->tx.ring) { /* nothing ever went into a ring: no MARK to write */
				p->tx_net = 1;
				did = 1;
			} else if (!p->sendq && !p->nacks && ivs_tx_mark(&p->tx)) {
				p->tx_net = 1;
				did = 1;
			}
		}
		if (p->tx_net && p->nacks) {
			for (int k = 0; k < p->nacks; k++)
				ctl_send(w, TAG_ACK, p->acks[k], 0, 0);
			ivs.nacks -= p->nacks;
			p->nacks = 0;
			did = 1;
		}
		if (p->rx_mark && !p->rx_net) {
			on_mark(w, p);
			did = 1;
		}
		busy |= p->ack_blocked || (p->leave_seen && (!p->tx_net || !p->rx_net)) || (p->closing && !p->tx_net) || (p->rx_mark && !p->rx_net) ||
		        p->parked;
	}
	busy |= ivs_pair_progress();
	if (!ivs.coll_depth && !ivs.released)
		ivs_coll_reap(); /* areas taken over from ranks that left, once their members have left */
	if (!ivs.coll_depth && ndecided)
		ivs_comm_each(replan_if_done, NULL);
	busy |= outbox_progress() || ncoord || nwaiting || ndeferred || (ivs.nsync_wait && any_closed);
	if (ivs.self_leaving && !ivs.released) {
		if (release_ready(0))
			release();
		else
			busy = 1;
	}
	ivs.switching = busy;
	return did;
}

/* At a collective's entry (coll_area.c): a rank of a leaving VM that runs only collectives
 * releases here, since its progress runs inside them. */
void ivs_release_at_entry(void)
{
	if (ivs.released)
		return;
	ivs_progress(); /* the pairs' MARKs, the agreements */
	if (release_ready(1))
		release();
}

/* MPI_Finalize: the shim's messages in flight and the agreements this rank leads end first. */
void ivs_migrate_drain(void)
{
	unsigned spins = 0;
	while (ncoord || outbox_progress()) {
		ivs_ctl_wait_step(&spins);
	}
}
