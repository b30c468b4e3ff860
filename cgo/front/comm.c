/* Communicators the shim knows: every intracommunicator created while the job uses shared
 * memory gets a context id agreed among its members (one PMPI_Allreduce at creation) and a map
 * from its ranks to world ranks and co-located peers. Communicators the shim does not know
 * (intercommunicators, MPI_Comm_idup, spawned ones) are passed to the library untouched, the
 * same decision on every member. */
#include <stdlib.h>
#include "ivshim.h"

#define COMM_BUCKETS 256

static struct ivs_comm *table[COMM_BUCKETS];
static struct ivs_comm *world_cache;

static unsigned bucket(MPI_Comm c)
{
	uintptr_t k = IVS_HANDLE_KEY(c);
	return (unsigned)((k >> 4) ^ (k >> 12) ^ k) % COMM_BUCKETS;
}

/* The shim's record of c, or NULL if it has none (comm_agree: no member had a co-located peer
 * in it or a region at its creation, or this rank runs MPI_THREAD_MULTIPLE; the other members
 * of a communicator with such a member keep theirs, marked coll_lib). */
struct ivs_comm *ivs_comm_get(MPI_Comm c)
{
	if (IVS_LIKELY(world_cache && world_cache->handle == c))
		return world_cache;
	for (struct ivs_comm *e = table[bucket(c)]; e; e = e->next)
		if (e->handle == c)
			return e;
	return NULL;
}

/* The record with context id ctx, or NULL (not created here yet, or freed). Not on any
 * per-message path: migrate.c looks communicators up by the id its messages carry. */
struct ivs_comm *ivs_comm_by_ctx(uint32_t ctx)
{
	for (int b = 0; b < COMM_BUCKETS; b++)
		for (struct ivs_comm *e = table[b]; e; e = e->next)
			if (e->ctx == ctx)
				return e;
	return NULL;
}

void ivs_comm_each(void (*fn)(struct ivs_comm *c, void *arg), void *arg)
{
	for (int b = 0; b < COMM_BUCKETS; b++)
		for (struct ivs_comm *e = table[b], *next; e; e = next) {
			next = e->next;
			fn(e, arg);
		}
}

static void comm_drop(struct ivs_comm *e)
{
	free(e->world);
	free(e->by_local);
	free(e);
}

/* Requests keep their communicator's record alive: MPI_Comm_free may come while operations
 * on it are pending (they complete normally). */
void ivs_comm_hold(struct ivs_comm *c)
{
	c->refs++;
}

void ivs_comm_unhold(struct ivs_comm *c)
{
	if (--c->refs == 0 && c->freed)
		comm_drop(c);
}

void ivs_comm_forget(MPI_Comm c)
{
	struct ivs_comm **pp = &table[bucket(c)];
	for (; *pp; pp = &(*pp)->next) {
		if ((*pp)->handle == c) {
			struct ivs_comm *e = *pp;
			if (e->sw || e->sw_coord) /* still findable by its id while it finishes */
				ivs_coll_agreement_finish(e);
			*pp = e->next;
			if (e == world_cache)
				world_cache = NULL;
			ivs_coll_forget(e);
			e->freed = 1;
			if (e->refs == 0)
				comm_drop(e);
			return;
		}
	}
}

/* Build the shim's view of intracommunicator c (NULL for an intercommunicator). */
static struct ivs_comm *comm_build(MPI_Comm c, int *rc)
{
	int inter = 0, size, rank;
	*rc = PMPI_Comm_test_inter(c, &inter);
	if (*rc != MPI_SUCCESS || inter)
		return NULL;
	PMPI_Comm_size(c, &size);
	PMPI_Comm_rank(c, &rank);
	struct ivs_comm *e = calloc(1, sizeof *e);
	int *ranks = malloc(sizeof(int) * (size_t)size);
	if (e) {
		e->world = malloc(sizeof(int) * (size_t)size);
		e->by_local = malloc(sizeof(int) * (size_t)ivs.world_size); /* local indices grow at a rejoin (migrate.c) */
	}
	if (!e || !ranks || !e->world || !e->by_local) {
		free(ranks);
		if (e)
			comm_drop(e);
		*rc = MPI_ERR_NO_MEM;
		return NULL;
	}
	MPI_Group g, wg;
	PMPI_Comm_group(c, &g);
	PMPI_Comm_group(MPI_COMM_WORLD, &wg);
	for (int i = 0; i < size; i++)
		ranks[i] = i;
	*rc = PMPI_Group_translate_ranks(g, size, ranks, wg, e->world);
	PMPI_Group_free(&g);
	PMPI_Group_free(&wg);
	free(ranks);
	if (*rc != MPI_SUCCESS) {
		comm_drop(e);
		return NULL;
	}
	for (int i = 0; i < ivs.world_size; i++)
		e->by_local[i] = -1;
	for (int i = 0; i < size; i++) {
		if (e->world[i] < 0 || e->world[i] >= ivs.world_size) {
			e->outsider = 1; /* spawned, connected or merged from another MPI_COMM_WORLD */
			continue;
		}
		struct ivs_peer *p = ivs.peers[e->world[i]];
		if (p) { /* co-located; each direction picks its path per message (migrate.c) */
			e->by_local[p->local] = i;
			e->nshm++;
		}
	}
	e->handle = c;
	e->rank = rank;
	e->size = size;
	return e;
}

/* Agree among c's members on a context id (the largest next id among them, unused by every
 * member) and on whether any member has a co-located peer in c or a region (a group of one
 * counts: a migration may bring a member next to it); then record c if so. Every member takes
 * the same decision, so collectives on c run the same algorithm everywhere: the shim's if a
 * member had a co-located peer in c, else the library's for good (they keep the library's own
 * algorithms for a job whose ranks never share a host; its point-to-point still moves to
 * rings once a migration co-locates two of them, join.c).
 * A communicator with a member outside this MPI_COMM_WORLD (spawned, connected, merged) is left
 * to the library without any exchange: the other world may not run the shim at all (or run it
 * in pass-through, where it agrees on nothing), and every member sees an outsider, so the
 * decision is uniform without asking.
 * A rank at MPI_THREAD_MULTIPLE never records anything (its threads may create communicators
 * concurrently, and the shim's state has no locks): it takes part in the agreement only, and
 * the collectives of every communicator it belongs to go to the library on all members. */
static int comm_agree(MPI_Comm c, int is_world)
{
	int rc;
	struct ivs_comm *e = comm_build(c, &rc);
	if (!e)
		return rc;
	if (e->outsider) {
		comm_drop(e);
		return MPI_SUCCESS;
	}
	unsigned mine[4] = {is_world ? 0 : ivs.next_ctx, e->nshm >= 2 || ivs.enabled, (unsigned)ivs.thread_multiple, e->nshm >= 2};
	unsigned agreed[4] = {0, 0, 0, 0};
	MPI_Request req;
	rc = PMPI_Iallreduce(mine, agreed, 4, MPI_UNSIGNED, MPI_MAX, c, &req);
	if (rc == MPI_SUCCESS)
		rc = ivs_net_wait(&req, MPI_STATUS_IGNORE);
	if (rc != MPI_SUCCESS || !agreed[1] || ivs.thread_multiple) {
		comm_drop(e);
		return rc;
	}
	if (!is_world)
		ivs.next_ctx = agreed[0] + 1;
	e->ctx = agreed[0];
	/* A rank with a region counts its library messages on every communicator it records (no
	 * member runs MPI_THREAD_MULTIPLE there), co-located peers in it or not, so a pair that
	 * a migration makes later can move to rings on it (join.c); its point-to-point there then
	 * takes the shim's paths, which count. */
	e->counted = ivs.enabled && !agreed[2];
	/* Which members are co-located and whose messages come by the library is read only now, as
	 * the record goes into the table: the wait above ran the progress engine, which may have
	 * moved a peer's direction to the library (pairs.c, migrate.c), or made a peer of a rank
	 * that joined this rank's region (migrate.c), and told only the communicators already
	 * recorded. */
	e->nshm = 0;
	for (int i = 0; i < e->size; i++) {
		struct ivs_peer *p = ivs.peers[e->world[i]];
		if (!p || p->rx_net)
			e->has_net = 1;
		if (p) {
			e->by_local[p->local] = i;
			e->nshm++;
		}
	}
	e->p2p = e->nshm >= 2 || e->counted;
	e->self_net = e->nshm < 2;
	e->coll_lib = agreed[2] != 0 || !agreed[3] || !ivs.coll_areas;
	e->lib_nb = (ivs.coll_areas || ivs.coll_nb_all) && !agreed[2];
	e->gate_group = e->lib_nb;
	unsigned b = bucket(c);
	e->next = table[b];
	table[b] = e;
	if (is_world)
		world_cache = e;
	return MPI_SUCCESS;
}

/* A rank became co-located at run time (migrate.c's rejoin) with local index p->local. */
static void add_local(struct ivs_comm *c, void *arg)
{
	const struct ivs_peer *p = arg;
	for (int i = 0; i < c->size; i++)
		if (c->world[i] == p->world) {
			c->by_local[p->local] = i;
			c->nshm++;
		}
}

void ivs_comm_add_local(const struct ivs_peer *p)
{
	ivs_comm_each(add_local, (void *)p);
}

static int comm_created(MPI_Comm *newcomm, int rc)
{
	if (rc != MPI_SUCCESS || !ivs.job_active || *newcomm == MPI_COMM_NULL)
		return rc;
	return comm_agree(*newcomm, 0);
}

int ivs_comm_world_init(void)
{
	ivs_join_init();
	ivs.next_ctx = 2; /* 0: MPI_COMM_WORLD, 1: reserved for MPI_COMM_SELF */
	return comm_agree(MPI_COMM_WORLD, 1);
}

/* Communicator creation: blocking library calls collective over c (over the group's members
 * for MPI_Comm_create_group, over both groups for an intercommunicator c), so they pass c's
 * gate (gate.c). Those erroneous on an intercommunicator pass an intracommunicator's only: the
 * library reports the error without waiting for the other group. */
int MPI_Comm_dup(MPI_Comm c, MPI_Comm *n)
{
	ivs_gate(c);
	return comm_created(n, PMPI_Comm_dup(c, n));
}
int MPI_Comm_dup_with_info(MPI_Comm c, MPI_Info i, MPI_Comm *n)
{
	ivs_gate(c);
	return comm_created(n, PMPI_Comm_dup_with_info(c, i, n));
}
int MPI_Comm_split(MPI_Comm c, int color, int key, MPI_Comm *n)
{
	ivs_gate(c);
	return comm_created(n, PMPI_Comm_split(c, color, key, n));
}
int MPI_Comm_split_type(MPI_Comm c, int type, int key, MPI_Info i, MPI_Comm *n)
{
	ivs_gate_intra(c);
	return comm_created(n, PMPI_Comm_split_type(c, type, key, i, n));
}
int MPI_Comm_create(MPI_Comm c, MPI_Group g, MPI_Comm *n)
{
	ivs_gate(c);
	return comm_created(n, PMPI_Comm_create(c, g, n));
}
int MPI_Comm_create_group(MPI_Comm c, MPI_Group g, int tag, MPI_Comm *n)
{
	ivs_gate_group(c, g);
	return comm_created(n, PMPI_Comm_create_group(c, g, tag, n));
}
int MPI_Intercomm_merge(MPI_Comm c, int high, MPI_Comm *n)
{
	ivs_gate(c);
	return comm_created(n, PMPI_Intercomm_merge(c, high, n));
}
int MPI_Intercomm_create(MPI_Comm local, int local_leader, MPI_Comm peer, int remote_leader, int tag, MPI_Comm *n)
{
	ivs_gate_intercomm_create(local, local_leader, peer, remote_leader);
	return PMPI_Intercomm_create(local, local_leader, peer, remote_leader, tag, n);
}
#if defined(MPICH) && MPI_VERSION >= 4
int MPI_Comm_create_from_group(MPI_Group g, const char *stringtag, MPI_Info info, MPI_Errhandler eh, MPI_Comm *n)
{
	ivs_gate_groups(g, MPI_GROUP_NULL);
	return comm_created(n, PMPI_Comm_create_from_group(g, stringtag, info, eh, n));
}
int MPI_Intercomm_create_from_groups(MPI_Group local, int local_leader, MPI_Group remote, int remote_leader,
                                     const char *stringtag, MPI_Info info, MPI_Errhandler eh, MPI_Comm *n)
{
	ivs_gate_groups(local, remote);
	return PMPI_Intercomm_create_from_groups(local, local_leader, remote, remote_leader, stringtag, info, eh, n);
}
#endif
int MPI_Cart_create(MPI_Comm c, int nd, const int dims[], const int periods[], int reorder, MPI_Comm *n)
{
	ivs_gate_intra(c);
	return comm_created(n, PMPI_Cart_create(c, nd, dims, periods, reorder, n));
}
int MPI_Cart_sub(MPI_Comm c, const int remain[], MPI_Comm *n)
{
	ivs_gate_intra(c);
	return comm_created(n, PMPI_Cart_sub(c, remain, n));
}
int MPI_Graph_create(MPI_Comm c, int nn, const int index[], const int edges[], int reorder, MPI_Comm *n)
{
	ivs_gate_intra(c);
	return comm_created(n, PMPI_Graph_create(c, nn, index, edges, reorder, n));
}
int MPI_Dist_graph_create(MPI_Comm c, int nn, const int sources[], const int degrees[], const int dest[],
                          const int weights[], MPI_Info info, int reorder, MPI_Comm *n)
{
	ivs_gate_intra(c);
	return comm_created(n, PMPI_Dist_graph_create(c, nn, sources, degrees, dest, weights, info, reorder, n));
}
int MPI_Dist_graph_create_adjacent(MPI_Comm c, int indeg, const int sources[], const int sw[], int outdeg,
                                   const int dest[], const int dw[], MPI_Info info, int reorder, MPI_Comm *n)
{
	ivs_gate_intra(c);
	return comm_created(n, PMPI_Dist_graph_create_adjacent(c, indeg, sources, sw, outdeg, dest, dw, info, reorder, n));
}

/* MPI_Comm_idup: Open MPI 4.1 agrees on the new communicator's context id later, from its
 * progress engine, by nonblocking collectives on c that it issues then, and matches those
 * against the other collectives and communicator creations on c in the order each rank happened
 * to issue them (open-mpi/ompi#2025): a wait that runs the progress engine between the
 * MPI_Comm_idup and a blocking communicator creation on c may hang the job, without the shim
 * too (README, "Migrate a VM"). A gate is such a wait (MPICH's test comm/comm_idup_comm, run on
 * Open MPI, hung with one before its MPI_Comm_dup), and so is a nonblocking call of the library's collectives.
 * So on Open MPI, from c's first MPI_Comm_idup on, the shim calls the library's collectives on c
 * blocking, gates no communicator creation on c and sets c's collectives up by a blocking
 * exchange: lib_nb goes (unless ivs.coll_nb_all, where the rings need the polled calls; that is
 * never Open MPI, which the shim can always hook). MPI_Comm_idup is collective over c, so this
 * happens at the same place in c's sequence of collectives on every member, and gates and
 * calls stay matched. Not covered: windows and files made on c before keep their gates (a
 * fence may legally come before the idup on one member and after it on another, so their
 * gates cannot end there), MPI_Comm_create_group keeps c's gate (gate.c), and the polled
 * waits of other communicators' calls still run the progress engine. MPICH orders an idup's
 * schedule among c's collectives where it is issued: there c keeps its gates (MPICH's
 * comm_idup tests, 14 runs from 2 to 9 ranks, pass with them). */
static void idup_parent(MPI_Comm c)
{
	struct ivs_comm *e = ivs.job_active ? ivs_comm_get(c) : NULL;
#ifdef OPEN_MPI
	if (e && !ivs.coll_nb_all) /* there the rings need the polled calls (coll.h); never Open MPI */
		e->lib_nb = 0;
	if (!e && ivs.job_active)
		ivs_gate_inter_end(c);
#else
	(void)e; /* MPICH: see above */
#endif
}

int MPI_Comm_idup(MPI_Comm c, MPI_Comm *n, MPI_Request *r)
{
	idup_parent(c);
	return PMPI_Comm_idup(c, n, r);
}

#if defined(MPICH) && MPI_VERSION >= 4
int MPI_Comm_idup_with_info(MPI_Comm c, MPI_Info i, MPI_Comm *n, MPI_Request *r)
{
	idup_parent(c);
	return PMPI_Comm_idup_with_info(c, i, n, r);
}
#endif

int MPI_Comm_free(MPI_Comm *c)
{
	if (ivs.job_active) {
		ivs_comm_forget(*c);
		ivs_gate_forget(*c);
	}
	return PMPI_Comm_free(c);
}

int MPI_Comm_disconnect(MPI_Comm *c)
{
	ivs_gate(*c); /* collective, and it waits for the communicator's pending messages */
	if (ivs.job_active) {
		ivs_comm_forget(*c);
		ivs_gate_forget(*c);
	}
	return PMPI_Comm_disconnect(c);
}

/* Dynamic processes. MPI_Comm_spawn, _spawn_multiple, MPI_Comm_accept and _connect are
 * collective over comm: the root does the work while the others wait for its result, so they
 * pass comm's gate, as communicator creation does. What they make is an intercommunicator with
 * another MPI_COMM_WORLD's ranks (or, for accept and connect, possibly this one's), which the
 * shim does not record. The gate covers comm's members only: a rank blocked in MPI_Comm_accept
 * waits for the connecting side, which no gate reaches before the port is known, and answers
 * no agreement until it arrives (README, "Migrate a VM"). MPI_Comm_join, pairwise over a
 * socket to an unknown peer, is not gated either. */
int MPI_Comm_spawn(const char *command, char *argv[], int maxprocs, MPI_Info info, int root, MPI_Comm c,
                   MPI_Comm *n, int errcodes[])
{
	ivs_gate_intra(c);
	return PMPI_Comm_spawn(command, argv, maxprocs, info, root, c, n, errcodes);
}
int MPI_Comm_spawn_multiple(int count, char *commands[], char **argvs[], const int maxprocs[], const MPI_Info infos[],
                            int root, MPI_Comm c, MPI_Comm *n, int errcodes[])
{
	ivs_gate_intra(c);
	return PMPI_Comm_spawn_multiple(count, commands, argvs, maxprocs, infos, root, c, n, errcodes);
}
int MPI_Comm_accept(const char *port, MPI_Info info, int root, MPI_Comm c, MPI_Comm *n)
{
	ivs_gate_intra(c);
	return PMPI_Comm_accept(port, info, root, c, n);
}
int MPI_Comm_connect(const char *port, MPI_Info info, int root, MPI_Comm c, MPI_Comm *n)
{
	ivs_gate_intra(c);
	return PMPI_Comm_connect(port, info, root, c, n);
}

int MPI_Type_free(MPI_Datatype *dt)
{
	ivs_dt_forget(*dt);
	return PMPI_Type_free(dt);
}
