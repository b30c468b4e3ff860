/* Collectives: MPI_Reduce, MPI_Allreduce, MPI_Reduce_scatter_block and MPI_Reduce_scatter.
 *
 * Reduction order: contributions are combined in comm rank order within a host (every rank of
 * a single-host communicator computes the same bits), then across hosts by the leaders
 * (coll_leaders.c: every rank of an allreduce gets the same bits). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "coll.h"

static int predefined_op(MPI_Op op)
{
	return op == MPI_SUM || op == MPI_PROD || op == MPI_MAX || op == MPI_MIN || op == MPI_LAND || op == MPI_LOR ||
	       op == MPI_LXOR || op == MPI_BAND || op == MPI_BOR || op == MPI_BXOR || op == MPI_MAXLOC || op == MPI_MINLOC;
}

struct red {
	uint64_t span, extent;
	ptrdiff_t lb;
};

/* Whether (count, dt, op) reduces on the fast path; the same answer on every rank. */
static int reducible(const struct ivs_coll *k, int count, MPI_Datatype dt, MPI_Op op, struct red *r)
{
	return predefined_op(op) && ivs_dt_span(dt, count, &r->span, &r->lb, &r->extent) && r->extent <= k->slot;
}

/* Combine the co-located contributions of op s (cnt elements of dt, span bytes each) into acc,
 * in local order: member 0's from first (first_len bytes: its data in the area, or the leader's
 * own buffer), the others' from the area, all of them published already. */
static int reduce_local(struct ivs_coll *k, uint64_t s, const uint8_t *first, uint64_t first_len, uint64_t span, uint8_t *acc,
                        int cnt, MPI_Datatype dt, MPI_Op op)
{
	ivs_copy(acc, first, first_len);
	for (int i = 1; i < k->nl; i++) {
		int rc = PMPI_Reduce_local(ivs_coll_data(k, i, s, span), acc, cnt, dt, op);
		if (rc != MPI_SUCCESS)
			return rc;
	}
	return MPI_SUCCESS;
}

/* One piece of an allreduce (root < 0) or reduce: cnt elements at sb -> rb. After an error the
 * leaders still take their part in the leaders' step and publish a result (the other hosts'
 * leaders and this host's members wait for them), and the rest of the vector still goes
 * through: every member stays at the same op (ivs_coll_first_error). The error is the leader's
 * to return; the members get whatever the leader published. (The hosts' communicator has the
 * library's default error handler, so an error there ends the job before this matters.) */
static int reduce_piece(struct ivs_coll *k, struct ivs_comm *c, const uint8_t *sb, uint8_t *rb, int cnt, uint64_t span,
                        MPI_Datatype dt, MPI_Op op, int root)
{
	uint64_t s = ivs_coll_op_begin(k, span);
	ivs_copy(ivs_coll_data(k, k->li, s, span), sb, span);
	ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
	int rc = MPI_SUCCESS;
	if (k->nhosts == 1) {
		if (root < 0 || root == c->rank) {
			ivs_coll_await_all(k, s);
			rc = reduce_local(k, s, ivs_coll_data(k, 0, s, span), span, span, rb, cnt, dt, op);
		}
		return rc;
	}
	int root_host = root < 0 ? -1 : k->host_of[root];
	if (k->li == 0) {
		uint8_t *acc = ivs_coll_alloc(span);
		ivs_coll_await_all(k, s);
		rc = reduce_local(k, s, ivs_coll_data(k, 0, s, span), span, span, acc, cnt, dt, op);
		rc = ivs_coll_first_error(rc, ivs_lead_reduce(k, acc, cnt, span, dt, op, root_host));
		if (root < 0 || k->myhost == root_host) {
			if (root < 0 || root == c->rank)
				ivs_copy(rb, acc, span);
			if (root < 0 || root != c->rank) {
				ivs_copy(ivs_coll_result(k, s, span), acc, span);
				ivs_coll_publish(ivs_coll_result_line(k, s), s);
			}
		}
		free(acc);
		return rc;
	}
	if (root < 0 || root == c->rank) {
		ivs_coll_await(ivs_coll_result_line(k, s), s);
		ivs_copy(rb, ivs_coll_result(k, s, span), span);
	}
	return MPI_SUCCESS;
}

/* The bytes of cnt elements of r's type. */
static uint64_t red_span(const struct red *r, int cnt, int count)
{
	return cnt ? (uint64_t)(cnt - 1) * r->extent + (r->span - (uint64_t)(count - 1) * r->extent) : 0;
}

/* An allreduce across hosts of a stretch of several pieces: the pieces go through the area to
 * the leader one by one and it combines them into its own copy of the stretch; the leaders
 * combine the whole stretch in one leaders' step; the leader spreads the result through the
 * area. One leaders' step per stretch instead of one per piece (each a round trip between the
 * leaders, with the hosts' members waiting). 2 hosts x 2 VMs, medians of 5 (3 on MPICH), time
 * for 1-4 MiB:
 *   - Open MPI, 1 MiB stretches: 0.38-0.99x the library alone's, 0.74-1.33x piece by piece;
 *     4 MiB stretches were slower (1.48x at 4 MiB).
 *   - MPICH (UCX over TCP), against piece by piece: 1 MiB stretches 0.97-1.38x at 256 KiB-2 MiB
 *     (slower), 256 KiB stretches 0.40-0.57x at 1-4 MiB.
 *   - Open MPI again, 256 KiB against 1 MiB stretches: 0.33-0.99x.
 * A reduce keeps its pieces: a rooted reduction's leaders send each piece on as soon as it is
 * combined, and stretches made it no faster (0.51-0.88x the library either way). */
enum { STRETCH = 256 << 10 };

static int allreduce_stretch(struct ivs_coll *k, const uint8_t *sb, uint8_t *rb, int cnt, int per, const struct red *r,
                             int count, MPI_Datatype dt, MPI_Op op)
{
	uint64_t span = red_span(r, cnt, count);
	int rc = MPI_SUCCESS;
	uint8_t *acc = k->li == 0 ? ivs_coll_alloc(span) : NULL;
	for (int done = 0; done < cnt;) {
		int n = cnt - done < per ? cnt - done : per;
		uint64_t off = (uint64_t)done * r->extent, len = red_span(r, n, count);
		uint64_t s = ivs_coll_op_begin(k, len);
		if (k->li != 0)
			ivs_copy(ivs_coll_data(k, k->li, s, len), sb + off, len);
		ivs_coll_publish(ivs_coll_line(k, k->li, s), s);
		if (k->li == 0) { /* its own piece from sb, whole extents up to the next piece */
			ivs_coll_await_all(k, s);
			uint64_t own = done + n < cnt ? (uint64_t)n * r->extent : len;
			rc = ivs_coll_first_error(rc, reduce_local(k, s, sb + off, own, len, acc + off, n, dt, op));
		}
		done += n;
	}
	if (k->li == 0)
		rc = ivs_coll_first_error(rc, ivs_lead_reduce(k, acc, cnt, span, dt, op, -1));
	if (k->nl > 1)
		ivs_coll_spread(k, 0, IVS_EVERYONE, IVS_FLAT(k->li == 0 ? acc : rb), 0, span);
	if (k->li == 0)
		ivs_copy(rb, acc, span);
	free(acc);
	return rc;
}

static int reduce_common(struct ivs_coll *k, struct ivs_comm *c, const void *sbuf, void *rbuf, int count,
                         MPI_Datatype dt, MPI_Op op, int root, const struct red *r)
{
	int per = (int)(k->slot / r->extent);
	if (per < 1)
		per = 1;
	int stretch = per; /* elements per call below */
	if (k->nhosts > 1 && root < 0 && count > per)
		stretch = (int)ivs_min_u64(STRETCH / k->slot, (uint64_t)(INT_MAX / per)) * per;
	int done = 0, rc = MPI_SUCCESS;
	do {
		int cnt = count - done < stretch ? count - done : stretch;
		const uint8_t *sb = (const uint8_t *)sbuf + r->lb + (ptrdiff_t)((uint64_t)done * r->extent);
		uint8_t *rb = rbuf ? (uint8_t *)rbuf + r->lb + (ptrdiff_t)((uint64_t)done * r->extent) : NULL;
		rc = ivs_coll_first_error(rc, cnt > per ? allreduce_stretch(k, sb, rb, cnt, per, r, count, dt, op)
		                                        : reduce_piece(k, c, sb, rb, cnt, red_span(r, cnt, count), dt, op, root));
		done += cnt;
	} while (done < count);
	return rc;
}

int MPI_Allreduce(const void *sbuf, void *rbuf, int count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	struct red r;
	if (!c || !reducible(k, count, dt, op, &r))
		IVS_NET_COLL_SIZED(count, PMPI_Allreduce(sbuf, rbuf, count, dt, op, comm),
		                   PMPI_Iallreduce(sbuf, rbuf, count, dt, op, comm, &req_));
	ivs.stats.collectives_shm++;
	if (count == 0)
		return MPI_SUCCESS;
	return reduce_common(k, c, sbuf == MPI_IN_PLACE ? rbuf : sbuf, rbuf, count, dt, op, -1, &r);
}

int MPI_Reduce(const void *sbuf, void *rbuf, int count, MPI_Datatype dt, MPI_Op op, int root, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	struct red r;
	if (!c || root < 0 || root >= c->size || !reducible(k, count, dt, op, &r))
		IVS_NET_COLL_SIZED(count, PMPI_Reduce(sbuf, rbuf, count, dt, op, root, comm),
		                   PMPI_Ireduce(sbuf, rbuf, count, dt, op, root, comm, &req_));
	ivs.stats.collectives_shm++;
	if (count == 0)
		return MPI_SUCCESS;
	if (sbuf == MPI_IN_PLACE)
		sbuf = rbuf;
	return reduce_common(k, c, sbuf, c->rank == root ? rbuf : NULL, count, dt, op, root, &r);
}

/* Reduce_scatter variants: a hierarchical allreduce of the whole vector, then each rank keeps
 * its block. */
static int reduce_scatter_common(struct ivs_coll *k, struct ivs_comm *c, const void *sbuf, void *rbuf, const int *counts,
                                 int block, MPI_Datatype dt, MPI_Op op)
{
	int total = 0, mine = 0;
	for (int i = 0; i < c->size; i++) {
		int n = counts ? counts[i] : block;
		if (i < c->rank)
			mine += n;
		total += n;
	}
	struct red r;
	reducible(k, total, dt, op, &r);
	uint8_t *tmp = ivs_coll_alloc(r.span); /* never a rank that leaves the others waiting */
	const void *src = sbuf == MPI_IN_PLACE ? rbuf : sbuf;
	int rc = total ? reduce_common(k, c, src, tmp - r.lb, total, dt, op, -1, &r) : MPI_SUCCESS;
	int my = counts ? counts[c->rank] : block;
	if (rc == MPI_SUCCESS && my > 0)
		ivs_copy((uint8_t *)rbuf + r.lb, tmp + (uint64_t)mine * r.extent, red_span(&r, my, total));
	free(tmp);
	return rc;
}

int MPI_Reduce_scatter_block(const void *sbuf, void *rbuf, int count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	struct red r;
	if (!c || !reducible(k, count, dt, op, &r) || (count > 0 && (uint64_t)count * (uint64_t)c->size > INT_MAX))
		IVS_NET_COLL_SIZED(count, PMPI_Reduce_scatter_block(sbuf, rbuf, count, dt, op, comm),
		                   PMPI_Ireduce_scatter_block(sbuf, rbuf, count, dt, op, comm, &req_));
	ivs.stats.collectives_shm++;
	return reduce_scatter_common(k, c, sbuf, rbuf, NULL, count, dt, op);
}

/* The elements of all blocks of a Reduce_scatter (the counts are the same on every member);
 * UINT64_MAX for a negative count, which the library reports. */
static uint64_t counts_total(const struct ivs_comm *c, const int counts[])
{
	uint64_t total = 0;
	for (int i = 0; i < c->size; i++) {
		if (counts[i] < 0)
			return UINT64_MAX;
		total += (uint64_t)counts[i];
	}
	return total;
}

int MPI_Reduce_scatter(const void *sbuf, void *rbuf, const int counts[], MPI_Datatype dt, MPI_Op op, MPI_Comm comm)
{
	IVS_COLL_SCOPE;
	struct ivs_coll *k;
	struct ivs_comm *c = ivs_coll_comm(comm, &k);
	struct red r;
	if (!c || !reducible(k, 1, dt, op, &r) || counts_total(c, counts) > INT_MAX)
		IVS_NET_COLL(PMPI_Reduce_scatter(sbuf, rbuf, counts, dt, op, comm),
		         PMPI_Ireduce_scatter(sbuf, rbuf, counts, dt, op, comm, &req_));
	ivs.stats.collectives_shm++;
	return reduce_scatter_common(k, c, sbuf, rbuf, counts, 0, dt, op);
}
