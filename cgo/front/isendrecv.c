/*
 * MPI_Isendrecv and MPI_Isendrecv_replace (MPI-4; MPICH 4 has them, Open MPI 4.1 does not). The
 * library's own would move a co-located pair's message outside the ring while the peer's
 * receive waits on it. On a communicator the shim carries, the call posts the receive and the
 * send through the shim's interposers and hands the program a generalized request, which the
 * shim's progress engine completes once both parts have (ivs_pairs_progress): the request is
 * the library's, so every completion call works on it, and its status is the receive's.
 * While such a pair is pending the shim counts as busy (ivshim.h), so waits on the request
 * keep the shim's engine running.
 */
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

#if defined(MPICH) && MPI_VERSION >= 4

struct pair {
	MPI_Request parts[2]; /* receive, send: shim or library requests */
	MPI_Request greq;     /* what the program holds */
	MPI_Status st;        /* the receive's */
	void *tmp;            /* Isendrecv_replace: the packed send data */
	struct pair *next;
};

static struct pair *pending;
int ivs_npairs;

static int query(void *extra, MPI_Status *st)
{
	struct pair *p = extra;
	ivs_status_copy(st, &p->st);
	st->MPI_ERROR = p->st.MPI_ERROR;
	return MPI_SUCCESS;
}

static int release(void *extra)
{
	struct pair *p = extra;
	free(p->tmp);
	free(p);
	return MPI_SUCCESS;
}

static int cancel(void *extra, int complete)
{
	(void)extra;
	(void)complete;
	return MPI_SUCCESS; /* the parts complete normally; MPI allows a cancel to fail */
}

/* Complete every pair whose two parts are done. Called by the progress engine. */
int ivs_pairs_progress(void)
{
	int did = 0;
	for (struct pair **pp = &pending; *pp;) {
		struct pair *p = *pp;
		int flag = 0;
		MPI_Status sts[2];
		if (MPI_Testall(2, p->parts, &flag, sts) != MPI_SUCCESS)
			flag = 1; /* errors are in the statuses */
		if (!flag) {
			pp = &p->next;
			continue;
		}
		p->st = sts[0];
		p->st.MPI_ERROR = sts[0].MPI_ERROR != MPI_SUCCESS ? sts[0].MPI_ERROR : sts[1].MPI_ERROR;
		*pp = p->next;
		ivs_npairs--;
		PMPI_Grequest_complete(p->greq);
		did = 1;
	}
	return did;
}

static int start(struct pair *p, const void *sbuf, int scount, MPI_Datatype sdt, int dest, int stag, void *rbuf,
                 int rcount, MPI_Datatype rdt, int src, int rtag, MPI_Comm comm, MPI_Request *req)
{
	int rc = MPI_Irecv(rbuf, rcount, rdt, src, rtag, comm, &p->parts[0]);
	if (rc == MPI_SUCCESS)
		rc = MPI_Isend(sbuf, scount, sdt, dest, stag, comm, &p->parts[1]);
	if (rc == MPI_SUCCESS)
		rc = PMPI_Grequest_start(query, release, cancel, p, &p->greq);
	if (rc != MPI_SUCCESS) /* argument errors come first: nothing is pending then */
		return rc;
	p->next = pending;
	pending = p;
	ivs_npairs++;
	*req = p->greq;
	return MPI_SUCCESS;
}

int MPI_Isendrecv(const void *sbuf, int scount, MPI_Datatype sdt, int dest, int stag, void *rbuf, int rcount,
                  MPI_Datatype rdt, int src, int rtag, MPI_Comm comm, MPI_Request *req)
{
	if (IVS_LIKELY(!ivs.enabled) || !ivs_comm_p2p(comm))
		return PMPI_Isendrecv(sbuf, scount, sdt, dest, stag, rbuf, rcount, rdt, src, rtag, comm, req);
	struct pair *p = calloc(1, sizeof *p);
	if (!p)
		return ivs_arg_error(comm, MPI_ERR_NO_MEM);
	int rc = start(p, sbuf, scount, sdt, dest, stag, rbuf, rcount, rdt, src, rtag, comm, req);
	if (rc != MPI_SUCCESS)
		free(p);
	return rc;
}

int MPI_Isendrecv_replace(void *buf, int count, MPI_Datatype dt, int dest, int stag, int src, int rtag,
                          MPI_Comm comm, MPI_Request *req)
{
	if (IVS_LIKELY(!ivs.enabled) || !ivs_comm_p2p(comm))
		return PMPI_Isendrecv_replace(buf, count, dt, dest, stag, src, rtag, comm, req);
	int size = 0, pos = 0, rc = PMPI_Pack_size(count, dt, comm, &size);
	struct pair *p = rc == MPI_SUCCESS ? calloc(1, sizeof *p) : NULL;
	if (p)
		p->tmp = malloc(size ? (size_t)size : 1);
	if (!p || !p->tmp) {
		if (p)
			free(p);
		return rc != MPI_SUCCESS ? rc : ivs_arg_error(comm, MPI_ERR_NO_MEM);
	}
	rc = PMPI_Pack(buf, count, dt, p->tmp, size, &pos, comm);
	if (rc == MPI_SUCCESS)
		rc = start(p, p->tmp, pos, MPI_PACKED, dest, stag, buf, count, dt, src, rtag, comm, req);
	if (rc != MPI_SUCCESS)
		release(p);
	return rc;
}

#else
int ivs_npairs;
int ivs_pairs_progress(void) { return 0; }
#endif
