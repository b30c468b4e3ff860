package shim

import "fmt"

// Stats are the per-path traffic counters the C front keeps (struct ivshim_ctl_stats).
type Stats struct {
	Messages       [2]uint64 // indexed by Path
	Bytes          [2]uint64
	CollectivesSHM uint64 // collectives with an intra-host phase in the region
	CollectivesNet uint64 // collectives passed to the MPI library
	Gates          uint64 // blocking collective calls entered through a gate (cgo/front/gate.c)
	// RegionBytes is what the rank holds in its region at MPI_Finalize (its inbound rings, the
	// collective areas it allocated), filled in by the control plane.
	RegionBytes uint64
}

// Line formats s as the verbose finalize line of rank:
//
//	ivshim: stats rank=3 shm_msgs=10 shm_bytes=4096 net_msgs=2 net_bytes=16 coll_shm=4 coll_net=0 gates=0 region_bytes=1052672
func (s Stats) Line(rank int) string {
	return fmt.Sprintf("ivshim: stats rank=%d shm_msgs=%d shm_bytes=%d net_msgs=%d net_bytes=%d coll_shm=%d coll_net=%d gates=%d region_bytes=%d\n",
		rank, s.Messages[PathSHM], s.Bytes[PathSHM], s.Messages[PathNet], s.Bytes[PathNet],
		s.CollectivesSHM, s.CollectivesNet, s.Gates, s.RegionBytes)
}
