/* Datatypes on the shared-memory path: predefined types whose bytes lie contiguously in memory
 * move as raw bytes; every other type is packed with PMPI_Pack on the sender and unpacked with
 * PMPI_Unpack on the receiver, so derived datatypes are correct whatever their layout. */
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

#define DT_CACHE 64

struct dt_entry {
	uintptr_t key;
	int contig;
	int named;       /* a predefined type */
	uint64_t size;   /* Type_size */
	ptrdiff_t lb;    /* true lower bound */
	ptrdiff_t extent;
	ptrdiff_t textent; /* true extent */
};
static struct dt_entry dt_cache[DT_CACHE];

static struct dt_entry *dt_lookup(MPI_Datatype dt)
{
	uintptr_t key = IVS_HANDLE_KEY(dt);
	struct dt_entry *e = &dt_cache[(key >> 4 ^ key) % DT_CACHE];
	if (IVS_LIKELY(e->key == key && key))
		return e;
	int ni, na, nd, combiner, size;
	MPI_Aint lb, extent, tlb, textent;
	if (PMPI_Type_get_envelope(dt, &ni, &na, &nd, &combiner) != MPI_SUCCESS ||
	    PMPI_Type_size(dt, &size) != MPI_SUCCESS ||
	    PMPI_Type_get_extent(dt, &lb, &extent) != MPI_SUCCESS ||
	    PMPI_Type_get_true_extent(dt, &tlb, &textent) != MPI_SUCCESS)
		return NULL;
	e->key = key;
	e->size = (uint64_t)size;
	e->lb = tlb;
	e->extent = extent;
	e->textent = textent;
	e->named = combiner == MPI_COMBINER_NAMED;
	/* A named type's typemap is in memory order, so no holes means raw bytes are its packed form. */
	e->contig = e->named && (MPI_Aint)size == textent;
	return e;
}

void ivs_dt_forget(MPI_Datatype dt)
{
	uintptr_t key = IVS_HANDLE_KEY(dt);
	struct dt_entry *e = &dt_cache[(key >> 4 ^ key) % DT_CACHE];
	if (e->key == key)
		e->key = 0;
}

/* Whether count elements of dt are one contiguous byte range; if so its length and the offset
 * of its first byte from the buffer address. */
int ivs_dt_contig(MPI_Datatype dt, int count, uint64_t *bytes, ptrdiff_t *lb)
{
	struct dt_entry *e = dt_lookup(dt);
	if (!e || count < 0)
		return 0;
	if (!e->contig || (count > 1 && e->extent != (ptrdiff_t)e->size))
		return 0;
	*bytes = e->size * (uint64_t)count;
	*lb = e->lb;
	return 1;
}

/* r->dt = dt for a request that outlives the call. A derived type is duplicated: the program may
 * MPI_Type_free its handle right after posting, and the operation must still complete. */
void ivs_dt_hold(struct ivs_req *r, MPI_Datatype dt)
{
	struct dt_entry *e = dt_lookup(dt);
	r->dt = dt;
	if (e && e->named)
		return;
	MPI_Datatype copy;
	if (PMPI_Type_dup(dt, &copy) == MPI_SUCCESS) {
		r->dt = copy;
		r->dt_owned = 1;
	}
}

/* Point r->cbuf/cap straight at the user's buffer if its data is contiguous. */
static int direct_view(struct ivs_req *r, const void *buf, int count, MPI_Datatype dt)
{
	uint64_t n;
	ptrdiff_t lb;
	if (!ivs_dt_contig(dt, count, &n, &lb))
		return 0;
	r->cbuf = (uint8_t *)buf + lb;
	r->cap = n;
	return 1;
}

/* Point r->cbuf/cap at the bytes to send: the user's buffer or a packed copy. */
int ivs_dt_send_view(struct ivs_req *r, const void *buf, int count, MPI_Datatype dt, MPI_Comm comm)
{
	if (IVS_LIKELY(direct_view(r, buf, count, dt)))
		return MPI_SUCCESS;
	int sz, pos = 0, rc = PMPI_Pack_size(count, dt, comm, &sz);
	if (rc != MPI_SUCCESS)
		return rc;
	r->cbuf = malloc(sz ? (size_t)sz : 1);
	if (!r->cbuf)
		return MPI_ERR_NO_MEM;
	r->packed = 1;
	if (buf == MPI_BOTTOM) {
		/* Absolute addresses: MPICH's MPI_Pack refuses a null input buffer, a send does not. */
		MPI_Status st;
		rc = PMPI_Sendrecv(buf, count, dt, 0, 0, r->cbuf, sz, MPI_PACKED, 0, 0, MPI_COMM_SELF, &st);
		if (rc == MPI_SUCCESS)
			rc = PMPI_Get_count(&st, MPI_PACKED, &pos);
	} else {
		rc = PMPI_Pack(buf, count, dt, r->cbuf, sz, &pos, comm);
	}
	if (rc != MPI_SUCCESS) {
		free(r->cbuf);
		r->cbuf = NULL;
		return rc;
	}
	r->cap = (uint64_t)pos;
	return MPI_SUCCESS;
}

/* Point r->cbuf/cap at where received bytes go: the user's buffer or a pack buffer. */
int ivs_dt_recv_view(struct ivs_req *r, void *buf, int count, MPI_Datatype dt)
{
	if (IVS_LIKELY(direct_view(r, buf, count, dt)))
		return MPI_SUCCESS;
	struct dt_entry *e = dt_lookup(dt);
	if (!e || count < 0)
		return MPI_ERR_TYPE;
	r->cap = e->size * (uint64_t)count;
	r->cbuf = malloc(r->cap ? r->cap : 1);
	if (!r->cbuf)
		return MPI_ERR_NO_MEM;
	r->packed = 1;
	return MPI_SUCCESS;
}

/* Receive complete: unpack into the user's buffer if a pack buffer was used. */
int ivs_dt_recv_finish(struct ivs_req *r)
{
	if (!r->packed)
		return MPI_SUCCESS;
	int rc = MPI_SUCCESS;
	struct dt_entry *e = dt_lookup(r->dt);
	if (e && e->size && r->st_bytes % e->size == 0 && r->ubuf != MPI_BOTTOM) {
		int pos = 0;
		uint64_t elems = r->st_bytes / e->size;
		if (elems)
			rc = PMPI_Unpack(r->cbuf, (int)r->st_bytes, &pos, r->ubuf, (int)elems, r->dt, r->comm->handle);
	} else if (r->st_bytes) {
		/* The message ends inside an element: MPI_Unpack only takes whole elements, but a
		 * receive must still place every basic element that arrived. Or the buffer is
		 * MPI_BOTTOM, which MPICH's MPI_Unpack refuses. The library does both right when it
		 * receives the packed bytes itself. */
		rc = PMPI_Sendrecv(r->cbuf, (int)r->st_bytes, MPI_PACKED, 0, 0, r->ubuf, r->count, r->dt, 0, 0,
		                   MPI_COMM_SELF, MPI_STATUS_IGNORE);
	}
	free(r->cbuf);
	r->cbuf = NULL;
	r->packed = 0;
	return rc;
}

/* Copy count elements of dt at buf into n contiguous bytes at dst (n = Type_size * count). */
int ivs_dt_pack(const void *buf, int count, MPI_Datatype dt, void *dst, uint64_t n, MPI_Comm comm)
{
	uint64_t bytes;
	ptrdiff_t lb;
	if (ivs_dt_contig(dt, count, &bytes, &lb) && bytes == n) {
		memcpy(dst, (const uint8_t *)buf + lb, n);
		return MPI_SUCCESS;
	}
	int pos = 0;
	return PMPI_Pack(buf, count, dt, dst, (int)n, &pos, comm);
}

/* The reverse of ivs_dt_pack. */
int ivs_dt_unpack(const void *src, uint64_t n, void *buf, int count, MPI_Datatype dt, MPI_Comm comm)
{
	uint64_t bytes;
	ptrdiff_t lb;
	if (ivs_dt_contig(dt, count, &bytes, &lb) && bytes == n) {
		memcpy((uint8_t *)buf + lb, src, n);
		return MPI_SUCCESS;
	}
	int pos = 0;
	return PMPI_Unpack(src, (int)n, &pos, buf, count, dt, comm);
}

/* For reductions: whether dt is a predefined type, and the byte span of count elements
 * (holes included) with its offset from the buffer address and the per-element stride. */
int ivs_dt_span(MPI_Datatype dt, int count, uint64_t *span, ptrdiff_t *lb, uint64_t *extent)
{
	struct dt_entry *e = dt_lookup(dt);
	if (!e || count < 0 || e->extent <= 0 || !e->named)
		return 0;
	*extent = (uint64_t)e->extent;
	*lb = e->lb;
	*span = count ? (uint64_t)(count - 1) * (uint64_t)e->extent + (uint64_t)e->textent : 0;
	return 1;
}

/* Type_size * count, the bytes of a message's type signature (equal on every rank). */
uint64_t ivs_dt_bytes(MPI_Datatype dt, int count)
{
	struct dt_entry *e = dt_lookup(dt);
	return e && count > 0 ? e->size * (uint64_t)count : 0;
}
