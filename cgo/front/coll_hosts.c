/* Collectives across hosts: gathers, scatters and alltoall.
 * A host's leader collects its members' blocks through the area, the leaders move them among
 * themselves with one linear exchange of point-to-point messages on the hosts' communicator
 * (ivs_lead_exchange_begin and _end; blocks in host-grouped order: a host's members in comm rank order,
 * hosts in order), and the leader hands the results out through the area. A gather's or
 * scatter's root takes its host leader's part itself: it collects or hands out its own host's
 * blocks and receives or sends the other hosts' directly, so a root that is not its host's
 * leader does not pass the whole vector through the area. Where host-grouped order is comm
 * rank order (k->ranked: ranks placed host by host), the root's or every rank's own buffer is
 * the gathered vector, and its host's blocks stay in it: no vector-sized copy, no vector-sized
 * allocation. Against the library's nonblocking v-collectives between the leaders and a
 * regrouping copy always (2 hosts x 2 VMs, Open MPI, medians of 5): Scatter of 4 MiB 2.17x ->
 * 1.15x the library alone, Gather 1.10x -> 0.69x, Allgather 0.99x -> 0.72x, and 8 B Gather
 * 1.34x -> 1.18x, Scatter 0.56x -> 0.52x.
 * From a block size on, and for a small gather where the other hosts hold few members (direct,
 * below), a gather's or scatter's root instead talks to every member of the other hosts
 * itself, and only its own host uses the area.
 * A library error is returned after the intra-host phases, which still run so that the
 * host's members do not wait forever. */
#include <stdlib.h>
#include <string.h>
#include "coll.h"

/* The exchange (ivs_lead_exchange_begin) of a gather or scatter: per host, the bytes sent to it and
 * their offset, the bytes received from it and their offset. Every member of the gathered
 * vector (host-grouped) has `per` bytes; this host's blocks start at 0 of the exchanging rank's
 * own buffer. to_host: the host that gets blocks (-1: every host, an allgather); from_host:
 * the one that sends them (a scatter), -1 for a gather. */
struct lead_v {
	int *scount, *sdispl, *rcount, *rdispl;
};

static struct lead_v lead_v(struct ivs_coll *k, uint64_t per, int to_host, int from_host)
{
	int nh = k->nhosts, me = k->myhost;
	int *v = ivs_coll_alloc(sizeof(int) * 4 * (uint64_t)nh);
	struct lead_v x = {v, v + nh, v + 2 * nh, v + 3 * nh};
	int mine = (int)((uint64_t)k->nl * per);
	for (int h = 0; h < nh; h++) {
		int block = (int)((uint64_t)(k->host_first[h + 1] - k->host_first[h]) * per), at = (int)((uint64_t)k->host_first[h] * per);
		if (from_host < 0) { /* gather: my block to the host that gets it, theirs to me */
			x.scount[h] = to_host < 0 || h == to_host ? mine : 0;
			x.sdispl[h] = 0;
			x.rcount[h] = to_host < 0 || me == to_host ? block : 0;
			x.rdispl[h] = at;
		} else { /* scatter: from_host (its root) sends every host its block */
			x.scount[h] = me == from_host ? block : 0;
			x.sdispl[h] = at;
			x.rcount[h] = h == from_host ? mine : 0;
			x.rdispl[h] = 0;
		}
	}
	return x;
}

/* A gather's or scatter's buffers: grouped, the whole vector of all members' n-byte blocks in
 * host-grouped order (the program's own buffer `own` where in place, else one allocated where
 * wanted), and on the member `holder` (local index) mine, its host's blocks (inside grouped
 * where there is one). */
struct vec {
	uint8_t *grouped, *mine;
	int in_place, own_mine;
};

static struct vec vec_get(struct ivs_coll *k, struct ivs_comm *c, uint64_t n, int in_place, uint8_t *own, int wanted, int holder)
{
	struct vec v = {.in_place = in_place};
	if (in_place)
		v.grouped = own;
	else if (wanted)
		v.grouped = ivs_coll_alloc(n * (uint64_t)c->size);
	if (k->li != holder)
		return v;
	v.own_mine = !v.grouped;
	v.mine = v.grouped ? v.grouped + (uint64_t)k->host_first[k->myhost] * n : ivs_coll_alloc(n * (uint64_t)k->nl);
	return v;
}

static void vec_put(struct vec *v)
{
	if (v->own_mine)
		free(v->mine);
	if (!v->in_place)
		free(v->grouped);
}

/* Blocks of n bytes between comm rank order (ranked[r]) and host-grouped order (grouped[pos[r]]). */
static void regroup(struct ivs_coll *k, int size, uint8_t *grouped, uint8_t *ranked, uint64_t n, int to_grouped)
{
	for (int r = 0; r < size; r++) {
		uint8_t *g = grouped + (uint64_t)k->pos[r] * n, *o = ranked + (uint64_t)r * n;
		ivs_copy(to_grouped ? g : o, to_grouped ? o : g, n);
	}
}

/* Whether a gather's (scatter 0) or scatter's (scatter 1) blocks of n bytes go between the root
 * and the other hosts' members directly (ivs_lead_direct_begin), as the library's own linear
 * algorithms send them, rather than through those hosts' leaders and areas. Through a leader,
 * a block waits for the area's hop and for its host's other blocks, and the leader's message
 * for all of them; directly, the root pays a message per member, and the members of the other
 * hosts all send or receive at once. n, the root and the hosts are the same on every member,
 * so all take the same way.
 * Measured on 2 hosts x 2 VMs, medians of 5, with the root at rank 0 (IMB's default) and with
 * it moving every repetition (-root_shift on); time / the library alone's, direct against
 * through the leaders:
 *   Open MPI  Gather from 16 KiB   rank 0 0.38-0.96 against 0.40-1.24, moving 0.45-1.07
 *                                  against 0.61-1.85 (256 KiB: 0.78 against 1.85);
 *             Scatter from 32 KiB  rank 0 0.36-0.94 against 0.58-1.38, moving 0.37-0.97
 *                                  against 0.54-1.43;
 *             below, direct lost with the root at rank 0: Gather of 4 KiB 1.29x and 1.55x the
 *             leaders' time in two rounds, Scatter of 1-16 KiB 1.16-1.44x.
 *   MPICH     Gather 0.53-0.98x the leaders' time from 1 KiB both ways, except 8 KiB at rank 0
 *             (1.28x); Scatter below 16 KiB 1.7-2.3x (3 rounds, moving), from 16 KiB
 *             0.37-1.16x, except 64 KiB at rank 0 (2.16x). (MPICH's library alone spin-waits
 *             with 4 ranks on 2 CPUs, so only the two ways compare.)
 * Hence direct from where it wins both ways.
 * A small gather on Open MPI goes direct too where the other hosts hold few members (at most
 * GATHER_FEW per host on average): the leader saves the root only a few messages, and its
 * members no longer wait for it. 2 hosts x 2 VMs, medians of 5, 1 B-2 KiB: root at rank 0
 * 0.57-1.72x the library alone against 1.17-2.83x through the leaders (t_max of 256 B 2.0-3.3
 * us against 4.2-8.3), moving 0.50-0.94x against 0.47-0.88x; 4-8 KiB direct lost at rank 0
 * (1.10-1.34x against 0.85-0.98x). With 4 members per host (2 x 4, a build that went direct
 * at every size, moving roots, 3 rounds) 1 B-2 KiB took 0.72-0.97x the leaders' time; more
 * were not measured.
 */
#if defined(OPEN_MPI)
enum { GATHER_DIRECT_MIN = 16 << 10, SCATTER_DIRECT_MIN = 32 << 10, GATHER_SMALL_MAX = 2 << 10, GATHER_FEW = 4 };
#else
enum { GATHER_DIRECT_MIN = 1 << 10, SCATTER_DIRECT_MIN = 16 << 10, GATHER_SMALL_MAX = 0, GATHER_FEW = 0 };
#endif

static int direct(const struct ivs_coll *k, uint64_t n, int scatter, int root)
{
	if (scatter)
		return n >= SCATTER_DIRECT_MIN;
	int h = k->host_of[root], others = k->host_first[k->nhosts] - (k->host_first[h + 1] - k->host_first[h]);
	return n >= GATHER_DIRECT_MIN || (n <= GATHER_SMALL_MAX && others <= GATHER_FEW * (k->nhosts - 1));
}

/* A direct gather: the root's host collects through the area into the root's dst, in comm rank
 * order; every other host's member sends its block to the root itself. */
static int gather_direct(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root)
{
	struct ivs_lead_exch ex;
	int at_root = c->rank == root;
	ivs_lead_direct_begin(k, &ex, root, at_root ? dst : (uint8_t *)src, n, !at_root);
	if (k->myhost == k->host_of[root])
		ivs_coll_collect(k, ivs_coll_root_local(k, root), IVS_FLAT(src), n, IVS_FLAT(dst), k->lranks);
	return ivs_lead_exchange_end(&ex);
}

/* A direct scatter: the root posts its sends to the other hosts' members from src, in comm rank
 * order, hands out its own host's blocks through the area, and completes them, or completes
 * them first where they leave at once (ivs_lead_eager, as in ivs_coll_scatter_hosts); every
 * other host's member receives its block from the root itself. */
static int scatter_direct(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root)
{
	struct ivs_lead_exch ex;
	int at_root = c->rank == root, rc = MPI_SUCCESS, late = at_root && !ivs_lead_eager(n);
	ivs_lead_direct_begin(k, &ex, root, at_root ? (uint8_t *)src : dst, n, at_root);
	if (!late)
		rc = ivs_lead_exchange_end(&ex);
	if (k->myhost == k->host_of[root])
		ivs_coll_distribute(k, ivs_coll_root_local(k, root), IVS_FLAT(src), n, dst ? IVS_FLAT(dst) : NULL, k->lranks);
	return late ? ivs_lead_exchange_end(&ex) : rc;
}

/* Gather to root, or allgather if root < 0, across hosts. A gather of blocks of direct() size
 * is gather_direct. Else a gather's root collects its own host's blocks through the area and
 * receives every other host's from that host's leader itself; an allgather's leaders collect,
 * exchange and spread the whole vector to their hosts. */
int ivs_coll_gather_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root)
{
	int everyone = root < 0, root_host = everyone ? -1 : k->host_of[root];
	if (!everyone && direct(k, n, 0, root))
		return gather_direct(k, c, src, dst, n, root);
	int holder = !everyone && k->myhost == root_host ? ivs_coll_root_local(k, root) : 0; /* collects this host's blocks */
	int gets = everyone || c->rank == root;
	uint64_t all = n * (uint64_t)c->size;
	/* the gathered vector is dst itself where in place; the holder collects its host's blocks
	 * where they belong in it */
	struct vec v = vec_get(k, c, n, k->ranked && gets, dst, gets, holder);
	int rc = MPI_SUCCESS;
	/* A gather's root posts its receives from the other hosts before it collects its own host's
	 * blocks (it sends nothing: its host's blocks are in place in the vector); a leader sends
	 * what it collected. */
	int early = !everyone && c->rank == root;
	struct lead_v x = {0};
	struct ivs_lead_exch ex;
	if (k->li == holder) { /* on the root's host, that is the root */
		x = lead_v(k, n, root_host, -1);
		if (early)
			ivs_lead_exchange_begin(k, &ex, root, v.mine, x.scount, x.sdispl, v.grouped, x.rcount, x.rdispl);
	}
	ivs_coll_collect(k, holder, IVS_FLAT(src), n, IVS_FLAT(v.mine), NULL);
	if (k->li == holder) {
		if (!early)
			ivs_lead_exchange_begin(k, &ex, root, v.mine, x.scount, x.sdispl, v.grouped, x.rcount, x.rdispl);
		rc = ivs_lead_exchange_end(&ex);
		free(x.scount);
	}
	if (everyone) /* the leader has it: on to everyone */
		ivs_coll_spread(k, 0, IVS_EVERYONE, IVS_FLAT(v.grouped), 0, all);
	if (!v.in_place && gets)
		regroup(k, c->size, v.grouped, dst, n, 0);
	vec_put(&v);
	return rc;
}

/* Scatter from root across hosts: blocks of direct() size by scatter_direct; else the root sends
 * every other host's blocks to that host's leader itself and hands its own host's members
 * theirs through the area, and a leader hands out what it received. */
int ivs_coll_scatter_hosts(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *src, uint8_t *dst, uint64_t n, int root)
{
	if (direct(k, n, 1, root))
		return scatter_direct(k, c, src, dst, n, root);
	int root_host = k->host_of[root];
	int holder = k->myhost == root_host ? ivs_coll_root_local(k, root) : 0; /* hands out this host's blocks */
	/* the vector to scatter is src itself where in place (read only) */
	struct vec v = vec_get(k, c, n, k->ranked && c->rank == root, (uint8_t *)src, c->rank == root, holder);
	int rc = MPI_SUCCESS;
	if (c->rank == root && !v.in_place)
		regroup(k, c->size, v.grouped, (uint8_t *)src, n, 1);
	/* A leader hands out what it received. The root completes its sends first where they leave
	 * at once, else it hands out its own host's blocks with them posted (ivs_lead_eager). On
	 * 2 hosts x 2 VMs, roots moving every repetition, medians of 7 (Open MPI) and 5 (MPICH),
	 * handing out first against completing first: blocks of 256 KiB-1 MiB 0.66-0.83x on Open
	 * MPI, 16-512 KiB 0.86-1.01x on MPICH; blocks of 0.5-32 KiB 1.02-1.23x on Open MPI, 4-8 KiB
	 * 1.10-1.15x on MPICH. */
	struct ivs_lead_exch ex;
	int late = 0;
	if (k->li == holder) {
		struct lead_v x = lead_v(k, n, -1, root_host);
		ivs_lead_exchange_begin(k, &ex, root, v.grouped, x.scount, x.sdispl, v.mine, x.rcount, x.rdispl);
		for (int h = 0; h < k->nhosts; h++) /* its own host's blocks are no message */
			late |= c->rank == root && h != k->myhost && !ivs_lead_eager((uint64_t)x.scount[h]);
		free(x.scount);
		if (!late)
			rc = ivs_lead_exchange_end(&ex);
	}
	ivs_coll_distribute(k, holder, IVS_FLAT(v.mine), n, dst ? IVS_FLAT(dst) : NULL, NULL);
	if (late)
		rc = ivs_lead_exchange_end(&ex);
	vec_put(&v);
	return rc;
}

/* The leaders' alltoall: in[i][r] is the block local member i sends to comm rank r, out[j][r]
 * the block local member j receives from comm rank r. For each destination host the leader
 * sends [local member][destination member] blocks; from a source host it receives
 * [source member][local member] blocks, so the block from rank r to local member j lands at
 * (pos[r]*nl + j)*n. */
static int leaders_alltoall(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *in, uint8_t *out, uint64_t n)
{
	uint64_t row = n * (uint64_t)c->size, nl = (uint64_t)k->nl;
	uint8_t *snd = ivs_coll_alloc(nl * row), *rcv = ivs_coll_alloc(nl * row);
	int nh = k->nhosts, *cd = ivs_coll_alloc(sizeof(int) * 4 * (uint64_t)nh);
	for (int h = 0; h < nh; h++) {
		uint64_t members = (uint64_t)(k->host_first[h + 1] - k->host_first[h]);
		cd[h] = cd[2 * nh + h] = (int)(nl * members * n);
		cd[nh + h] = cd[3 * nh + h] = (int)(nl * (uint64_t)k->host_first[h] * n);
	}
	for (int r = 0; r < c->size; r++) {
		int h = k->host_of[r];
		uint64_t members = (uint64_t)(k->host_first[h + 1] - k->host_first[h]), j = (uint64_t)(k->pos[r] - k->host_first[h]);
		for (uint64_t i = 0; i < nl; i++)
			ivs_copy(snd + (uint64_t)cd[nh + h] + (i * members + j) * n, in + i * row + (uint64_t)r * n, n);
	}
	int rc = ivs_lead_exchange_v(k, -1, snd, cd, cd + nh, rcv, cd + 2 * nh, cd + 3 * nh);
	for (int r = 0; r < c->size && rc == MPI_SUCCESS; r++)
		for (uint64_t j = 0; j < nl; j++)
			ivs_copy(out + j * row + (uint64_t)r * n, rcv + ((uint64_t)k->pos[r] * nl + j) * n, n);
	free(snd);
	free(rcv);
	free(cd);
	return rc;
}

int ivs_coll_alltoall_hosts(struct ivs_coll *k, struct ivs_comm *c, const struct ivs_view *src, const struct ivs_view *dst,
                            uint64_t n)
{
	uint64_t row = n * (uint64_t)c->size; /* one member's send or receive buffer */
	uint8_t *in = NULL, *out = NULL;
	int rc = MPI_SUCCESS;
	if (k->li == 0) {
		in = ivs_coll_alloc(row * (uint64_t)k->nl);
		out = ivs_coll_alloc(row * (uint64_t)k->nl);
	}
	ivs_coll_collect(k, 0, src, row, IVS_FLAT(in), NULL);
	if (k->li == 0)
		rc = leaders_alltoall(k, c, in, out, n);
	ivs_coll_distribute(k, 0, IVS_FLAT(out), row, dst, NULL);
	free(in);
	free(out);
	return rc;
}
