/* The collectives only the MPI library runs: the v- and w-variants, the scans and the
 * neighbourhood collectives, in their int and (MPICH 4) large-count forms. The shim interposes
 * them for one reason: in a job that uses the shim a rank waiting in one must keep answering
 * the shim's own messages, as it does in every other wait (IVS_NET_COLL, coll.h). Else a rank
 * blocked here could deadlock a valid program during a migration's agreement (migrate.c,
 * "Collectives"; tests/model/collswitch.pml). They do not count as collectives of their
 * communicator's plan (ivs_comm.ncoll): whichever plan a communicator's collectives take,
 * these run in the library.
 *
 * One macro per argument list; each names the call, its nonblocking twin, the count type and
 * the displacement type (int and int, or MPI_Count and MPI_Aint), and some the communicators
 * on which the nonblocking twin is right (nb_ok). */
#include <stdlib.h>
#include "coll.h"

static int any_comm(MPI_Comm comm)
{
	(void)comm;
	return 1;
}

/* Whether the libraries' nonblocking neighbourhood alltoalls pair comm's blocks right. MPI
 * pairs a Cartesian topology's blocks by direction: block 2d goes to the neighbour below in
 * dimension d and arrives there as block 2d + 1. In a periodic dimension of size 1 or 2 one
 * process is the neighbour on both sides; Open MPI's libnbc (Ineighbor_alltoall and
 * _alltoallv) and MPICH (Ineighbor_alltoallv) pair its two blocks by order and swap them, where
 * Open MPI's blocking calls do not (MPICH's coll/ring_neighbor_alltoall; natively, on a ring of
 * 2; MPICH 4.0's blocking Neighbor_alltoallv and _alltoallw swap them too). There the shim
 * calls the blocking one, which answers as the library does without the shim, after the gate
 * (gate.c): inside it the rank does not answer a migration's agreement. Dimensions and periods
 * are the same on every member, so the choice is too; a rank that cannot read them stops
 * rather than choose alone. Called only for communicators with lib_nb (coll.h). */
static int nb_pairs_right(MPI_Comm comm)
{
	int kind = MPI_UNDEFINED, nd = 0;
	if (PMPI_Topo_test(comm, &kind) != MPI_SUCCESS || (kind == MPI_CART && PMPI_Cartdim_get(comm, &nd) != MPI_SUCCESS))
		ivs_fatal("cannot read the topology of a communicator");
	if (kind != MPI_CART || nd <= 0)
		return 1;
	int *v = malloc(sizeof(int) * 3 * (size_t)nd), right = 1; /* dims, periods, coords */
	if (!v || PMPI_Cart_get(comm, nd, v, v + nd, v + 2 * nd) != MPI_SUCCESS)
		ivs_fatal("cannot read the dimensions of a Cartesian communicator");
	for (int d = 0; d < nd; d++)
		right &= !(v[nd + d] && v[d] <= 2);
	free(v);
	if (!right)
		ivs_gate(comm);
	return right;
}

/* (sbuf, scount, sdt, rbuf, rcounts, displs, rdt, comm): Allgatherv, Neighbor_allgatherv; inter:
 * legal on an intercommunicator (coll.h) */
#define LIB_ALLGATHERV(name, iname, count_t, disp_t, inter)                                                 \
	int MPI_##name(const void *sbuf, count_t scount, MPI_Datatype sdt, void *rbuf, const count_t rcounts[],     \
	               const disp_t displs[], MPI_Datatype rdt, MPI_Comm comm)                                     \
	{                                                                                                          \
		IVS_NET_COLL_ON_IF(inter, 1, PMPI_##name(sbuf, scount, sdt, rbuf, rcounts, displs, rdt, comm),     \
		             PMPI_##iname(sbuf, scount, sdt, rbuf, rcounts, displs, rdt, comm, &req_));            \
	}

/* (sbuf, scount, sdt, rbuf, rcounts, displs, rdt, root, comm): Gatherv */
#define LIB_GATHERV(name, iname, count_t, disp_t)                                                           \
	int MPI_##name(const void *sbuf, count_t scount, MPI_Datatype sdt, void *rbuf, const count_t rcounts[],     \
	               const disp_t displs[], MPI_Datatype rdt, int root, MPI_Comm comm)                           \
	{                                                                                                          \
		IVS_NET_COLL(PMPI_##name(sbuf, scount, sdt, rbuf, rcounts, displs, rdt, root, comm),               \
		             PMPI_##iname(sbuf, scount, sdt, rbuf, rcounts, displs, rdt, root, comm, &req_));      \
	}

/* (sbuf, scounts, displs, sdt, rbuf, rcount, rdt, root, comm): Scatterv */
#define LIB_SCATTERV(name, iname, count_t, disp_t)                                                          \
	int MPI_##name(const void *sbuf, const count_t scounts[], const disp_t displs[], MPI_Datatype sdt,          \
	               void *rbuf, count_t rcount, MPI_Datatype rdt, int root, MPI_Comm comm)                      \
	{                                                                                                          \
		IVS_NET_COLL(PMPI_##name(sbuf, scounts, displs, sdt, rbuf, rcount, rdt, root, comm),               \
		             PMPI_##iname(sbuf, scounts, displs, sdt, rbuf, rcount, rdt, root, comm, &req_));      \
	}

/* The counts of an MPI_Alltoallv as its nonblocking call gets them: zeros for a datatype of
 * size 0 (MPI_DATATYPE_NULL: the send side of MPI_IN_PLACE, left as it is). Open MPI 4.1's
 * libnbc matches Ialltoallv's blocks by count: a rank that receives 1 element of a zero-size
 * type from one that sends 0 ints (the same, empty, type signature, a valid program: MPICH's
 * coll/alltoallw_zeros) posts a receive that no send meets and never completes, where the
 * blocking MPI_Alltoallv returns. Zero counts move the same nothing on every side. *own holds
 * what this allocates; without memory the counts stay as they are. */
static const void *nb_a2av_counts(void **own, const void *counts, MPI_Datatype dt, MPI_Comm comm, size_t csize)
{
	int tsize = 1, n = 0;
	if (!counts || dt == MPI_DATATYPE_NULL || PMPI_Type_size(dt, &tsize) != MPI_SUCCESS || tsize != 0 ||
	    PMPI_Comm_size(comm, &n) != MPI_SUCCESS)
		return counts;
	*own = calloc(n > 0 ? (size_t)n : 1, csize);
	return *own ? *own : counts;
}

static void free_owned(void *(*own)[2])
{
	free((*own)[0]);
	free((*own)[1]);
}

/* On a process topology Open MPI's Ineighbor_alltoallv completes with such counts (tried on
 * both libraries: only Ialltoallv hangs), and their number is the rank's degree, not the size. */
static const void *same_counts(void **own, const void *counts, MPI_Datatype dt, MPI_Comm comm, size_t csize)
{
	(void)own, (void)dt, (void)comm, (void)csize;
	return counts;
}

/* (sbuf, scounts, sdispls, sdt, rbuf, rcounts, rdispls, rdt, comm): Alltoallv, Neighbor_alltoallv,
 * with the counts the nonblocking call gets from fix */
#define LIB_ALLTOALLV(name, iname, count_t, disp_t, fix, nb_ok, inter)                                                 \
	int MPI_##name(const void *sbuf, const count_t scounts[], const disp_t sdispls[], MPI_Datatype sdt,         \
	               void *rbuf, const count_t rcounts[], const disp_t rdispls[], MPI_Datatype rdt, MPI_Comm comm) \
	{                                                                                                          \
		void *own_[2] __attribute__((cleanup(free_owned))) = {NULL, NULL};                                 \
		MPI_Datatype sdt_ = sbuf == MPI_IN_PLACE ? MPI_DATATYPE_NULL : sdt;                                \
		IVS_NET_COLL_ON_IF(inter, nb_ok(comm), PMPI_##name(sbuf, scounts, sdispls, sdt, rbuf, rcounts, rdispls, rdt, comm), \
		             PMPI_##iname(sbuf, (const count_t *)fix(&own_[0], scounts, sdt_, comm, sizeof(count_t)), \
		                          sdispls, sdt, rbuf,                                                       \
		                          (const count_t *)fix(&own_[1], rcounts, rdt, comm, sizeof(count_t)),       \
		                          rdispls, rdt, comm, &req_));                                              \
	}

/* The same with a datatype per block: Alltoallw, Neighbor_alltoallw */
#define LIB_ALLTOALLW(name, iname, count_t, disp_t, nb_ok, inter)                                                   \
	int MPI_##name(const void *sbuf, const count_t scounts[], const disp_t sdispls[], const MPI_Datatype sdts[], \
	               void *rbuf, const count_t rcounts[], const disp_t rdispls[], const MPI_Datatype rdts[],     \
	               MPI_Comm comm)                                                                              \
	{                                                                                                          \
		IVS_NET_COLL_ON_IF(inter, nb_ok(comm), PMPI_##name(sbuf, scounts, sdispls, sdts, rbuf, rcounts, rdispls, rdts, comm), \
		             PMPI_##iname(sbuf, scounts, sdispls, sdts, rbuf, rcounts, rdispls, rdts, comm, &req_)); \
	}

/* (sbuf, rbuf, count, dt, op, comm): Scan, Exscan (erroneous on an intercommunicator) */
#define LIB_SCAN(name, iname, count_t)                                                                   \
	int MPI_##name(const void *sbuf, void *rbuf, count_t count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm) \
	{                                                                                                       \
		IVS_NET_COLL_ON_IF(0, 1, PMPI_##name(sbuf, rbuf, count, dt, op, comm),                          \
		             PMPI_##iname(sbuf, rbuf, count, dt, op, comm, &req_));                             \
	}

/* (sbuf, scount, sdt, rbuf, rcount, rdt, comm): Neighbor_allgather, Neighbor_alltoall (erroneous on an
 * intercommunicator) */
#define LIB_NEIGHBOR(name, iname, count_t, nb_ok)                                                                 \
	int MPI_##name(const void *sbuf, count_t scount, MPI_Datatype sdt, void *rbuf, count_t rcount,           \
	               MPI_Datatype rdt, MPI_Comm comm)                                                          \
	{                                                                                                        \
		IVS_NET_COLL_ON_IF(0, nb_ok(comm), PMPI_##name(sbuf, scount, sdt, rbuf, rcount, rdt, comm),      \
		             PMPI_##iname(sbuf, scount, sdt, rbuf, rcount, rdt, comm, &req_));                   \
	}

/* Every one of them in one count form: the suffix of its name ("" or _c), its count type and
 * its displacement type (Neighbor_alltoallw's are MPI_Aint in both forms). */
#define LIB_COLLS(sfx, count_t, disp_t)                                                        \
	LIB_ALLGATHERV(Allgatherv##sfx, Iallgatherv##sfx, count_t, disp_t, 1)                  \
	LIB_ALLGATHERV(Neighbor_allgatherv##sfx, Ineighbor_allgatherv##sfx, count_t, disp_t, 0) \
	LIB_GATHERV(Gatherv##sfx, Igatherv##sfx, count_t, disp_t)                              \
	LIB_SCATTERV(Scatterv##sfx, Iscatterv##sfx, count_t, disp_t)                           \
	LIB_ALLTOALLV(Alltoallv##sfx, Ialltoallv##sfx, count_t, disp_t, nb_a2av_counts, any_comm, 1) \
	LIB_ALLTOALLV(Neighbor_alltoallv##sfx, Ineighbor_alltoallv##sfx, count_t, disp_t, same_counts, nb_pairs_right, 0) \
	LIB_ALLTOALLW(Alltoallw##sfx, Ialltoallw##sfx, count_t, disp_t, any_comm, 1)           \
	LIB_ALLTOALLW(Neighbor_alltoallw##sfx, Ineighbor_alltoallw##sfx, count_t, MPI_Aint, nb_pairs_right, 0) \
	LIB_SCAN(Scan##sfx, Iscan##sfx, count_t)                                               \
	LIB_SCAN(Exscan##sfx, Iexscan##sfx, count_t)                                           \
	LIB_NEIGHBOR(Neighbor_allgather##sfx, Ineighbor_allgather##sfx, count_t, any_comm)     \
	LIB_NEIGHBOR(Neighbor_alltoall##sfx, Ineighbor_alltoall##sfx, count_t, nb_pairs_right)

LIB_COLLS(, int, int)
#if defined(MPICH) && MPI_VERSION >= 4
LIB_COLLS(_c, MPI_Count, MPI_Aint)
#endif
