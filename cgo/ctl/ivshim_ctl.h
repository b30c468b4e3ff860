/*
 * The boundary between the C front library (libivshim-openmpi.so / libivshim-mpich.so: MPI
 * interposers and the data plane) and the Go control plane (libivshim-ctl.so).
 *
 * The front never links the control plane. In MPI_Init(_thread), after PMPI_Init succeeded, the
 * ranks agree (one PMPI_Allreduce) whether any of them may have a region (IVSHIM_REGION set, or
 * an ivshmem PCI device present). If none has, the job runs in pure pass-through and Go is never
 * loaded. Otherwise every rank dlopen()s libivshim-ctl.so from the front's own directory and
 * calls ivshim_ctl_start, which is collective. So the Go runtime never starts in a process that
 * does not call MPI_Init (mpirun, orted, hydra_pmi_proxy, shells that inherit LD_PRELOAD), nor
 * in a job that has no region.
 *
 * The control plane is MPI-ABI-neutral: it never calls MPI itself. Collective exchanges at start
 * go through the callbacks in struct ivshim_ctl_mpi, which the front implements with PMPI on
 * MPI_COMM_WORLD. Nothing here is called per message.
 */
#ifndef IVSHIM_CTL_H
#define IVSHIM_CTL_H

#include <stdint.h>

#define IVSHIM_CTL_ABI 7 /* bump when any struct below changes */

/* Paths a peer can be reached on (struct ivshim_ctl_peer.path). */
enum ivshim_path {
	IVSHIM_PATH_NET = 0, /* the MPI library's own path (PMPI): SR-IOV IB in production */
	IVSHIM_PATH_SHM = 1, /* pair rings in the region (also used for self) */
};

/* Collective exchanges over MPI_COMM_WORLD, implemented by the front with PMPI. Each returns
 * 0 on success, else an MPI error code. */
struct ivshim_ctl_mpi {
	void *ctx;
	/* every rank contributes bytes from send; recv receives world_size * bytes, rank order */
	int (*allgather)(void *ctx, const void *send, void *recv, uint64_t bytes);
	int (*barrier)(void *ctx);
};

/* How to reach one world rank. Filled by ivshim_ctl_start for every rank. */
struct ivshim_ctl_peer {
	uint32_t path;    /* enum ivshim_path */
	uint32_t slot;    /* the peer's slot in the region (SHM); rings are made on first use */
};

struct ivshim_ctl_start_args {
	/* in, set by the front */
	uint32_t abi;                   /* IVSHIM_CTL_ABI */
	int32_t world_rank;
	int32_t world_size;
	const char *mpi_library;        /* PMPI_Get_library_version text */
	const char *passthrough;        /* non-NULL: this rank takes part in the exchanges but never
	                                   attaches a region (IVSHIM_DISABLE, MPI_THREAD_MULTIPLE);
	                                   the text says why */
	struct ivshim_ctl_mpi mpi;
	struct ivshim_ctl_peer *peers;  /* world_size entries, zeroed (= all NET) by the front */
	/* out, set by ivshim_ctl_start */
	void *region_base;              /* start of the mapped region (valid until finalize) */
	uint64_t region_size;           /* bytes of the region the data plane may touch */
	uint32_t self_slot;
	uint32_t local_ranks;           /* ranks sharing this region, self included */
	int32_t verbose;                /* IVSHIM_VERBOSE level the control plane parsed */
	int32_t stall_seconds;          /* IVSHIM_STALL_SECONDS in effect (0: no stall reports) */
	int32_t joins_later;            /* result 1 only: no device now (the VM is being migrated,
	                                   or not plugged yet) while ranks of the job share memory:
	                                   ivshim_ctl_rejoin joins the VM's region once plugged */
	char error[512];                /* NUL-terminated reason when the result is not 0 */
};

/* Per-path traffic counters the front keeps and reports at MPI_Finalize. */
struct ivshim_ctl_stats {
	uint64_t messages[2]; /* indexed by enum ivshim_path */
	uint64_t bytes[2];
	uint64_t collectives_shm;   /* collectives completed with an intra-host phase in the region */
	uint64_t collectives_net;   /* collectives passed to the MPI library */
	uint64_t gates;             /* blocking collective calls entered through a gate (front/gate.c) */
};

/*
 * ivshim_ctl_start: collective over MPI_COMM_WORLD (every rank of the job calls it, also those
 * without a region, so that the exchanges match). Returns
 *    0  shared memory enabled: peers[], region_base, region_size, self_slot are valid;
 *    1  pass-through: nothing to share (no region, no co-located peer); error says why;
 *   -1  fatal: the job must abort with error (corrupt region, protocol mismatch).
 * A rank without a region takes part all the same and gets all peers on IVSHIM_PATH_NET.
 */
typedef int (*ivshim_ctl_start_fn)(struct ivshim_ctl_start_args *args);

/* ivshim_ctl_alloc / ivshim_ctl_free: heap memory in the region for a collective area, owned by
 * the calling rank. Returns the region offset, 0 on failure (reason in err). Not per message:
 * called when a communicator gets its shared-memory collective state. */
typedef uint64_t (*ivshim_ctl_alloc_fn)(uint64_t bytes, char *err, uint64_t errlen);
typedef int (*ivshim_ctl_free_fn)(uint64_t off, char *err, uint64_t errlen);

/* ivshim_ctl_adopt: make the collective area at region offset off, which a rank that left the
 * region allocated, this rank's to free (ivshim_ctl_free) once its members have left it. Returns
 * the area's bytes, 0 when off is not a collective area of this rank's session (reason in err). */
typedef uint64_t (*ivshim_ctl_adopt_fn)(uint64_t off, char *err, uint64_t errlen);

/* ivshim_ctl_ring: make and publish this rank's inbound ring from the co-located member in slot
 * sender, which asked for it in this rank's ring_wanted bits (ivshim_region.h: rings are made
 * on first use). Returns the ring's region offset, 0 when there is none (no room even for the
 * least capacity, a slot outside the group: reason in err); the front then says IVSHIM_PAIR_NET.
 * Once per pair and direction, never per message. joined != 0: the sender shares the region
 * since a rejoin and the pair moves from the library to rings now; the pair word an earlier
 * occupant of its slot left is emptied first (the front asks only when it reads nothing of that
 * occupant's any more). */
typedef uint64_t (*ivshim_ctl_ring_fn)(uint32_t sender, int joined, char *err, uint64_t errlen);

/* ivshim_ctl_finalize: local; prints the stats summary when verbose, detaches from the region
 * (the ranks have drained their rings and passed a barrier first). 0 on success. */
typedef int (*ivshim_ctl_finalize_fn)(const struct ivshim_ctl_stats *stats, char *err, uint64_t errlen);

/* ivshim_ctl_release: local; the rank gives its region up while the job runs (its VM leaves the
 * host): the heartbeat stops, the slot is released (freeing its inbound rings) and the region is
 * unmapped. Collective areas this rank allocated stay allocated, since co-located members may
 * still read the last op; the session's end frees them. The front has moved every pair and
 * collective off the region first. 0 on success. */
typedef int (*ivshim_ctl_release_fn)(char *err, uint64_t errlen);

/* ivshim_ctl_rejoin: local; after ivshim_ctl_release (or a start that said joins_later), map the
 * region of the host this rank's VM runs on now (it was migrated, or its migration rolled back,
 * or its device is plugged at last) and claim a slot there, if its job's ranks share it and the
 * VM is not flagged leaving in it. Returns
 *    0  joined: region_base, region_size and self_slot are valid until finalize or the next
 *       release; the pairs with the ranks found there take the library (no rings);
 *    1  nothing to join now (error says why): try again later;
 *   -1  failed (error says why): the rank stays off any region.
 * Called at most every few milliseconds by a released rank, never per message. */
struct ivshim_ctl_rejoin_args {
	void *region_base;
	uint64_t region_size;
	uint32_t self_slot;
	char error[512];
};
typedef int (*ivshim_ctl_rejoin_fn)(struct ivshim_ctl_rejoin_args *args);

#define IVSHIM_CTL_START_SYM "ivshim_ctl_start"
#define IVSHIM_CTL_ALLOC_SYM "ivshim_ctl_alloc"
#define IVSHIM_CTL_FREE_SYM "ivshim_ctl_free"
#define IVSHIM_CTL_RING_SYM "ivshim_ctl_ring"
#define IVSHIM_CTL_FINALIZE_SYM "ivshim_ctl_finalize"
#define IVSHIM_CTL_RELEASE_SYM "ivshim_ctl_release"
#define IVSHIM_CTL_REJOIN_SYM "ivshim_ctl_rejoin"
#define IVSHIM_CTL_ADOPT_SYM "ivshim_ctl_adopt"

#endif /* IVSHIM_CTL_H */
