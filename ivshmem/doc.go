// Package ivshmem defines the ivshim region format and maps regions.
//
// A region is the shared memory that the VMs of one MPI job on one host have in common: a file
// in /dev/shm on the host, created by the broker, hot-plugged into each VM as an ivshmem-plain
// PCI device and seen in the guest as BAR2 (/sys/bus/pci/devices/*/resource2 of 1af4:1110).
// The layout is defined once in ivshim_region.h, with the data plane's ring records in
// ivshim_ring.h and collective areas in ivshim_coll.h, which the C data plane compiles against;
// format.go, ring_format.go and coll_format.go mirror them and a test proves the two agree.
//
// Ownership, which every function here keeps:
//   - the header's identity and layout lines are written once by Create, before the file is
//     renamed into place, and never again;
//   - the VM table and the generation counter belong to the broker (SetVM);
//   - a slot belongs to the rank that claimed it (ClaimSlot .. ReleaseSlot), and so do the
//     rings it receives on (CreateRingFit, made on first use when a sender sets its bit in the
//     slot's ring_wanted words, the one part of a slot others write), which it publishes in the
//     pair table, or PairNet there when it has no room for one;
//   - the chunk table changes only under the allocator lock (Alloc, Free).
//
// Lifetime: a Region is valid from Open until Close. Everything read from the mapping is
// untrusted, since another VM can write any byte at any time: Validate checks the header once
// and keeps a private Layout; offsets and indices read later (pair table, chunk table, ring
// headers) are checked on every read, and a bad one yields an error wrapping ErrBadRef.
package ivshmem
