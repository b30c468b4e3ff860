/*
 * Path switch between the region (SHM) and the MPI library (NET) for one ordered pair of ranks
 * S -> R on one communicator, as migration will use it. Not implemented in the shim yet: this
 * model is the protocol's specification, checked before it is trusted (tests/model runs spin).
 *
 * S sends messages 0..N-1. Its path starts as SHM and may switch at any point:
 *   leave (SHM -> NET): S appends MARK to the ring after every ring message it sent, then
 *     sends by NET. S counts its NET messages from here on.
 *   join (NET -> SHM): S appends JOIN(k) to the ring, k = the messages it sent by NET since
 *     the MARK, then sends by ring again.
 * R delivers (matches) in this order:
 *   SHM mode: the next ring record; a DATA record is delivered; MARK switches R to NET mode.
 *     Messages from S that the library holds (NET) are not matched in SHM mode: the shim
 *     takes them out of the library's matching (MPI_Improbe) and parks them in arrival order.
 *   NET mode: messages from S by NET, in the library's order (non-overtaking on one
 *     communicator). A JOIN(k) at the ring's head sets the target; once R has delivered k NET
 *     messages since the MARK it returns to SHM mode. No DATA record can precede the JOIN.
 * Both channels are FIFO with bounded capacity (ring space, library flow control): a full
 * channel blocks the sender, which is how both behave.
 *
 * Checked: every message is delivered exactly once and in send order (the assertion in R), no
 * deadlock (spin's invalid end states), and R ends in the mode S ended in.
 * Not modelled: synchronous sends (their ACK travels back the same way), several
 * communicators (each has its own count in JOIN), and the reverse direction, which runs the
 * same protocol independently.
 */

#ifndef N
#define N 6        /* messages S sends */
#endif
#ifndef SWITCHES
#define SWITCHES 3 /* path changes S may make (leave, join, leave) */
#endif
#define RING_CAP 2
#define NET_CAP 2

mtype = { DATA, MARK, JOIN };

chan ring = [RING_CAP] of { mtype, byte }; /* kind, message number or JOIN's count */
chan net = [NET_CAP] of { byte };

bool s_net = false; /* S sends by NET */
bool r_net = false; /* R delivers from NET */

active proctype S() {
	byte i = 0, sent_net = 0, switches = 0;
	do
	:: i < N ->
		if
		:: switches < SWITCHES && !s_net -> /* leave */
			ring ! MARK, 0; s_net = true; sent_net = 0; switches++
		:: switches < SWITCHES && s_net -> /* join */
			ring ! JOIN, sent_net; s_net = false; switches++
		:: true -> skip
		fi;
		if
		:: s_net -> net ! i; sent_net++
		:: else -> ring ! DATA, i
		fi;
		i++
	:: i == N -> break
	od
}

active proctype R() {
	byte next = 0, got_net = 0, target = 255, v;
	mtype kind;
	do
	:: next == N -> break
	:: !r_net && ring ? [kind, v] ->
		ring ? kind, v;
		if
		:: kind == DATA -> assert(v == next); next++
		:: kind == MARK -> r_net = true; got_net = 0; target = 255
		:: kind == JOIN -> assert(false) /* a JOIN always follows a MARK */
		fi
	:: r_net && target == 255 && ring ? [JOIN, v] -> /* the JOIN at the ring's head */
		ring ? JOIN, target
#ifdef NO_COUNT
		/* Broken on purpose (a negative control): back to SHM at once, ignoring the count. */
		target = got_net
#endif
	:: r_net && target == 255 && ring ? [DATA, v] -> assert(false) /* ring data before its JOIN */
	:: r_net && got_net == target -> r_net = false; target = 255
	:: r_net && got_net != target && net ? [v] ->
		net ? v; assert(v == next); next++; got_net++
#ifdef NO_PARKING
	/* Broken on purpose (the test's negative control): match NET messages in SHM mode. */
	:: !r_net && net ? [v] -> net ? v; assert(v == next); next++
#endif
	od;
	/* Nothing is left behind on either path, and R ends where S ended (S switches only
	 * before a message, so R has seen its last switch). */
	assert(len(net) == 0 && len(ring) == 0);
	assert(r_net == s_net)
}
