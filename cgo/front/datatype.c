/* Datatypes on the shared-memory path: predefined types whose bytes lie contiguously in memory
 * move as raw bytes; every other type is packed on the sender and unpacked on the receiver,
 * through its typemap (typemap.c) where it has one, else with PMPI_Pack and PMPI_Unpack, so
 * derived datatypes are correct whatever their layout. The typemap is the faster (a PingPong
 * of a 64 KiB vector on MPICH: 41-47 us through MPI_Pack, 5.5-7 us through it) and it can
 * start and end anywhere in an element.
 *
 * A derived-type message with a typemap and longer than a window (DT_WINDOW) moves through
 * one: the sender packs the next window's bytes when the ring has taken the last
 * (ivs_dt_send_bytes), the receiver unpacks each full window (ivs_dt_recv_bytes) and the rest
 * at the end (ivs_dt_recv_finish). Memory stays at a window per message, the window stays in
 * the cache, and the two sides' copies overlap. Packing every message whole first took a fresh
 * buffer of its size on both sides: a 64 MiB vector took 9x as long as the library's shared
 * memory. The window's copies are the typemap's memcpy only: the ring progress that calls them
 * may run inside the library's own progress engine (hook.c), where the library must not be
 * called. A type without a typemap is packed whole, on posting, and unpacked on completion.
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
	struct ivs_tm *tm; /* built on first use (tm_tried); NULL if typemap.c cannot */
	int tm_tried;
};
static struct dt_entry dt_cache[DT_CACHE];

/* e describes no type now. */
static void entry_clear(struct dt_entry *e)
{
	e->key = 0;
	ivs_tm_unref(e->tm); /* requests that use it hold their own reference */
	e->tm = NULL;
	e->tm_tried = 0;
}

/* MPI_Type_get_envelope of any type: *large is set for one made by a large-count constructor,
 * whose arguments MPI_Type_get_contents cannot give (MPI 4; MPICH refuses the int call for it,
 * fatally by default). */
int ivs_dt_envelope(MPI_Datatype dt, int *ni, int *na, int *nd, int *comb, int *large)
{
#if defined(MPICH) && MPI_VERSION >= 4
	MPI_Count i, a, c, d;
	int rc = PMPI_Type_get_envelope_c(dt, &i, &a, &c, &d, comb);
	if (rc != MPI_SUCCESS)
		return rc;
	*large = c != 0 || i > INT_MAX || a > INT_MAX || d > INT_MAX;
	*ni = (int)i;
	*na = (int)a;
	*nd = (int)d;
	return MPI_SUCCESS;
#else
	*large = 0;
	return PMPI_Type_get_envelope(dt, ni, na, nd, comb);
#endif
}

static struct dt_entry *dt_lookup(MPI_Datatype dt)
{
	uintptr_t key = IVS_HANDLE_KEY(dt);
	struct dt_entry *e = &dt_cache[(key >> 4 ^ key) % DT_CACHE];
	if (IVS_LIKELY(e->key == key && key))
		return e;
	entry_clear(e);
	int ni, na, nd, combiner, large;
	MPI_Count size;
	MPI_Aint lb, extent, tlb, textent;
	if (ivs_dt_envelope(dt, &ni, &na, &nd, &combiner, &large) != MPI_SUCCESS ||
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
		entry_clear(e);
}

/* A reference to the typemap of dt (entry e), or NULL. */
static struct ivs_tm *typemap_of(MPI_Datatype dt, struct dt_entry *e)
{
	if (!e->tm_tried) {
		e->tm = ivs_tm_build(dt);
		e->tm_tried = 1;
	}
	return ivs_tm_ref(e->tm);
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

#define DT_WINDOW ((uint64_t)256 << 10)

/* Give request r a window onto its n-byte message of count elements of dt at buf (not
 * MPI_BOTTOM): 1 if it has one now. */
static int window_open(struct ivs_req *r, struct dt_entry *e, void *buf, int count, MPI_Datatype dt, uint64_t n)
{
	if (n <= DT_WINDOW)
		return 0;
	struct ivs_tm *tm = typemap_of(dt, e);
	if (!tm || !(r->cbuf = malloc(DT_WINDOW))) {
		ivs_tm_unref(tm);
		return 0;
	}
	r->packed = IVS_PACKED_WINDOW;
	r->tm = tm;
	r->win_cap = DT_WINDOW;
	r->win_at = r->win_len = 0;
	r->ubuf = buf;
	r->count = count;
	r->cap = n;
	return 1;
}

/* Free the shim's copy of a request's bytes, if it has one. */
void ivs_dt_drop(struct ivs_req *r)
{
	ivs_tm_unref(r->tm);
	r->tm = NULL;
	if (!r->packed)
		return;
	free(r->cbuf);
	r->cbuf = NULL;
	r->packed = IVS_PACKED_NONE;
}

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

/* dt_move through the type's typemap tm where there is one. */
static int dt_copy(int dir, const struct ivs_tm *tm, void *buf, int count, MPI_Datatype dt, uint8_t *packed, uint64_t n,
                   MPI_Comm comm)
{
	if (!tm || buf == MPI_BOTTOM)
		return dt_move(dir, buf, count, dt, packed, n, comm);
	ivs_tm_copy(tm, buf, count, 0, packed, n, dir == DT_UNPACK);
	return MPI_SUCCESS;
}

/* A reference to the typemap that moves elements of dt at buf, or NULL: dt has none (the
 * library packs it), or buf is MPI_BOTTOM (absolute addresses). */
struct ivs_tm *ivs_dt_typemap(MPI_Datatype dt, const void *buf)
{
	struct dt_entry *e = dt_lookup(dt);
	return e && buf != MPI_BOTTOM ? typemap_of(dt, e) : NULL;
}

/* dt_copy with dt's cached typemap. */
static int dt_typemap_move(int dir, void *buf, int count, MPI_Datatype dt, uint8_t *packed, uint64_t n, MPI_Comm comm)
{
	struct ivs_tm *tm = ivs_dt_typemap(dt, buf);
	int rc = dt_copy(dir, tm, buf, count, dt, packed, n, comm);
	ivs_tm_unref(tm);
	return rc;
}

/* Pack the send's next window of bytes, after those it held. */
static void send_refill(struct ivs_req *r)
{
	uint64_t at = r->win_at + r->win_len;
	r->win_at = at;
	r->win_len = r->cap - at < r->win_cap ? r->cap - at : r->win_cap;
	ivs_tm_copy(r->tm, r->ubuf, r->count, at, r->cbuf, r->win_len, 0);
}

/* The bytes of send r from r->done on: *n (at most what it asks) of them are ready there. */
const uint8_t *ivs_dt_send_bytes(struct ivs_req *r, uint64_t *n)
{
	if (IVS_LIKELY(r->packed != IVS_PACKED_WINDOW))
		return r->cbuf + r->done;
	if (r->done == r->win_at + r->win_len)
		send_refill(r);
	uint64_t ready = r->win_at + r->win_len - r->done;
	if (*n > ready)
		*n = ready;
	return r->cbuf + (r->done - r->win_at);
}

/* Send r keeps no reference to the user's buffer: a window becomes a packed copy of the whole
 * message (MPI_Bsend's copy). */
int ivs_dt_send_whole(struct ivs_req *r)
{
	if (r->packed != IVS_PACKED_WINDOW)
		return MPI_SUCCESS;
	uint8_t *all = malloc(r->cap);
	if (!all)
		return MPI_ERR_NO_MEM;
	int rc = dt_copy(DT_PACK, r->tm, r->ubuf, r->count, r->dt, all, r->cap, r->comm->handle);
	if (rc != MPI_SUCCESS) {
		free(all);
		return rc;
	}
	free(r->cbuf);
	r->cbuf = all;
	r->packed = IVS_PACKED_WHOLE;
	return MPI_SUCCESS;
}

/* Point r->cbuf/cap at the bytes to send: the user's buffer, a window or a packed copy. */
int ivs_dt_send_view(struct ivs_req *r, const void *buf, int count, MPI_Datatype dt, MPI_Comm comm)
{
	if (IVS_LIKELY(direct_view(r, buf, count, dt)))
		return MPI_SUCCESS;
	struct dt_entry *e = dt_lookup(dt);
	if (!e || count < 0)
		return MPI_ERR_TYPE;
	uint64_t n = e->size * (uint64_t)count; /* the packed form of a homogeneous run */
	if (buf != MPI_BOTTOM && window_open(r, e, (void *)buf, count, dt, n)) {
		ivs_dt_hold(r, dt); /* MPI_Bsend's whole copy and send_by_library use it */
		send_refill(r);
		return MPI_SUCCESS;
	}
	r->cbuf = malloc(n ? n : 1);
	if (!r->cbuf)
		return MPI_ERR_NO_MEM;
	r->packed = IVS_PACKED_WHOLE;
	int rc;
	if (buf == MPI_BOTTOM) {
		/* Absolute addresses: MPICH's MPI_Pack refuses a null input buffer, a send does not. */
		rc = n > INT_MAX ? MPI_ERR_COUNT
		                 : PMPI_Sendrecv(buf, count, dt, 0, 0, r->cbuf, (int)n, MPI_PACKED, 0, 0, MPI_COMM_SELF,
		                                 MPI_STATUS_IGNORE);
	} else {
		rc = dt_typemap_move(DT_PACK, (void *)buf, count, dt, r->cbuf, n, comm);
	}
	if (rc != MPI_SUCCESS) {
		ivs_dt_drop(r);
		return rc;
	}
	r->cap = n;
	return MPI_SUCCESS;
}

/* Point r->cbuf/cap at where received bytes go: the user's buffer, a window or a pack buffer.
 * r->ubuf, count and dt are set. */
int ivs_dt_recv_view(struct ivs_req *r, void *buf, int count, MPI_Datatype dt)
{
	if (IVS_LIKELY(direct_view(r, buf, count, dt)))
		return MPI_SUCCESS;
	struct dt_entry *e = dt_lookup(dt);
	if (!e || count < 0)
		return MPI_ERR_TYPE;
	r->cap = e->size * (uint64_t)count;
	if (buf != MPI_BOTTOM && window_open(r, e, buf, count, dt, r->cap))
		return MPI_SUCCESS;
	r->cbuf = malloc(r->cap ? r->cap : 1);
	if (!r->cbuf)
		return MPI_ERR_NO_MEM;
	r->packed = IVS_PACKED_WHOLE;
	r->tm = buf != MPI_BOTTOM ? typemap_of(dt, e) : NULL; /* of the type the program gave, whose
	                                                         typemap is cached; r->dt may be a
	                                                         duplicate */
	return MPI_SUCCESS;
}

/* Unpack what a receive's window holds. */
static void recv_flush(struct ivs_req *r)
{
	ivs_tm_copy(r->tm, r->ubuf, r->count, r->win_at, r->cbuf, r->win_len, 1);
	r->win_at += r->win_len;
	r->win_len = 0;
}
/* n bytes of a message at offset at, which follow those the window took before, arrived for
 * receive r; those beyond its capacity go. */
void ivs_dt_recv_bytes(struct ivs_req *r, uint64_t at, const uint8_t *src, uint64_t n)
{
	if (at >= r->cap)
		return;
	if (n > r->cap - at)
		n = r->cap - at;
	if (at != r->win_at + r->win_len)
		ivs_fatal("bytes at %lu of a message whose window ends at %lu", (unsigned long)at,
		          (unsigned long)(r->win_at + r->win_len));
	while (n) {
		uint64_t c = r->win_cap - r->win_len < n ? r->win_cap - r->win_len : n;
		ivs_copy(r->cbuf + r->win_len, src, c);
		r->win_len += c;
		src += c;
		n -= c;
		if (r->win_len == r->win_cap)
			recv_flush(r);
	}
}

/* Receive complete: unpack what the pack buffer or window holds into the user's buffer. */
int ivs_dt_recv_finish(struct ivs_req *r)
{
	if (!r->packed)
		return MPI_SUCCESS;
	if (r->tm) { /* the bytes from win_at on, a part element too */
		if (r->packed == IVS_PACKED_WHOLE)
			r->win_len = r->st_bytes;
		recv_flush(r);
		ivs_dt_drop(r);
		return MPI_SUCCESS;
	}
	int rc = MPI_SUCCESS;
	struct dt_entry *e = dt_lookup(r->dt);
	if (!e) {
		ivs_dt_drop(r);
		return MPI_ERR_TYPE;
	}
	uint64_t whole = e->size && r->ubuf != MPI_BOTTOM ? r->st_bytes / e->size : 0;
	uint64_t done = whole * e->size, rest = r->st_bytes - done;
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
	ivs_dt_drop(r);
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
	return dt_typemap_move(DT_PACK, (void *)buf, count, dt, dst, n, comm);
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
	return dt_typemap_move(DT_UNPACK, buf, count, dt, (uint8_t *)src, n, comm);
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
