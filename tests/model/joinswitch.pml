/*
 * The join switch (cgo/front/join.c): one direction S -> R of a pair made at run time moves
 * from the MPI library to a ring. Messages carry tags, and the receiver's program receives them
 * in an order tags allow (a receive for tag 1 before an earlier message of tag 0), some of its
 * receives posted inside the library before the pair was made. The rules, as the shim has them:
 *   S: sends by the library (counting them, sent) until it switches, then into the ring. While on
 *      the library it may ask: DRAINQ(sent, id). On DRAINED(got, id) answering its question it
 *      switches if sent == got (every library message it sent was matched), else JOINOFF(id).
 *      Any other DRAINED gets JOINOFF(id).
 *   R: counts the library messages it matched (got) and its receives the library holds (open).
 *      A question is answered once got >= the question's count and open == 0: R then reads the
 *      ring (AWAIT) and sends DRAINED(got, id). The first record in the ring moves its receives
 *      to the ring (RING). JOINOFF for the awaited question, or a new DRAINQ with the ring
 *      empty, takes it back to the library; so does a library message from S that R's receive
 *      finds with the ring empty (S sent it before it could switch, and its count then differs
 *      from R's answer: it will not switch), which R matches at once. Else S may never answer:
 *      it may wait inside a blocking library call (a communicator's creation) for R, whose
 *      receive waits for that very message. Receives R posts after the pair was made are the
 *      shim's: on the library they match by matched probe (PROBE), never inside the library.
 *   S, switched, may close the ring again (a leave, a synchronous send whose ACK could only take
 *      the library: pairs.c): a MARK after its ring messages, then the library, counting again,
 *      and it may ask again (CLOSES times at most). R reads the ring up to the MARK, then its
 *      receives go back to PROBE; a question that comes before R read the MARK is taken then.
 *      Library messages R finds while it reads the ring (RING), or awaits the ring's first
 *      record (AWAIT) with records in the ring already, are parked (migrate.c ivs_park): PROBE
 *      receives match none of them until the MARK is read.
 *   R's VM may leave (LEAVES times at most; migrate.c): the broker flags it in the region and
 *      may take the flag back (a rollback). Each rank notices the flag at some point while it is
 *      set, and keeps what it saw (leave_seen, self_leaving) until the pair is made anew. S, once
 *      it saw the flag, neither asks nor switches (pair_shares) and closes a switched ring with
 *      its MARK; R, once it saw it, answers no question and gives the region up (release_ready)
 *      once it is not awaiting a ring it told S to use (ivs_join_busy) and has read S's MARK.
 *      From then on nobody touches that ring. R then joins the region again (a rollback after
 *      the release, or the VM back on S's host): R's side of the pair starts anew (peer_join:
 *      ivs_join_reset, its questions and answers forgotten), and S's does once S notices the
 *      join while its direction is on the library (join_pending waits for that); until then S
 *      may go on with a question of the earlier pair, which R, reset, answers as a new one.
 *      A flag taken back (migrate.c's ANEW) that S saw and R did not (R outside MPI through the
 *      drain) leaves R in its slot: S, its direction on the library, sends ANEW. R, unless it saw
 *      its own flag (it drops ANEW: it releases and joins again), takes it (join_pending): it
 *      answers nothing and defers questions (JOINOFF it takes) until its side is on the library,
 *      then starts anew as at a join and takes the deferred question (the newest); it answers
 *      ANEW_OK at once, on which S starts anew. And if R saw its flag and S did not, R, waiting
 *      for S's MARK to release, sends ANEW from the flagged VM: S closes the ring, and R's join
 *      makes the pair anew.
 * The library matches a message to the earliest posted receive of its tag at arrival, so a
 * matched probe sees only messages no library receive is posted for.
 *
 * Checked exhaustively: every receive matches the oldest unmatched message of its tag (MPI's
 * non-overtaking rule), every message is received once, and nobody waits forever (no invalid end
 * state). Broken variants, each must fail: NO_OPEN_CHECK (answer with receives inside the
 * library: one waits there for a message that takes the ring), NO_SENT_CHECK (switch without
 * sent == got: a ring message overtakes a library one), NO_PROBE_MODE (receives posted while the
 * pair is being made go into the library), NO_PARK_AWAIT (with CLOSES 1: a probe in AWAIT
 * matches a library message S sent after closing the ring, ahead of what it wrote there),
 * NO_AWAIT_BUSY and NO_MARK_WAIT (with LEAVES 1: R releases while awaiting the ring's first
 * record, or before it read S's MARK; S then writes into a ring its reader gave up). With LEAVES,
 * also checked: nothing is written into a ring after R released it, and a released ring is empty.
 * REACH_REJOIN must fail too: it asserts that the search never moves R to a ring again after R
 * released the region behind a ring it had read (switch, leave, join, switch); so must
 * REACH_ANEW: never a ring again after a pair made anew by ANEW behind a ring R had read; and
 * REACH_UNPARK: never a library message matched while awaiting the ring's first record.
 * BLOCKING_S: after its last message S may block in a library call until R has received
 * everything (MPICH's pingping test creating its next communicator); the check then holds too,
 * and PARK_AWAIT_ALWAYS (R parks every library message while awaiting, as the shim did before
 * 2026-12-07) must deadlock with it.
 */

#define N 4                        /* messages S sends */
#define TAG(i) ((i) % 2)           /* message i's tag: 0, 1, 0, 1 */
#define RT(k) ((k) == 0 -> 1 : ((k) == 3 -> 1 : 0)) /* the tag of R's receive k: 1, 0, 0, 1 */
#ifndef PRE
#define PRE 1                      /* R's receives posted inside the library before the pair was made */
#endif
#ifndef W
#define W 2                        /* R's receives outstanding at most (PRE included) */
#endif
#ifndef MAXASK
#define MAXASK 3                   /* questions S asks at most (asking again is S's choice) */
#endif
#ifndef CLOSES
#define CLOSES 0                   /* times S closes the ring again after a switch */
#endif
#ifndef LEAVES
#define LEAVES 0                   /* times R's VM is flagged leaving */
#endif
#define MARK 2                     /* the tag of a ring's MARK record (no receive has it) */

#ifdef NO_OPEN_CHECK
#define OPEN_OK true /* broken on purpose */
#else
#define OPEN_OK (open == 0)
#endif
#ifdef NO_SENT_CHECK
#define SENT_OK true /* broken on purpose */
#else
#define SENT_OK (sent == got)
#endif

#ifdef NO_AWAIT_BUSY
#define RELEASE_OK (rx != RING) /* broken on purpose */
#elif defined(NO_MARK_WAIT)
#define RELEASE_OK (rx != AWAIT) /* broken on purpose */
#else
#define RELEASE_OK (rx != AWAIT && rx != RING)
#endif

#define LIB 1   /* a receive inside the library */
#define PROBE 2 /* the shim's, matching library messages by matched probe */
#define SHM 3   /* the shim's, matching ring messages */

#define NONE 0
#define ASKED 1
#define AWAIT 2
#define RING 3

mtype = { DRAINQ, JOINOFF, ANEW };
chan anew_ok = [LEAVES + 1] of { bit }; /* R -> S: ANEW taken */
chan r_anew = [LEAVES + 1] of { bit };  /* R -> S: ANEW from the flagged VM */

chan lib = [N] of { byte, byte };  /* seq, tag: sent by the library, not matched yet */
chan ring = [N] of { byte, byte };
chan s2r = [MAXASK * 2 + LEAVES] of { mtype, byte, byte };
chan r2s = [MAXASK] of { byte, byte };

byte received = 0;
bool leaving = false;  /* R's VM flagged leaving in the region */
bool released = false; /* R gave the region up (its slot is free): its rings are nobody's */
byte epoch = 0;        /* times R joined the region again */
bool ring_left = false; /* R released the region after reading a ring (for REACH_REJOIN) */
bool ringed = false;    /* R read a ring in this epoch (for REACH_REJOIN) */
bool ring_anew = false; /* R made the pair anew after reading a ring (for REACH_ANEW) */

active proctype S() {
	byte i = 0, sent = 0, ask = 0, asks = 0, closes = 0, got, id, seen = 0;
	bool on_ring = false, asked = false, flagged = false; /* flagged: S saw R's VM leaving */
	bool anew_sent = false, blocked = false;
end:
	do
#ifdef BLOCKING_S
	/* after its last message S enters a blocking library call that R joins once it has
	 * received everything (a communicator's creation): S answers nothing meanwhile */
	:: i == N && !blocked -> blocked = true; received == N
#endif
	:: i < N ->
		if
		:: on_ring -> assert(!released); ring ! i, TAG(i)
		:: else -> lib ! i, TAG(i); sent++
		fi;
		i++
	:: !on_ring && !asked && asks < MAXASK && !flagged && !released ->
		asks++;
		ask++;
		s2r ! DRAINQ, sent, ask;
		asked = true
	:: on_ring && closes < CLOSES ->
		ring ! 0, MARK;
		on_ring = false;
		closes++
	:: leaving && !flagged -> flagged = true /* S's scan of the region */
	:: on_ring && flagged -> /* the leave closes the ring */
		assert(!released);
		ring ! 0, MARK;
		on_ring = false
	:: !on_ring && seen != epoch -> /* S notices R's join: the pair starts anew */
		seen = epoch;
		flagged = false;
		anew_sent = false;
		asked = false
	:: atomic { !on_ring && flagged && !leaving && !released && !anew_sent -> /* the flag taken back, R in its slot */
		anew_sent = true;
		s2r ! ANEW, 0, 0 }
	:: anew_ok ? _ ->
		if
		:: flagged && anew_sent && !released -> /* R took it: the pair starts anew */
			flagged = false;
			anew_sent = false;
			asked = false
		:: else -> skip
		fi
	:: r_anew ? _ -> flagged = flagged || !released /* close_pair: the MARK follows */
	:: r2s ? got, id ->
		if
		:: asked && id == ask && SENT_OK && !flagged && !released ->
			on_ring = true;
			asked = false
		:: else ->
			s2r ! JOINOFF, 0, id;
			if
			:: asked && id == ask -> asked = false
			:: else -> skip
			fi
		fi
	od
}

byte mode[N];
bool done[N];
byte last[2] = 255; /* the last seq matched per tag */

/* Receive k may match now: posted, not done, no earlier outstanding receive of its tag, and a
 * message for it where its mode looks. */
#define EARLIER(k, j) ((j) < (k) && !done[j] && RT(j) == RT(k))
#define FIRST(k) (!EARLIER(k, 0) && !EARLIER(k, 1) && !EARLIER(k, 2))
#ifdef NO_PARK_AWAIT
#define PARKED (rx == RING) /* broken on purpose: the code before this model had it */
#elif defined(PARK_AWAIT_ALWAYS)
#define PARKED (rx == AWAIT || rx == RING) /* broken on purpose: the code before 2026-12-07 */
#else
#define PARKED (rx == AWAIT && len(ring) > 0 || rx == RING)
#endif
#define CAN(k) (k < posted && !done[k] && FIRST(k) && \
                ((mode[k] == LIB && lib ?? [_, eval(RT(k))]) || (mode[k] == PROBE && !PARKED && lib ?? [_, eval(RT(k))]) || \
                 (mode[k] == SHM && ring ?? [_, eval(RT(k))])))

/* Nothing older than message s of its tag is left unmatched, on either path. */
inline older_gone(s) {
	n = 0;
	do
	:: n < s -> assert(TAG(n) != TAG(s) || !(lib ?? [eval(n), _] || ring ?? [eval(n), eval(TAG(n))])); n++
	:: else -> break
	od
}

inline match(k, s, got, open) {
	if
	:: mode[k] == SHM ->
		assert(!released);
		ring ?? s, eval(RT(k))
	:: else ->
		lib ?? s, eval(RT(k));
		got++;
		if
		:: mode[k] == LIB -> open--
		:: else -> skip
		fi;
		if
		:: rx == AWAIT -> /* found with the ring empty: S sent it before switching, so it will
		                     not switch on this answer (its count differs); R stops awaiting */
#ifdef REACH_UNPARK
			assert(false);
#endif
			rx = NONE
		:: else -> skip
		fi
	fi;
	assert(last[RT(k)] == 255 || s > last[RT(k)]);
	older_gone(s);
	last[RT(k)] = s;
	done[k] = true;
	received++
}

/* R's pair made anew: the question deferred meanwhile (the newest) is taken now. */
inline take_deferred() {
	if
	:: dq -> dq = false; rx = ASKED; need = dneed; rask = did
	:: else -> skip
	fi
}

active proctype R() {
	byte rx = NONE, need = 0, rask = 0, got = 0, open = 0, posted = 0, leaves = 0, n, id, s, k;
	bool asked_on_ring = false; /* a question came while reading the ring: taken at its MARK */
	bool flagged = false;       /* R saw its VM leaving */
	bool pending = false;       /* ANEW taken: the pair is made anew once R's side is on the library */
	bool dq = false;            /* a question deferred meanwhile: dneed, did */
	bool ranew = false;         /* R, flagged, asked S to close (ANEW from the flagged VM) */
	byte dneed, did;
	mtype kind;
	/* the receives posted before the pair was made: inside the library */
	do
	:: posted < PRE -> mode[posted] = LIB; open++; posted++
	:: else -> break
	od;
	do
	:: received == N -> break
	/* the program posts its next receive */
	:: atomic { posted < N && posted - received < W ->
		if
		:: rx == RING -> mode[posted] = SHM
#ifdef NO_PROBE_MODE
		:: else -> mode[posted] = LIB; open++ /* broken on purpose */
#else
		:: else -> mode[posted] = PROBE
#endif
		fi;
		posted++ }
	/* a receive matches (the library's at arrival, the shim's by probe or from the ring) */
	:: atomic { CAN(0) -> k = 0; match(k, s, got, open) }
	:: atomic { CAN(1) -> k = 1; match(k, s, got, open) }
	:: atomic { CAN(2) -> k = 2; match(k, s, got, open) }
	:: atomic { CAN(3) -> k = 3; match(k, s, got, open) }
	/* the first ring record: receives move to the ring */
	:: atomic { rx == AWAIT && nempty(ring) ->
#ifdef REACH_REJOIN
		assert(!ring_left);
#endif
#ifdef REACH_ANEW
		assert(!ring_anew);
#endif
		ringed = true;
		rx = RING;
		k = 0;
		do
		:: k < N -> if :: mode[k] == PROBE && !done[k] -> mode[k] = SHM :: else -> skip fi; k++
		:: else -> break
		od }
	/* the ring's MARK: back to the library; parked messages are matched from now on */
	:: atomic { rx == RING && ring ? [_, MARK] ->
		ring ? _, MARK;
		k = 0;
		do
		:: k < N -> if :: mode[k] == SHM && !done[k] -> mode[k] = PROBE :: else -> skip fi; k++
		:: else -> break
		od;
		if
		:: asked_on_ring -> rx = ASKED; asked_on_ring = false
		:: else -> rx = NONE
		fi }
	/* answer a question */
	:: atomic { rx == ASKED && got >= need && OPEN_OK && !flagged && !released && !pending -> rx = AWAIT; r2s ! got, rask }
	/* the broker flags R's VM leaving or takes the flag back; R sees it, releases, joins again */
	:: atomic { leaves < LEAVES && !leaving && !released -> leaving = true; leaves++ }
	:: atomic { leaving && !released -> leaving = false }
	:: atomic { leaving && !flagged -> flagged = true }
	:: atomic { flagged && !released && RELEASE_OK -> assert(empty(ring)); released = true; ring_left = ring_left || ringed }
	:: atomic { flagged && !leaving && !released && !ranew && rx == RING -> ranew = true; r_anew ! 1 }
	:: atomic { released ->
		released = false;
		leaving = false;
		flagged = false;
		ringed = false;
		epoch++;
		pending = false; /* its slot was given up: a join makes the pair anew */
		ranew = false;
		rx = NONE;
		asked_on_ring = false;
		rask = 0;
		take_deferred() }
	/* the shim's messages; a question that finds the ring written is read after the ring's
	 * first record (join.c moves the receives first) */
	:: atomic { pending && rx != AWAIT && rx != RING ->
		pending = false;
		ring_anew = ring_anew || ringed;
		rx = NONE;
		asked_on_ring = false;
		rask = 0;
		take_deferred() }
	:: nempty(s2r) && (rx != AWAIT || empty(ring)) -> s2r ? kind, n, id;
		if
		:: kind == ANEW && !flagged && !released && !pending -> pending = true; anew_ok ! 1
		:: kind == ANEW && (flagged || released || pending) -> skip
		:: kind == DRAINQ && pending -> dq = true; dneed = n; did = id
		:: kind == DRAINQ && !pending && rx != RING -> rx = ASKED; need = n; rask = id
		:: kind == DRAINQ && !pending && rx == RING -> asked_on_ring = true; need = n; rask = id
		:: kind == JOINOFF && rx == AWAIT && id == rask -> rx = NONE
		:: else -> skip
		fi
	od;
	assert(empty(lib) && (empty(ring) || len(ring) == 1 && ring ? [_, MARK])) /* a MARK may be left unread */
}
