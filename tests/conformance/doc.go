// Package conformance holds the point-to-point conformance tests of ivshim: the C MPI programs
// tests/mpi/p2p_*.c, run on an emulated cluster of 2 hosts × 2 VMs (one rank per VM, so each
// rank has one co-located peer and two remote ones) under Open MPI and MPICH, once without the
// shim and once with it preloaded.
//
// Every program checks all it receives itself and rank 0 prints a deterministic report
// (tests/mpi/p2p_check.h): a summary line with the number of checks and failures, then one line
// per failed check. MPI semantics do not depend on where a peer runs, so the report must be the
// same with and without the shim. The test requires both runs to succeed with identical reports
// and, from the shim's statistics (IVSHIM_VERBOSE=1), that every rank really moved messages
// through shared memory as well as through the MPI library.
//
// The package has only tests. They build the programs themselves, need root (network
// namespaces) and the shim libraries that make builds into build/lib (make test builds them
// first), and clean up the cluster they create.
package conformance
