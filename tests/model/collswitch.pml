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
 * Two communicators at once (NC=2, one round): one leave starts an agreement on X and one on
 * Z, a second communicator of the same three members whose area also holds member 1, and whose
 * rank 0 (its coordinator) is member 2, on the other host, which never sees the flag. Each
 * communicator keeps its own count, answer, limit and decision; a member answers both
 * communicators' messages wherever it answers at all (the shim's waits handle every message
 * they find: migrate.c ivs_ctl_wait_step), and member 1 gives its areas up once both
 * communicators' collectives below their decisions ran. Only member 1 asks here (member 0's
 * ask would do the same: a coordinator acts on the first ask only), which keeps the two
 * agreements' interleavings to about 1.5e7 states. Program 7 (member 1 the Bcast root of X and
 * of Z, running ahead on both, then a Barrier on Z) and program 8 (with a library collective
 * on Y between, also gated) are proven safe and free of deadlock; NO_CROSS (a member waiting
 * at one communicator's limit answers only that communicator's messages) deadlocks in program
 * 7, and OWN_LIMIT and EARLY_RELEASE (release once X's decision is known) are caught.
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
#ifndef NC
#define NC 1
#endif
/* round r's leaving member, and the members whose area in plan r holds it (who see its flag) */
#define LEAVER(r) ((r) == 0 -> 1 : ((r) == 1 -> 2 : 0))
#if NC > 1
#define SEES(r, m) ((m) == 1) /* member 0 asks as well, to the same effect (asks are idempotent):
                                 left out to keep two agreements' interleavings searchable */
#else
#define SEES(r, m) (((r) != 1 && (m) != 2) || ((r) == 1 && (m) != 1))
#endif
/* communicator c's rank 0, the coordinator of its agreement: X's is member 0, Z's member 2,
 * on the other host, which never sees the flag */
#define COORD(c) ((c) == 0 -> 0 : 2)

#define SLACK 1

/* ops: XOP(c, t) on communicator c with an area (X, and Z with NC 2): t = 0..2 ROOTC(t), ALLC;
 * YOP a library collective (ALLC) on Y */
#define ALLC 3
#define XOP(c, t) ((c) * 4 + (t))
#define CO(op) ((op) / 4)
#define KIND(op) ((op) % 4)
#define YOP (NC * 4)
#ifndef PROGRAM
#define PROGRAM 1
#endif
#if (NC > 1) != (PROGRAM > 6) || ROUNDS > 1 && NC > 1
#error "two communicators: programs 7 and 8, one round"
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
#elif PROGRAM == 6
#define P 8
#define NX 6
#define NY 2
#define PROG_INIT prog[0] = 0; prog[1] = YOP; prog[2] = ALLC; prog[3] = 1; prog[4] = YOP; prog[5] = ALLC; prog[6] = 2; prog[7] = ALLC
#elif PROGRAM == 7
/* two communicators (NC 2): the leaving member is the Bcast root of X and Z and runs ahead on
 * both, then a Barrier on Z */
#define P 4
#define NX 2
#define NY 1
#define PROG_INIT prog[0] = XOP(0, 1); prog[1] = XOP(1, 1); prog[2] = XOP(0, 1); prog[3] = XOP(1, ALLC)
#else
/* program 7 with a library collective on Y between */
#define P 5
#define NX 2
#define NY 1
#define PROG_INIT prog[0] = XOP(0, 1); prog[1] = XOP(1, 1); prog[2] = YOP; prog[3] = XOP(0, 1); prog[4] = XOP(1, ALLC)
#endif
#define PROG(i) prog[i]
/* the communicator of the next op, and of the last one */
#define CUR CO(PROG(pc))
#define LAST CO(PROG(pc-1))
/* X's collectives, per communicator c: index i of c at XI(c, i) */
#define XI(c, i) ((c) * NX + (i))
/* leaving c's collective j[c]-1 (op PROG(pc-1), c = LAST) whose entered members are mask: an
 * ALLC, or the set-up's exchange of a new plan, when every member entered it; ROOTC(r) when r
 * did */
#define XDONE(mask) ((mask) == ALL_MASK || (!setup_at[XI(LAST, j[LAST]-1)] && KIND(PROG(pc-1)) < ALLC && \
	((mask) & (1 << KIND(PROG(pc-1))))))
/* options for each communicator with an area, and conditions on all of them */
#if NC > 1
#define EACH_C(opt) opt(0) opt(1)
#define ALL_C(cond) cond(0) && cond(1)
#else
#define EACH_C(opt) opt(0)
#define ALL_C(cond) cond(0)
#endif

#ifdef BLOCKING_Y
#define ANSWERS (in != 3) /* not inside Y's call: a blocking library call (see above) */
#else
#define ANSWERS true      /* inside library collectives too: the shim's polling wait */
#endif
#ifdef NO_CROSS
/* broken on purpose: a member that waits at c's limit for c's decision answers c's messages
 * only (the shim's waits answer every communicator's: migrate.c ivs_ctl_wait_step) */
#define WAITS_ON(c) (in == 0 && pc < P && PROG(pc) != YOP && CUR == (c) && answered[c] && j[c] >= limit[c] && k[c] == UNKNOWN)
#define ANSWERS_C(c) (ANSWERS && !WAITS_ON(1 - (c)))
#else
#define ANSWERS_C(c) ANSWERS
#endif

/* A member's rounds left behind on c, rnd[c] - 1 - b for b = 0 .. ROUNDS - 1 (rnd[c] reaches
 * ROUNDS: every round left behind). DROP_LATE(c, guard): options of its loop that drop their
 * messages where guard holds (only a late ASK can come, and is ignored); OLD_EMPTY(c): none of
 * them is waiting. */
#define DROP_BEHIND(c, guard, b) \
	:: atomic { guard && rnd[c] > b && nempty(inbox[BOX(c, rnd[c] - 1 - b, me)]) -> \
		inbox[BOX(c, rnd[c] - 1 - b, me)] ? hk, hf, hv; assert(hk == ASK) }
#define EMPTY_BEHIND(c, b) (rnd[c] <= b || empty(inbox[BOX(c, rnd[c] - 1 - b, me)]))
#if ROUNDS > 2
#define DROP_LATE(c, guard) DROP_BEHIND(c, guard, 0) DROP_BEHIND(c, guard, 1) DROP_BEHIND(c, guard, 2)
#define OLD_EMPTY(c) EMPTY_BEHIND(c, 0) && EMPTY_BEHIND(c, 1) && EMPTY_BEHIND(c, 2)
#elif ROUNDS > 1
#define DROP_LATE(c, guard) DROP_BEHIND(c, guard, 0) DROP_BEHIND(c, guard, 1)
#define OLD_EMPTY(c) EMPTY_BEHIND(c, 0) && EMPTY_BEHIND(c, 1)
#else
#define DROP_LATE(c, guard) DROP_BEHIND(c, guard, 0)
#define OLD_EMPTY(c) EMPTY_BEHIND(c, 0)
#endif

#define UNKNOWN 255
mtype = { ASK, QUERY, REPLY, DECIDE };
/* the shim's messages on communicator c of round r to member m: inbox[BOX(c, r, m)] */
#define BOX(c, r, m) (((c) * ROUNDS + (r)) * M + (m))
chan inbox[NC * ROUNDS * M] = [8] of { mtype, byte, byte }; /* kind, from, value */

byte prog[P];
bool flag[ROUNDS];          /* the region flags round r's leaving VM */
byte x_in[NC * NX];         /* members that entered c's collective j (XI) */
byte plan_of[NC * NX];      /* the plan (round) c's collective j runs on, once entered */
bool setup_at[NC * NX];     /* c's collective j is the first of a new plan (its set-up's exchange) */
byte y_in[NY];              /* members that entered Y's collective j */
byte gate_in[NY];           /* members that entered the gate of Y's collective j (GATED_Y) */
bool released[ROUNDS];      /* round r's leaving member gave its plan-r areas up */
byte done = 0;

hidden mtype hk;
hidden byte hf, hv;

/* Handle one message on communicator c of round r (the member's own, but for NO_DEFER). */
inline handle(c, r) {
	inbox[BOX(c, r, me)] ? hk, hf, hv;
	if
	:: hk == ASK ->
		assert(me == COORD(c));
		if
		:: !gathering[c] && replies[c] == 0 && k[c] == UNKNOWN ->
			gathering[c] = true;
			for (q : 0 .. M-1) { inbox[BOX(c, r, q)] ! QUERY, me, 0 }
		:: else
		fi
	:: hk == QUERY ->
		if
		:: !answered[c] -> answered[c] = true; limit[c] = j[c] + SLACK
		:: else
		fi;
		inbox[BOX(c, r, COORD(c))] ! REPLY, me, limit[c]
	:: hk == REPLY ->
		assert(me == COORD(c) && gathering[c]);
		if :: hv > kmax[c] -> kmax[c] = hv :: else fi;
		replies[c]++;
		if
		:: replies[c] == M ->
			gathering[c] = false;
			for (q : 0 .. M-1) { inbox[BOX(c, r, q)] ! DECIDE, me, kmax[c] }
		:: else
		fi
	:: hk == DECIDE ->
#ifdef OWN_LIMIT
		hv = limit[c]; /* broken on purpose */
#endif
		assert(hv >= j[c]); /* the decision never lies behind a member's count */
		k[c] = hv
	fi
}

/* The shim's messages on c, answered wherever ANSWERS_C(c) holds; and c's re-plan once the
 * decision's collective is reached (at its entry, or in any progress outside a collective:
 * replan_if_done, between calls and in a gate's polling wait). */
#ifdef NO_DEFER
#define DEFER_BROKEN(c) \
	:: atomic { ANSWERS_C(c) && rnd[c] + 1 < ROUNDS && nempty(inbox[BOX(c, rnd[c] + 1, me)]) -> handle(c, rnd[c] + 1) } /* broken on purpose */
#else
#define DEFER_BROKEN(c)
#endif
#define AGREEMENT(c) \
	:: atomic { ANSWERS_C(c) && rnd[c] < ROUNDS && setup[c] && SEES(rnd[c], me) && flag[rnd[c]] && !asked[c] -> \
		asked[c] = true; inbox[BOX(c, rnd[c], COORD(c))] ! ASK, me, 0 } \
	:: atomic { ANSWERS_C(c) && rnd[c] < ROUNDS && nempty(inbox[BOX(c, rnd[c], me)]) -> handle(c, rnd[c]) } \
	DROP_LATE(c, ANSWERS_C(c)) \
	DEFER_BROKEN(c) \
	:: atomic { (in == 0 || in == 4) && k[c] != UNKNOWN && j[c] >= k[c] -> \
		rnd[c]++; setup[c] = false; asked[c] = false; answered[c] = false; limit[c] = 0; k[c] = UNKNOWN; \
		replies[c] = 0; kmax[c] = 0 }

/* After MPI_Finalize: c's messages still arriving are answered (the others may need them). */
#define FINAL_ANSWERS(c) \
	:: atomic { rnd[c] < ROUNDS && nempty(inbox[BOX(c, rnd[c], me)]) -> \
		inbox[BOX(c, rnd[c], me)] ? hk, hf, hv; \
		if \
		:: hk == QUERY -> if :: !answered[c] -> answered[c] = true; limit[c] = j[c] + SLACK :: else fi; \
			inbox[BOX(c, rnd[c], COORD(c))] ! REPLY, me, limit[c] \
		:: hk == DECIDE -> assert(hv >= j[c]) \
		:: hk == ASK -> skip /* every member is finalizing: nobody needs the switch any more */ \
		:: hk == REPLY -> assert(false) /* the coordinator left while gathering */ \
		fi } \
	DROP_LATE(c, true)
/* nothing of c's agreement in flight to or from this member */
#define QUIET(c) (!gathering[c] && (rnd[c] == ROUNDS || empty(inbox[BOX(c, rnd[c], me)])))
#define SETTLED(c) ((rnd[c] == ROUNDS || empty(inbox[BOX(c, rnd[c], me)])) && OLD_EMPTY(c))

/* The leaving member may give its areas up: every communicator's collectives below its
 * decision run (with two communicators, one round: c re-planned already, or about to) */
#if NC > 1
#define REL_ROUND 0
#define DONE_WITH(c) (rnd[c] > 0 || (k[c] != UNKNOWN && j[c] >= k[c]))
#else
#define REL_ROUND rnd[0]
#define DONE_WITH(c) (k[c] != UNKNOWN && j[c] >= k[c])
#endif
#ifdef EARLY_RELEASE
#define RELEASE_OK (k[0] != UNKNOWN) /* broken on purpose: once k is known */
#else
#define RELEASE_OK (ALL_C(DONE_WITH))
#endif

proctype Member(byte me) {
	byte pc = 0, y = 0;         /* next op; collectives begun on Y */
	byte j[NC];                 /* collectives begun on each communicator with an area */
	byte in = 0;                /* 0: between calls; 1: in c's collective j[c]-1, c = LAST; 3: in Y's
	                               collective y-1; 4: in the gate of Y's collective y-1 (GATED_Y) */
	/* per communicator c: */
	byte rnd[NC];               /* the agreement's round: plans left behind (ivs_comm.sw_round) */
	bool setup[NC];             /* the plan of round rnd[c] is set up here (plan 0 from the start) */
	bool asked[NC], answered[NC];
	byte limit[NC], k[NC];
	/* the coordinator's gathering */
	bool gathering[NC];
	byte replies[NC], kmax[NC], q;

	d_step { for (q : 0 .. NC-1) { setup[q] = true; k[q] = UNKNOWN }; q = 0 }
	do
	EACH_C(AGREEMENT)

	/* ---- the program ---- */
#ifdef GATED_Y
	/* the shim's gate: a nonblocking barrier on Y completed by its polling wait (answering),
	 * then Y's blocking call */
	:: atomic { in == 0 && pc < P && PROG(pc) == YOP -> gate_in[y] = gate_in[y] | (1 << me); y++; pc++; in = 4 }
	:: atomic { in == 4 && gate_in[y-1] == ALL_MASK -> y_in[y-1] = y_in[y-1] | (1 << me); in = 3 }
#else
	:: atomic { in == 0 && pc < P && PROG(pc) == YOP -> y_in[y] = y_in[y] | (1 << me); y++; pc++; in = 3 }
#endif
	/* the next collective on c = CUR, number j[c], on plan rnd[c], once re-planned where the
	 * decision says so; with an answer given and j[c] at the limit, only once k[c] is known (the
	 * member meanwhile answers messages) */
	:: atomic { in == 0 && pc < P && PROG(pc) != YOP && !(k[CUR] != UNKNOWN && j[CUR] >= k[CUR]) &&
		(!answered[CUR] || j[CUR] < limit[CUR] || k[CUR] != UNKNOWN
#ifdef NO_WAIT
		|| true /* broken on purpose */
#endif
		) ->
		if
		:: x_in[XI(CUR, j[CUR])] == 0 -> plan_of[XI(CUR, j[CUR])] = rnd[CUR]; setup_at[XI(CUR, j[CUR])] = !setup[CUR]
		:: else -> assert(plan_of[XI(CUR, j[CUR])] == rnd[CUR] && setup_at[XI(CUR, j[CUR])] == !setup[CUR]) /* one plan per collective */
		fi;
		assert(!(rnd[CUR] < ROUNDS && me == LEAVER(rnd[CUR]) && released[rnd[CUR]])); /* never back in an area it released */
#ifdef REACH_LAST
		assert(rnd[CUR] < ROUNDS); /* must fail: some collective runs on the last round's plan */
#endif
		setup[CUR] = true;
		x_in[XI(CUR, j[CUR])] = x_in[XI(CUR, j[CUR])] | (1 << me);
		j[CUR]++; pc++; in = 1 }
	/* leaving a collective (XDONE), or Y's when every member entered it */
	:: atomic { in == 1 && XDONE(x_in[XI(LAST, j[LAST]-1)]) -> in = 0 }
	:: atomic { in == 3 && y_in[y-1] == ALL_MASK -> in = 0 }

	/* ---- a leaving member gives its areas up ---- */
	:: atomic { REL_ROUND < ROUNDS && me == LEAVER(REL_ROUND) && flag[REL_ROUND] && !released[REL_ROUND] && in == 0 &&
		RELEASE_OK -> released[REL_ROUND] = true }

	/* ---- MPI_Finalize: the shim's messages in flight and the gatherings end first ---- */
	:: atomic { in == 0 && pc == P && ALL_C(QUIET) -> break }
	od;
	done++;
	/* the others may still need this member's answers */
	do
	EACH_C(FINAL_ANSWERS)
	:: done == M && ALL_C(SETTLED) -> break
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
