// Package ivbench is the Go side of ivbench (tests/bench/ivbench.c), the project's
// IMB-compatible MPI benchmark: a parser for the IMB-style output it shares with the Intel MPI
// Benchmarks, and the demo that compares PingPong latency natively and between emulated VMs,
// with and without the shim.
package ivbench
