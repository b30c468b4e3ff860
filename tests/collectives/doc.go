// Package collectives tests that every MPI collective gives the MPI library's own result when
// the ivshim shim is preloaded: the ones the shim implements in shared memory (Barrier, Bcast,
// Reduce, Allreduce, Gather, Allgather, Scatter, Alltoall, Reduce_scatter_block,
// Reduce_scatter) and the v-variants it passes to the library.
//
// The work is done by one C program, tests/mpi/coll_check.c, which compares every collective
// with the library's nonblocking twin (which the shim never intercepts) and with independently
// computed values, over datatypes, ops, sizes up to 1 MiB, roots, communicators that split the
// ranks' hosts in every way, MPI_IN_PLACE, derived datatypes and user-defined ops. It prints
// one "coll_<collective>: N ranks, C checks, F failures" line per collective and a FAIL line per
// failed check. The tests here build it for Open MPI and MPICH and run it with 4 ranks:
//
//   - natively without the shim: the baseline, which must pass (it validates the program);
//   - natively with the shim, all ranks sharing one region (one host of 4 VMs) and with ranks
//     {0,1} and {2,3} on two regions (two hosts of 2 VMs, so the shim's inter-host phase runs
//     through the library among one leader per host);
//   - on emulated clusters (package cluster) of 2 hosts x 2 VMs and 1 host x 4 VMs, with the
//     shim.
//
// Every run with the shim must exit 0, print exactly the baseline's report (the program's
// output does not depend on the layout or the shim), and show in the shim's statistics
// (IVSHIM_VERBOSE=1) that every rank ran collectives on the shared-memory path and passed
// others to the library.
//
// Open MPI runs the program's default matrix; MPICH runs --quick, because MPICH 4.0 spin-waits
// and 4 ranks on 2 cores cost it milliseconds per collective. -short runs --quick everywhere
// and only the 2 x 2 cluster with Open MPI. The shim libraries come from the module's
// build/lib (make build), or from $IVSHIM_TEST_LIBDIR to test another build; the native runs
// need MPI compilers and launchers, the cluster runs root as well. Every job has a timeout and its process tree is killed when it expires; an
// MPICH job that hangs in MPI_Finalize after a complete report (a known MPICH+UCX problem) is
// killed and accepted. Region files are removed when a test ends.
package collectives
