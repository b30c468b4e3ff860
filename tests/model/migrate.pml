/*
 * Path switch of one pair of ranks A (rank 0) and B (rank 1) around live migrations of A's VM:
 * the protocol the shim's renegotiation follows (tests/model runs spin on it). switch.pml
 * checks the sender-side core of it for one direction; this model adds everything a migration
 * brings to it:
 *   - both directions at once: each rank sends and receives; each direction runs the switch
 *     independently (a direction may be on the library while the other is still on the ring);
 *   - a close the receiver starts: the leaving rank A cannot stop its peer's writes, so it
 *     writes its own MARK, keeps reading until B's MARK and only then releases the region;
 *   - synchronous sends: the receiver owes an ACK when it matches the message and sends it on
 *     its current path (a ring record, or a library message on the shim's own channel);
 *   - probes and matched probes: a probe reports the message the next receive would match, by
 *     the same rules (parking included); a matched probe is a receive whose buffer comes later;
 *   - a rejoin while a leave is still draining: a migration that fails after the drain started
 *     (rolled back), or a VM that moves away and back, gives the pair a fresh pair of rings
 *     (the next epoch) while the peer may still be reading the old ones.
 *
 * Records in a ring: DATA(c, seq, sync), ACK, MARK, JOIN(k0, k1, from): k[c] messages were
 * sent by the library on communicator c since the MARK, which was written in ring epoch `from`.
 *
 * The rules, for each rank, as the shim implements them:
 *   send:   by the library while the own direction is closed (counting per communicator), else
 *           into the ring of the own direction's epoch.
 *   close:  when the region flags the VM leaving (every rank of the region sees the flag; the
 *           leaving rank cannot make its peer close any other way): write MARK, send by the
 *           library from then on.
 *   join:   when the pair shares a region again (a newer epoch) and no VM of it is leaving:
 *           write JOIN(k, from = the epoch of the last MARK) into the new epoch's ring.
 *   read:   in ring mode, the own epoch's ring: DATA is matched, ACK completes a synchronous
 *           send, MARK switches to library mode. In library mode, the peer's library messages
 *           are matched (each communicator in the library's order) until the JOIN whose `from`
 *           names the epoch of the MARK has been read and k[c] library messages per
 *           communicator were matched since that MARK; then ring mode in the JOIN's epoch.
 *           Before that JOIN is read, a library message is matched only while no such JOIN is
 *           visible (looked for after the message arrived). In ring mode the peer's library
 *           messages are not matched (the shim parks them).
 *   release (the leaving rank): the own direction closed, the peer's MARK read and no JOIN
 *           of the peer's since, checked and recorded by one CAS on the peer's direction state
 *           word (which the peer's JOIN also needs, so a JOIN racing the release fails and the
 *           peer stays on the library); the release names the region epoch it answers. From
 *           then on the rank never touches that region; the broker may migrate.
 * The broker (M) flags A's VM leaving, then either migrates (once A released) or rolls back
 * (deadline, failed step; A may be anywhere in its drain), moves A back later, or stops.
 *
 * Checked exhaustively: every message is matched exactly once and in send order per
 * communicator; a probe reports what the next receive matches; nobody writes into a ring its
 * reader has released; every synchronous send completes; no deadlock; nothing is left on any
 * path. tests/model runs it with N=2 and one leave attempt (MOVES=1: rollback or migration,
 * then a return), exhaustively; two attempts exceed make test's time. Broken variants (negative controls,
 * each must fail, with MOVES=2): NO_PARKING, NO_COUNT, NO_JOIN_CHECK, EARLY_RELEASE (release
 * after the own MARK only), ACK_BY_RING (ACK always by ring), ANY_JOIN (a JOIN accepted
 * whatever its `from`).
 */

#ifndef N
#define N 2           /* messages each rank sends */
#endif
#ifndef MOVES
#define MOVES 2       /* leave attempts by the broker */
#endif
#define C 2           /* communicators */
#define E 3           /* ring epochs: the first region, and a fresh ring pair per rejoin */
#define RING_CAP 3
#define NET_CAP N     /* the shim parks library messages: the library never blocks a sender */
#define UNSET 255
#ifndef SYNC
#define SYNC(n) ((n) == 0) /* which messages are synchronous: the first on each communicator */
#endif
/* In library mode a JOIN that ends it is visible in a later epoch's ring. The shim looks for it
 * after a library message from the peer arrived (MPI_Improbe parks the message first): the
 * peer writes its JOIN before any later library message, so a message matched while no JOIN
 * is visible was sent before the JOIN and is counted in it. */
#ifdef NO_COUNT
#define TARGETS target[0] = got[0]; target[1] = got[1] /* broken on purpose: JOIN's counts ignored */
#else
#define TARGETS target[0] = hk0; target[1] = hk1
#endif
#ifdef ANY_JOIN
#define JOIN_FROM _ /* broken on purpose: a JOIN accepted whatever its `from` */
#else
#define JOIN_FROM eval(mark_epoch)
#endif
#ifdef NO_JOIN_CHECK
#define NO_JOIN_YET true /* broken on purpose */
#else
#define NO_JOIN_YET (target[0] != UNSET || !((r_epoch < E-1 && ring[(r_epoch+1)*2 + other] ? [JOIN, _, _, JOIN_FROM]) || (r_epoch < E-2 && ring[(r_epoch+2)*2 + other] ? [JOIN, _, _, JOIN_FROM])))
#endif
#ifdef EARLY_RELEASE
#define RELEASE_OK true /* broken on purpose: release after the own MARK only */
#else
#define RELEASE_OK (r_net && target[0] == UNSET && jepoch[1] <= mark_epoch)
#endif

mtype = { DATA, ACK, MARK, JOIN };

/* ring[e*2 + s]: epoch e, written by rank s */
chan ring[E*2] = [RING_CAP] of { mtype, byte, byte, byte };
/* net[s*C + c]: the library, sender s, communicator c: message number, synchronous */
chan net[2*C] = [NET_CAP] of { byte, byte };
/* netack[r]: ACKs to rank r by the library (the shim's own communicator) */
chan netack[2] = [N] of { byte };

bool leaving = false; /* the region flags A's VM leaving */
bool coloc = true;    /* A and B share a region, epoch gen */
byte gen = 0;
bool released = false; /* A has released its region (the rings of epochs <= rel_epoch) */
byte rel_epoch = 0;
byte jepoch[2];        /* the epoch of each rank's last JOIN (0: the first region's rings) */
byte done = 0;         /* ranks finished */

/* Scratch for one step (hidden: not part of the state; each step that uses them is atomic). */
hidden byte hc, hk0, hk1, hfrom, hv;
hidden byte hsync;
hidden mtype hkind;

proctype Rank(byte me) {
	byte other = 1 - me;
	/* own direction (me -> other) */
	bool s_net = false;
	byte s_epoch = 0, i = 0;
	byte seq[C], sent_net[C];
	byte acks_pending = 0; /* synchronous sends not acknowledged */
	byte acks_owed = 0;    /* ACKs this rank owes the peer, not yet written */
	/* peer's direction (other -> me) */
	bool r_net = false;
	byte r_epoch = 0, mark_epoch = 0, delivered = 0;
	byte next[C], got[C], target[C];
	target[0] = UNSET; target[1] = UNSET;

	do
	/* ---- sending ---- */
	:: atomic { i < N && s_net ->
		if :: hc = 0 :: hc = 1 fi;
		hsync = SYNC(seq[hc]);
		net[me*C + hc] ! seq[hc], hsync;
		sent_net[hc]++; seq[hc]++; i++;
		if :: hsync -> acks_pending++ :: else fi }
	:: atomic { i < N && !s_net && nfull(ring[s_epoch*2 + me]) ->
		/* nobody writes into a ring its reader has released */
		assert(!(me == 1 && released && s_epoch <= rel_epoch));
		if :: hc = 0 :: hc = 1 fi;
		hsync = SYNC(seq[hc]);
		ring[s_epoch*2 + me] ! DATA, hc, seq[hc], hsync;
		seq[hc]++; i++;
		if :: hsync -> acks_pending++ :: else fi }
#ifdef ACK_BY_RING
	/* Broken on purpose: the ACK goes into the ring the peer no longer reads. */
	:: atomic { acks_owed > 0 && nfull(ring[s_epoch*2 + me]) -> ring[s_epoch*2 + me] ! ACK, 0, 0, 0; acks_owed-- }
#else
	:: atomic { acks_owed > 0 && s_net -> netack[other] ! 0; acks_owed-- }
	:: atomic { acks_owed > 0 && !s_net && nfull(ring[s_epoch*2 + me]) ->
		assert(!(me == 1 && released && s_epoch <= rel_epoch));
		ring[s_epoch*2 + me] ! ACK, 0, 0, 0; acks_owed-- }
#endif
	:: atomic { netack[me] ? _ -> acks_pending-- }

	/* ---- closing and joining the own direction ---- */
	:: atomic { leaving && !s_net && nfull(ring[s_epoch*2 + me]) ->
		ring[s_epoch*2 + me] ! MARK, 0, 0, 0; s_net = true; sent_net[0] = 0; sent_net[1] = 0 }
	/* join: the rank saw (earlier) the pair share a newer region with no VM leaving. The JOIN
	 * record and the direction's state word are published by one CAS, which fails once the
	 * leaving peer has sealed the direction (its release); the rank then stays on the library
	 * path. `from`: the epoch whose ring carries the direction's last MARK. */
	:: coloc && !leaving && s_net && gen > s_epoch && !(me == 0 && released) ->
		atomic {
			hc = gen;
			if
			:: nfull(ring[hc*2 + me]) && !(me == 1 && released && hc <= rel_epoch) ->
				ring[hc*2 + me] ! JOIN, sent_net[0], sent_net[1], s_epoch;
				s_net = false; s_epoch = hc; jepoch[me] = hc
			:: full(ring[hc*2 + me]) || (me == 1 && released && hc <= rel_epoch) -> skip
			fi
		}
	/* release: the peer's MARK read, and no JOIN of the peer's since (the shim: a CAS on the
	 * direction's state word in the region, which the peer's JOIN also CASes) */
	:: atomic { me == 0 && leaving && !released && s_net && RELEASE_OK -> released = true; rel_epoch = gen }
	/* A maps a region again: the migration was rolled back, or A came back */
	:: atomic { me == 0 && released && coloc && gen > rel_epoch -> released = false }

	/* ---- the peer's direction: ring mode ---- */
	:: atomic { !r_net && !(me == 0 && released) && nempty(ring[r_epoch*2 + other]) ->
		ring[r_epoch*2 + other] ? hkind, hk0, hk1, hfrom;
		if
		:: hkind == DATA -> /* hk0: communicator, hk1: number, hfrom: synchronous */
			assert(hk1 == next[hk0]); next[hk0]++; delivered++;
			if :: hfrom -> acks_owed++ :: else fi
		:: hkind == ACK -> acks_pending--
		:: hkind == MARK ->
			r_net = true; mark_epoch = r_epoch;
			got[0] = 0; got[1] = 0; target[0] = UNSET; target[1] = UNSET
		:: hkind == JOIN -> assert(false) /* a JOIN is the first record of its epoch, read in library mode */
		fi }
	/* a probe in ring mode reports the head DATA record */
	:: atomic { !r_net && !(me == 0 && released) && ring[r_epoch*2 + other] ? [DATA, _, _, _] ->
		ring[r_epoch*2 + other] ? <hkind, hk0, hk1, hfrom>;
		assert(hk1 == next[hk0]) }

	/* ---- the peer's direction: library mode ---- */
	:: atomic { r_net && target[0] == UNSET && !(me == 0 && released) && r_epoch < E-1 && ring[(r_epoch+1)*2 + other] ? [JOIN, _, _, JOIN_FROM] ->
		ring[(r_epoch+1)*2 + other] ? hkind, hk0, hk1, hfrom;
		TARGETS; r_epoch = r_epoch + 1 }
	:: atomic { r_net && target[0] == UNSET && !(me == 0 && released) && r_epoch < E-2 && ring[(r_epoch+2)*2 + other] ? [JOIN, _, _, JOIN_FROM] ->
		ring[(r_epoch+2)*2 + other] ? hkind, hk0, hk1, hfrom;
		TARGETS; r_epoch = r_epoch + 2 }
	:: atomic { r_net && got[0] == target[0] && got[1] == target[1] ->
		r_net = false; target[0] = UNSET; target[1] = UNSET }
	/* one branch per communicator: the application may receive (or probe) on either first */
	:: atomic { r_net && got[0] != target[0] && nempty(net[other*C + 0]) && NO_JOIN_YET ->
		if
		:: net[other*C + 0] ? <hv, hsync>; assert(hv == next[0]) /* probe */
		:: net[other*C + 0] ? hv, hsync; assert(hv == next[0]); next[0]++; got[0]++; delivered++;
			if :: hsync -> acks_owed++ :: else fi
		fi }
	:: atomic { r_net && got[1] != target[1] && nempty(net[other*C + 1]) && NO_JOIN_YET ->
		if
		:: net[other*C + 1] ? <hv, hsync>; assert(hv == next[1])
		:: net[other*C + 1] ? hv, hsync; assert(hv == next[1]); next[1]++; got[1]++; delivered++;
			if :: hsync -> acks_owed++ :: else fi
		fi }
#ifdef NO_PARKING
	/* Broken on purpose: the peer's library messages are matched in ring mode too. */
	:: atomic { !r_net && nempty(net[other*C + 0]) ->
		net[other*C + 0] ? hv, hsync; assert(hv == next[0]); next[0]++; delivered++;
		if :: hsync -> acks_owed++ :: else fi }
#endif

	/* ---- done: everything sent, matched, acknowledged both ways ---- */
	:: i == N && delivered == N && acks_pending == 0 && acks_owed == 0 -> break
	od;
	done++
}

/* The broker: A's VM may leave, be migrated (once A released), be rolled back (deadline or a
 * failed step, wherever A is in its drain), come back, any number of times up to MOVES. */
active proctype M() {
	byte moves = 0;
	do
	:: moves < MOVES && coloc && !leaving -> leaving = true
	:: leaving && released && rel_epoch == gen -> leaving = false; coloc = false; moves++  /* migrated away */
	:: leaving && gen < E-1 -> leaving = false; gen++; moves++ /* rolled back */
	:: !coloc && gen < E-1 -> gen++; coloc = true /* moved back */
	:: true -> break /* no more migrations */
	od
}

init {
	run Rank(0); run Rank(1);
	(done == 2);
	/* nothing left on any path but control records */
	byte e = 0, a, b, d;
	mtype kind;
	do
	:: e < E*2 && nempty(ring[e]) -> ring[e] ? kind, a, b, d; assert(kind == MARK || kind == JOIN)
	:: e < E*2 && empty(ring[e]) -> e++
	:: e == E*2 -> break
	od;
	assert(len(net[0]) == 0 && len(net[1]) == 0 && len(net[2]) == 0 && len(net[3]) == 0);
	assert(len(netack[0]) == 0 && len(netack[1]) == 0)
}
