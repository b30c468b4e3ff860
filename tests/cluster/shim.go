package cluster

import (
	"fmt"
	"slices"
	"strings"
)

// ShimLibrary is the file name of the ivshim library for m's ABI family, as make builds it into
// build/lib: libivshim-openmpi.so or libivshim-mpich.so. A job preloads it with
// Env{"LD_PRELOAD": path}.
func (m MPI) ShimLibrary() string { return "libivshim-" + m.String() + ".so" }

// ShimStats is one rank's traffic as the shim reports it at MPI_Finalize with IVSHIM_VERBOSE=1:
//
//	ivshim: stats rank=1 shm_msgs=13 shm_bytes=5592405 net_msgs=4 net_bytes=64 coll_shm=3 coll_net=0 gates=0 region_bytes=1052672
type ShimStats struct {
	Rank                                                   int
	SHMMsgs, SHMBytes, NetMsgs, NetBytes, CollSHM, CollNet uint64
	// Gates counts the blocking collective calls the rank entered through a gate.
	Gates uint64
	// RegionBytes is what the rank held in its region at MPI_Finalize.
	RegionBytes uint64
}

// shimStatsFormat is the shim's stats line, shim.Stats.Line.
const shimStatsFormat = "ivshim: stats rank=%d shm_msgs=%d shm_bytes=%d net_msgs=%d net_bytes=%d coll_shm=%d coll_net=%d gates=%d region_bytes=%d"

// StatsLines is the number of the shim's stats lines in a job's standard error so far: the
// ranks that are through the shim's part of MPI_Finalize.
func StatsLines(stderr string) int {
	n := 0
	for _, line := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(line, "ivshim: stats ") {
			n++
		}
	}
	return n
}

// ShimStats returns the shim's stats lines in the job's standard error, one per rank in rank
// order. A rank without a line (no shim, no IVSHIM_VERBOSE, or a hang before it) is missing;
// a malformed or repeated line is an error.
func (r *Result) ShimStats() ([]ShimStats, error) {
	stats, err := r.AllShimStats()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(stats, func(a, b ShimStats) int { return a.Rank - b.Rank })
	for i := 1; i < len(stats); i++ {
		if stats[i].Rank == stats[i-1].Rank {
			return nil, fmt.Errorf("shim stats: rank %d reported twice", stats[i].Rank)
		}
	}
	return stats, nil
}

// AllShimStats returns every stats line in the job's standard error as it came, also of
// processes the job spawned: each MPI_COMM_WORLD numbers its ranks from 0, so ranks repeat.
// A malformed line is an error.
func (r *Result) AllShimStats() ([]ShimStats, error) {
	var stats []ShimStats
	for _, line := range strings.Split(r.Stderr, "\n") {
		if !strings.HasPrefix(line, "ivshim: stats ") {
			continue
		}
		var s ShimStats
		if _, err := fmt.Sscanf(line, shimStatsFormat, &s.Rank, &s.SHMMsgs, &s.SHMBytes, &s.NetMsgs, &s.NetBytes, &s.CollSHM, &s.CollNet, &s.Gates, &s.RegionBytes); err != nil {
			return nil, fmt.Errorf("shim stats line %q: %w", line, err)
		}
		stats = append(stats, s)
	}
	return stats, nil
}
