// Package metrics holds the broker's counters, gauges and latency histograms and writes them
// in the Prometheus text exposition format (version 0.0.4), by hand: the broker serves them on
// its API socket at /metrics and optionally on a TCP address.
//
// All types are safe for concurrent use: the reconcile loop updates them while the API server
// writes them out. The zero value of each is ready to use.
package metrics
