/*
 * Gates: the library's blocking calls that are collective over a communicator and have no
 * nonblocking form the shim could wait for by polling: communicator creation (comm.c), window
 * creation, MPI_Win_fence and MPI_Win_free (and, pairwise, active-target synchronisation by
 * groups: below); MPI-IO's collective calls (MPI_File_open and
 * _close, the calls that set a file's view, size, atomicity or info, MPI_File_sync,
 * MPI_File_seek_shared and the collective data access routines, split ones included).
 *
 * Why. A rank blocked inside such a call answers no migration agreement (migrate.c,
 * "Collectives"), and a valid program could deadlock there: the rank ran one collective ahead of
 * a member on a communicator being switched (the root of an MPI_Bcast) and now waits in the call
 * for that member, which waits for the agreement's decision, which needs this rank's answer
 * (tests/model/collswitch.pml -DBLOCKING_Y finds it).
 *
 * What. On a communicator whose library collectives the shim calls nonblocking (ivs_comm.lib_nb:
 * recorded, no member at MPI_THREAD_MULTIPLE, in a job that may have an agreement or rings to
 * move), every member first waits in a barrier among its members with the shim's polling wait,
 * answering the shim's messages, and enters the blocking call only once every member entered the
 * barrier. From then on no member waits for a decision before it reaches the call, so the call
 * completes (collswitch.pml -DBLOCKING_Y -DGATED_Y: proven free of deadlock). Whether a
 * communicator is gated is the same on every member (lib_nb is agreed when it is recorded), so
 * the barriers match. A window or a file keeps its communicator's members for the gates of
 * the later calls on it (the program may free the communicator first).
 *
 * Also gated: the blocking neighbourhood alltoalls the shim calls where the libraries'
 * nonblocking ones pair blocks wrong (coll_lib.c); and intercommunicators, which the shim does
 * not record: MPI_Intercomm_create, and the collectives and communicator creations on one
 * (below); MPI-4's MPI_Comm_create_from_group and MPI_Intercomm_create_from_groups (MPICH).
 * Cost: one barrier per gated call (README: an empty fence 1.5-1.75x the library's).
 * Not gated: on Open MPI, a communicator from the moment the program called MPI_Comm_idup on it
 * (comm.c says why), calls on other communicators the shim did not record (members of another
 * MPI_COMM_WORLD) and every call the shim does not interpose (README, "Migrate a VM"). The
 * set-up's own blocking MPI_Comm_create_group of its members (coll_area.c hosts_comm) is gated
 * by the set-up's polled exchange right before it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

/* comm's record if its blocking collective calls pass a gate (the same on every member) */
static const struct ivs_comm *gated(MPI_Comm comm)
{
	const struct ivs_comm *c = ivs.job_active ? ivs_comm_get(comm) : NULL;
	return c && c->lib_nb ? c : NULL;
}

/* The gate itself: a barrier among n members (world ranks, this one the me-th) by messages on
 * the shim's own communicator (ivs_net_barrier, as the leaders' barrier), which puts nothing of
 * the shim's among the program's own collectives on its communicator. With id, the barrier also
 * leaves every member the largest *id of any (a window's, below), on a tag of its own. One tag
 * serves every gate of a kind: members pass the gates of communicators they share in the same
 * order (else the blocking calls behind them would deadlock without the shim too), and
 * messages between two ranks do not overtake. */
enum { GATE_TAG = 1, GATE_ID_TAG = 2, GATE_PAIR_TAG = 3 };
static void barrier(const int *world, int n, int me, int tag, uint64_t *id)
{
	int rc = ivs_net_barrier(ivs.gatecomm, world, n, me, tag, id);
	if (rc != MPI_SUCCESS)
		ivs_fatal("the gate of a blocking collective call among %d members failed (%d)", n, rc);
}

/* ... and a gated call counted */
static void pass(const int *world, int n, int me, uint64_t *id)
{
	barrier(world, n, me, id ? GATE_ID_TAG : GATE_TAG, id);
	ivs.stats.gates++;
}

void ivs_gate_intra(MPI_Comm comm)
{
	const struct ivs_comm *c = gated(comm);
	if (c)
		pass(c->world, c->size, c->rank, NULL);
}

void ivs_gate(MPI_Comm comm)
{
	const struct ivs_comm *c = ivs.job_active ? ivs_comm_get(comm) : NULL;
	if (c && c->lib_nb)
		pass(c->world, c->size, c->rank, NULL);
	else if (!c && ivs.job_active)
		ivs_gate_inter(comm);
}

/* The world ranks of the n members of group at ranks at; 0 if one lies outside MPI_COMM_WORLD
 * (or the translation fails). */
static int to_world(MPI_Group group, int n, const int *at, int *world)
{
	MPI_Group wg = MPI_GROUP_NULL;
	int ok = PMPI_Comm_group(MPI_COMM_WORLD, &wg) == MPI_SUCCESS &&
	         PMPI_Group_translate_ranks(group, n, at, wg, world) == MPI_SUCCESS;
	for (int i = 0; ok && i < n; i++)
		ok = world[i] != MPI_UNDEFINED;
	if (wg != MPI_GROUP_NULL)
		PMPI_Group_free(&wg);
	return ok;
}

/* World ranks of group's members, *n of them; NULL for an empty group. A group with a member
 * outside MPI_COMM_WORLD is an error naming what, the caller; with what NULL, it gives NULL. */
static int *group_world(MPI_Group group, int *n, const char *what)
{
	*n = 0;
	if (PMPI_Group_size(group, n) != MPI_SUCCESS || *n <= 0) {
		*n = 0;
		return NULL;
	}
	int *at = malloc(sizeof(int) * (size_t)*n), *world = malloc(sizeof(int) * (size_t)*n);
	if (!at || !world)
		ivs_fatal("out of memory");
	for (int i = 0; i < *n; i++)
		at[i] = i;
	int ok = to_world(group, *n, at, world);
	free(at);
	if (!ok && what)
		ivs_fatal("%s: cannot map a group of %d to MPI_COMM_WORLD", what, *n);
	if (!ok) {
		free(world);
		*n = 0;
		return NULL;
	}
	return world;
}

/* MPI_Comm_create_group is collective over the group only: a member may pass an MPI_Comm_idup of
 * comm before it and another after (comm.c), so its gate follows lib_nb as comm was recorded,
 * which no call changes. */
void ivs_gate_group(MPI_Comm comm, MPI_Group group)
{
	const struct ivs_comm *c = ivs.job_active ? ivs_comm_get(comm) : NULL;
	int n = 0, me = MPI_UNDEFINED;
	if (!c || !c->gate_group || PMPI_Group_rank(group, &me) != MPI_SUCCESS || me == MPI_UNDEFINED)
		return; /* not gated, or an erroneous call the library will report */
	int *world = group_world(group, &n, "the gate of a communicator creation over a group");
	if (world)
		pass(world, n, me, NULL);
	free(world);
}

/* ---- objects made over a communicator: windows and files ---- */

/* A window or a file made on a gated communicator keeps its members for the gates of the calls
 * that are collective over it (fences, collective I/O, MPI_Win_free, MPI_File_close): the
 * program may free the communicator first. An intercommunicator keeps the members of both its
 * groups (below). Handles are pointers in Open MPI (both) and in
 * MPICH (files), integers in MPICH (windows): key is either, widened. */
enum obj_kind { OBJ_WIN, OBJ_FILE, OBJ_INTER };
#define OBJ_KEY(handle) ((uintptr_t)(handle))

/* A window's active-target synchronisation (below) */
struct pscw {
	int tag;                /* its messages' first tag */
	int *origins, norigins; /* the exposure epoch's origins (MPI_Win_post), world ranks */
	MPI_Request *completes; /* their "completing" messages, one receive each */
	int completed;          /* all of those arrived */
	int *targets, ntargets; /* the access epoch's targets (MPI_Win_start), world ranks */
	int *held, nheld;       /* targets whose "posted" an MPI_Win_start took before the library
	                           refused the epoch (MPI_ERRORS_RETURN): the next start's, first */
	int access_open;        /* an access epoch begun and not completed */
};

struct gated_obj {
	enum obj_kind kind;
	uintptr_t key;
	int *world, n, me; /* the members of its communicator (n 0: not gated) */
	struct pscw sync;  /* windows only */
	struct gated_obj *next;
};
static struct gated_obj *objs;

/* Gate the making of an object of kind on comm: returns the record for its later gates
 * (without its handle yet), or NULL where comm is not gated. */
static struct gated_obj *obj_gate(MPI_Comm comm, enum obj_kind kind)
{
	const struct ivs_comm *c = gated(comm);
	if (!c)
		return NULL;
	struct gated_obj *o = calloc(1, sizeof *o);
	int *world = malloc(sizeof(int) * (size_t)c->size);
	if (!o || !world)
		ivs_fatal("out of memory");
	memcpy(world, c->world, sizeof(int) * (size_t)c->size);
	*o = (struct gated_obj){.kind = kind, .world = world, .n = c->size, .me = c->rank};
	if (kind != OBJ_WIN) {
		pass(c->world, c->size, c->rank, NULL);
		return o;
	}
	/* A window's gate also agrees on its id: the largest of the members' next ids, after which
	 * each member's next id lies beyond it. So two live windows that share two members have
	 * different ids. Two tags per id, above the gates' and the set-ups' (coll_area.c); they
	 * repeat only after (MPI_TAG_UB - 32) / 2 ids a process took part in, so two live windows
	 * share tags only if that many were made between them. */
	static uint64_t next_id;
	uint64_t id = next_id;
	pass(c->world, c->size, c->rank, &id);
	next_id = id + 1;
	uint64_t span = ivs.tag_ub > 64 ? (uint64_t)(ivs.tag_ub - 32) / 2 : 16;
	o->sync.tag = 32 + 2 * (int)(id % span);
	return o;
}

static void pscw_forget(struct gated_obj *o);

static void obj_drop(struct gated_obj *o)
{
	pscw_forget(o);
	free(o->world);
	free(o);
}

/* After the object's making returned rc with the handle key: remember it. */
static int obj_made(int rc, uintptr_t key, struct gated_obj *o)
{
	if (!o)
		return rc;
	if (rc != MPI_SUCCESS) {
		obj_drop(o);
		return rc;
	}
	o->key = key;
	o->next = objs;
	objs = o;
	return rc;
}

static struct gated_obj **obj_find(enum obj_kind kind, uintptr_t key)
{
	struct gated_obj **p = &objs;
	while (*p && ((*p)->kind != kind || (*p)->key != key))
		p = &(*p)->next;
	return p;
}

/* Before a call collective over the object: its gate, if it has one. */
static void obj_pass(enum obj_kind kind, uintptr_t key)
{
	struct gated_obj *o = objs ? *obj_find(kind, key) : NULL;
	if (o)
		pass(o->world, o->n, o->me, NULL);
}

/* The record of the object key, if any, goes. */
static void obj_remove(enum obj_kind kind, uintptr_t key)
{
	struct gated_obj **p = objs ? obj_find(kind, key) : NULL;
	if (p && *p) {
		struct gated_obj *o = *p;
		*p = o->next;
		obj_drop(o);
	}
}

/* The freeing of the object key by call (MPI_Win_free, MPI_File_close): its gate, the call,
 * then the record goes. The library may run the program's callbacks in the call (attribute
 * deletion, error handlers), which may make or free objects: the record is looked up again. */
#define OBJ_FREE(kind, key, call)                  \
	do {                                           \
		uintptr_t k_ = (key);                      \
		obj_pass((kind), k_);                      \
		int rc_ = (call);                          \
		if (rc_ == MPI_SUCCESS)                    \
			obj_remove((kind), k_);                \
		return rc_;                                \
	} while (0)

/* ---- intercommunicators ----
 * The shim records no intercommunicator (comm.c), so their blocking calls, collective over both
 * groups, pass a gate of their own: MPI_Intercomm_create (below), and, through ivs_gate, the
 * collectives and communicator creations on an intercommunicator (MPI_Intercomm_merge,
 * MPI_Comm_dup, _split, _create) and the collectives the shim passes to the library blocking
 * (coll.h). An intercommunicator's groups are any two disjoint sets of ranks, so whether its
 * calls are gated must be a property of the whole job: MPI_COMM_WORLD's gate as it was recorded
 * (gate_group, which no call changes; no record on any rank means none at MPI_THREAD_MULTIPLE
 * may be gated, and there world's gate_group is 0 on the others). */
static int inter_gated(void)
{
	const struct ivs_comm *w = ivs.job_active ? ivs_comm_get(MPI_COMM_WORLD) : NULL;
	return w && w->gate_group;
}

static int cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

/* The world ranks of the members of n groups (disjoint), in ascending order: the same list on
 * every member. *count of them, this rank the *me-th (-1: not among them). NULL where a member
 * lies outside MPI_COMM_WORLD (every member of every group sees one) or a group is empty. */
static int *union_world(const MPI_Group *g, int n, int *count, int *me)
{
	int total = 0, *all = NULL;
	*count = 0;
	*me = -1;
	for (int i = 0; i < n; i++) {
		int ni = 0, *w = group_world(g[i], &ni, NULL);
		int *grown = w ? realloc(all, sizeof(int) * (size_t)(total + ni)) : NULL;
		if (!grown) {
			free(w);
			free(all);
			return NULL;
		}
		all = grown;
		memcpy(all + total, w, sizeof(int) * (size_t)ni);
		total += ni;
		free(w);
	}
	if (!all)
		return NULL;
	qsort(all, (size_t)total, sizeof(int), cmp_int);
	int *at = bsearch(&ivs.world_rank, all, (size_t)total, sizeof(int), cmp_int);
	*count = total;
	*me = at ? (int)(at - all) : -1;
	return all;
}

/* comm's record as an intercommunicator: the world ranks of both groups (union_world); NULL
 * where comm is no intercommunicator or is not gated (also when a member lies outside
 * MPI_COMM_WORLD). Made at the first gate, from local calls only; MPI_Comm_free forgets it
 * (ivs_gate_forget). */
static struct gated_obj *inter_rec(MPI_Comm comm)
{
	struct gated_obj *o = objs ? *obj_find(OBJ_INTER, OBJ_KEY(comm)) : NULL;
	int inter = 0;
	if (!o) {
		if (comm == MPI_COMM_NULL || !inter_gated() || PMPI_Comm_test_inter(comm, &inter) != MPI_SUCCESS || !inter)
			return NULL;
		if (!(o = calloc(1, sizeof *o)))
			ivs_fatal("out of memory");
		o->kind = OBJ_INTER;
		o->key = OBJ_KEY(comm);
		MPI_Group g[2] = {MPI_GROUP_NULL, MPI_GROUP_NULL};
		if (PMPI_Comm_group(comm, &g[0]) == MPI_SUCCESS && PMPI_Comm_remote_group(comm, &g[1]) == MPI_SUCCESS)
			o->world = union_world(g, 2, &o->n, &o->me);
		if (o->world && o->me < 0) /* not a member of its own communicator: the library is broken */
			ivs_fatal("an intercommunicator of %d ranks does not list this one", o->n);
		if (!o->world)
			o->n = 0;
		for (int i = 0; i < 2; i++)
			if (g[i] != MPI_GROUP_NULL)
				PMPI_Group_free(&g[i]);
		o->next = objs;
		objs = o;
	}
	return o->n > 0 ? o : NULL;
}

void ivs_gate_inter(MPI_Comm comm)
{
	const struct gated_obj *o = inter_rec(comm);
	if (o)
		pass(o->world, o->n, o->me, NULL);
}

/* comm is freed: its record as an intercommunicator goes (a later one may get its handle). */
void ivs_gate_forget(MPI_Comm comm) { obj_remove(OBJ_INTER, OBJ_KEY(comm)); }

/* Open MPI: the program called MPI_Comm_idup on intercommunicator comm, whose calls pass no gate
 * from now on (comm.c says why). MPI_Comm_idup is collective over both groups, so the gates end
 * at the same place of comm's calls on every member. */
void ivs_gate_inter_end(MPI_Comm comm)
{
	struct gated_obj *o = inter_rec(comm);
	if (o) {
		free(o->world);
		o->world = NULL;
		o->n = 0;
	}
}

/* MPI_Intercomm_create is collective over local on each side, and the two leaders meet on peer:
 * a rank blocked in it may wait for a member of either group. Its gate is a barrier among
 * local's members (if local is gated), a pairwise one of the two leaders (if the job gates
 * intercommunicators: the same on both sides, whatever either side's local), and the local
 * barrier again: who leaves it knows that every member of both groups has reached the gate. */
void ivs_gate_intercomm_create(MPI_Comm local, int local_leader, MPI_Comm peer, int remote_leader)
{
	if (!ivs.job_active || local == MPI_COMM_NULL) /* erroneous: the library reports it */
		return;
	const struct ivs_comm *c = gated(local);
	if (c)
		barrier(c->world, c->size, c->rank, GATE_TAG, NULL);
	int me = MPI_UNDEFINED, met = 0;
	if (inter_gated() && PMPI_Comm_rank(local, &me) == MPI_SUCCESS && me == local_leader) {
		/* the remote leader's world rank: remote_leader is its rank in peer (in peer's remote
		 * group, for an intercommunicator peer), and only it is translated, so both leaders
		 * decide alike whatever else peer holds */
		MPI_Group pg = MPI_GROUP_NULL;
		int inter = 0, n = 0, w = -1;
		int found = peer != MPI_COMM_NULL && PMPI_Comm_test_inter(peer, &inter) == MPI_SUCCESS &&
		            (inter ? PMPI_Comm_remote_group(peer, &pg) : PMPI_Comm_group(peer, &pg)) == MPI_SUCCESS &&
		            PMPI_Group_size(pg, &n) == MPI_SUCCESS && remote_leader >= 0 && remote_leader < n &&
		            to_world(pg, 1, &remote_leader, &w);
		if (pg != MPI_GROUP_NULL)
			PMPI_Group_free(&pg);
		/* a remote leader outside MPI_COMM_WORLD (whose own leader maps this one outside its
		 * world too): no exchange on either side. An erroneous remote_leader (the library
		 * reports it) skips it only here, and the other leader's gate waits. */
		if (found && w != ivs.world_rank) {
			int pair[2] = {ivs.world_rank, w};
			int mine = pair[0] > pair[1];
			if (mine)
				pair[0] = w, pair[1] = ivs.world_rank;
			barrier(pair, 2, mine, GATE_PAIR_TAG, NULL);
			met = 1;
		}
	}
	if (c)
		pass(c->world, c->size, c->rank, NULL);
	else if (met)
		ivs.stats.gates++;
}

/* MPI-4's MPI_Comm_create_from_group (b MPI_GROUP_NULL) and MPI_Intercomm_create_from_groups:
 * collective over the members of a (and b), with no parent communicator, so gated as
 * intercommunicators are (by the job's property) among the union of the groups. */
void ivs_gate_groups(MPI_Group a, MPI_Group b)
{
	MPI_Group g[2] = {a, b};
	int n = 0, me = -1;
	if (!inter_gated() || a == MPI_GROUP_NULL)
		return;
	int *world = union_world(g, b == MPI_GROUP_NULL ? 1 : 2, &n, &me);
	if (world && me >= 0) /* else an erroneous call, which the library reports */
		pass(world, n, me, NULL);
	free(world);
}

/* ---- windows ---- */

/* The body of a window's creation by call on comm into *win. */
#define WIN_CREATE(comm, win, call)                                   \
	do {                                                              \
		struct gated_obj *o_ = obj_gate(comm, OBJ_WIN);               \
		int rc_ = (call);                                             \
		return obj_made(rc_, OBJ_KEY(*(win)), o_);                    \
	} while (0)

int MPI_Win_create(void *base, MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_create(base, size, disp_unit, info, comm, win));
}

int MPI_Win_allocate(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm, void *baseptr, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_allocate(size, disp_unit, info, comm, baseptr, win));
}

int MPI_Win_allocate_shared(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm, void *baseptr, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_allocate_shared(size, disp_unit, info, comm, baseptr, win));
}

int MPI_Win_create_dynamic(MPI_Info info, MPI_Comm comm, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_create_dynamic(info, comm, win));
}

#if defined(MPICH) && MPI_VERSION >= 4
int MPI_Win_create_c(void *base, MPI_Aint size, MPI_Aint disp_unit, MPI_Info info, MPI_Comm comm, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_create_c(base, size, disp_unit, info, comm, win));
}

int MPI_Win_allocate_c(MPI_Aint size, MPI_Aint disp_unit, MPI_Info info, MPI_Comm comm, void *baseptr, MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_allocate_c(size, disp_unit, info, comm, baseptr, win));
}

int MPI_Win_allocate_shared_c(MPI_Aint size, MPI_Aint disp_unit, MPI_Info info, MPI_Comm comm, void *baseptr,
                              MPI_Win *win)
{
	WIN_CREATE(comm, win, PMPI_Win_allocate_shared_c(size, disp_unit, info, comm, baseptr, win));
}
#endif

int MPI_Win_fence(int assertion, MPI_Win win)
{
	obj_pass(OBJ_WIN, OBJ_KEY(win));
	return PMPI_Win_fence(assertion, win);
}

int MPI_Win_free(MPI_Win *win) { OBJ_FREE(OBJ_WIN, OBJ_KEY(*win), PMPI_Win_free(win)); }

/* ---- active-target synchronisation by groups ----
 * MPI_Win_post (a target names its origins), MPI_Win_start (an origin names its targets),
 * MPI_Win_complete, MPI_Win_wait and MPI_Win_test are not collective over the window's
 * communicator, but an origin may block in MPI_Win_start until its targets posted (MPICH does)
 * and a target in MPI_Win_wait until its origins completed, both waiting for another rank's
 * program. The gate here is pairwise, by empty messages on the shim's duplicate of
 * MPI_COMM_WORLD: after PMPI_Win_post (which does not block) a target tells each origin
 * "posted"; before PMPI_Win_complete an origin tells each target "completing". An origin enters
 * PMPI_Win_start, and a target PMPI_Win_wait, only once it has them all, waiting by polling and
 * answering the shim's messages; then those calls wait for no program. The messages of a
 * window carry its tags (obj_gate), so epochs on different windows between the same ranks do
 * not take each other's; between two ranks on one window they come in order. */
enum { TAG_POSTED = 0, TAG_COMPLETING = 1 };
static char pscw_none, pscw_got;

/* One empty message to each of n world ranks, fire and forget. */
static void pscw_tell(const int *to, int n, int tag)
{
	for (int i = 0; i < n; i++) {
		MPI_Request r;
		if (PMPI_Isend(&pscw_none, 0, MPI_BYTE, to[i], tag, ivs.gatecomm, &r) != MPI_SUCCESS ||
		    PMPI_Request_free(&r) != MPI_SUCCESS)
			ivs_fatal("active-target synchronisation: cannot send to rank %d", to[i]);
	}
}

/* Receives of one empty message from each of n world ranks. */
static MPI_Request *pscw_expect(const int *from, int n, int tag)
{
	MPI_Request *r = malloc(sizeof(MPI_Request) * (size_t)(n > 0 ? n : 1));
	if (!r)
		ivs_fatal("out of memory");
	for (int i = 0; i < n; i++)
		if (PMPI_Irecv(&pscw_got, 0, MPI_BYTE, from[i], tag, ivs.gatecomm, &r[i]) != MPI_SUCCESS)
			ivs_fatal("active-target synchronisation: cannot receive from rank %d", from[i]);
	return r;
}

static void pscw_wait_all(MPI_Request *r, int n)
{
	for (int i = 0; i < n; i++)
		if (ivs_net_wait(&r[i], MPI_STATUS_IGNORE) != MPI_SUCCESS)
			ivs_fatal("active-target synchronisation: a gate message failed");
}

/* The end of an exposure epoch (MPI_Win_wait, or MPI_Win_test that returned true). */
static void exposure_done(struct pscw *e)
{
	free(e->completes);
	free(e->origins);
	e->completes = NULL;
	e->origins = NULL;
	e->norigins = e->completed = 0;
}

static void pscw_forget(struct gated_obj *o)
{
	struct pscw *e = &o->sync;
	if (e->completes) /* an exposure epoch never waited for (the window freed in it: erroneous) */
		for (int i = 0; i < e->norigins; i++)
			if (e->completes[i] != MPI_REQUEST_NULL && PMPI_Cancel(&e->completes[i]) == MPI_SUCCESS)
				PMPI_Request_free(&e->completes[i]);
	exposure_done(e);
	free(e->targets);
	e->targets = NULL;
	e->ntargets = 0;
	free(e->held);
	e->held = NULL;
	e->nheld = 0;
	e->access_open = 0;
}

/* win's synchronisation record, or NULL where it is not gated */
static struct pscw *win_sync(MPI_Win win)
{
	struct gated_obj *o = objs ? *obj_find(OBJ_WIN, OBJ_KEY(win)) : NULL;
	return o ? &o->sync : NULL;
}

int MPI_Win_post(MPI_Group group, int assertion, MPI_Win win)
{
	struct pscw *e = win_sync(win);
	int rc = PMPI_Win_post(group, assertion, win);
	if (!e || rc != MPI_SUCCESS)
		return rc;
	free(e->origins);
	free(e->completes);
	e->origins = group_world(group, &e->norigins, "MPI_Win_post");
	e->completes = pscw_expect(e->origins, e->norigins, e->tag + TAG_COMPLETING);
	e->completed = 0;
	pscw_tell(e->origins, e->norigins, e->tag + TAG_POSTED);
	return rc;
}

/* Receives of "posted" from the n targets, but for those held back from a refused start (each
 * held entry stands for one message already taken); *nr: how many. */
static MPI_Request *posted_expect(struct pscw *e, const int *targets, int n, int *nr)
{
	int *want = calloc((size_t)(n > 0 ? n : 1), sizeof(int)), nw = 0;
	if (!want)
		ivs_fatal("out of memory");
	for (int i = 0; i < n; i++) {
		int h = 0;
		while (h < e->nheld && e->held[h] != targets[i])
			h++;
		if (h < e->nheld)
			e->held[h] = e->held[--e->nheld];
		else
			want[nw++] = targets[i];
	}
	MPI_Request *r = pscw_expect(want, nw, e->tag + TAG_POSTED);
	free(want);
	*nr = nw;
	return r;
}

int MPI_Win_start(MPI_Group group, int assertion, MPI_Win win)
{
	struct pscw *e = win_sync(win);
	if (!e || e->access_open) /* a start inside an access epoch is erroneous: the library says so */
		return PMPI_Win_start(group, assertion, win);
	int nt, nr;
	int *t = group_world(group, &nt, "MPI_Win_start");
	MPI_Request *posted = posted_expect(e, t, nt, &nr);
	pscw_wait_all(posted, nr);
	free(posted);
	int rc = PMPI_Win_start(group, assertion, win);
	if (rc != MPI_SUCCESS) { /* no epoch: the messages taken wait for the next start */
		int *h = realloc(e->held, sizeof(int) * (size_t)(e->nheld + nt + 1));
		if (!h)
			ivs_fatal("out of memory");
		if (nt > 0)
			memcpy(h + e->nheld, t, sizeof(int) * (size_t)nt);
		e->held = h;
		e->nheld += nt;
		free(t);
		return rc;
	}
	free(e->targets);
	e->targets = t;
	e->ntargets = nt;
	e->access_open = 1;
	ivs.stats.gates++;
	return rc;
}

int MPI_Win_complete(MPI_Win win)
{
	struct pscw *e = win_sync(win);
	if (e && e->access_open) {
		pscw_tell(e->targets, e->ntargets, e->tag + TAG_COMPLETING);
		free(e->targets);
		e->targets = NULL;
		e->ntargets = 0;
		e->access_open = 0;
	}
	return PMPI_Win_complete(win);
}

/* Whether every origin of the exposure epoch sent "completing"; waits for them with wait. The
 * epoch's gate counts once, when they are all in (MPI_Win_test may see that before the library
 * does, and MPI_Win_wait follow). */
static int exposure_gated(struct pscw *e, int wait)
{
	if (e->completed)
		return 1;
	if (wait)
		pscw_wait_all(e->completes, e->norigins);
	int all = 1;
	for (int i = 0; !wait && i < e->norigins; i++) {
		int done = 0;
		if (PMPI_Test(&e->completes[i], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
			ivs_fatal("active-target synchronisation: a gate message failed");
		all &= done;
	}
	if (all) {
		e->completed = 1;
		ivs.stats.gates++;
	}
	return all;
}

int MPI_Win_wait(MPI_Win win)
{
	struct pscw *e = win_sync(win);
	if (e && e->completes)
		exposure_gated(e, 1);
	int rc = PMPI_Win_wait(win);
	if (e && e->completes && rc == MPI_SUCCESS)
		exposure_done(e);
	return rc;
}

int MPI_Win_test(MPI_Win win, int *flag)
{
	struct pscw *e = win_sync(win);
	if (e && e->completes && !exposure_gated(e, 0)) {
		ivs_progress();
		*flag = 0;
		return MPI_SUCCESS;
	}
	int rc = PMPI_Win_test(win, flag);
	if (e && e->completes && rc == MPI_SUCCESS && *flag)
		exposure_done(e);
	return rc;
}

/* ---- files: the collective calls of MPI-IO ---- */

int MPI_File_open(MPI_Comm comm, const char *filename, int amode, MPI_Info info, MPI_File *fh)
{
	struct gated_obj *o = obj_gate(comm, OBJ_FILE);
	int rc = PMPI_File_open(comm, filename, amode, info, fh);
	return obj_made(rc, OBJ_KEY(*fh), o);
}

int MPI_File_close(MPI_File *fh) { OBJ_FREE(OBJ_FILE, OBJ_KEY(*fh), PMPI_File_close(fh)); }

/* MPI_name(params), collective over the file fh: PMPI_name(args) behind the file's gate. The
 * split collectives' _begin and _end are both collective, and both may block (Open MPI's ompio
 * waits for the operation in _end). */
#define FILE_COLL(name, params, args)                 \
	int MPI_##name params                             \
	{                                                 \
		obj_pass(OBJ_FILE, OBJ_KEY(fh));              \
		return PMPI_##name args;                      \
	}

/* the read and the write of a data access routine, with count of type cnt */
#define FILE_RW(read, write, cnt)                                                                          \
	FILE_COLL(read, (MPI_File fh, void *buf, cnt count, MPI_Datatype type, MPI_Status *st),                 \
	          (fh, buf, count, type, st))                                                                  \
	FILE_COLL(write, (MPI_File fh, const void *buf, cnt count, MPI_Datatype type, MPI_Status *st),          \
	          (fh, buf, count, type, st))
#define FILE_RW_AT(read, write, cnt)                                                                       \
	FILE_COLL(read, (MPI_File fh, MPI_Offset off, void *buf, cnt count, MPI_Datatype type, MPI_Status *st), \
	          (fh, off, buf, count, type, st))                                                             \
	FILE_COLL(write, (MPI_File fh, MPI_Offset off, const void *buf, cnt count, MPI_Datatype type,          \
	                  MPI_Status *st),                                                                     \
	          (fh, off, buf, count, type, st))
#define FILE_BEGIN(read, write, cnt)                                                                       \
	FILE_COLL(read, (MPI_File fh, void *buf, cnt count, MPI_Datatype type), (fh, buf, count, type))         \
	FILE_COLL(write, (MPI_File fh, const void *buf, cnt count, MPI_Datatype type), (fh, buf, count, type))
#define FILE_BEGIN_AT(read, write, cnt)                                                                    \
	FILE_COLL(read, (MPI_File fh, MPI_Offset off, void *buf, cnt count, MPI_Datatype type),                 \
	          (fh, off, buf, count, type))                                                                 \
	FILE_COLL(write, (MPI_File fh, MPI_Offset off, const void *buf, cnt count, MPI_Datatype type),          \
	          (fh, off, buf, count, type))
#define FILE_END(read, write)                                                                              \
	FILE_COLL(read, (MPI_File fh, void *buf, MPI_Status *st), (fh, buf, st))                                \
	FILE_COLL(write, (MPI_File fh, const void *buf, MPI_Status *st), (fh, buf, st))

FILE_COLL(File_set_view,
          (MPI_File fh, MPI_Offset disp, MPI_Datatype etype, MPI_Datatype filetype, const char *datarep, MPI_Info info),
          (fh, disp, etype, filetype, datarep, info))
FILE_COLL(File_set_size, (MPI_File fh, MPI_Offset size), (fh, size))
FILE_COLL(File_preallocate, (MPI_File fh, MPI_Offset size), (fh, size))
FILE_COLL(File_sync, (MPI_File fh), (fh))
FILE_COLL(File_set_atomicity, (MPI_File fh, int flag), (fh, flag))
FILE_COLL(File_set_info, (MPI_File fh, MPI_Info info), (fh, info))
FILE_COLL(File_seek_shared, (MPI_File fh, MPI_Offset off, int whence), (fh, off, whence))
FILE_RW(File_read_all, File_write_all, int)
FILE_RW_AT(File_read_at_all, File_write_at_all, int)
FILE_RW(File_read_ordered, File_write_ordered, int)
FILE_BEGIN(File_read_all_begin, File_write_all_begin, int)
FILE_BEGIN_AT(File_read_at_all_begin, File_write_at_all_begin, int)
FILE_BEGIN(File_read_ordered_begin, File_write_ordered_begin, int)
FILE_END(File_read_all_end, File_write_all_end)
FILE_END(File_read_at_all_end, File_write_at_all_end)
FILE_END(File_read_ordered_end, File_write_ordered_end)

#if defined(MPICH) && MPI_VERSION >= 4
FILE_RW(File_read_all_c, File_write_all_c, MPI_Count)
FILE_RW_AT(File_read_at_all_c, File_write_at_all_c, MPI_Count)
FILE_RW(File_read_ordered_c, File_write_ordered_c, MPI_Count)
FILE_BEGIN(File_read_all_begin_c, File_write_all_begin_c, MPI_Count)
FILE_BEGIN_AT(File_read_at_all_begin_c, File_write_at_all_begin_c, MPI_Count)
FILE_BEGIN(File_read_ordered_begin_c, File_write_ordered_begin_c, MPI_Count)
#endif
