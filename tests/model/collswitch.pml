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
 * Later rounds (ROUNDS=2): after a round's decision each member re-plans (ivs_comm.sw_round
 * goes up: at the entry of collective k, or outside collectives once its count reached k), and
 * its first collective on the new plan begins with the set-up's exchange among all members
 * (coll_area.c), which no member leaves before every member entered it. A second leave then
 * touches the new plan's area: member 2's VM, whose area in plan 1 holds members 0 and 2 (the
 * model does not say how they came to share a host; a plan is any set of areas). Every message
 * carries its round (a channel per round here): a member reads its own round's, drops a late
 * ASK of a round it left behind, and leaves a later round's waiting until it re-planned
 * (migrate.c dispatch). A member sees a round's flag only once its plan of that round is set
 * up (before, it has no area that holds the leaving rank). Checked for program 3 (five
 * collectives on X) and program 4 (with gated calls on Y): every collective on one plan,
 * decisions never behind, no leaving member back in its old plan's area after release, no
 * deadlock. Broken variant NO_DEFER (a member handles a later round's messages as its own
 * round's) must fail, and so must REACH_LAST (no collective runs on the last round's plan: the
 * search does reach it).
 *
 * Three rounds (ROUNDS=3): the third leave is the coordinator's own VM, member 0, whose area in
 * plan 2 holds members 0 and 1 (1 is back on 0's host). Messages of every round a member left
 * behind are dropped (migrate.c: any round below its own), so a late ASK two rounds old can
 * still be waiting. Program 5 (seven collectives on X; about 1.4e8 states, 8 minutes and 9 GiB with
 * COLLAPSE) and program 6 (six on X, two gated calls on Y; about 7e7 states, 3 minutes) are proven
 * safe and free of deadlock, and REACH_LAST fails on both (program 6 needs its sixth collective
 * on X for that: with five the third re-plan is never reached); NO_DEFER fails. The Go test
 * runs these with -rounds=3 only, for their cost, but for NO_DEFER.
 *
 * What the model leaves out: the RECENT rule (a member idle on X for long answers with no
 * slack: a liveness heuristic outside this model, whose slack is always SLACK); communicators
 * freed during an agreement (their members answer "never"); communicators set up after the flag.
 *
 * Collectives: ALLC (everyone waits for everyone: Barrier, Allreduce) and ROOTC(r) (only
 * non-roots wait, for the root: Bcast; the root returns at once and may run ahead).
 * Programs (cpp PROGRAM): 1 (default) a root runs one collective ahead, then enters a library
 * collective; 2 a root runs two collectives ahead, then enters one; 3 and 4 (two rounds) and 5
 * and 6 (three rounds) are longer sequences of both. Broken variants (must fail
 * the safety check): NO_WAIT (a member at its limit goes on without k), OWN_LIMIT (a member
 * switches at its own limit, not the largest), EARLY_RELEASE (member 1 releases once k is known).
 */

#define M 3
#define ALL_MASK 7
#ifndef ROUNDS
#define ROUNDS 1
#endif
/* round r's leaving member, and the members whose area in plan r holds it (who see its flag) */
#define LEAVER(r) ((r) == 0 -> 1 : ((r) == 1 -> 2 : 0))
#define SEES(r, m) (((r) != 1 && (m) != 2) || ((r) == 1 && (m) != 1))

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
#elif PROGRAM == 2
#define P 4
#define NX 3
#define NY 1
#define PROG_INIT prog[0] = 0; prog[1] = 0; prog[2] = YOP; prog[3] = ALLC
#elif PROGRAM == 3
#define P 5
#define NX 5
#define NY 1
#define PROG_INIT prog[0] = 0; prog[1] = ALLC; prog[2] = 1; prog[3] = ALLC; prog[4] = 2
#elif PROGRAM == 4
#define P 6
#define NX 4
#define NY 2
#define PROG_INIT prog[0] = 0; prog[1] = YOP; prog[2] = ALLC; prog[3] = 1; prog[4] = YOP; prog[5] = ALLC
#elif PROGRAM == 5
#define P 7
#define NX 7
#define NY 1
#define PROG_INIT prog[0] = 0; prog[1] = ALLC; prog[2] = 1; prog[3] = ALLC; prog[4] = 2; prog[5] = ALLC; prog[6] = 0
#else
#define P 8
#define NX 6
#define NY 2
#define PROG_INIT prog[0] = 0; prog[1] = YOP; prog[2] = ALLC; prog[3] = 1; prog[4] = YOP; prog[5] = ALLC; prog[6] = 2; prog[7] = ALLC
#endif
#define PROG(i) prog[i]
/* leaving X's collective j-1 (op PROG(pc-1)) whose entered members are mask: an ALLC, or the
 * set-up's exchange of a new plan, when every member entered it; ROOTC(r) when r did */
#define XDONE(mask) ((mask) == ALL_MASK || (!setup_at[j-1] && PROG(pc-1) < ALLC && ((mask) & (1 << PROG(pc-1)))))

#ifdef BLOCKING_Y
#define ANSWERS (in != 3) /* not inside Y's call: a blocking library call (see above) */
#else
#define ANSWERS true      /* inside library collectives too: the shim's polling wait */
#endif

/* A member's rounds left behind, rnd - 1 - b for b = 0 .. ROUNDS - 1 (rnd reaches ROUNDS: every
 * round left behind). DROP_LATE(guard): options of its loop that drop their messages where
 * guard holds (only a late ASK can come, and is ignored); OLD_EMPTY: none of them is waiting. */
#define DROP_BEHIND(guard, b) \
	:: atomic { guard && rnd > b && nempty(inbox[BOX(rnd - 1 - b, me)]) -> inbox[BOX(rnd - 1 - b, me)] ? hk, hf, hv; assert(hk == ASK) }
#define EMPTY_BEHIND(b) (rnd <= b || empty(inbox[BOX(rnd - 1 - b, me)]))
#if ROUNDS > 2
#define DROP_LATE(guard) DROP_BEHIND(guard, 0) DROP_BEHIND(guard, 1) DROP_BEHIND(guard, 2)
#define OLD_EMPTY EMPTY_BEHIND(0) && EMPTY_BEHIND(1) && EMPTY_BEHIND(2)
#elif ROUNDS > 1
#define DROP_LATE(guard) DROP_BEHIND(guard, 0) DROP_BEHIND(guard, 1)
#define OLD_EMPTY EMPTY_BEHIND(0) && EMPTY_BEHIND(1)
#else
#define DROP_LATE(guard) DROP_BEHIND(guard, 0)
#define OLD_EMPTY EMPTY_BEHIND(0)
#endif

#define UNKNOWN 255
mtype = { ASK, QUERY, REPLY, DECIDE };
/* the shim's messages of round r to member m: inbox[BOX(r, m)] */
#define BOX(r, m) ((r) * M + (m))
chan inbox[ROUNDS * M] = [8] of { mtype, byte, byte }; /* kind, from, value */

byte prog[P];
bool flag[ROUNDS];          /* the region flags round r's leaving VM */
byte x_in[NX];              /* members that entered X's collective j */
byte plan_of[NX];           /* the plan (round) X's collective j runs on, once entered */
bool setup_at[NX];          /* X's collective j is the first of a new plan (its set-up's exchange) */
byte y_in[NY];              /* members that entered Y's collective j */
byte gate_in[NY];           /* members that entered the gate of Y's collective j (GATED_Y) */
bool released[ROUNDS];      /* round r's leaving member gave its plan-r area up */
byte done = 0;

hidden mtype hk;
hidden byte hf, hv;

/* Handle one message of round r (the member's own, but for NO_DEFER). */
inline handle(r) {
	inbox[BOX(r, me)] ? hk, hf, hv;
	if
	:: hk == ASK ->
		assert(me == 0);
		if
		:: !gathering && replies == 0 && k == UNKNOWN ->
			gathering = true;
			for (q : 0 .. M-1) { inbox[BOX(r, q)] ! QUERY, me, 0 }
		:: else
		fi
	:: hk == QUERY ->
		if
		:: !answered -> answered = true; limit = j + SLACK
		:: else
		fi;
		inbox[BOX(r, 0)] ! REPLY, me, limit
	:: hk == REPLY ->
		assert(me == 0 && gathering);
		if :: hv > kmax -> kmax = hv :: else fi;
		replies++;
		if
		:: replies == M ->
			gathering = false;
			for (q : 0 .. M-1) { inbox[BOX(r, q)] ! DECIDE, me, kmax }
		:: else
		fi
	:: hk == DECIDE ->
#ifdef OWN_LIMIT
		hv = limit; /* broken on purpose */
#endif
		assert(hv >= j); /* the decision never lies behind a member's count */
		k = hv
	fi
}

proctype Member(byte me) {
	byte pc = 0, j = 0, y = 0;  /* next op; collectives begun on X and on Y */
	byte in = 0;                /* 0: between calls; 1: in X's collective j-1; 3: in Y's
	                               collective y-1; 4: in the gate of Y's collective y-1 (GATED_Y) */
	byte rnd = 0;               /* the agreement's round: plans left behind (ivs_comm.sw_round) */
	bool setup = true;          /* the plan of round rnd is set up here (plan 0 from the start) */
	bool asked = false, answered = false;
	byte limit = 0, k = UNKNOWN;
	/* the coordinator's gathering */
	bool gathering = false;
	byte replies = 0, kmax = 0, q;

	do
	/* ---- the shim's messages, answered wherever ANSWERS holds ---- */
	:: atomic { ANSWERS && rnd < ROUNDS && setup && SEES(rnd, me) && flag[rnd] && !asked ->
		asked = true; inbox[BOX(rnd, 0)] ! ASK, me, 0 }
	:: atomic { ANSWERS && rnd < ROUNDS && nempty(inbox[BOX(rnd, me)]) -> handle(rnd) }
	DROP_LATE(ANSWERS)
#ifdef NO_DEFER
	:: atomic { ANSWERS && rnd + 1 < ROUNDS && nempty(inbox[BOX(rnd + 1, me)]) -> handle(rnd + 1) } /* broken on purpose */
#endif

	/* ---- the program ---- */
#ifdef GATED_Y
	/* the shim's gate: a nonblocking barrier on Y completed by its polling wait (answering),
	 * then Y's blocking call */
	:: atomic { in == 0 && pc < P && PROG(pc) == YOP -> gate_in[y] = gate_in[y] | (1 << me); y++; pc++; in = 4 }
	:: atomic { in == 4 && gate_in[y-1] == ALL_MASK -> y_in[y-1] = y_in[y-1] | (1 << me); in = 3 }
#else
	:: atomic { in == 0 && pc < P && PROG(pc) == YOP -> y_in[y] = y_in[y] | (1 << me); y++; pc++; in = 3 }
#endif
	/* re-plan: the decision's collective reached (at its entry, or in any progress outside a
	 * collective: replan_if_done, between calls and in a gate's polling wait) */
	:: atomic { (in == 0 || in == 4) && k != UNKNOWN && j >= k ->
		rnd++; setup = false; asked = false; answered = false; limit = 0; k = UNKNOWN; replies = 0; kmax = 0 }
	/* X's collective j on plan rnd, once re-planned where the decision says so; with an answer
	 * given and j at the limit, only once k is known (the member meanwhile answers messages) */
	:: atomic { in == 0 && pc < P && PROG(pc) != YOP && !(k != UNKNOWN && j >= k) &&
		(!answered || j < limit || k != UNKNOWN
#ifdef NO_WAIT
		|| true /* broken on purpose */
#endif
		) ->
		if
		:: x_in[j] == 0 -> plan_of[j] = rnd; setup_at[j] = !setup
		:: else -> assert(plan_of[j] == rnd && setup_at[j] == !setup) /* one plan per collective */
		fi;
		assert(!(rnd < ROUNDS && me == LEAVER(rnd) && released[rnd])); /* never back in an area it released */
#ifdef REACH_LAST
		assert(rnd < ROUNDS); /* must fail: some collective runs on the last round's plan */
#endif
		setup = true;
		x_in[j] = x_in[j] | (1 << me);
		j++; pc++; in = 1 }
	/* leaving a collective (XDONE), or Y's when every member entered it */
	:: atomic { in == 1 && XDONE(x_in[j-1]) -> in = 0 }
	:: atomic { in == 3 && y_in[y-1] == ALL_MASK -> in = 0 }

	/* ---- a leaving member gives its area up ---- */
	:: atomic { rnd < ROUNDS && me == LEAVER(rnd) && flag[rnd] && !released[rnd] && in == 0 && k != UNKNOWN &&
#ifdef EARLY_RELEASE
		true /* broken on purpose */
#else
		j >= k
#endif
		-> released[rnd] = true }

	/* ---- MPI_Finalize: the shim's messages in flight and the gathering end first ---- */
	:: atomic { in == 0 && pc == P && !gathering && (rnd == ROUNDS || empty(inbox[BOX(rnd, me)])) -> break }
	od;
	done++;
	/* the others may still need this member's answers */
	do
	:: atomic { rnd < ROUNDS && nempty(inbox[BOX(rnd, me)]) ->
		inbox[BOX(rnd, me)] ? hk, hf, hv;
		if
		:: hk == QUERY -> if :: !answered -> answered = true; limit = j + SLACK :: else fi; inbox[BOX(rnd, 0)] ! REPLY, me, limit
		:: hk == DECIDE -> assert(hv >= j)
		:: hk == ASK -> skip /* every member is finalizing: nobody needs the switch any more */
		:: hk == REPLY -> assert(false) /* the coordinator left while gathering */
		fi }
	DROP_LATE(true)
	:: done == M && (rnd == ROUNDS || empty(inbox[BOX(rnd, me)])) && OLD_EMPTY -> break
	od
}

active proctype Broker() {
	byte r = 0;
	do
	:: r < ROUNDS -> flag[r] = true; r++
	:: break /* no (further) migration during this job */
	od
}

init {
	atomic { PROG_INIT; run Member(0); run Member(1); run Member(2) }
}
