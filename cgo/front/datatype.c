/* Datatypes on the shared-memory path: predefined types whose bytes lie contiguously in memory
 * move as raw bytes; every other type is packed with PMPI_Pack on the sender and unpacked with
 * PMPI_Unpack on the receiver, so derived datatypes are correct whatever their layout.
 *
 * Sizes are 64-bit throughout: an int count of a derived type can describe more than 2 GiB.
 * PMPI_Pack and PMPI_Unpack take int sizes, so longer ranges move in runs of whole elements
 * (dt_move); only a single element over 2 GiB is refused (MPI_ERR_COUNT). */
#include <limits.h>
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
	int ni, na, nd, combiner;
	MPI_Count size;
	MPI_Aint lb, extent, tlb, textent;
	if (PMPI_Type_get_envelope(dt, &ni, &na, &nd, &combiner) != MPI_SUCCESS ||
	    PMPI_Type_size_x(dt, &size) != MPI_SUCCESS || size < 0 ||
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

enum { DT_PACK, DT_UNPACK };

/* Pack count elements of dt at buf into the n bytes at packed, or unpack the reverse way. n is
 * Type_size * count; runs of whole elements keep each PMPI call's size within an int. */
static int dt_move(int dir, void *buf, int count, MPI_Datatype dt, uint8_t *packed, uint64_t n, MPI_Comm comm)
{
	int pos = 0;
	if (n <= INT_MAX)
		return dir == DT_PACK ? PMPI_Pack(buf, count, dt, packed, (int)n, &pos, comm)
		                      : PMPI_Unpack(packed, (int)n, &pos, buf, count, dt, comm);
	struct dt_entry *e = dt_lookup(dt);
	if (!e || !e->size || e->size > INT_MAX)
		return MPI_ERR_COUNT;
	const struct dt_entry el = *e; /* PMPI calls below may evict the cache line */
	uint64_t per = INT_MAX / el.size;
	for (uint64_t done = 0; done < (uint64_t)count;) {
		uint64_t k = (uint64_t)count - done < per ? (uint64_t)count - done : per;
		uint8_t *at = (uint8_t *)buf + (ptrdiff_t)done * el.extent, *p = packed + done * el.size;
		int rc;
		pos = 0;
		if (dir == DT_PACK)
			rc = PMPI_Pack(at, (int)k, dt, p, (int)(k * el.size), &pos, comm);
		else
			rc = PMPI_Unpack(p, (int)(k * el.size), &pos, at, (int)k, dt, comm);
		if (rc != MPI_SUCCESS)
			return rc;
		done += k;
	}
	return MPI_SUCCESS;
}

/* Point r->cbuf/cap at the bytes to send: the user's buffer or a packed copy. */
int ivs_dt_send_view(struct ivs_req *r, const void *buf, int count, MPI_Datatype dt, MPI_Comm comm)
{
	if (IVS_LIKELY(direct_view(r, buf, count, dt)))
		return MPI_SUCCESS;
	struct dt_entry *e = dt_lookup(dt);
	if (!e || count < 0)
		return MPI_ERR_TYPE;
	uint64_t n = e->size * (uint64_t)count; /* the packed form of a homogeneous run */
	r->cbuf = malloc(n ? n : 1);
	if (!r->cbuf)
		return MPI_ERR_NO_MEM;
	r->packed = 1;
	int rc;
	if (buf == MPI_BOTTOM) {
		/* Absolute addresses: MPICH's MPI_Pack refuses a null input buffer, a send does not. */
		rc = n > INT_MAX ? MPI_ERR_COUNT
		                 : PMPI_Sendrecv(buf, count, dt, 0, 0, r->cbuf, (int)n, MPI_PACKED, 0, 0, MPI_COMM_SELF,
		                                 MPI_STATUS_IGNORE);
	} else {
		rc = dt_move(DT_PACK, (void *)buf, count, dt, r->cbuf, n, comm);
	}
	if (rc != MPI_SUCCESS) {
		free(r->cbuf);
		r->cbuf = NULL;
		r->packed = 0;
		return rc;
	}
	r->cap = n;
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
	uint64_t whole = e && e->size && r->ubuf != MPI_BOTTOM ? r->st_bytes / e->size : 0;
	uint64_t done = e ? whole * e->size : 0, rest = r->st_bytes - done;
	if (whole)
		rc = dt_move(DT_UNPACK, r->ubuf, (int)whole, r->dt, r->cbuf, done, r->comm->handle);
	if (rc == MPI_SUCCESS && rest) {
		/* The message ends inside an element: MPI_Unpack only takes whole elements, but a
		 * receive must still place every basic element that arrived. Or the buffer is
		 * MPI_BOTTOM, which MPICH's MPI_Unpack refuses. The library does both right when it
		 * receives the packed bytes itself. */
		uint8_t *at = r->ubuf == MPI_BOTTOM ? r->ubuf : (uint8_t *)r->ubuf + (ptrdiff_t)whole * e->extent;
		rc = rest > INT_MAX ? MPI_ERR_COUNT
		                    : PMPI_Sendrecv(r->cbuf + done, (int)rest, MPI_PACKED, 0, 0, at, r->count - (int)whole,
		                                    r->dt, 0, 0, MPI_COMM_SELF, MPI_STATUS_IGNORE);
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
		ivs_copy(dst, (const uint8_t *)buf + lb, n);
		return MPI_SUCCESS;
	}
	return dt_move(DT_PACK, (void *)buf, count, dt, dst, n, comm);
}

/* The reverse of ivs_dt_pack. */
int ivs_dt_unpack(const void *src, uint64_t n, void *buf, int count, MPI_Datatype dt, MPI_Comm comm)
{
	uint64_t bytes;
	ptrdiff_t lb;
	if (ivs_dt_contig(dt, count, &bytes, &lb) && bytes == n) {
		ivs_copy((uint8_t *)buf + lb, src, n);
		return MPI_SUCCESS;
	}
	return dt_move(DT_UNPACK, buf, count, dt, (uint8_t *)src, n, comm);
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
