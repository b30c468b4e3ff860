// Package fortran checks that MPI programs written in Fortran go through the shim, under both
// MPI families and with each Fortran binding a library provides (mpif.h, use mpi, use mpi_f08).
//
// Open MPI's Fortran bindings call PMPI_* directly, and so do MPICH's mpi_f08 routines without a
// choice buffer, so the shim defines those Fortran entry points itself (cgo/front/fortran.c).
// TestExports checks statically, from the libraries' dynamic symbol tables, that the shim defines
// every Fortran name the libraries export for a routine it interposes in C, and nothing named
// PMPI_*. TestPingPong builds tests/mpi/f_pingpong.F90 once per binding, runs it on an emulated
// cluster of one host with two VMs (one rank each) without and with the shim, and requires the
// same report from both runs and, with the shim, every message and collective the program
// counted on each rank in the shim's region statistics and none in its library statistics: a
// Fortran call that went around the shim would be missing there. Where the shim provides a
// binding, its Waitany/Waitsome/Testsome indices must be the standard's even where the library's
// own binding is known to get them wrong (MPICH 4.0).
//
// The package has only tests. TestPingPong needs root (network namespaces), gfortran and the
// shim libraries that make builds into build/lib.
package fortran
