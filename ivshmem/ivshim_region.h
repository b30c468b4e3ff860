/*
 * ivshim region format v3: the single definition of the shared-memory layout that the broker
 * (Go, host side), the shim control plane (Go, guest side) and the shim data plane (C, guest
 * side) agree on. ivshmem/layout_test.go proves the Go mirror of every struct below has the same
 * offsets and sizes. What the data plane keeps in the heap is part of the format too and is
 * defined next to this file: pair ring records in ivshim_ring.h, collective areas in
 * ivshim_coll.h. IVSHIM_REGION_VERSION covers all three; a party reads only its own version.
 *
 * Versions: 1, the first; 2, ring consumers zero the line starts of consumed records (the
 * producer relies on it, ivshim_ring.h) and collective areas hold a left word per member
 * (ivshim_coll.h); 3, a collective area's slot size is its own (4-64 KiB, agreed at set-up)
 * and its result buffers are slot-sized (ivshim_coll.h); 4, rings are made on first use: a
 * sender asks for its ring in the receiver's slot (ring_wanted), a pair word may say
 * IVSHIM_PAIR_NET.
 *
 * A region is one contiguous byte range: a /dev/shm file on the host, BAR2 of an ivshmem-plain
 * PCI device (1af4:1110) in a guest. All integers are little-endian. All offsets are byte
 * offsets from the start of the region. Every structure starts on a 64-byte cache line and
 * words written by different parties never share a cache line.
 *
 *   [0, 4096)                      struct ivshim_region_header
 *   [vm_table_off, +vm_count*64)   struct ivshim_vm[vm_count]        broker-owned
 *   [slot_table_off, +n*256)       struct ivshim_slot[slot_count]    each slot owned by one rank
 *   [pair_table_off, +n*n*8)       uint64_t pair[sender][receiver]   receiver-owned, see below
 *   [chunk_table_off, +c*16)       struct ivshim_chunk[chunk_count]  allocator state
 *   [heap_off, +c*chunk_size)      chunks: rings and collective areas
 *
 * Trust: the region is shared with other VMs. A reader validates every offset, length, index
 * and enum it reads before use (ivshmem.Validate for the header, per-access checks for the rest).
 *
 * Memory ordering: words marked "atomic" are accessed only with __atomic builtins. A party
 * publishes data by writing it and then storing the guarding word with RELEASE; the other party
 * loads the guarding word with ACQUIRE before reading the data.
 */
#ifndef IVSHIM_REGION_H
#define IVSHIM_REGION_H

#include <stdint.h>

#define IVSHIM_REGION_MAGIC 0x31524d4948535649ULL /* "IVSHMIR1" read as little-endian */
#define IVSHIM_REGION_VERSION 4u
#define IVSHIM_CACHELINE 64u
#define IVSHIM_HEADER_SIZE 4096u
#define IVSHIM_JOB_ID_MAX 64u     /* bytes in job_id, NUL-padded, at most 63 used */
#define IVSHIM_MAX_SLOTS 1024u    /* upper bound on slot_count accepted by validation */
#define IVSHIM_MAX_VMS 1024u      /* upper bound on vm_count accepted by validation */
#define IVSHIM_MIN_CHUNK 4096u    /* chunk_size is a power of two >= this */
#define IVSHIM_NO_VM 0xffffffffu  /* ivshim_slot.vm_index of a rank outside any VM entry */

/*
 * Pair words: pair[sender][receiver], written only by the receiver (atomic, RELEASE; the sender
 * loads with ACQUIRE). 0: no ring yet; IVSHIM_PAIR_NET: messages of this direction take the MPI
 * library for as long as the session lasts (the receiver found no room for a ring, or the pair
 * closed for a migration before it had one); anything else: the region offset of the pair's
 * struct ivshim_ring. Rings are made on first use: a sender that needs its ring sets its own
 * slot's bit in the receiver's ivshim_slot.ring_wanted (atomic OR) and waits for the word; the
 * receiver takes the bits (atomic exchange), makes the rings, and answers every bit with a
 * ring or IVSHIM_PAIR_NET. So region memory follows the pairs that talk.
 */
#define IVSHIM_PAIR_NET 1u

/*
 * Header, 4096 bytes. Lines 0-2 are written by the broker before the region file is published
 * (renamed into place) and never change afterwards. Line 3 is broker-owned, line 4 and 5 are
 * written by shims.
 */
struct ivshim_region_header {
	/* line 0: identity (immutable) */
	uint64_t magic;          /* IVSHIM_REGION_MAGIC */
	uint32_t version;        /* IVSHIM_REGION_VERSION */
	uint32_t header_size;    /* IVSHIM_HEADER_SIZE */
	uint64_t total_size;     /* bytes in the region; a PCI BAR may be larger */
	uint8_t host_id[16];     /* the host this region lives on; shims compare it to find peers */
	uint32_t slot_count;     /* entries in the slot table (max co-located ranks) */
	uint32_t vm_count;       /* entries in the VM table */
	uint32_t chunk_size;     /* allocator granule, power of two >= IVSHIM_MIN_CHUNK */
	uint32_t chunk_count;    /* chunks in the heap */
	uint32_t ring_size;      /* default data bytes of a pair ring, power of two, <= heap */
	uint32_t reserved0;
	/* line 1: the job this region belongs to (immutable), NUL-padded */
	char job_id[IVSHIM_JOB_ID_MAX];
	/* line 2: layout (immutable), see the map above */
	uint64_t vm_table_off;
	uint64_t slot_table_off;
	uint64_t pair_table_off;
	uint64_t chunk_table_off;
	uint64_t heap_off;
	uint64_t reserved2[3];
	/* line 3: broker-owned, atomic. Bumped (RELEASE) whenever the VM table changes, so a shim
	 * that polls it learns about arrivals and departures. */
	uint64_t generation;
	uint64_t reserved3[7];
	/* line 4: session, shim-owned, atomic. The MPI job instance currently using the region;
	 * 0 = none. Claimed by compare-and-swap by the first local leader (Region.ClaimSession,
	 * ivshmem/members.go). */
	uint64_t session;
	uint64_t session_members; /* atomic count of ranks attached to the session */
	uint64_t reserved4[6];
	/* line 5: allocator lock, atomic: 0 = free, else slot index + 1 of the holder */
	uint64_t heap_lock;
	uint64_t reserved5[7];
	uint8_t reserved[IVSHIM_HEADER_SIZE - 6 * IVSHIM_CACHELINE];
};

/* VM table entry states (ivshim_vm.state). */
enum ivshim_vm_state {
	IVSHIM_VM_EMPTY = 0,   /* unused entry */
	IVSHIM_VM_PRESENT = 1, /* VM runs on this host with the region attached */
	IVSHIM_VM_LEAVING = 2, /* broker asked the VM's ranks to drain: migration pending */
};

/* One VM of the job on this host. Broker-owned: shims only read it. */
struct ivshim_vm {
	uint8_t uuid[16];    /* SMBIOS system UUID in a real guest, configured id in emulation */
	uint32_t state;      /* atomic, enum ivshim_vm_state */
	uint32_t reserved0;
	uint64_t generation; /* header generation at which this entry last changed */
	uint64_t reserved[5];
};

/* Slot states (ivshim_slot.state). */
enum ivshim_slot_state {
	IVSHIM_SLOT_FREE = 0,    /* claimable by compare-and-swap */
	IVSHIM_SLOT_CLAIMED = 1, /* owner is filling in the identity line */
	IVSHIM_SLOT_ACTIVE = 2,  /* owner's identity is valid and its inbound rings are published */
	IVSHIM_SLOT_LEAVING = 3, /* owner is draining; peers must stop starting new sends to it */
};

/* One rank attached to the region. Line 0 and 1 are written only by the owning rank. */
struct ivshim_slot {
	/* line 0: identity, published by state (RELEASE) */
	uint32_t state;      /* atomic, enum ivshim_slot_state */
	uint32_t vm_index;   /* index into the VM table, or IVSHIM_NO_VM */
	uint64_t session;    /* session the owner belongs to */
	uint32_t world_rank; /* rank in MPI_COMM_WORLD */
	uint32_t world_size;
	uint32_t pid;        /* owner's process id inside its VM (diagnostics only) */
	uint32_t reserved0;
	uint64_t reserved1[4];
	/* line 1: liveness, atomic, incremented by the owner's control plane */
	uint64_t heartbeat;
	uint64_t reserved2[7];
	/* line 2-3: atomic, set by senders: bit s (word s / 64, bit s % 64) asks the owner for the
	 * ring from slot s (see IVSHIM_PAIR_NET); cleared by the owner as it answers */
	uint64_t ring_wanted[IVSHIM_MAX_SLOTS / 64];
};

/* Allocator state of one chunk. Written under header.heap_lock only. */
struct ivshim_chunk {
	uint64_t owner;   /* 0 = free; else session of the allocation */
	uint32_t length;  /* on the first chunk of an allocation: chunks in it; 0 on the others */
	uint16_t slot;    /* slot index of the allocating rank */
	uint16_t kind;    /* enum ivshim_alloc_kind */
};

enum ivshim_alloc_kind {
	IVSHIM_ALLOC_RING = 1,       /* struct ivshim_ring + data */
	IVSHIM_ALLOC_COLLECTIVE = 2, /* a communicator's collective area */
};

/* Ring states (ivshim_ring.state). */
enum ivshim_ring_state {
	IVSHIM_RING_OPEN = 1,   /* the receiver consumes records */
	IVSHIM_RING_CLOSED = 2, /* the receiver closed it; the sender must switch path */
};

/*
 * A single-producer single-consumer byte ring from one slot (sender) to another (receiver),
 * allocated and initialised by the receiver, published through pair[sender][receiver].
 * head and tail are monotonic byte counters (never reset); the position in data is
 * counter & (capacity - 1), the wrap count is counter / capacity. tail - head <= capacity.
 * The records in data are defined in ivshim_ring.h.
 */
struct ivshim_ring {
	/* line 0: immutable after publication */
	uint64_t capacity;      /* data bytes, power of two */
	uint64_t session;       /* session of the receiver at allocation */
	uint32_t sender_slot;
	uint32_t receiver_slot;
	uint64_t reserved0[5];
	/* line 1: producer-owned */
	uint64_t tail;          /* atomic: bytes ever written; RELAXED, informational (records
	                         * publish themselves by their stamps, see ivshim_ring.h) */
	uint64_t reserved1[7];
	/* line 2: consumer-owned */
	uint64_t head;          /* atomic: bytes ever consumed; RELEASE after the record is copied out
	                         * and its line starts zeroed */
	uint32_t state;         /* atomic, enum ivshim_ring_state */
	uint32_t reserved2;
	uint64_t reserved3[6];
	/* data[capacity] follows */
};

#define IVSHIM_RING_DATA_OFF ((uint64_t)sizeof(struct ivshim_ring))

#endif /* IVSHIM_REGION_H */
