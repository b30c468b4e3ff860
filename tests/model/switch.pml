/*
 * Path switch between the region (SHM) and the MPI library (NET) for one ordered pair of ranks
 * S -> R, as migration will use it. Not implemented in the shim yet: this model is the
 * protocol's specification, checked before it is trusted (tests/model runs spin).
 *
 * S sends N messages, each on one of C communicators; MPI orders messages per (source,
 * communicator) only. The pair's ring is one FIFO for all communicators; the library keeps
 * one order per communicator, so NET is a FIFO per communicator. S's path starts as SHM and
 * may switch before any message:
 *   leave (SHM -> NET): S appends MARK to the ring after every ring message it sent, then
 *     sends by NET, counting its NET messages per communicator.
 *   join (NET -> SHM): S appends JOIN(k[0..C-1]) to the ring, k[c] being the messages it sent
 *     by NET on communicator c since the MARK, then sends by ring again.
 * R delivers (the application's receives match) as follows:
 *   SHM mode: the next ring record. DATA is delivered; MARK switches R to NET mode. Messages
 *     from S that the library holds are not matched in SHM mode: the shim takes them out of
 *     the library's matching (MPI_Improbe) and parks them in arrival order.
 *   NET mode: messages from S by NET, any communicator first (the application chooses), each
 *     communicator in the library's order. A JOIN at the ring's head sets the targets; once R
 *     has delivered k[c] NET messages on every communicator c since the MARK it returns to
 *     SHM mode. No DATA record can precede the JOIN. Before the JOIN is read, a library message
 *     is matched only while the ring holds no JOIN: S may already have joined, sent by ring and
 *     left again, and its newer library messages must wait for those ring messages.
 * Channels have bounded capacity (ring space, the library's flow control): a full channel
 * blocks its sender, as both do.
 *
 * Checked: on every communicator every message is delivered exactly once and in send order
 * (the assertions in R), no deadlock (spin's invalid end states), nothing is left on either
 * path, and R ends in the mode S ended in.
 * Not modelled: synchronous sends (their ACK travels back the same way, as a message of the
 * reverse direction), and the reverse direction, which runs the same protocol independently.
 */

#ifndef N
#define N 6        /* messages S sends */
#endif
#ifndef SWITCHES
#define SWITCHES 3 /* path changes S may make (leave, join, leave) */
#endif
#define C 2        /* communicators */
#ifndef RING_CAP
#define RING_CAP 3 /* 2 hid a reordering (a JOIN, a DATA and a MARK must fit) */
#endif
#define NET_CAP 2
#define UNSET 255
/* In NET mode with no JOIN read yet, a library message is matched only while no JOIN is at the
 * ring's head: the shim looks at the ring after the message arrived (MPI_Improbe parks it
 * first), and S writes its JOIN before any later library message, so a message matched while
 * no JOIN is visible was sent before it and is counted in it. */
#ifdef NO_JOIN_CHECK
#define NO_JOIN_YET true /* broken on purpose */
#else
#define NO_JOIN_YET (target[0] != UNSET || empty(ring))
#endif

mtype = { DATA, MARK, JOIN };

/* kind, communicator (DATA) or k[0] (JOIN), message number (DATA) or k[1] (JOIN) */
chan ring = [RING_CAP] of { mtype, byte, byte };
chan net[C] = [NET_CAP] of { byte };

bool s_net = false; /* S sends by NET */
bool r_net = false; /* R delivers from NET */

active proctype S() {
	byte i = 0, c, switches = 0;
	byte seq[C];     /* next message number per communicator */
	byte sent_net[C];
	do
	:: i < N ->
		if
		:: switches < SWITCHES && !s_net -> /* leave */
			ring ! MARK, 0, 0; s_net = true; sent_net[0] = 0; sent_net[1] = 0; switches++
		:: switches < SWITCHES && s_net -> /* join */
			ring ! JOIN, sent_net[0], sent_net[1]; s_net = false; switches++
		:: true -> skip
		fi;
		if
		:: c = 0
		:: c = 1
		fi;
		if
		:: s_net -> net[c] ! seq[c]; sent_net[c]++
		:: else -> ring ! DATA, c, seq[c]
		fi;
		seq[c]++;
		i++
	:: i == N -> break
	od
}

active proctype R() {
	byte delivered = 0, c, v;
	byte next[C], got[C], target[C];
	mtype kind;
	target[0] = UNSET; target[1] = UNSET;
	do
	:: delivered == N -> break
	:: !r_net && ring ? [kind, c, v] ->
		ring ? kind, c, v;
		if
		:: kind == DATA -> assert(v == next[c]); next[c]++; delivered++
		:: kind == MARK -> r_net = true; got[0] = 0; got[1] = 0; target[0] = UNSET; target[1] = UNSET
		:: kind == JOIN -> assert(false) /* a JOIN always follows a MARK */
		fi
	:: r_net && target[0] == UNSET && ring ? [JOIN, c, v] -> /* the JOIN at the ring's head */
		ring ? JOIN, target[0], target[1]
#ifdef NO_COUNT
		/* Broken on purpose (a negative control): back to SHM at once, ignoring the counts. */
		target[0] = got[0]; target[1] = got[1]
#endif
	:: r_net && target[0] == UNSET && ring ? [DATA, c, v] -> assert(false) /* ring data before its JOIN */
	:: r_net && got[0] == target[0] && got[1] == target[1] ->
		r_net = false; target[0] = UNSET; target[1] = UNSET
	/* One branch per communicator: the application may receive on either first. */
	:: r_net && got[0] != target[0] && NO_JOIN_YET && net[0] ? [v] ->
		net[0] ? v; assert(v == next[0]); next[0]++; got[0]++; delivered++
	:: r_net && got[1] != target[1] && NO_JOIN_YET && net[1] ? [v] ->
		net[1] ? v; assert(v == next[1]); next[1]++; got[1]++; delivered++
#ifdef NO_PARKING
	/* Broken on purpose (a negative control): match NET messages in SHM mode. */
	:: !r_net && net[0] ? [v] -> net[0] ? v; assert(v == next[0]); next[0]++; delivered++
#endif
	od;
	/* Nothing is left behind on either path, and R ends where S ended (S switches only
	 * before a message, so R has seen its last switch). */
	assert(len(net[0]) == 0 && len(net[1]) == 0 && len(ring) == 0);
	assert(r_net == s_net)
}
