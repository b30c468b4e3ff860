/* Collectives: a communicator's area. The protocol every collective keeps in it
 * (ivshmem/ivshim_coll.h), the set-up at a communicator's first collective and at its first
 * after a re-plan (which members share this host, which hosts there are, the area, the
 * communicator between hosts), and the area's release at MPI_Comm_free and at a re-plan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "coll.h"

/* ---- the protocol ---- */

/* Wait until line l carries op s, keeping the rings drained meanwhile (a co-located peer
 * blocked sending to us must get to this collective too). */
void ivs_coll_await(struct ivs_cline *l, uint64_t s)
{
	unsigned spins = 0;
	uint64_t v;
	while ((v = __atomic_load_n(&l->seq, __ATOMIC_ACQUIRE)) != s) {
		if (v > s && v - s < (1ull << 62))
			ivs_fatal("collective area: a peer claims op %lu while this rank is at %lu", (unsigned long)v, (unsigned long)s);
		if (!ivs_progress())
			ivs_wait_pause(&spins);
	}
}

void ivs_coll_await_all(struct ivs_coll *k, uint64_t s)
{
	for (int i = 0; i < k->nl; i++)
		if (i != k->li)
			ivs_coll_await_member(k, i, s);
}

/* Start the next op, which publishes or reads at most n bytes per buffer. Its buffers were
 * last used by op s-DEPTH (lines) or, when n does not fit a line, op s-2 (slots and results);
 * before this rank writes anything (a sequence number or data), every co-located member must
 * have finished that op, which it shows by publishing the next one. Without this wait a
 * member that returns early (a non-root of Reduce) could run ahead and overwrite a line a slow
 * member still waits on. A member found behind is waited for until it has published s-1, the
 * most this rank can ask for, so that the next DEPTH-1 inline ops need not look again. */
uint64_t ivs_coll_op_begin(struct ivs_coll *k, uint64_t n)
{
	uint64_t s = ++k->seq;
	uint64_t reuse = n <= IVS_INLINE ? IVS_DEPTH : 2;
	if (s <= reuse)
		return s;
	for (int i = 0; i < k->nl; i++) {
		if (i == k->li || k->seen[i] >= s - reuse + 1)
			continue; /* known to be far enough already: no need to touch its line */
		struct ivs_cline *l = ivs_coll_line(k, i, s - 1);
		unsigned spins = 0;
		uint64_t v;
		while ((v = __atomic_load_n(&l->seq, __ATOMIC_ACQUIRE)) < s - 1)
			if (!ivs_progress())
				ivs_wait_pause(&spins);
		k->seen[i] = v;
	}
	return s;
}

/* ---- per-communicator set-up (collective: the first collective on the communicator, and the
 * first after a re-plan) ---- */

static int cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/* What each member says at the set-up exchange. */
struct coll_info {
	int64_t host_key; /* 0: the member is in the region of host `host`; -1 - its world rank for
	                     a rank without a region, or whose VM is leaving or has left
	                     (migrate.c): a host of its own, with no area in the region */
	uint64_t host[2]; /* the region's host id (ivshmem: one region per job and host) */
	int64_t area;     /* an area this rank allocated for its host's members: region offset, or 0 */
	int64_t slot;     /* that area's slot size; 0 without one */
	int64_t cap;      /* the members that area has room for */
};

/* The leader's allocation: the area with the largest slot that fits the region's heap (0 and
 * the reason in err when not even the smallest does). */
static uint64_t area_alloc(int nl, uint64_t *slot, char *err, size_t errlen)
{
	for (*slot = IVS_SLOT_MAX; *slot >= IVS_SLOT_MIN; *slot /= 2) {
		uint64_t off = ivs.ctl_alloc(ivs_area_size((uint64_t)nl, *slot), err, errlen);
		if (off)
			return off;
	}
	*slot = 0;
	return 0;
}

static void coll_free(struct ivs_coll *k)
{
	free(k->lranks);
	free(k->host_of);
	free(k->host_first);
	free(k->pos);
	free(k->seen);
	free(k->lead);
	free(k);
}

static void reap_areas(void);

int ivs_coll_in_region(struct ivs_comm *c)
{
	struct ivs_coll *k = c->coll;
	return k && k->usable && k->nl > 1;
}

static int same_host(const struct coll_info *a, const struct coll_info *b)
{
	return a->host_key == b->host_key && a->host[0] == b->host[0] && a->host[1] == b->host[1];
}

/* Leaves among c's members lranks[0..nl) as this rank knows them now: its own VM's flags (its
 * scan then marks every member), and those it saw of the others' (migrate.c scan). Counts only
 * grow, so a member that left and joined again still counts as a change. */
static unsigned leaving_now(struct ivs_comm *c, const int *lranks, int nl)
{
	unsigned n = ivs.self_leaves;
	for (int i = 0; i < nl; i++) {
		const struct ivs_peer *p = lranks[i] != c->rank ? ivs.peers[c->world[lranks[i]]] : NULL;
		n += p ? p->leaves : 0;
	}
	return n;
}

/* Joins of c's members into this rank's region as it knows them now (migrate.c's rejoin: on the
 * rank that arrived, every member it found there; on those, the rank that arrived). */
static unsigned joins_now(struct ivs_comm *c)
{
	unsigned n = 0;
	for (int r = 0; r < c->size; r++) {
		const struct ivs_peer *p = r != c->rank ? ivs.peers[c->world[r]] : NULL;
		n += p ? p->joins : 0;
	}
	return n;
}

/* The collectives of c must re-plan (migrate.c): their area holds a rank of a VM flagged leaving
 * since the set-up, or a member joined this rank's region since. A rank known leaving at the
 * set-up was not leaving by its own word then; it asks itself once it sees its flag. */
int ivs_coll_needs_switch(struct ivs_comm *c)
{
	struct ivs_coll *k = c->coll;
	if (!k)
		return 0;
	return (ivs_coll_in_region(c) && leaving_now(c, k->lranks, k->nl) > k->leaving_at_setup) || joins_now(c) > k->joins_at_setup;
}

/* A group of n members (two or more share an area) whose leader l has no area with room for
 * them: its view at the set-up was outdated (a member joined or left). */
static int lacks_room(const struct coll_info *l, int n)
{
	return n > 1 && (!l->area || l->cap < n);
}

/* This rank allocates the area of its host's group of n members, saying why not when it cannot
 * (never silent: once per rank, every time with IVSHIM_VERBOSE). */
static void lead_alloc(struct coll_info *me, int n)
{
	char err[256] = "";
	uint64_t slot, off = area_alloc(n, &slot, err, sizeof err);
	me->area = (int64_t)off;
	me->slot = (int64_t)slot;
	me->cap = n;
	static int warned;
	if (!off && (ivs.verbose || !warned++))
		fprintf(stderr, "ivshim: rank %d: no collective area for a communicator of %d co-located ranks (%s): its collectives use the library%s\n",
		        ivs.world_rank, n, err, ivs.verbose ? "" : " (further cases: IVSHIM_VERBOSE=1)");
	else if (off && slot < IVS_SLOT_MAX && ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: collective area for %d co-located ranks with %lu-byte slots (the region is tight): larger collectives take more steps\n",
		        ivs.world_rank, n, (unsigned long)slot);
}

/* The hosts' communicator: every member of c, rank = comm rank, for the steps between hosts
 * (leaders among themselves, and a rooted collective's root with the other hosts' leaders). A
 * blocking library call, in which no member answers the shim's messages (migrate.c), but gated
 * by the set-up's exchange right before (gate.c explains gates): every member entered that,
 * waiting by polling, and comes straight here. Made from the shim's own duplicate of
 * MPI_COMM_WORLD by MPI_Comm_create_group, not by a duplicate of the program's communicator: a
 * creation on that would be one more collective of its own, which Open MPI 4.1 can mismatch
 * with an MPI_Comm_idup the program has pending on it (comm.c). One tag serves all: the members
 * of a set-up are all inside it together (its exchange completed), and set-ups of
 * communicators that share members follow the program's order of collectives on them, the same
 * on each. Every member pays a context id for it (the library's limit on live communicators
 * was already halved on the leaders) and a group creation at each set-up; a leaders-only
 * communicator spared the other members that, but left the root of a gather or scatter that is
 * not its host's leader to pass the whole vector through its host's area. */
enum { HOSTS_COMM_TAG = 7 };
static void hosts_comm(const struct ivs_comm *c, MPI_Comm *hcomm)
{
	MPI_Group wg = MPI_GROUP_NULL, hg = MPI_GROUP_NULL;
	if (PMPI_Comm_group(ivs.gatecomm, &wg) != MPI_SUCCESS || PMPI_Group_incl(wg, c->size, c->world, &hg) != MPI_SUCCESS ||
	    PMPI_Comm_create_group(ivs.gatecomm, hg, HOSTS_COMM_TAG, hcomm) != MPI_SUCCESS)
		ivs_fatal("cannot create the communicator between hosts");
	PMPI_Group_free(&hg);
	PMPI_Group_free(&wg);
}

static void exchange(struct ivs_comm *c, const struct coll_info *me, struct coll_info *all)
{
	MPI_Request req;
	int rc = c->lib_nb ? ivs_coll_net_complete(PMPI_Iallgather(me, sizeof *me, MPI_BYTE, all, sizeof *me, MPI_BYTE, c->handle, &req), &req)
	                   : PMPI_Allgather(me, sizeof *me, MPI_BYTE, all, sizeof *me, MPI_BYTE, c->handle); /* comm.c: idup */
	if (rc != MPI_SUCCESS)
		ivs_fatal("collective set-up exchange failed (%d)", rc);
}

/* Every member that names this rank's region (by its host id) holds a slot of the session in it:
 * else two regions claim one host (a broker misconfigured, a region made anew under the same
 * id), and an area offset would mean other memory to other members. Such a member cannot have
 * let its slot go yet: nobody releases inside a collective's set-up, nor while an area of the
 * communicator's is in use. */
static void check_group(const struct ivs_comm *c, const struct ivs_coll *k)
{
	const struct ivshim_region_header *h = (const struct ivshim_region_header *)ivs.base;
	uint64_t session = __atomic_load_n(&h->session, __ATOMIC_ACQUIRE);
	if (k->nl > (int)ivs.nslots)
		ivs_fatal("collective set-up: %d members name this rank's region, which has %u slots", k->nl, ivs.nslots);
	for (int i = 0; i < k->nl; i++) {
		int r = k->lranks[i];
		uint32_t s = 0;
		for (; r != c->rank && s < ivs.nslots; s++) {
			const struct ivshim_slot *sl = &ivs.slots[s];
			uint32_t st = __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE);
			if ((st == IVSHIM_SLOT_ACTIVE || st == IVSHIM_SLOT_LEAVING) &&
			    __atomic_load_n(&sl->world_rank, __ATOMIC_RELAXED) == (uint32_t)c->world[r] &&
			    __atomic_load_n(&sl->session, __ATOMIC_RELAXED) == session)
				break;
		}
		if (s == ivs.nslots)
			ivs_fatal("collective set-up: rank %d of a communicator says it is in this rank's region (its host id), but holds "
			          "no slot in it: two regions claim one host id", r);
	}
}

/* Set-up, at the communicator's first collective and at its first after a re-plan (migrate.c).
 * Which members share an area is decided from the exchange alone, so every member reaches the
 * same plan: members placed on one host (the session's placement) form its group, except a
 * rank whose VM is leaving or has left (by its own reading of the region), which is a host of
 * its own. Before the exchange a member cannot know who else says so: the member that expects
 * to lead its group allocates the area, with room for everyone placed there. If the exchange
 * names another leader (a view outdated by a migration), every member knows which groups lack
 * their area, and their leaders allocate it in a second exchange. */
static struct ivs_coll *coll_setup(struct ivs_comm *c)
{
	struct ivs_coll *k = calloc(1, sizeof *k);
	struct coll_info *all = malloc(sizeof *all * (size_t)c->size);
	int *placed = malloc(sizeof(int) * (size_t)c->size);
	unsigned *seen_leaving = calloc((size_t)c->size, sizeof(unsigned));
	if (!k || !all || !placed || !seen_leaving)
		ivs_fatal("out of memory");
	k->hcomm = MPI_COMM_NULL;
	k->lranks = malloc(sizeof(int) * (size_t)c->size);
	k->host_of = malloc(sizeof(int) * (size_t)c->size);
	k->host_first = calloc((size_t)c->size + 1, sizeof(int));
	k->pos = malloc(sizeof(int) * (size_t)c->size);
	k->seen = calloc((size_t)c->size, sizeof(uint64_t));
	if (!k->lranks || !k->host_of || !k->host_first || !k->pos || !k->seen)
		ivs_fatal("out of memory");
	int np = 0;
	for (int i = 0; i < ivs.nlocal; i++)
		if (c->by_local[i] >= 0)
			placed[np++] = c->by_local[i];
	if (np == 0)
		placed[np++] = c->rank;
	qsort(placed, (size_t)np, sizeof(int), cmp_int);
	for (int r = 0; r < c->size; r++) {
		const struct ivs_peer *p = r != c->rank ? ivs.peers[c->world[r]] : NULL;
		seen_leaving[r] = p ? p->leaves : 0;
	}
	int gone = !ivs.enabled || !ivs.slots || ivs_self_gone(), staying = 0, lead = -1;
	for (int i = 0; i < np; i++) {
		int r = placed[i];
		if (gone || (r != c->rank && ivs_peer_leaving(ivs.peers[c->world[r]])))
			continue;
		staying++;
		if (lead < 0)
			lead = r;
	}
	unsigned leaving_before = ivs.self_leaves;
	k->joins_at_setup = joins_now(c);
	struct coll_info me = {.host_key = gone ? -1 - (int64_t)ivs.world_rank : 0};
	if (!gone)
		memcpy(me.host, ivs.host_id, sizeof me.host);
	if (lead == c->rank && staying > 1) {
		reap_areas();
		lead_alloc(&me, np);
	}
	exchange(c, &me, all);
	/* Every member has left this communicator's old area, if it had one, before its part of the
	 * exchange (a re-plan): its leader can give it back now. */
	reap_areas();
	/* Hosts in order of their lowest comm rank; a host's members in comm rank order, the first
	 * its leader. */
	int nh = 0;
	int *keys = malloc(sizeof(int) * (size_t)c->size); /* a member of each host */
	int *count = calloc((size_t)(unsigned)c->size, sizeof(int)), *leader = malloc(sizeof(int) * (size_t)c->size);
	if (!keys || !count || !leader)
		ivs_fatal("out of memory");
	for (int r = 0; r < c->size; r++) {
		int h = 0;
		while (h < nh && !same_host(&all[keys[h]], &all[r]))
			h++;
		if (h == nh) {
			keys[nh++] = r; /* the host's first member says which host it is */
			leader[h] = r;
		}
		k->host_of[r] = h;
		count[h]++;
		if (same_host(&all[r], &me)) {
			if (r == c->rank)
				k->li = k->nl;
			k->lranks[k->nl++] = r;
		}
	}
	if (k->nl > 1)
		check_group(c, k);
	/* Groups of two or more whose leader has no area with room for them (its view was outdated:
	 * a member joined or left): their leaders allocate it now. */
	int missing = 0;
	for (int h = 0; h < nh; h++)
		missing |= lacks_room(&all[leader[h]], count[h]);
	char err[256];
	if (me.area && (k->li != 0 || k->nl < 2)) { /* allocated for a group that did not form */
		ivs.ctl_free((uint64_t)me.area, err, sizeof err);
		me.area = 0;
	}
	if (missing) {
		struct coll_info again = me;
		if (k->li == 0 && lacks_room(&me, k->nl)) {
			if (me.area)
				ivs.ctl_free((uint64_t)me.area, err, sizeof err);
			lead_alloc(&again, k->nl);
		}
		struct coll_info *all2 = malloc(sizeof *all2 * (size_t)c->size);
		if (!all2)
			ivs_fatal("out of memory");
		exchange(c, &again, all2);
		for (int h = 0; h < nh; h++)
			if (lacks_room(&all[leader[h]], count[h]))
				all[leader[h]] = all2[leader[h]];
		free(all2);
		me = again;
	}
	/* Every host of two or more members needs its leader's area, with room for them, and every
	 * area is used with the smallest slot any host got: pieces of a collective then have the
	 * same sizes on every host (the leaders exchange them piece by piece), and a bigger area
	 * holds the layout of a smaller slot. */
	k->usable = 1;
	k->slot = IVS_SLOT_MAX;
	for (int h = 0; h < nh; h++) {
		const struct coll_info *l = &all[leader[h]];
		if (count[h] < 2)
			continue;
		if (!l->area || !ivs_area_slot_ok((uint64_t)l->slot) || l->cap < count[h]) {
			if (l->area)
				fprintf(stderr, "ivshim: rank %d: rank %d of a communicator offers a collective area of %ld-byte slots for %ld members, %d share it (a different shim build?): its collectives use the library\n",
				        ivs.world_rank, leader[h], (long)l->slot, (long)l->cap, count[h]);
			k->usable = 0; /* no area there (lead_alloc said why): the library, on every member */
		} else if ((uint64_t)l->slot < k->slot) {
			k->slot = (uint64_t)l->slot;
		}
	}
	k->nhosts = nh;
	k->myhost = k->host_of[c->rank];
	for (int h = 0; h < nh; h++) {
		k->host_first[h + 1] = k->host_first[h] + count[h];
		if (count[h] > k->maxnl)
			k->maxnl = count[h];
	}
	memset(count, 0, sizeof(int) * (size_t)c->size);
	k->ranked = 1;
	for (int r = 0; r < c->size; r++) {
		k->pos[r] = k->host_first[k->host_of[r]] + count[k->host_of[r]]++;
		k->ranked &= k->pos[r] == r;
	}
	uint64_t off = (uint64_t)all[k->lranks[0]].area;
	k->lead = leader;
	free(keys);
	free(count);
	free(all);
	free(placed);
	k->leaving_at_setup = leaving_before;
	for (int i = 0; i < k->nl; i++)
		k->leaving_at_setup += seen_leaving[k->lranks[i]];
	free(seen_leaving);
	if (me.area && !k->usable) /* its group formed, another did not get an area */
		ivs.ctl_free((uint64_t)me.area, err, sizeof err);
	if (!k->usable) {
		if (c->sw_round && ivs.verbose)
			fprintf(stderr, "ivshim: rank %d: collectives of a communicator of %d ranks re-planned: the library (a host's group has no area)\n",
			        ivs.world_rank, c->size);
		return k;
	}
	if (k->nl == 1) {
		k->area = calloc(1, ivs_area_size(1, k->slot));
		if (!k->area)
			ivs_fatal("out of memory");
	} else {
		if (off < IVSHIM_HEADER_SIZE || off % IVS_ALIGN || off > ivs.size || ivs_area_size((uint64_t)k->nl, k->slot) > ivs.size - off)
			ivs_fatal("collective area offset %#lx from the leader lies outside the region", (unsigned long)off);
		k->area = ivs.base + off;
		k->area_off = off;
	}
	if (nh > 1)
		hosts_comm(c, &k->hcomm);
	if (c->sw_round && ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: collectives of a communicator of %d ranks re-planned: %d hosts, %d members in this rank's area (%d in its previous one)\n",
		        ivs.world_rank, c->size, nh, k->nl, c->prev_nl);
	return k;
}

static struct ivs_coll *coll_of(struct ivs_comm *c)
{
	if (IVS_UNLIKELY(!c->coll)) {
		c->coll = coll_setup(c);
		ivs_coll_setup_done(c);
	}
	return c->coll->usable ? c->coll : NULL;
}

/* The record of comm if its collectives take the shared-memory path. */
struct ivs_comm *ivs_coll_comm(MPI_Comm comm, struct ivs_coll **k)
{
	if (IVS_LIKELY(!ivs.job_active))
		return NULL;
	if (IVS_UNLIKELY(ivs.self_leaving))
		ivs_release_at_entry();
	struct ivs_comm *c = ivs_comm_get(comm);
	if (!c)
		return NULL;
	int due = ivs_poll_due(IVS_POLL_COLLS);
	/* The library's collectives (coll_lib) may run none of the shim's progress (blocking calls
	 * in a job whose ranks shared no host at the start: coll.h; a nonblocking one may complete
	 * at its first test), so a rank that runs only those looks at the region's generation word
	 * here: it still sees its VM flagged leaving and lets its region go. */
	if (IVS_UNLIKELY(c->coll_lib) && ivs.enabled && !ivs.released &&
	    IVS_UNLIKELY(due || __atomic_load_n(ivs.gen_word, __ATOMIC_RELAXED) != ivs.gen_seen))
		ivs_progress();
	else if (IVS_UNLIKELY(due) && (!c->coll_lib || ivs.released))
		ivs_ctl_poll(); /* a rank that only runs collectives still answers the shim's messages */
	if (IVS_UNLIKELY(ivs.released))
		ivs_rejoin_poll(); /* ... and one that gave its region up joins its VM's new one */
	if (IVS_UNLIKELY(c->coll_lib))
		return NULL;
	if (IVS_UNLIKELY(c->sw)) {
		ivs_coll_switch_point(c); /* from the agreed index on, a new plan */
		if (ivs.self_leaving && !c->coll)
			ivs_release_at_entry(); /* that may have been its last area */
	}
	c->ncoll++;
	c->last_tick = ivs.ctl_tick;
	if (!(*k = coll_of(c)))
		return NULL;
	return c;
}

/* Scratch memory for a collective's buffers; running out is fatal. */
void *ivs_coll_alloc(uint64_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		ivs_fatal("out of memory (%lu bytes for a collective)", (unsigned long)n);
	return p;
}

/* ---- release ---- */

static uint64_t *left_word(uint8_t *area, int nl, int i)
{
	return &((struct ivs_cleft *)(area + ivs_area_left_off((uint64_t)nl, (uint64_t)i)))->left;
}

/* Areas of freed communicators that this rank led on its host, waiting until every co-located
 * member has said it left (its left word) before they go back to the region: MPI_Comm_free
 * must not wait for the others, and nobody may still read an area that is reused. */
static struct zombie {
	uint8_t *area;
	uint64_t off;
	int nl;
} *zombies;
static int nzombies, zombies_cap;

static void reap_areas(void)
{
	if (ivs.released)
		return; /* the region is gone: the session's end frees these areas */
	for (int z = 0; z < nzombies;) {
		struct zombie *e = &zombies[z];
		int i = 0;
		while (i < e->nl && __atomic_load_n(left_word(e->area, e->nl, i), __ATOMIC_ACQUIRE))
			i++;
		if (i < e->nl) {
			z++;
			continue;
		}
		char err[256];
		if (ivs.ctl_free(e->off, err, sizeof err) != 0 && ivs.verbose)
			fprintf(stderr, "ivshim: rank %d: free collective area: %s\n", ivs.world_rank, err);
		*e = zombies[--nzombies];
	}
}

/* This rank gives its region up (migrate.c): the areas it led that members have not all left yet
 * go to heir, a co-located rank that stays (ADOPT), which frees each once its members have left
 * it; without an heir (-1) they stay with the region's session until it ends. A region this rank
 * joins later has none of them. */
void ivs_coll_region_released(int heir, uint64_t tag)
{
	for (int z = 0; z < nzombies && heir >= 0; z++)
		ivs_ctl_adopt_send(heir, zombies[z].off, zombies[z].nl, tag);
	nzombies = 0;
}

void ivs_coll_reap(void)
{
	if (nzombies)
		reap_areas();
}

/* ADOPT: a rank that left this rank's region hands over an area of nl members it allocated at
 * region offset off (in this rank's region: migrate.c checked the sender's). Both come from
 * another rank: the control plane checks that off is a collective area of the session, and its
 * members' left words must lie in it. */
void ivs_coll_adopt(uint64_t off, uint64_t nl)
{
	if (ivs.released || !ivs.slots || nl < 2 || nl > ivs.nslots)
		return;
	char err[256] = "";
	uint64_t bytes = ivs.ctl_adopt(off, err, sizeof err);
	if (!bytes || off > ivs.size || bytes > ivs.size - off || ivs_area_left_off(nl, nl) > bytes) {
		fprintf(stderr, "ivshim: rank %d: not taking over the collective area at %#lx of %lu members from a rank that left: %s\n",
		        ivs.world_rank, (unsigned long)off, (unsigned long)nl, *err ? err : "it does not fit the area");
		return;
	}
	if (nzombies == zombies_cap) {
		zombies_cap = zombies_cap ? 2 * zombies_cap : 8;
		zombies = realloc(zombies, sizeof *zombies * (size_t)zombies_cap);
		if (!zombies)
			ivs_fatal("out of memory");
	}
	zombies[nzombies++] = (struct zombie){.area = ivs.base + off, .off = off, .nl = (int)nl};
	if (ivs.verbose)
		fprintf(stderr, "ivshim: rank %d: took over the collective area of %lu members of a rank that left the region\n",
		        ivs.world_rank, (unsigned long)nl);
	reap_areas();
}

/* MPI_Comm_free of c, or a re-plan: this rank leaves the area at once; its host's leader returns
 * the area to the region once every member has left (reap_areas, at this and later set-ups and
 * frees). A leader that leaves the region itself first leaves its areas to the session. */
void ivs_coll_forget(struct ivs_comm *c)
{
	struct ivs_coll *k = c->coll;
	if (!k)
		return;
	c->prev_nl = k->usable ? k->nl : 0;
	if (k->usable && k->nl == 1) {
		free(k->area);
	} else if (k->usable) {
		__atomic_store_n(left_word(k->area, k->nl, k->li), 1, __ATOMIC_RELEASE);
		if (k->li == 0) {
			if (nzombies == zombies_cap) {
				zombies_cap = zombies_cap ? 2 * zombies_cap : 8;
				zombies = realloc(zombies, sizeof *zombies * (size_t)zombies_cap);
				if (!zombies)
					ivs_fatal("out of memory");
			}
			zombies[nzombies++] = (struct zombie){.area = k->area, .off = k->area_off, .nl = k->nl};
		}
		reap_areas();
	}
	if (k->hcomm != MPI_COMM_NULL)
		PMPI_Comm_free(&k->hcomm);
	coll_free(k);
	c->coll = NULL;
}
