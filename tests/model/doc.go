// Package model checks the shim's protocols with the spin model checker (Debian package spin)
// before they are trusted. Each model is verified exhaustively (assertions and invalid end
// states), and variants broken on purpose must fail, so a model that can no longer find an
// error does not pass unnoticed.
//
// switch.pml is the path switch migration will use (not implemented in the shim yet): for one
// ordered pair S -> R, S leaves the region by appending MARK to the pair's ring and sending by
// the MPI library from then on; R parks the library's messages from S until it reads the
// MARK. S returns to the region by appending JOIN(k), k counting per communicator the
// messages it sent by the library since the MARK (the library orders messages only per
// communicator); R delivers those before it reads the ring again. The check: on each of two
// communicators every message is delivered exactly once and in send order, without deadlock,
// over up to five switches. The broken variants (no parking; JOIN without its counts) let
// messages overtake each other, and spin finds it.
package model
