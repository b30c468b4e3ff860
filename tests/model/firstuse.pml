/*
 * Rings on first use (cgo/front/pairs.c), one direction S -> R of a pair, with a migration that
 * may flag the pair's VM leaving at any moment (migrate.c's close):
 *   S: its messages wait in its queue until the direction has an answer. It asks once, with its
 *      first queued message (the bit in R's ring_wanted). Answer RING: the queue goes into the
 *      ring. Answer NET: the queue goes by the library, in order, then every later message. At
 *      the flag: a direction with its ring closes (later messages by the library at once, the
 *      queue into the ring, then a MARK); one without closes only once it has an answer (DEFER),
 *      asked or not, since R may have made the ring unasked.
 *   R: answers the request with a ring or, when the heap is full, NET (either may happen),
 *      unless it has seen the flag; it may also answer before S asks (it makes the ring it needs
 *      for the ACKs of its own synchronous sends); at the flag, a direction without a ring gets
 *      NET and R reads
 *      the library from then on; with a ring, R reads it up to the MARK first. R matches library
 *      messages only in library mode (the shim parks earlier ones).
 * The pair word is R's alone: 0 -> RING or 0 -> NET, once.
 *
 * Checked exhaustively: every message arrives exactly once and in send order, nobody waits
 * forever, nothing is left in a ring or the library at the end. Broken variants that must fail:
 * NO_DEFER (S closes at the flag before it has an answer: its later messages take the library
 * while its queue may still go there after them, or R waits for the MARK in a ring it made
 * unasked), NO_NET_AT_LEAVE (R switches to the library at the flag without answering: a waiting
 * S never learns).
 */

#ifndef N
#define N 3 /* messages S sends */
#endif

mtype = { DATA, MARK };
#define NONE 0
#define RING 1
#define NET 2

chan ring = [N + 1] of { mtype, byte };
chan lib = [N] of { byte };

byte pair = NONE;  /* the pair word (R writes) */
bool want;         /* S's bit in R's ring_wanted */
bool flag;         /* the broker flagged the pair's VM leaving */
byte got;          /* messages R matched, in order */

active proctype Broker()
{
	if
	:: flag = true
	:: skip
	fi
}

bool sdone; /* S sent everything on its way */

active proctype S()
{
	byte next = 0;       /* messages the program has sent */
	byte head = 0, qend = 0; /* queue: messages [head, qend) wait for the direction's path */
	byte mode = NONE;    /* the direction's path, once S acted on the answer */
	bool asked, seen, closing, marked;
	do
	:: atomic { next < N && !closing -> next++; qend++;          /* a send: queued, and the ring */
		if                                                          /* asked for in the same step */
		:: mode == NONE && !asked -> want = true; asked = true     /* (push_sends, tx_ready) */
		:: else
		fi }
	:: atomic { next < N && closing -> lib ! next; next++ }       /* closing: the library at once */
	:: atomic { mode == NONE && pair == RING -> mode = RING }
	:: atomic { mode == NONE && pair == NET -> mode = NET;         /* the queue, in order, then all */
		do
		:: head < qend -> lib ! head; head++
		:: else -> break
		od;
		closing = true; marked = true }
	:: atomic { head < qend && mode == RING -> ring ! DATA, head; head++ }
	:: atomic { flag && !seen -> seen = true;
#ifdef NO_DEFER
		closing = true
#else
		if
		:: mode == RING -> closing = true
		:: else /* no answer acted on yet, asked or not (R may have made a ring unasked): close
		           once there is one; R gives one at its own flag if it has not */
		fi
#endif
	   }
	:: atomic { seen && !closing && mode != NONE -> closing = true }
	:: atomic { closing && !marked && mode != RING && head == qend -> marked = true } /* no ring: no MARK */
	:: atomic { closing && !marked && mode == RING && head == qend -> ring ! MARK, 0; marked = true }
	:: atomic { next == N && head == qend && (!closing || marked) -> sdone = true; break }
	od
}

active proctype R()
{
	byte mode = RING;  /* RING: read the ring (if one is made); NET: read the library */
	bool seen;
	byte seq;
	do
	:: atomic { want && !seen && pair == NONE -> want = false;
		if
		:: pair = RING
		:: pair = NET; mode = NET /* no room */
		fi }
	:: atomic { !seen && pair == NONE -> /* unasked: R makes the ring it needs for the ACKs of */
		if                                /* its own synchronous sends to S (pairs.c) */
		:: pair = RING
		:: pair = NET; mode = NET
		fi }
	:: atomic { flag && !seen -> seen = true;
		if
#ifdef NO_NET_AT_LEAVE
		:: pair == NONE -> mode = NET
#else
		:: pair == NONE -> pair = NET; mode = NET
#endif
		:: else
		fi }
	:: atomic { mode == RING && ring ? [DATA, _] -> ring ? DATA, seq; assert(seq == got); got++ }
	:: atomic { mode == RING && ring ? [MARK, _] -> ring ? MARK, _; mode = NET }
	:: atomic { mode == NET && nempty(lib) -> lib ? seq; assert(seq == got); got++ }
	:: atomic { got == N && sdone && empty(ring) -> break }
	od;
	assert(empty(ring) && empty(lib))
}
