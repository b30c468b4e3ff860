package benchrun

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"time"

	"ivshim.dev/ivshim/tests/cluster"
)

// Placement says where the ranks of a configuration run and whether the shim is loaded.
type Placement int

// The placements, in the order the report shows them.
const (
	// Native runs all ranks in the root namespace: one OS, the library's own shared memory.
	Native Placement = iota
	// Network runs one rank per VM on VMs of one host, without the shim: the library's TCP path.
	Network
	// Shim is Network with the shim preloaded: shared memory through the host's region.
	Shim
	// Network2x2 runs four ranks on two VMs of each of two hosts, without the shim.
	Network2x2
	// Shim2x2 is Network2x2 with the shim: shared memory within a host, TCP between hosts.
	Shim2x2
)

var placementNames = [...]string{"native", "network", "shim", "2x2 network", "2x2 shim"}

// String returns the placement's name as the report uses it.
func (p Placement) String() string {
	if p >= 0 && int(p) < len(placementNames) {
		return placementNames[p]
	}
	return "placement(" + strconv.Itoa(int(p)) + ")"
}

// MarshalText makes placements readable in results.json.
func (p Placement) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Shim reports whether the placement preloads the shim.
func (p Placement) Shim() bool { return p == Shim || p == Shim2x2 }

// twoHosts reports whether the placement spreads its ranks over two hosts.
func (p Placement) twoHosts() bool { return p == Network2x2 || p == Shim2x2 }

// vms returns the VMs that receive one rank each, nil for Native. c has at least 2 hosts with
// ranks VMs each.
func (p Placement) vms(c *cluster.Cluster, ranks int) []*cluster.VM {
	switch {
	case p == Native:
		return nil
	case p.twoHosts():
		half := ranks / 2
		return slices.Concat(c.Hosts[0].VMs[:half], c.Hosts[1].VMs[:half])
	}
	return c.Hosts[0].VMs[:ranks]
}

// Case is one configuration the benchmark measures.
type Case struct {
	MPI       cluster.MPI `json:"-"`
	Ranks     int         `json:"ranks"`
	Placement Placement   `json:"placement"`
}

// String names the case in logs and file names: "openmpi 4 ranks 2x2 shim".
func (c Case) String() string {
	return fmt.Sprintf("%s %d ranks %s", c.MPI, c.Ranks, c.Placement)
}

// The benchmarks ivbench runs, in IMB's order: the two-process ones (ranks 0 and 1 only, so
// larger jobs skip them), then those of all ranks, and both; and the collectives the usability
// check of larger jobs names.
var (
	pairBenchmarks    = []string{"PingPong", "PingPing"}
	groupBenchmarks   = []string{"Sendrecv", "Exchange", "Barrier", "Bcast", "Reduce", "Allreduce", "Allgather", "Alltoall", "Gather", "Scatter"}
	allBenchmarks     = slices.Concat(pairBenchmarks, groupBenchmarks)
	targetCollectives = []string{"Barrier", "Bcast", "Allreduce", "Allgather", "Alltoall"}
)

// DefaultSizes are the message sizes measured by default: 0 and every power of two up to
// 4 MiB, the sizes the project's goals name (IMB's default range).
var DefaultSizes = powersOfTwo(22)

// powersOfTwo returns 0, 1, 2, 4, ... 2^max.
func powersOfTwo(max int) []int {
	sizes := []int{0}
	for lg := 0; lg <= max; lg++ {
		sizes = append(sizes, 1<<lg)
	}
	return sizes
}

// spinSizes are the only sizes measured where the library spin-waits with more ranks than
// cores (spinning): the sizes the collective targets name.
var spinSizes = []int{8, 1 << 10}

// workload is what ivbench does in one case.
type workload struct {
	benchmarks []string
	sizes      []int
	// iter caps the repetitions per size; ivbench's -time caps their duration.
	iter int
}

// The repetition caps: small messages are cheap, so many repetitions average out the timer's
// granularity; under spinning a repetition can take milliseconds.
const (
	iterDefault  = 100000
	iterSpinning = 1000
)

// spinning reports whether the case's library busy-polls with more ranks than cores: MPICH
// 4.0 has no working yield (EMULATION.md) and takes milliseconds per collective then, so the
// case measures only what the targets need.
func (c Case) spinning() bool {
	return c.MPI == cluster.MPICH && c.Ranks > runtime.NumCPU()
}

// pinned reports whether the case's ranks are pinned to one CPU each (see pinScript): when
// they fit the CPUs.
func (c Case) pinned() bool { return c.Ranks <= runtime.NumCPU() }

// workload returns what ivbench runs for c, measuring sizes: every benchmark at 2 ranks, those
// of all ranks at more; the target collectives at their sizes when spinning.
func (c Case) workload(sizes []int) workload {
	switch {
	case c.spinning():
		return workload{benchmarks: targetCollectives, sizes: spinSizes, iter: iterSpinning}
	case c.Ranks == 2:
		return workload{benchmarks: allBenchmarks, sizes: sizes, iter: iterDefault}
	}
	return workload{benchmarks: groupBenchmarks, sizes: sizes, iter: iterDefault}
}

// args is ivbench's command line for the workload, with msglen the file listing its sizes,
// seconds ivbench's -time and rootShift its -root_shift.
func (w workload) args(ranks int, msglen string, seconds float64, rootShift bool) []string {
	args := []string{"-msglen", msglen, "-iter", strconv.Itoa(w.iter), "-time", strconv.FormatFloat(seconds, 'g', -1, 64),
		"-npmin", strconv.Itoa(ranks), "-digits", strconv.Itoa(ivbenchDigits)}
	if rootShift {
		args = append(args, "-root_shift", "on")
	}
	return append(args, w.benchmarks...)
}

// plan lists the cases for the given libraries and rank counts, in report order: per library
// and rank count native, network and shim, plus the two-host placements where the ranks
// split evenly over two hosts (4 and more).
func plan(mpis []cluster.MPI, rankCounts []int) []Case {
	var cases []Case
	for _, m := range mpis {
		for _, n := range rankCounts {
			for p := Native; p <= Shim2x2; p++ {
				if p.twoHosts() && (n < 4 || n%2 != 0) {
					continue
				}
				cases = append(cases, Case{MPI: m, Ranks: n, Placement: p})
			}
		}
	}
	return cases
}

// jobTimeout bounds one attempt of an ivbench run. A run takes seconds; MPICH over TCP
// sometimes hangs in MPI_Finalize and is retried once (cluster.Job.RetryOnTimeout).
const jobTimeout = 60 * time.Second
