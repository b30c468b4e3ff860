/*
 * Internal interfaces of the ivshim front library: one shared library per MPI ABI family
 * (libivshim-openmpi.so, libivshim-mpich.so), compiled from these sources with that family's
 * mpi.h. It interposes the MPI API (calling the library through PMPI), keeps the per-message
 * data plane in C, and loads the Go control plane (ivshim_ctl.h) only inside MPI_Init.
 *
 * Threading: the shim serves MPI_THREAD_SINGLE, FUNNELED and SERIALIZED; a job that gets
 * MPI_THREAD_MULTIPLE runs in pass-through.
 *
 * Headers form a DAG (an arrow reads "includes"; no header reaches back to one that includes it):
 *
 *   coll.h ---> ivshim.h ---> abi.h ---> <mpi.h>
 *     |           |---> ring.h ---> ivshmem/ivshim_ring.h ---> ivshmem/ivshim_region.h
 *     |           `---> cgo/ctl/ivshim_ctl.h
 *     `---> ivshmem/ivshim_coll.h ---> ivshmem/ivshim_region.h
 *
 * Every .c file includes ivshim.h, the coll_*.c files coll.h instead. ring.h and the ivshmem
 * headers need no MPI (tests/cunit compiles ring.h alone). ivshim.h knows the collectives only
 * as the opaque struct ivs_coll and ivs_coll_forget; their internals stay in coll.h.
 */
#ifndef IVSHIM_FRONT_H
#define IVSHIM_FRONT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "abi.h"
#include "ring.h"
#include "ivshim_ctl.h"

#define IVS_LIKELY(x) __builtin_expect(!!(x), 1)
#define IVS_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define IVS_COLD __attribute__((cold, noinline))

/* ---- peers (world ranks) ---- */

struct ivs_req;
struct ivs_msg;
struct ivs_coll; /* coll.h */

struct ivs_peer {
	struct ivs_tx tx;          /* self -> peer */
	struct ivs_rx rx;          /* peer -> self */
	struct ivs_req *sendq;     /* sends to this peer not yet fully in the ring, FIFO */
	struct ivs_req *sendq_tail;
	struct ivs_msg *rx_cur;    /* message whose fragments are arriving on rx */
	uint64_t *acks;            /* synchronous-send ACKs owed to the peer, not yet in the ring */
	int nacks, acks_cap;
	int local;                 /* index among the co-located ranks */
	int world;                 /* the peer's world rank */
	uint32_t slot;             /* the peer's slot in the region */
	uint8_t tx_want;           /* asked the peer for the ring self -> peer, no answer seen yet
	                              (rings are made on first use: pairs.c); tx.ring and rx.ring
	                              stay NULL until their ring is made */
	/* The path switch of a migration (migrate.c), per direction, each only ever set:
	 * self -> peer: closing (new sends take the library; the MARK goes in after what is queued),
	 * then tx_net (MARK written: ACKs too take the library); peer -> self: rx_mark (the ring engine
	 * read the MARK and reads no further), then rx_net (messages parked meanwhile handed on: the
	 * peer is a library peer for receives). */
	uint8_t closing, tx_net, rx_mark, rx_net;
	uint8_t leave_seen;        /* the region flagged the pair's VM leaving (migrate.c scan), or it
	                              left the region; cleared when it is co-located again (rejoin) */
	uint8_t join_pending;      /* the peer joined this rank's region at join_slot; taken once this
	                              rank's pair with it is fully on the library (migrate.c) */
	uint8_t anew_sent;         /* a flag taken back: this rank asked the peer to close the pair too
	                              (migrate.c's ANEW); cleared when the pair is made anew */
	uint32_t join_slot;
	uint32_t leaves, joins;    /* times the peer was seen leaving, and joining (a rejoin):
	                              monotonic, so collectives notice a change since their set-up */
	uint8_t ack_blocked;       /* a synchronous send heads sendq, but the peer could answer it
	                              only by the library: the direction closes first (pairs.c) */
	struct ivs_msg *parked, *parked_tail; /* library messages from the peer taken before its MARK */
	/* The join switch (join.c): a pair made at run time (peer_join: one of the two joined the
	 * other's region) moves from the library to rings, each direction on its own, on the
	 * counted communicators only (ivs_comm.counted). */
	uint8_t joined;            /* the pair was made by peer_join */
	uint8_t tx_join, rx_join;  /* enum ivs_join_tx / ivs_join_rx */
	uint8_t rx_asked;          /* a question came while the peer's direction was on the ring */
	uint64_t tx_ask;           /* self -> peer: the id of the question in flight */
	uint64_t rx_ask, rx_need;  /* peer -> self: the question to answer, and the library
	                              messages the peer had sent when it asked */
	double asked_at;           /* when the last question either way was asked (or came) */
};

/* Whether a send to world rank w goes into its ring (else to the library). */
static inline struct ivs_peer *ivs_tx_peer(int w);
/* Whether messages from world rank w arrive by its ring (else by the library). */
static inline struct ivs_peer *ivs_rx_peer(int w);

/* ---- communicators ---- */

struct ivs_comm {
	MPI_Comm handle;
	uint32_t ctx;              /* context id agreed among the members */
	int rank, size;
	int p2p;                   /* point-to-point takes the shim's paths here: this rank has a
	                              co-located peer in it (rings), or counts (counted) */
	int nshm;                  /* members reached through the region, self included */
	int has_net;               /* some member is reached through PMPI */
	int coll_lib;              /* collectives go to the library: a member runs MPI_THREAD_MULTIPLE, or
	                              no member had a co-located peer in it at its creation, or none
	                              in the job at MPI_Init (ivs.coll_areas) */
	int lib_nb;                /* the library's collectives here are called nonblocking (coll.h):
	                              ivs.coll_areas or ivs.coll_nb_all, and no member runs
	                              MPI_THREAD_MULTIPLE; ends at the first MPI_Comm_idup (comm.c) */
	int gate_group;            /* lib_nb as recorded: MPI_Comm_create_group's gate (gate.c) */
	int outsider;              /* a member is outside this MPI_COMM_WORLD (comm_build) */
	int counted;               /* this rank has a region and counts its library messages per
	                              peer here (join.c): a pair made at run time may move to rings
	                              on it (every rank with a region counts on every communicator
	                              it records, unless a member runs MPI_THREAD_MULTIPLE) */
	int self_net;              /* this rank's messages to itself take the library: no other member
	                              was co-located with it at the creation, so its wildcard receives
	                              wait in the library (ivs_irecv), where a ring message would
	                              never reach them */
	int *world;                /* comm rank -> world rank */
	int *by_local;             /* local (co-located) index -> comm rank, -1 if not a member */
	int pending_probe;         /* receives here that look for library messages by matched probe:
	                              later receives from library peers must queue behind them */
	struct ivs_coll *coll;     /* shared-memory collective state, NULL until the first one */
	int refs;                  /* shim requests that point here: MPI_Comm_free may come first */
	int freed;                 /* MPI_Comm_free'd: gone from the table, dropped at refs == 0 */
	struct ivs_comm *next;     /* hash chain */
	/* The re-plan of this communicator's collectives at a migration (migrate.c): every member
	 * agrees on the index sw_k of the first collective that sets up anew. */
	uint64_t ncoll;            /* collectives begun through ivs_coll_comm */
	unsigned last_tick;        /* ivs.ctl_tick at the last of them */
	uint8_t sw;                /* enum ivs_sw */
	uint8_t sw_coord;          /* comm rank 0: 1 while gathering the members' counts */
	uint64_t sw_limit;         /* IVS_SW_WAITING: collectives from this index on wait for sw_k */
	uint64_t sw_k;             /* IVS_SW_DECIDED: first collective on the new plan */
	int sw_replies;            /* comm rank 0: counts gathered so far */
	uint64_t sw_max;           /* comm rank 0: the largest of them */
	uint64_t sw_round;         /* re-plans done: each agreement's messages carry its round */
	int prev_nl;               /* members of this rank's area in the plan before (the verbose line) */
};

enum ivs_sw { IVS_SW_NONE = 0, IVS_SW_ASKED, IVS_SW_WAITING, IVS_SW_DECIDED, IVS_SW_DONE };

/* ---- requests ---- */

enum ivs_req_kind { IVS_SEND = 1, IVS_RECV, IVS_PSEND, IVS_PRECV };
enum ivs_req_state { IVS_INACTIVE = 0, IVS_ACTIVE, IVS_DONE };
enum ivs_recv_mode { IVS_RM_SHM = 1, IVS_RM_PROBE, IVS_RM_NET };
/* Where a request's contiguous bytes (cbuf) live: the user's buffer; a copy of the whole
 * message (a packed derived type, a buffered send); or a window that moves along a long
 * derived-type message, packed or unpacked through its typemap as the ring goes. */
enum ivs_packed { IVS_PACKED_NONE = 0, IVS_PACKED_WHOLE, IVS_PACKED_WINDOW };

struct ivs_req {
	uint8_t kind, state;
	uint8_t free_on_done;      /* MPI_Request_free on an active request */
	uint8_t recv_mode;         /* receives: how the message is being looked for */
	uint8_t cancelled;
	uint8_t sync_wait;         /* sends: waiting for the receiver's ACK */
	uint8_t in_posted;
	uint8_t internal;          /* owned by the shim (Bsend copy), never seen by the user */
	uint8_t cookie_sent;       /* sends: the first record is in the ring */
	uint8_t net_done;          /* persistent: the library request of this start completed */
	uint8_t dt_owned;          /* dt is the shim's duplicate of a derived type (ivs_dt_hold) */
	uint8_t net_send;          /* sends: queued for a ring that was never made, then sent by
	                              the library (inner): pairs.c */
	uint8_t lib_count;         /* a receive the library matches (inner), on a communicator whose
	                              library messages are counted: counted when it completes (join.c) */
	uint64_t bsend_charge;     /* internal Bsend copy: bytes charged to the attached buffer */
	uint64_t cookie;           /* synchronous sends: token the ACK carries back */
	int error;
	struct ivs_comm *comm;
	/* user arguments (kept for persistent requests, unpacking, status) */
	void *ubuf;
	int count;
	MPI_Datatype dt;
	int peer;                  /* comm rank or MPI_ANY_SOURCE */
	int tag;
	int sync;                  /* Ssend / Issend */
	/* contiguous byte view of the data */
	uint8_t *cbuf;
	uint64_t cap;              /* receive capacity / send total */
	uint8_t packed;            /* cbuf is the shim's: enum ivs_packed (datatype.c) */
	uint64_t win_at, win_len;  /* IVS_PACKED_WINDOW: cbuf holds the message's bytes from
	                              offset win_at, win_len of them */
	uint64_t win_cap;          /* IVS_PACKED_WINDOW: bytes allocated at cbuf */
	struct ivs_tm *tm;         /* the type's typemap (typemap.c): always with a window, and
	                              with a whole receive whose type has one */
	uint64_t done;             /* bytes moved */
	int peer_world;            /* sends: destination world rank */
	MPI_Request inner;         /* the MPI library's request for the NET path */
	/* persistent requests: the operation the last MPI_Start began */
	struct ivs_req *act;
	/* completion */
	MPI_Status net_st;         /* status of inner, for receives that went to the network */
	int st_source, st_tag;
	uint64_t st_bytes;
	struct ivs_req *next, *prev;
};

/* An arrived message that no posted receive took yet (or that is being received). Made by
 * ivs_msg_new only and released by ivs_msg_free: its allocation holds a small payload past the
 * struct (progress.c). */
struct ivs_msg {
	int src_world;
	uint32_t ctx;
	int tag;
	uint64_t total, got;
	uint8_t *buf;              /* buffered payload (unexpected) */
	uint64_t buf_cap;          /* bytes allocated at buf: grows with what arrived, never with
	                              what the (untrusted) header claims */
	struct ivs_req *req;       /* matched receive, payload goes straight to it */
	uint64_t cookie;           /* sync send to acknowledge, 0 = none */
	struct ivs_comm *probe_comm; /* set by MPI_(I)mprobe, which took it out of matching */
	/* A library message from a co-located peer, taken by a matched probe before the peer's
	 * MARK was read (migrate.c): received by PMPI_Imrecv once matched. */
	uint8_t is_lib;
	uint8_t via_lib;           /* counted in ivs.nunexp_net: its sender's messages on its
	                              communicator come by the library now */
	MPI_Message lib;
	MPI_Status lib_st;
	struct ivs_msg *next, *prev;
};

/* ---- global state ---- */

struct ivs_state {
	int enabled;               /* shared memory in use on this rank */
	int job_active;            /* some rank of the job uses shared memory: comm creation is
	                              then collective work for every rank (context ids) */
	int initialized;           /* MPI_Init returned through the shim */
	int thread_multiple;       /* this rank runs MPI_THREAD_MULTIPLE: it never touches shim state
	                              beyond comm_agree, and no communicator it is in is shared */
	int world_rank, world_size;
	int tag_ub;                /* MPI_TAG_UB of the library */
	uint8_t *base;
	uint64_t size;
	uint64_t host_id[2];       /* the region header's host id, read once (names the host in
	                              collective set-ups: coll_area.c) */
	struct ivs_peer **peers;   /* by world rank; NULL for NET peers */
	int *local_world;          /* local index -> world rank */
	int nlocal;
	uint32_t next_ctx;
	int nsend_queued;          /* shim sends not yet fully in a ring */
	int nsync_wait;            /* synchronous sends waiting for the receiver's ACK */
	int nacks;                 /* ACKs queued for any peer */
	int has_net;               /* some world rank is reached through PMPI */
	int coll_areas;            /* some ranks shared a host at MPI_Init: collectives may use areas */
	int coll_nb_all;           /* a rank with rings has no progress hook: the library's collectives
	                              are called nonblocking wherever they can be (coll.h) */
	/* the region's tables (init.c checks where they lie; their contents stay untrusted) */
	uint32_t self_slot;
	struct ivshim_slot *slots; /* slot table: others write their ring_wanted bits into ours */
	uint32_t nslots;
	const struct ivshim_vm *vms; /* VM table, broker-owned */
	uint32_t nvms;
	uint64_t *pairs;           /* pair[sender][receiver], nslots x nslots */
	ivshim_ctl_ring_fn ctl_ring;
	/* migration (migrate.c) */
	MPI_Comm ctlcomm;          /* the shim's own channel: a duplicate of MPI_COMM_WORLD */
	MPI_Comm gatecomm;         /* the gates' messages (gate.c): another duplicate of MPI_COMM_WORLD */
	int switching;             /* some pair or communicator is switching: migrate.c polls */
	int self_leaving;          /* this rank's VM was flagged leaving: it gives up the region */
	int released;              /* this rank gave the region back: never touch ivs.base again,
	                              until it joins a region anew (migrate.c's rejoin) */
	unsigned self_leaves;      /* times this rank's VM was flagged leaving (monotonic) */
	ivshim_ctl_rejoin_fn ctl_rejoin;
	/* Library messages on counted communicators, by world rank (join.c): sent to it, taken from
	 * the library (matched) from it, and receives from it the library holds, not completed. */
	uint64_t *lib_sent, *lib_got;
	uint32_t *lib_open;
	uint32_t lib_open_any;     /* MPI_ANY_SOURCE receives the library holds (on communicators
	                              without a co-located member): any peer's message may go there */
	int lib_lost;              /* a counted receive was freed before it completed: its match can
	                              no longer be seen, so no pair moves to rings any more */
	int lib_uncounted;         /* a library message may have gone uncounted (a cancelled request,
	                              a large-count call): the counts may differ at MPI_Finalize
	                              without a fault */
	int finalizing;            /* MPI_Finalize's drain began: no new join exchange */
	ivshim_ctl_adopt_fn ctl_adopt;
	int nunexp_net;            /* unexpected messages from peers whose messages now come by the
	                              library (ring messages from before the MARK, parked library
	                              ones): receives and probes for such a peer look there first */
	const uint64_t *gen_word;  /* the region header's generation (broker-owned, atomic) */
	uint64_t gen_seen;         /* its value last scanned */
	unsigned ctl_tick;         /* progress passes and collectives, counted by ivs_poll_due */
	int coll_depth;            /* inside a collective interposer (coll.h IVS_COLL_SCOPE) */
	ivshim_ctl_release_fn ctl_release;
	struct ivs_req *posted, *posted_tail;   /* shim-managed receives, in posting order */
	struct ivs_msg *unexp, *unexp_tail;     /* arrived, unmatched, in arrival order */
	struct ivshim_ctl_stats stats;
	int verbose;
	uint64_t stall_ns;         /* IVSHIM_STALL_SECONDS: a wait this long says what it waits for
	                              (stall.c); 0: never */
	ivshim_ctl_alloc_fn ctl_alloc;
	ivshim_ctl_free_fn ctl_free;
	ivshim_ctl_finalize_fn ctl_finalize;
	int status_by_library;     /* the library's status setters differ from ivs_abi_status_set */
};
extern struct ivs_state ivs;

/* The shim's own messages (migrate.c) and its slow per-pair work are polled every
 * IVS_POLL_PASSES passes of the progress engine and every IVS_POLL_COLLS collectives. A poll
 * probes the library (MPI_Iprobe: 1.7 us on Open MPI with TCP peers), so its share of every pass
 * and collective must stay small (every 64 collectives made a 0-byte collective 0.045 us, where
 * the library returns in 0.008 us); it only delays the answers of a migration's agreement. */
enum { IVS_POLL_PASSES = 4096, IVS_POLL_COLLS = 1024 };
static inline int ivs_poll_due(unsigned every) { return !(++ivs.ctl_tick & (every - 1)); }

/* Seconds on the monotonic clock: the migration's timings and deadlines (migrate.c, join.c). */
static inline double ivs_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline struct ivs_peer *ivs_tx_peer(int w)
{
	struct ivs_peer *p = ivs.peers[w];
	return p && !p->closing ? p : NULL;
}

static inline struct ivs_peer *ivs_rx_peer(int w)
{
	struct ivs_peer *p = ivs.peers[w];
	return p && !p->rx_net ? p : NULL;
}

/* The same two on communicator c: a pair made at run time uses its rings on counted
 * communicators only (join.c); messages to itself on some communicators take the library
 * (ivs_comm.self_net). */
static inline struct ivs_peer *ivs_tx_peer_on(const struct ivs_comm *c, int w)
{
	struct ivs_peer *p = ivs_tx_peer(w);
	return p && (!p->joined || c->counted) && !(c->self_net && w == ivs.world_rank) ? p : NULL;
}

static inline struct ivs_peer *ivs_rx_peer_on(const struct ivs_comm *c, int w)
{
	struct ivs_peer *p = ivs_rx_peer(w);
	return p && (!p->joined || c->counted) && !(c->self_net && w == ivs.world_rank) ? p : NULL;
}

/* comm.c */
struct ivs_comm *ivs_comm_get(MPI_Comm c);
struct ivs_comm *ivs_comm_by_ctx(uint32_t ctx);
void ivs_comm_each(void (*fn)(struct ivs_comm *c, void *arg), void *arg);
void ivs_comm_forget(MPI_Comm c);
void ivs_comm_hold(struct ivs_comm *c);
void ivs_comm_add_local(const struct ivs_peer *p);
void ivs_comm_unhold(struct ivs_comm *c);
int ivs_comm_world_init(void);
/* The record of c if point-to-point on c uses the rings on this rank. */
static inline struct ivs_comm *ivs_comm_p2p(MPI_Comm c)
{
	struct ivs_comm *e = ivs_comm_get(c);
	return e && e->p2p ? e : NULL;
}

/* gate.c: before a blocking library call collective over comm, wait (answering the shim's
 * messages) until every member reached it, where comm is gated */
void ivs_gate(MPI_Comm comm);
/* ... for a call erroneous on an intercommunicator: comm's gate only if it is gated and recorded */
void ivs_gate_intra(MPI_Comm comm);
/* ... comm's gate as an intercommunicator, if it is one and the job gates them */
void ivs_gate_inter(MPI_Comm comm);
/* ... the same for a call collective over the members of group, all members of comm */
void ivs_gate_group(MPI_Comm comm, MPI_Group group);
/* ... for MPI_Intercomm_create, before the call; for MPI-4's creation from groups (b:
 * MPI_GROUP_NULL, or the remote group of MPI_Intercomm_create_from_groups) */
void ivs_gate_intercomm_create(MPI_Comm local, int local_leader, MPI_Comm peer, int remote_leader);
void ivs_gate_groups(MPI_Group a, MPI_Group b);
/* comm is freed (its gate's record goes); Open MPI: the program called MPI_Comm_idup on
 * intercommunicator comm */
void ivs_gate_forget(MPI_Comm comm);
void ivs_gate_inter_end(MPI_Comm comm);

/* coll_area.c: the collectives' one entry besides the interposers (the rest is in coll.h) */
void ivs_coll_forget(struct ivs_comm *c);
int ivs_coll_in_region(struct ivs_comm *c);     /* collectives of c use an area in the region */
int ivs_coll_needs_switch(struct ivs_comm *c);  /* ... with a rank flagged leaving since its set-up, or c has
                                                   a member that joined this rank's region since (migrate.c) */
void ivs_coll_region_released(int heir, uint64_t tag); /* this rank gives its region up: areas it led go to heir */
void ivs_coll_reap(void);                       /* areas whose members all left go back to the region */
void ivs_coll_adopt(uint64_t off, uint64_t nl); /* ... and here is such an area (migrate.c: ADOPT) */

/* request.c: handles the MPI library never issues */
struct ivs_req *ivs_req_alloc(void);
void ivs_req_release(struct ivs_req *r);
struct ivs_req *ivs_req_of(MPI_Request h);
uint64_t ivs_req_cookie(struct ivs_req *r);
struct ivs_req *ivs_req_by_cookie(uint64_t cookie);
MPI_Request ivs_req_handle(struct ivs_req *r);
struct ivs_msg *ivs_msg_of(MPI_Message h);
MPI_Message ivs_msg_handle(struct ivs_msg *m);
int ivs_msg_register(struct ivs_msg *m);
void ivs_msg_unregister(struct ivs_msg *m);

/* datatype.c */
int ivs_dt_contig(MPI_Datatype dt, int count, uint64_t *bytes, ptrdiff_t *lb);
void ivs_dt_hold(struct ivs_req *r, MPI_Datatype dt);
void ivs_dt_forget(MPI_Datatype dt);
int ivs_dt_send_view(struct ivs_req *r, const void *buf, int count, MPI_Datatype dt, MPI_Comm comm);
int ivs_dt_recv_view(struct ivs_req *r, void *buf, int count, MPI_Datatype dt);
int ivs_dt_recv_finish(struct ivs_req *r);
const uint8_t *ivs_dt_send_bytes(struct ivs_req *r, uint64_t *n);
void ivs_dt_recv_bytes(struct ivs_req *r, uint64_t at, const uint8_t *src, uint64_t n);
int ivs_dt_send_whole(struct ivs_req *r);
void ivs_dt_drop(struct ivs_req *r);
int ivs_dt_envelope(MPI_Datatype dt, int *ni, int *na, int *nd, int *comb, int *large);
struct ivs_tm *ivs_tm_build(MPI_Datatype dt);
struct ivs_tm *ivs_tm_ref(struct ivs_tm *t);
void ivs_tm_unref(struct ivs_tm *t);
void ivs_tm_copy(const struct ivs_tm *t, void *buf, int count, uint64_t off, uint8_t *pk, uint64_t n, int unpack);
struct ivs_tm *ivs_dt_typemap(MPI_Datatype dt, const void *buf);
int ivs_dt_pack(const void *buf, int count, MPI_Datatype dt, void *dst, uint64_t n, MPI_Comm comm);
int ivs_dt_unpack(const void *src, uint64_t n, void *buf, int count, MPI_Datatype dt, MPI_Comm comm);
int ivs_dt_span(MPI_Datatype dt, int count, uint64_t *span, ptrdiff_t *lb, uint64_t *extent);
uint64_t ivs_dt_bytes(MPI_Datatype dt, int count);

/* progress.c */
int ivs_progress(void);
int ivs_progress_rings(void); /* rings only, never the library: safe inside its engine */
void ivs_wait_pause(unsigned *spins);
IVS_COLD void ivs_stall_report(double waited);
IVS_COLD void ivs_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void ivs_post_recv(struct ivs_req *r);
void ivs_unpost(struct ivs_req *r);
int ivs_match(const struct ivs_req *r, const struct ivs_msg *m);
struct ivs_msg *ivs_msg_new(const struct ivs_msg *init);
void ivs_msg_free(struct ivs_msg *m);
void ivs_deliver_buffered(struct ivs_req *r, struct ivs_msg *m);
struct ivs_msg *ivs_unexp_find(const struct ivs_req *r);
void ivs_unexp_remove(struct ivs_msg *m);
void ivs_send_ack(int world, uint64_t cookie);
void ivs_send_done(struct ivs_req *r);
int ivs_try_send_inline(struct ivs_peer *p, const void *buf, uint64_t n, int tag, uint32_t ctx);
void ivs_enqueue_send(struct ivs_req *r);
struct ivs_req *ivs_probe_owner(struct ivs_comm *c, const MPI_Status *st);
void ivs_net_assign(struct ivs_req *r, MPI_Message *msg);

/* hook.c: progress between the shim and the MPI library, both ways */
void ivs_lib_hook_install(void);
void ivs_lib_hook_remove(void);
int ivs_lib_hooked(void);
void ivs_lib_poke(void);
void ivs_lib_wait_poke(void);
void ivs_lib_note(void);

/* pairs.c: rings made on first use */
void ivs_pairs_init(void);
void ivs_pairs_slot(uint32_t slot, int world, int was);
int ivs_pair_tx_ready(struct ivs_peer *p, int lib_ok);
int ivs_pair_tx_resolve(struct ivs_peer *p);
void ivs_pair_rx_net(struct ivs_peer *p);
int ivs_pair_serve(void);
int ivs_pair_send_poll(struct ivs_req *r);
int ivs_pair_ack_ready(struct ivs_peer *p);
int ivs_pair_close_for_ack(struct ivs_peer *p);
int ivs_pair_progress(void);

/* init.c */
void ivs_region_tables(uint32_t self_slot);

/* migrate.c: the path switch when the broker flags a VM of this host leaving */
void ivs_migrate_init(void);
int ivs_switch_progress(void);
void ivs_ctl_poll(void);
void ivs_rejoin_poll(void);
void ivs_migrate_start_released(void); /* MPI_Init without a device: join one later */
void ivs_ctl_adopt_send(int world, uint64_t off, int nl, uint64_t tag);
uint64_t ivs_region_tag(void);
void ivs_ctl_wait_step(unsigned *spins);
int ivs_park(struct ivs_comm *c, const MPI_Status *st, MPI_Message *msg);
void ivs_unpark(struct ivs_peer *p);
void ivs_coll_switch_point(struct ivs_comm *c);
int ivs_self_gone(void);
int ivs_slot_holds(uint32_t slot, int w);
int ivs_peer_leaving(const struct ivs_peer *p);
void ivs_coll_agreement_finish(struct ivs_comm *c);
void ivs_coll_setup_done(struct ivs_comm *c);
void ivs_release_at_entry(void);
void ivs_migrate_drain(void);
void ivs_deliver_lib(struct ivs_req *r, struct ivs_msg *m);
void ivs_ack_arrived(int world, uint64_t cookie);
struct ivs_req *ivs_posted_match(struct ivs_msg *m);
void ivs_unexp_append(struct ivs_msg *m);

/* join.c: a pair made at run time (a rejoin) moves from the library to rings */
enum ivs_join_tx { IVS_JTX_NONE = 0, IVS_JTX_ASKED, IVS_JTX_RING, IVS_JTX_OFF };
enum ivs_join_rx { IVS_JRX_NONE = 0, IVS_JRX_ASKED, IVS_JRX_AWAIT, IVS_JRX_RING, IVS_JRX_OFF };
void ivs_join_init(void);
void ivs_join_reset(struct ivs_peer *p);
int ivs_join_step(int w, struct ivs_peer *p);
int ivs_join_busy(const struct ivs_peer *p);
int ivs_join_hurry(const struct ivs_peer *p);
int ivs_join_on_ask(int w, uint64_t sent, uint64_t id);
void ivs_join_on_drained(int w, uint64_t got, uint64_t id);
void ivs_join_on_off(int w, uint64_t id);
void ivs_join_rx_ring(int w, struct ivs_peer *p);
void ivs_join_recv_done(struct ivs_req *r);
void ivs_join_recv_lost(struct ivs_req *r);
void ivs_join_check(void);
/* Receives from world rank w on c look for library messages by matched probe: the pair is
 * moving to rings, so none may wait inside the library (join.c). */
static inline int ivs_join_probing(const struct ivs_comm *c, int w)
{
	const struct ivs_peer *p = ivs.peers[w];
	return p && p->joined && p->rx_net && c->counted && (!p->leave_seen || p->rx_join == IVS_JRX_AWAIT);
}
int ivs_join_park_await(int w, struct ivs_peer *p);
/* The peer whose library message on c from world rank w, just found, waits, parked (migrate.c
 * ivs_park): w's ring is still to be read up to its MARK, or this rank awaits the first record
 * of the ring it told w to use and w has written to it (ivs_join_park_await, which else ends the
 * wait). NULL: it does not. */
static inline struct ivs_peer *ivs_park_peer(const struct ivs_comm *c, int w)
{
	struct ivs_peer *p = ivs_rx_peer_on(c, w);
	if (p)
		return p;
	p = ivs.peers[w];
	return p && p->joined && p->rx_join == IVS_JRX_AWAIT && c->counted && ivs_join_park_await(w, p) ? p : NULL;
}
/* A library send on c to comm rank dest that returned rc: a message only if the library took
 * it (one with a bad tag, or a Bsend that did not fit the buffer, is none). Returns rc. And a
 * message from comm rank src taken from the library. */
static inline int ivs_count_sent(const struct ivs_comm *c, int dest, int rc)
{
	if (rc == MPI_SUCCESS && c && c->counted && dest >= 0 && dest < c->size)
		ivs.lib_sent[c->world[dest]]++;
	return rc;
}
static inline void ivs_count_got(const struct ivs_comm *c, int src)
{
	if (c && c->counted && src >= 0 && src < c->size)
		ivs.lib_got[c->world[src]]++;
}
void ivs_ctl_send(int world, int tag, uint64_t a, uint64_t b, uint64_t round);
enum { IVS_TAG_DRAINQ = 10, IVS_TAG_DRAINED, IVS_TAG_JOINOFF }; /* after migrate.c's tags */
int ivs_pair_rx_join(struct ivs_peer *p);
int ivs_pair_tx_join(struct ivs_peer *p);

/* isendrecv.c */
int ivs_pairs_progress(void);
extern int ivs_npairs; /* MPI_Isendrecv pairs not completed yet */

/* p2p.c */
int ivs_isend(const void *buf, int count, MPI_Datatype dt, int dest, int tag, MPI_Comm comm,
              int sync, struct ivs_req **out, MPI_Request *net);
int ivs_irecv(void *buf, int count, MPI_Datatype dt, int src, int tag, MPI_Comm comm,
              struct ivs_req **out, MPI_Request *net);
int ivs_req_poll(struct ivs_req *r);
int ivs_req_poll_shim(struct ivs_req *r, struct ivs_req **lib);
void ivs_req_lib_done(struct ivs_req *q, int rc, const MPI_Status *st);
int ivs_wait_loop_req(struct ivs_req *r);
int ivs_finish(MPI_Request *h, struct ivs_req *r, MPI_Status *st);
void ivs_fill_status(struct ivs_req *r, MPI_Status *st);
void ivs_status_copy(MPI_Status *st, const MPI_Status *from);
void ivs_status_init(void);
void ivs_status_empty(MPI_Status *st);

/* The count (in bytes) and the cancelled flag of a status the shim completes, as the library's
 * MPI_Status_set_elements_x and MPI_Status_set_cancelled would write them, without two calls
 * into the library per completion (ivs_status_init checked that they agree). */
static inline void ivs_status_set(MPI_Status *st, uint64_t bytes, int cancelled)
{
	if (IVS_UNLIKELY(ivs.status_by_library)) {
		PMPI_Status_set_elements_x(st, MPI_BYTE, (MPI_Count)bytes);
		PMPI_Status_set_cancelled(st, cancelled);
		return;
	}
	ivs_abi_status_set(st, bytes, cancelled);
}
int ivs_net_wait(MPI_Request *h, MPI_Status *st);
int ivs_net_barrier(MPI_Comm comm, const int *ranks, int n, int me, int tag, uint64_t *max);
int ivs_arg_error(MPI_Comm comm, int err);
void ivs_bsend_release(struct ivs_req *r);

/* Shim work that needs this rank to keep polling: a blocking PMPI call must not be entered
 * while it is pending (a co-located peer could wait on us forever, or a path switch at a
 * migration would stall: migrate.c). */
static inline int ivs_busy(void)
{
	return ivs.posted || ivs.nsend_queued || ivs.nsync_wait || ivs.nacks || ivs_npairs || ivs.switching;
}

/* Whether a blocking library call may be entered now: nothing of the shim is pending, and no
 * other rank can be waiting for this one's answer to the shim's own messages. In a job that
 * uses shared memory a migration may need that answer at any time (migrate.c), so there the
 * shim's waits on library requests, the library's collectives included (coll.h), poll instead.
 * A rank at MPI_THREAD_MULTIPLE never polls: it has no region, no communicator of its has an
 * area to agree on, and the shim's state has no locks for its threads. */
static inline int ivs_may_block(void)
{
	return ivs.thread_multiple || (!ivs_busy() && ivs.ctlcomm == MPI_COMM_NULL);
}

#endif
