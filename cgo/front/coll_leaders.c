/* The leaders' phase of barrier, bcast, reduce and allreduce: one leader per host, on the
 * hosts' communicator (ivs_coll.hcomm; host h's leader is comm rank lead[h]), by the library's
 * point-to-point; and the point-to-point steps of gathers, scatters and alltoall (coll_hosts.c):
 * the leaders' exchange, and a gather's or scatter's root with the other hosts' members.
 *
 * Why not the library's own collectives there: the leaders must wait polling (a migration's
 * agreement may need an answer from a leader waiting here: migrate.c, coll.h), so the blocking
 * collectives are out, and the nonblocking ones cost: Open MPI's libnbc took 1.1-2.7x its
 * blocking collectives between two hosts (an 8-byte Iallreduce 24 us against 14, 1 MiB 810 us
 * against 296), and a large collective of the shim runs one leaders' step per slot-sized
 * piece. These are the textbook algorithms, with every step a nonblocking send and receive
 * completed by the shim's wait:
 *   barrier    dissemination: round r sends to host + 2^r and receives from host - 2^r;
 *   bcast      binomial tree from the root's host, pipelined in pieces with the hosts' spreading;
 *   reduce     binomial tree to the root's host, combining each child's vector into its own;
 *   allreduce  recursive doubling when the hosts are a power of two (each step exchanges the
 *              whole vector with host ^ 2^r and combines), else reduce to host 0 and bcast.
 * Every op the shim reduces itself is a predefined, commutative one, so the order in which a
 * leader combines does not change what the standard allows. Recursive doubling gives every
 * leader the same bits: in each step the two partners combine the same two vectors in the same
 * operand order, the lower host's first (the libraries' MAX, MIN, MAXLOC and MINLOC keep one
 * operand on ties, so with +0 and -0 or NaNs b op a may differ from a op b). The messages of
 * one collective between two leaders (or a root and a leader: ivs_lead_exchange_v; or a root
 * and any member of another host: ivs_lead_direct_begin) match in order on its tag (the library does not reorder
 * them, and a collective completes all of its own before it returns): LEAD_TAG for these,
 * HOSTS_TAG for the exchange of gathers, scatters and alltoall. */
#include <stdlib.h>
#include "coll.h"

enum { LEAD_TAG = 1, HOSTS_TAG = 2 };

/* Wait for *r (if any) with the shim's wait; the first error of rc and this one. */
static int wait_req(MPI_Request *r, int rc)
{
	int w = *r != MPI_REQUEST_NULL ? ivs_net_wait(r, MPI_STATUS_IGNORE) : MPI_SUCCESS;
	*r = MPI_REQUEST_NULL;
	return ivs_coll_first_error(rc, w);
}

/* Send n bytes at out to the leader of host to and receive n bytes from the leader of host from
 * into in, both at once (either may be -1: none). */
static int exchange(struct ivs_coll *k, const void *out, int to, void *in, int from, int n)
{
	MPI_Request r[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
	int rc = MPI_SUCCESS;
	if (from >= 0)
		rc = PMPI_Irecv(in, n, MPI_BYTE, k->lead[from], LEAD_TAG, k->hcomm, &r[0]);
	if (rc == MPI_SUCCESS && to >= 0)
		rc = PMPI_Isend(out, n, MPI_BYTE, k->lead[to], LEAD_TAG, k->hcomm, &r[1]);
	rc = wait_req(&r[0], rc);
	return wait_req(&r[1], rc);
}

int ivs_lead_barrier(struct ivs_coll *k)
{
	return ivs_net_barrier(k->hcomm, k->lead, k->nhosts, k->myhost, LEAD_TAG, NULL);
}

/* The binomial tree of a bcast from host root: this leader's parent (-1 at the root) and
 * children, farthest first. */
static void tree(const struct ivs_coll *k, int root, int *parent, int *child, int *nchild)
{
	int p = k->nhosts, me = k->myhost, v = (me - root + p) % p, mask = 1;
	*parent = -1;
	for (; mask < p; mask <<= 1) {
		if (v & mask) {
			*parent = (me - mask + p) % p;
			break;
		}
	}
	/* children: v + m for every m below the bit this leader receives on (all of them at the root) */
	*nchild = 0;
	for (mask >>= 1; mask > 0; mask >>= 1)
		if (v + mask < p)
			child[(*nchild)++] = (me + mask) % p;
}

/* A bcast among the leaders in pieces (ivs_lead_pipe in coll.h): a piece travels down the tree
 * while the hosts spread the ones before it through their areas. Up to PIPE_AHEAD pieces are
 * in flight each way; piece i of each direction uses request slot i % PIPE_AHEAD. */
static uint64_t piece_len(const struct ivs_lead_pipe *q, int i)
{
	return ivs_min_u64(q->n - (uint64_t)i * q->piece, q->piece);
}

static int post_in(struct ivs_lead_pipe *q)
{
	int i = q->posted++;
	return PMPI_Irecv(q->data + (uint64_t)i * q->piece, (int)piece_len(q, i), MPI_BYTE, q->k->lead[q->parent], LEAD_TAG,
	                  q->k->hcomm, &q->in[i % PIPE_AHEAD]);
}

int ivs_lead_pipe_open(struct ivs_coll *k, struct ivs_lead_pipe *q, uint8_t *data, uint64_t n, uint64_t piece, int root)
{
	*q = (struct ivs_lead_pipe){.k = k, .data = data, .n = n, .piece = piece ? piece : 1};
	q->npieces = n ? (int)((n + q->piece - 1) / q->piece) : 1;
	tree(k, root, &q->parent, q->child, &q->nchild);
	for (int i = 0; i < PIPE_AHEAD; i++) {
		q->in[i] = MPI_REQUEST_NULL;
		for (int c = 0; c < IVS_LEAD_MAX_CHILDREN; c++)
			q->out[i][c] = MPI_REQUEST_NULL;
	}
	int rc = MPI_SUCCESS;
	while (q->parent >= 0 && q->posted < q->npieces && q->posted < PIPE_AHEAD && rc == MPI_SUCCESS)
		rc = post_in(q);
	return rc;
}

/* Piece i has arrived at this leader (at once at the root's). */
int ivs_lead_pipe_in(struct ivs_lead_pipe *q, int i)
{
	if (q->parent < 0)
		return MPI_SUCCESS;
	int rc = wait_req(&q->in[i % PIPE_AHEAD], MPI_SUCCESS);
	if (rc == MPI_SUCCESS && q->posted < q->npieces)
		rc = post_in(q);
	return rc;
}

/* Piece i, here now, goes on to this leader's children. */
int ivs_lead_pipe_out(struct ivs_lead_pipe *q, int i)
{
	int rc = MPI_SUCCESS;
	for (int c = 0; c < q->nchild && rc == MPI_SUCCESS; c++) {
		MPI_Request *r = &q->out[i % PIPE_AHEAD][c];
		rc = wait_req(r, MPI_SUCCESS); /* piece i - PIPE_AHEAD's */
		if (rc == MPI_SUCCESS)
			rc = PMPI_Isend(q->data + (uint64_t)i * q->piece, (int)piece_len(q, i), MPI_BYTE, q->k->lead[q->child[c]],
			                LEAD_TAG, q->k->hcomm, r);
	}
	return rc;
}

/* Every send done (and every receive, after an error). */
int ivs_lead_pipe_close(struct ivs_lead_pipe *q, int rc)
{
	for (int i = 0; i < PIPE_AHEAD; i++) {
		rc = wait_req(&q->in[i], rc);
		for (int c = 0; c < q->nchild; c++)
			rc = wait_req(&q->out[i][c], rc);
	}
	return rc;
}

/* n bytes at data from the leader of host root to every leader, in one piece. */
int ivs_lead_bcast(struct ivs_coll *k, uint8_t *data, uint64_t n, int root)
{
	struct ivs_lead_pipe q;
	int rc = ivs_lead_pipe_open(k, &q, data, n, n, root);
	if (rc == MPI_SUCCESS)
		rc = ivs_lead_pipe_in(&q, 0);
	if (rc == MPI_SUCCESS)
		rc = ivs_lead_pipe_out(&q, 0);
	return ivs_lead_pipe_close(&q, rc);
}

/* A message of the leaders' exchange above EXCH_PIECE bytes and up to EXCH_SPLIT goes in
 * pieces of EXCH_PIECE, the last one shorter (why, and why on Open MPI only:
 * ivs_lead_exchange_v). */
#if defined(OPEN_MPI)
enum { EXCH_PIECE = 32 << 10, EXCH_SPLIT = 256 << 10 };
#else
enum { EXCH_PIECE = 256 << 10, EXCH_SPLIT = EXCH_PIECE }; /* whole messages */
#endif
enum { EXCH_MAXPIECES = EXCH_SPLIT / EXCH_PIECE };

/* Whether the exchange sends a message of n bytes without waiting for its receiver: in pieces
 * below Open MPI's TCP eager limit (above); on MPICH over UCX's TCP transport up to 16 KiB, as
 * measured (coll_hosts.c: a scatter's root handing out first was slower for messages of 8-16
 * KiB, faster from 32 KiB). A scatter's root that sends only such messages completes them
 * before it hands out its own host's blocks, so the other hosts get theirs first; larger ones
 * would hold it in a handshake, so it hands out first. Measured over TCP only. */
int ivs_lead_eager(uint64_t n)
{
#if defined(OPEN_MPI)
	return n <= EXCH_SPLIT;
#else
	return n <= 16 << 10;
#endif
}

/* Whom this rank's exchange (below) talks to for host h: its leader, or root on root's host. */
static int exch_peer(const struct ivs_coll *k, int root, int h)
{
	return root >= 0 && h == k->host_of[root] ? root : k->lead[h];
}

/* The exchange's pieces of a message of n bytes (below). */
static int exch_piece(int n)
{
	return n > EXCH_PIECE && n <= EXCH_SPLIT ? EXCH_PIECE : n;
}

/* Post the n bytes (n > 0) at buf to (send) or from comm rank peer in pieces of `piece` bytes;
 * *nr counts the requests posted. */
static int exch_post(struct ivs_coll *k, uint8_t *buf, int n, int piece, int peer, int send, MPI_Request *r, int *nr)
{
	int rc = MPI_SUCCESS;
	for (int off = 0; off < n && rc == MPI_SUCCESS; off += piece) {
		int len = n - off < piece ? n - off : piece;
		rc = send ? PMPI_Isend(buf + off, len, MPI_BYTE, peer, HOSTS_TAG, k->hcomm, &r[*nr])
		          : PMPI_Irecv(buf + off, len, MPI_BYTE, peer, HOSTS_TAG, k->hcomm, &r[*nr]);
		if (rc == MPI_SUCCESS)
			(*nr)++;
	}
	return rc;
}

/* The leaders' linear exchange, the step of allgather, alltoall, and the gathers and scatters
 * that do not go direct (coll_hosts.c's direct()): this
 * rank (a leader, or the root below) sends scount[h] bytes at sbuf + sdispl[h] to host h's
 * leader (or root) and receives rcount[h] bytes from it at rbuf + rdispl[h], for every h whose
 * count is above 0. _begin posts every receive, then every send, and copies its own block
 * unless it is in place already (so sbuf must hold the blocks to send by then, and its own
 * block too unless in place); _end waits for all of them, and the caller may move bytes
 * through its host's area in between (a scatter's root hands out its own host's blocks with
 * its sends posted, a gather's root collects its own with its receives posted; the library
 * moves them only when the area's waits poke it). root (a comm rank, -1: none)
 * stands in for the leader of its host, on both sides: a gather's or scatter's root sends or
 * receives the other hosts' blocks itself. Both sides of a pair derive the same counts from the
 * collective's arguments, so both cut a message into the same pieces, which match in order on
 * their tag.
 *
 * Why pieces: a leader's message carries the blocks of all its host's members, so where the
 * library sends each block by itself in one eager message, the leader's may be past the
 * transport's eager limit and wait for a handshake first (Open MPI's TCP transport: 64 KiB
 * with its header). On 2 hosts x 2 VMs, Open MPI, medians of 5 (ratio to the library alone),
 * blocks of 32 KiB: Scatter 1.6x in one message, 1.0x in pieces of 32 KiB; Gather 0.65x and
 * 0.4x; Allgather 0.78x and 0.55x; blocks of 128 KiB 0.6-0.8x against 0.75-0.9x; blocks of 16
 * and 256 KiB the same either way. MPICH over UCX's TCP transport took 1.4-1.6x as long in
 * pieces for blocks of 32-128 KiB (3 rounds), so it keeps whole messages. Both were measured
 * over TCP only; an InfiniBand transport's limits differ. */
void ivs_lead_exchange_begin(struct ivs_coll *k, struct ivs_lead_exch *x, int root, const uint8_t *sbuf, const int *scount,
                             const int *sdispl, uint8_t *rbuf, const int *rcount, const int *rdispl)
{
	int nh = k->nhosts, me = k->myhost;
	*x = (struct ivs_lead_exch){.r = ivs_coll_alloc(sizeof *x->r * 2 * EXCH_MAXPIECES * (uint64_t)nh), .rc = MPI_SUCCESS};
	for (int d = 1; d < nh && x->rc == MPI_SUCCESS; d++) { /* from the nearest host below first */
		int h = (me - d + nh) % nh;
		if (rcount[h] > 0)
			x->rc = exch_post(k, rbuf + rdispl[h], rcount[h], exch_piece(rcount[h]), exch_peer(k, root, h), 0, x->r, &x->nr);
	}
	for (int d = 1; d < nh && x->rc == MPI_SUCCESS; d++) { /* to the nearest host above first */
		int h = (me + d) % nh;
		if (scount[h] > 0)
			x->rc = exch_post(k, (uint8_t *)sbuf + sdispl[h], scount[h], exch_piece(scount[h]), exch_peer(k, root, h), 1, x->r, &x->nr);
	}
	if (scount[me] > 0 && x->rc == MPI_SUCCESS && rbuf + rdispl[me] != sbuf + sdispl[me])
		ivs_copy(rbuf + rdispl[me], sbuf + sdispl[me], (uint64_t)scount[me]);
}

/* A gather's or scatter's root and the members of the other hosts, without their leaders
 * (coll_hosts.c, direct): the root sends (send) or receives n bytes (0 < n <= INT_MAX) at
 * buf + r*n to or from every comm rank r of another host, each of those receives or sends n
 * bytes at buf, and the root's host's other members post nothing; complete with
 * ivs_lead_exchange_end. On the exchange's tag, a scatter's blocks in the exchange's pieces (the
 * root, their one sender, need not wait for a handshake per block), a gather's each in one
 * message, as the library sends it: in pieces, the other hosts' members, each sending at once,
 * left without waiting for the root and ran ahead into it. 2 hosts x 2 VMs, Open MPI, root at
 * rank 0, medians of 5: Gather of 256 KiB 750 us in pieces, 240 us whole (the library alone
 * 503 us); Scatter of 64-256 KiB 0.41-0.57x the library alone in pieces, 0.69-0.88x whole
 * (0.27-0.53x and 0.96-1.21x with the root moving). */
void ivs_lead_direct_begin(struct ivs_coll *k, struct ivs_lead_exch *x, int root, uint8_t *buf, uint64_t n, int send)
{
	int size = k->host_first[k->nhosts], rank = k->lranks[k->li];
	int piece = send == (rank == root) ? exch_piece((int)n) : (int)n; /* the root sends: a scatter */
	uint64_t peers = rank == root ? (uint64_t)(size - k->nl) : 1;
	*x = (struct ivs_lead_exch){.r = ivs_coll_alloc(sizeof *x->r * EXCH_MAXPIECES * peers), .rc = MPI_SUCCESS};
	if (rank != root) {
		if (k->myhost != k->host_of[root])
			x->rc = exch_post(k, buf, (int)n, piece, root, send, x->r, &x->nr);
		return;
	}
	for (int r = 0; r < size && x->rc == MPI_SUCCESS; r++)
		if (k->host_of[r] != k->myhost)
			x->rc = exch_post(k, buf + (uint64_t)r * n, (int)n, piece, r, send, x->r, &x->nr);
}

int ivs_lead_exchange_end(struct ivs_lead_exch *x)
{
	int rc = x->rc;
	for (int i = 0; i < x->nr; i++)
		rc = wait_req(&x->r[i], rc);
	free(x->r);
	return rc;
}

int ivs_lead_exchange_v(struct ivs_coll *k, int root, const uint8_t *sbuf, const int *scount, const int *sdispl,
                        uint8_t *rbuf, const int *rcount, const int *rdispl)
{
	struct ivs_lead_exch x;
	ivs_lead_exchange_begin(k, &x, root, sbuf, scount, sdispl, rbuf, rcount, rdispl);
	return ivs_lead_exchange_end(&x);
}

/* Combine every leader's acc (cnt elements of dt, span bytes) with op: into every leader's
 * acc (root < 0), or into the acc of the leader of host root (the others' acc is scratch). */
int ivs_lead_reduce(struct ivs_coll *k, uint8_t *acc, int cnt, uint64_t span, MPI_Datatype dt, MPI_Op op, int root)
{
	int p = k->nhosts, me = k->myhost, rc = MPI_SUCCESS;
	uint8_t *in = ivs_coll_alloc(span);
	if (root < 0 && (p & (p - 1)) == 0) {
		for (int mask = 1; mask < p && rc == MPI_SUCCESS; mask <<= 1) {
			int peer = me ^ mask;
			rc = exchange(k, acc, peer, in, peer, (int)span);
			/* the lower host's vector is the first operand on both sides */
			if (rc == MPI_SUCCESS && peer > me) {
				rc = PMPI_Reduce_local(acc, in, cnt, dt, op);
				ivs_copy(acc, in, span);
			} else if (rc == MPI_SUCCESS) {
				rc = PMPI_Reduce_local(in, acc, cnt, dt, op);
			}
		}
		free(in);
		return rc;
	}
	int to = root < 0 ? 0 : root, v = (me - to + p) % p;
	for (int mask = 1; mask < p && rc == MPI_SUCCESS; mask <<= 1) {
		if (v & mask) {
			rc = exchange(k, acc, (me - mask + p) % p, NULL, -1, (int)span);
			break;
		}
		if (v + mask < p) {
			rc = exchange(k, NULL, -1, in, (me + mask) % p, (int)span);
			if (rc == MPI_SUCCESS)
				rc = PMPI_Reduce_local(in, acc, cnt, dt, op);
		}
	}
	free(in);
	if (root < 0 && rc == MPI_SUCCESS)
		rc = ivs_lead_bcast(k, acc, span, 0);
	return rc;
}
