// Package model checks the shim's protocols with the spin model checker (Debian package spin)
// before they are trusted. Each model is verified exhaustively (assertions and invalid end
// states), and variants broken on purpose must fail, so a model that can no longer find an
// error does not pass unnoticed.
//
// switch.pml is the sender side of the path switch a migration uses (cgo/front/migrate.c): for one
// ordered pair S -> R, S leaves the region by appending MARK to the pair's ring and sending by
// the MPI library from then on; R parks the library's messages from S until it reads the
// MARK. S returns to the region by appending JOIN(k), k counting per communicator the
// messages it sent by the library since the MARK (the library orders messages only per
// communicator); R delivers those before it reads the ring again. The check: on each of two
// communicators every message is delivered exactly once and in send order, without deadlock,
// over up to five switches. The broken variants (no parking; JOIN without its counts; library
// messages matched while a JOIN waits in the ring) let messages overtake each other, and spin
// finds it. The last one was a real hole in this model's first version, hidden by a ring of
// two records that could not hold a JOIN, a DATA and a MARK at once (TestSwitchProtocolRingCapacity).
//
// migrate.pml is the whole migration protocol for a pair of ranks, the specification the shim's
// renegotiation follows (cgo/front/migrate.c implements its leave part: MARK, parking, ACKs on
// the current path, the leaving rank's release; not yet the JOIN of a rank that came back): both directions at once, the leaving
// rank's release (its own MARK written, the peer's MARK read, the direction sealed by a CAS the
// peer's JOIN also needs), synchronous sends and their ACKs on the current path, probes,
// rollback and return of the VM with a fresh ring pair per epoch while the peer may still drain
// the old one, and JOINs naming the epoch of the MARK they follow. Checking it found three rules
// the first draft lacked: a release must name the leave it answers (a stale one let the broker
// migrate while the peer had joined again), the JOIN record and the direction's state word
// must be published together, and a reply MARK (closing the own direction on reading the
// peer's) deadlocked both ranks when written into a full ring; it is gone, as every rank closes
// on the region's leaving flag. Six broken variants must fail.
//
// collswitch.pml is the agreement that moves a communicator's collectives to the library at
// one index on every member (migrate.c, "Collectives"): three members, one leaving, one on
// another host, programs where a Bcast root runs ahead and then enters a library collective.
// Safety and deadlock freedom hold exhaustively, with members answering inside library
// collectives as the shim's polling wait lets them (no index run on two plans, no decision
// behind a member, no area use after the release; three broken variants must fail). Safety
// holds without that too; deadlock freedom does not: where the library call is one the shim
// leaves blocking (communicator creation, one-sided synchronisation, collective I/O), spin
// finds a deadlock of a valid program, the shim's stated limit, pinned by
// TestCollSwitchKnownDeadlock. Later leaves start new rounds of the agreement on the plan the
// last one made: two rounds are checked by default, three with -rounds=3 (the third leave the
// coordinator's own; about 2e8 states in all, too costly for every run).
package model
