// Package cunit runs the plain-C unit tests of the data plane's lock-free pieces: ring_test.c
// drives cgo/front/ring.h with threads, without MPI, a region or root. cunit_test.go compiles
// each with gcc three times (optimised, with AddressSanitizer and UndefinedBehaviorSanitizer,
// with ThreadSanitizer) and runs every build.
package cunit
