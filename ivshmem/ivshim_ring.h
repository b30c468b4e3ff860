/*
 * ivshim ring record format, part of region format IVSHIM_REGION_VERSION (ivshim_region.h): what
 * a pair ring's data area (struct ivshim_ring in ivshim_region.h, data[capacity] after it) holds.
 * The single definition the C data plane's producer and consumer (cgo/front/ring.h) agree on;
 * ivshmem/layout_test.go proves the Go mirror in ivshmem/ring_format.go has the same offsets and
 * sizes.
 *
 * A ring position is a byte counter like ivshim_ring.head and .tail; the record at position p
 * starts at data[p & (capacity - 1)]. Records start on IVS_ALIGN-byte lines, occupy
 * IVS_REC_HDR + len bytes rounded up to whole lines and never run past the end of the data area:
 * a PAD record covers the rest of the area instead and the next record starts the next lap at
 * offset 0.
 *
 * Recognition: the record at position p is published when its stamp word (the first word of its
 * line) equals p | 1. Two rules make that impossible to forge with payload bytes of earlier
 * records (cgo/front/ring.h gives the argument):
 *   - the producer writes the stamp last, with RELEASE, and writes the line start of a position
 *     only while writing the record or PAD that occupies that position;
 *   - before the consumer releases head past a record it stores 0 into the first word of every
 *     line the record occupied (for a PAD, its own line), and the RELEASE store of head orders
 *     those stores before the producer may write there again.
 * A ring allocation starts zeroed, so every line start holds 0 or a genuine stamp.
 */
#ifndef IVSHIM_RING_H
#define IVSHIM_RING_H

#include <stddef.h>
#include <stdint.h>
#include "ivshim_region.h"

#define IVS_ALIGN 64u /* records start on lines of this many bytes */

/* Smallest ring capacity the data plane attaches to: a record may take an eighth of the ring
 * (cgo/front/ring.h), and an eighth must hold a header and at least one payload byte. */
#define IVS_RING_MIN_CAP (8u * IVS_ALIGN)

enum ivs_rec_kind {
	IVS_REC_PAD = 1,  /* skip to the end of the data area */
	IVS_REC_MSG = 2,  /* first record of a message: envelope + first payload bytes */
	IVS_REC_FRAG = 3, /* further payload of the message being received on this ring */
	IVS_REC_ACK = 4,  /* receiver matched a synchronous send: cookie names it */
	IVS_REC_MARK = 5, /* the sender's last record on this ring: from here on it sends this
	                     receiver its messages and ACKs by the MPI library (a migration's path
	                     switch, cgo/front/migrate.c); no field but the stamp is used */
};

#define IVS_F_SYNC 1u /* IVS_REC_MSG: the sender waits for an IVS_REC_ACK with cookie */

/* Record header; payload bytes follow it directly. Written by the producer only, except that the
 * consumer zeroes stamp once it is done with the record. */
struct ivs_rec {
	uint64_t stamp;  /* atomic: position | 1, stored last (RELEASE); 0 once consumed */
	uint32_t len;    /* payload bytes in this record */
	uint16_t kind;   /* enum ivs_rec_kind */
	uint16_t flags;  /* IVS_F_* */
	int32_t tag;     /* IVS_REC_MSG: MPI tag */
	uint32_t ctx;    /* IVS_REC_MSG: communicator context id agreed by the shim */
	uint64_t total;  /* IVS_REC_MSG: bytes in the whole message */
	uint64_t cookie; /* IVS_REC_MSG with IVS_F_SYNC, IVS_REC_ACK: sender's request token */
};

#define IVS_REC_HDR 40u /* payload offset in a record */

_Static_assert(IVS_REC_HDR == offsetof(struct ivs_rec, cookie) + sizeof(uint64_t),
	       "IVS_REC_HDR must end at the last header field");
_Static_assert(sizeof(struct ivs_rec) == IVS_REC_HDR, "struct ivs_rec is 40 bytes, no tail padding");
_Static_assert(offsetof(struct ivs_rec, stamp) == 0, "the stamp is the first word of a record's line");
_Static_assert(_Alignof(struct ivs_rec) == sizeof(uint64_t) && IVS_ALIGN % _Alignof(struct ivs_rec) == 0,
	       "a record's line start keeps its 64-bit stamp naturally aligned for atomics");
_Static_assert(IVS_ALIGN == IVSHIM_CACHELINE && (IVS_ALIGN & (IVS_ALIGN - 1)) == 0,
	       "records start on cache lines");
_Static_assert(IVS_REC_HDR < IVS_ALIGN, "a header fits in the line it starts");
_Static_assert(sizeof(struct ivshim_ring) % IVS_ALIGN == 0, "a ring's data area starts on a line");
_Static_assert((IVS_RING_MIN_CAP & (IVS_RING_MIN_CAP - 1)) == 0 && IVS_RING_MIN_CAP / 8 > IVS_REC_HDR,
	       "the smallest ring holds a record with one payload byte in an eighth of it");

#endif /* IVSHIM_RING_H */
