// Package shim is the control plane that runs inside every MPI rank under the ivshim preload
// library: configuration (IVSHIM_* variables), locality negotiation, the per-peer path table,
// the slot heartbeat and region watcher, statistics and logging.
//
// It is driven by cgo/ctl (libivshim-ctl.so), which the C front library loads only in processes
// that call MPI_Init and only when some rank may have a region; nothing here runs per message.
// The package never calls MPI: the collective exchanges at start go through an Exchanger,
// which the front implements with PMPI on MPI_COMM_WORLD and tests implement in process.
//
// Lifetime: Start is collective and returns an Attachment (or, for a fatal outcome, the same
// error on every rank). An Attachment that shares memory owns the mapped region, a slot in it
// and one goroutine beating that slot, until Finalize, which the front calls once its ranks
// have drained their rings; the region's base address must not be used after Finalize.
// Alloc and Free (collective areas) may be called from any thread in between.
//
// Consistency rule: every rank performs the same exchanges in the same order whatever happens
// locally. Local failures are never returned early; they travel in the exchanged records, and
// every decision that shapes the sequence is taken from exchanged data only.
package shim
