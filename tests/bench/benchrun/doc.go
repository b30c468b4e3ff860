// Package benchrun is `make bench`: it measures ivshim against the two limits that matter on
// the emulated cluster (package ivshim.dev/ivshim/tests/cluster) and writes the report.
//
// For every MPI library and rank count it runs ivbench (tests/bench/ivbench.c) in these
// placements:
//
//   - native: all ranks in one OS, the library's own shared memory, the ceiling;
//   - network: one rank per emulated VM, all VMs on one host, no shim: TCP, the floor;
//   - shim: the same VMs with the shim preloaded, which must come close to the ceiling;
//   - 2x2 network and 2x2 shim (4 ranks): two hosts with two VMs each, the shim's hierarchical
//     path (shared memory within a host, the library between hosts) against plain TCP.
//
// When the ranks fit the CPUs, rank r runs on CPU r in every placement, so that where the
// kernel first puts unbound processes does not enter the figures. Every configuration runs
// Options.Runs times, interleaved round by round (A B C A B C ...) so that a drift of the
// machine's load hits all of them alike; the report gives the median per benchmark and
// message size and the ratios shim/native and shim/network. Shim runs must prove they used the
// shim: every rank's statistics line (IVSHIM_VERBOSE=1) has to show shared-memory traffic, or
// the run counts as failed. passthrough.c measures what preloading the shim costs a cheap MPI
// call when there is no region (preloaded minus plain, per call).
//
// A run that fails or times out is kept in the report as such: rows it printed before are
// used, cells with fewer samples than runs say so, and a cell without any says why. The
// acceptance section compares measured ratios with the project's targets and says met or not
// met; nothing in it is tuned to pass.
//
// # Lifetime
//
// [Run] builds the programs, creates one cluster (2 hosts × 4 VMs, one region per host), runs
// everything and tears the cluster down before it returns, also on error or cancellation.
// [Report.Write] then writes results.md, results.json and the PNG plots (gnuplot) into a
// directory; per-run output goes to its logs/ subdirectory as the runs happen.
package benchrun
