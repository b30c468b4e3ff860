/*
 * The collective switch at a migration (cgo/front/migrate.c, "Collectives"): the members of a
 * communicator X whose collectives run on a shared-memory area agree on the index k of the
 * first collective that takes a new plan (set up anew without the leaving rank's area; "the
 * library" below, as the model has it: any plan other than the old), although only the members
 * co-located with the leaving VM see its flag.
 *
 * Three members: 0 (X's rank 0, the coordinator) and 1 share a host, 1's VM leaves; 2 is on
 * another host and never sees the flag. Each runs the same program, a sequence of collectives
 * on X and on another communicator Y whose collectives the library runs. The shim's rules, as
 * migrate.c implements them:
 *   ask:    a member that sees the flag asks the coordinator (ASK), once.
 *   query:  the coordinator asks every member (QUERY), once.
 *   reply:  a member answers with its limit l = j + SLACK, j the collectives it began on X; from
 *           then on it may begin collectives on X up to index l - 1 before it knows k.
 *   decide: with every limit in, the coordinator sends k = the largest (DECIDE).
 *   enter:  collective j on X: with an answer given and j >= l, wait (answering messages) for
 *           k; then the library if k is known and j >= k, else the shared-memory plan.
 *   release (member 1): k known, every collective below k begun and left, not in a collective.
 * A member answers the shim's messages wherever the shim runs its progress: between calls
 * (modelled as: any time it is not inside a collective, which includes entering the next one
 * without having looked, as a message may not have arrived yet), while it waits in a
 * shared-memory collective or for k, and inside the library's collectives, which the shim
 * calls nonblocking and completes with its own polling wait (coll.h IVS_NET_COLL, coll_lib.c).
 *
 * Checked (tests/model): safety and deadlock freedom, exhaustively, for both programs below: no
 * collective index is run by some members on the shared-memory plan and by others on the
 * library; the decision never lies behind a member's count; the leaving member never enters a
 * shared-memory collective once it released; every member finishes. Safety holds without any
 * assumption on where members answer. Deadlock freedom needs the answers inside library
 * collectives: with BLOCKING_Y (Y's call is one the shim leaves a blocking library call, as
 * communicator creation, one-sided synchronisation and collective I/O are) spin finds a deadlock
 * of a valid program (program 1): member 1 runs one collective ahead (the root of a Bcast),
 * enters that call before the coordinator's QUERY reached it, and waits there for member 0,
 * which answered with its limit before its last collective and now waits at that limit for k,
 * which needs member 1's answer. The slack of 1 helps only when the member that ran ahead had
 * answered before it blocked. TestCollSwitchKnownDeadlock pins it: it is why the shim gates
 * such calls. With GATED_Y (and BLOCKING_Y) a member first waits in a nonblocking barrier on Y,
 * answering there, and enters the blocking call only once every member entered the barrier:
 * the deadlock is gone, proven for both programs (gate.c). (Before coll_lib.c, every library
 * collective was such a call.)
 *
 * What the model leaves out: the RECENT rule (a member idle on X for long answers with no
 * slack: a liveness heuristic outside this model, whose slack is always SLACK); communicators
 * freed during an agreement (their members answer "never"); communicators set up after the flag;
 * later rounds on the same communicator (a new leave after a re-plan: messages carry the round,
 * and a member behind on the last round defers the new one's until it re-planned).
 *
 * Collectives: ALLC (everyone waits for everyone: Barrier, Allreduce) and ROOTC(r) (only
 * non-roots wait, for the root: Bcast; the root returns at once and may run ahead).
 * Programs (cpp PROGRAM): 1 (default) a root runs one collective ahead, then enters a library
 * collective; 2 a root runs two collectives ahead, then enters one. Broken variants (must fail
 * the safety check): NO_WAIT (a member at its limit goes on without k), OWN_LIMIT (a member
 * switches at its own limit, not the largest), EARLY_RELEASE (member 1 releases once k is known).
 */

#define M 3
#define ALL_MASK 7
#define LEAVER 1
#define SEES(m) ((m) != 2) /* members co-located with the leaving VM */

#define SLACK 1

/* ops: 0..2 ROOTC(r) on X, 3 ALLC on X, 4 a library collective (ALLC) on Y */
#define YOP 4
#define ALLC 3
#ifndef PROGRAM
#define PROGRAM 1
#endif
#if PROGRAM == 1
#define P 5
#define NX 3
#define NY 2
#define PROG_INIT prog[0] = 0; prog[1] = YOP; prog[2] = ALLC; prog[3] = 1; prog[4] = YOP
#else
#define P 4
#define NX 3
#define NY 1
#define PROG_INIT prog[0] = 0; prog[1] = 0; prog[2] = YOP; prog[3] = ALLC
#endif
#define PROG(i) prog[i]
/* leaving X's collective j-1 (op PROG(pc-1)) entered on the plan whose members are mask */
#define XDONE(mask) ((PROG(pc-1) == ALLC && (mask) == ALL_MASK) || (PROG(pc-1) < ALLC && ((mask) & (1 << PROG(pc-1)))))

#ifdef BLOCKING_Y
#define ANSWERS (in != 3) /* not inside Y's call: a blocking library call (see above) */
#else
#define ANSWERS true      /* inside library collectives too: the shim's polling wait */
#endif

#define UNKNOWN 255
mtype = { ASK, QUERY, REPLY, DECIDE };
chan inbox[M] = [8] of { mtype, byte, byte }; /* kind, from, value */

byte prog[P];
bool flag = false;          /* the region flags member 1's VM leaving */
byte shm_in[NX], lib_in[NX]; /* members that entered X's collective j, per plan (masks) */
byte y_in[NY];              /* members that entered Y's collective j */
byte gate_in[NY];           /* members that entered the gate of Y's collective j (GATED_Y) */
bool released = false;      /* member 1 gave the area up */
byte done = 0;

hidden mtype hk;
hidden byte hf, hv;

proctype Member(byte me) {
	byte pc = 0, j = 0, y = 0;  /* next op; collectives begun on X and on Y */
	byte in = 0;                /* 0: between calls; 1: in X's collective j-1 (shared memory);
	                               2: in X's collective j-1 (library); 3: in Y's collective y-1;
	                               4: in the gate of Y's collective y-1 (GATED_Y) */
	bool asked = false, answered = false;
	byte limit = 0, k = UNKNOWN;
	/* the coordinator's gathering */
	bool gathering = false;
	byte replies = 0, kmax = 0, q;

	do
	/* ---- the shim's messages, answered wherever ANSWERS holds ---- */
	:: atomic { ANSWERS && SEES(me) && flag && !asked ->
		asked = true; inbox[0] ! ASK, me, 0 }
	:: atomic { ANSWERS && nempty(inbox[me]) ->
		inbox[me] ? hk, hf, hv;
		if
		:: hk == ASK ->
			assert(me == 0);
			if
			:: !gathering && replies == 0 && k == UNKNOWN ->
				gathering = true;
				for (q : 0 .. M-1) { inbox[q] ! QUERY, me, 0 }
			:: else
			fi
		:: hk == QUERY ->
			if
			:: !answered -> answered = true; limit = j + SLACK
			:: else
			fi;
			inbox[0] ! REPLY, me, limit
		:: hk == REPLY ->
			assert(me == 0 && gathering);
			if :: hv > kmax -> kmax = hv :: else fi;
			replies++;
			if
			:: replies == M ->
				gathering = false;
				for (q : 0 .. M-1) { inbox[q] ! DECIDE, me, kmax }
			:: else
			fi
		:: hk == DECIDE ->
#ifdef OWN_LIMIT
			hv = limit; /* broken on purpose */
#endif
			assert(hv >= j); /* the decision never lies behind a member's count */
			k = hv
		fi }

	/* ---- the program ---- */
#ifdef GATED_Y
	/* the shim's gate: a nonblocking barrier on Y completed by its polling wait (answering),
	 * then Y's blocking call */
	:: atomic { in == 0 && pc < P && PROG(pc) == YOP -> gate_in[y] = gate_in[y] | (1 << me); y++; pc++; in = 4 }
	:: atomic { in == 4 && gate_in[y-1] == ALL_MASK -> y_in[y-1] = y_in[y-1] | (1 << me); in = 3 }
#else
	:: atomic { in == 0 && pc < P && PROG(pc) == YOP -> y_in[y] = y_in[y] | (1 << me); y++; pc++; in = 3 }
#endif
	/* X's collective j; with an answer given and j at the limit, only once k is known (the
	 * member meanwhile answers messages) */
	:: atomic { in == 0 && pc < P && PROG(pc) != YOP && (!answered || j < limit || k != UNKNOWN
#ifdef NO_WAIT
		|| true /* broken on purpose */
#endif
		) ->
		if
		:: k != UNKNOWN && j >= k ->
			assert(shm_in[j] == 0);
			lib_in[j] = lib_in[j] | (1 << me); in = 2
		:: else ->
			assert(lib_in[j] == 0);
			assert(!(me == LEAVER && released)); /* never touches the area once released */
			shm_in[j] = shm_in[j] | (1 << me); in = 1
		fi;
		j++; pc++ }
	/* leaving a collective: ALLC when every member entered it (on this plan), ROOTC(r) when r did */
	:: atomic { in == 1 && XDONE(shm_in[j-1]) -> in = 0 }
	:: atomic { in == 2 && XDONE(lib_in[j-1]) -> in = 0 }
	:: atomic { in == 3 && y_in[y-1] == ALL_MASK -> in = 0 }

	/* ---- the leaving member gives the area up ---- */
	:: atomic { me == LEAVER && flag && !released && in == 0 && k != UNKNOWN &&
#ifdef EARLY_RELEASE
		true /* broken on purpose */
#else
		j >= k
#endif
		-> released = true }

	/* ---- MPI_Finalize: the shim's messages in flight and the gathering end first ---- */
	:: atomic { in == 0 && pc == P && !gathering && empty(inbox[me]) -> break }
	od;
	done++;
	/* the others may still need this member's answers */
	do
	:: atomic { nempty(inbox[me]) ->
		inbox[me] ? hk, hf, hv;
		if
		:: hk == QUERY -> if :: !answered -> answered = true; limit = j + SLACK :: else fi; inbox[0] ! REPLY, me, limit
		:: hk == DECIDE -> assert(hv >= j)
		:: hk == ASK -> skip /* every member is finalizing: nobody needs the switch any more */
		:: hk == REPLY -> assert(false) /* the coordinator left while gathering */
		fi }
	:: done == M && empty(inbox[me]) -> break
	od
}

active proctype Broker() {
	if
	:: flag = true
	:: skip /* no migration during this job */
	fi
}

init {
	atomic { PROG_INIT; run Member(0); run Member(1); run Member(2) }
}
