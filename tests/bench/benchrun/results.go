package benchrun

import (
	"cmp"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"ivshim.dev/ivshim/tests/bench/ivbench"
	"ivshim.dev/ivshim/tests/cluster"
)

// Report is everything one benchmark run measured.
type Report struct {
	Started time.Time
	// Elapsed is the duration of Run, builds and cluster included.
	Elapsed time.Duration
	// Runs, Sizes, Seconds and RootShift are the options the run used.
	Runs      int
	Sizes     []int
	Seconds   float64
	RootShift bool
	// CPUs and Kernel describe the machine; LoadBefore and LoadAfter are /proc/loadavg.
	CPUs                  int
	Kernel                string
	LoadBefore, LoadAfter string
	Cases                 []*CaseResult
	Passthrough           []*PassthroughResult
}

func newReport(o Options) *Report {
	return &Report{Started: time.Now(), Runs: o.Runs, Sizes: o.Sizes, Seconds: o.Seconds, RootShift: o.RootShift, CPUs: runtime.NumCPU(),
		Kernel: readTrimmed("/proc/sys/kernel/osrelease"), LoadBefore: readTrimmed("/proc/loadavg")}
}

// finish computes the medians and stamps the end of the run.
func (r *Report) finish() {
	for _, c := range r.Cases {
		c.finish()
	}
	r.Elapsed = time.Since(r.Started)
	r.LoadAfter = readTrimmed("/proc/loadavg")
}

// readTrimmed returns a small file's content without surrounding space, "" if unreadable.
func readTrimmed(f string) string {
	b, _ := os.ReadFile(f)
	return strings.TrimSpace(string(b))
}

// RunRecord is what happened in one run of a configuration.
type RunRecord struct {
	Round int `json:"round"`
	// Status is "ok", "finalize hang" (complete output, then hung in MPI_Finalize),
	// "timeout" or "failed" (partial output used) or "shim not used" (output not used).
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	// Elapsed is the last attempt's duration in seconds; Attempts and Timeouts count the
	// launcher's attempts and those that timed out.
	Elapsed  float64 `json:"elapsed_s"`
	Attempts int     `json:"attempts"`
	Timeouts int     `json:"timeouts"`
	// Load is the 1-minute load average when the run started; it counts the benchmark's own
	// earlier runs too. Competing is the CPU time other processes used just before the run, in
	// CPUs: work that competed with it.
	Load      float64 `json:"load1"`
	Competing float64 `json:"competing_cpus"`
}

// usable reports whether the run's output counts.
func (rec RunRecord) usable() bool { return rec.Status != statusNoShim }

// Point is the result of one benchmark at one message size in one configuration.
type Point struct {
	Benchmark string `json:"benchmark"`
	Bytes     int    `json:"bytes"`
	// Usec is the median time in µs: PingPong's half round trip, PingPing's time per
	// repetition, the others' t_avg (the mean over ranks).
	Usec float64 `json:"usec"`
	// MBps is the median bandwidth in MB/s of the benchmarks that print one (PingPong,
	// PingPing, Sendrecv, Exchange).
	MBps float64 `json:"mbps,omitempty"`
	// Best and BestMBps are the fastest run's time and bandwidth: on a machine whose runs land
	// in a fast or a slow state at random, configurations compare in the same state there.
	Best     float64 `json:"best_usec"`
	BestMBps float64 `json:"best_mbps,omitempty"`
	// Samples are the times of the runs that measured this point, in run order.
	Samples []float64 `json:"samples_usec"`

	mbps []float64
}

// CaseResult collects the runs of one configuration.
type CaseResult struct {
	Case
	Runs   []RunRecord `json:"runs"`
	Points []*Point    `json:"points"`
	// Stats are the shim's statistics of the last completed run of a shim configuration.
	Stats []cluster.ShimStats `json:"shim_stats,omitempty"`
}

// add records the rows of one run's ivbench output.
func (c *CaseResult) add(blocks []ivbench.Block) {
	for _, b := range blocks {
		for _, row := range b.Rows {
			p := c.point(b.Name, row.Bytes)
			if p == nil {
				p = &Point{Benchmark: b.Name, Bytes: row.Bytes}
				c.Points = append(c.Points, p)
			}
			p.Samples = append(p.Samples, row.TAvg)
			p.mbps = append(p.mbps, row.MBps)
		}
	}
}

// finish computes the medians and puts the points in report order.
func (c *CaseResult) finish() {
	for _, p := range c.Points {
		p.Usec, p.MBps = median(p.Samples), median(p.mbps)
		if len(p.Samples) > 0 {
			p.Best, p.BestMBps = slices.Min(p.Samples), slices.Max(p.mbps)
		}
	}
	slices.SortStableFunc(c.Points, func(a, b *Point) int {
		return cmp.Or(cmp.Compare(benchmarkOrder(a.Benchmark), benchmarkOrder(b.Benchmark)), cmp.Compare(a.Bytes, b.Bytes))
	})
}

// point returns the point of benchmark at bytes, nil if none was measured.
func (c *CaseResult) point(benchmark string, bytes int) *Point {
	for _, p := range c.Points {
		if p.Benchmark == benchmark && p.Bytes == bytes {
			return p
		}
	}
	return nil
}

// count returns how many runs ended with status.
func (c *CaseResult) count(status string) int {
	n := 0
	for _, r := range c.Runs {
		if r.Status == status {
			n++
		}
	}
	return n
}

// benchmarkOrder is a benchmark's position in ivbench's (IMB's) order.
func benchmarkOrder(name string) int {
	if i := slices.Index(allBenchmarks, name); i >= 0 {
		return i
	}
	return len(allBenchmarks)
}

// PassthroughResult collects the pass-through runs of one library.
type PassthroughResult struct {
	MPI   cluster.MPI
	Runs  []RunRecord
	Calls []*CallCost
}

// CallCost is the cost of one interposed call without and with the shim preloaded, in ns.
type CallCost struct {
	Call             string
	Plain, Preloaded []float64
}

// Overhead is the median preloaded time minus the median plain time; ok is false unless both
// were measured.
func (c *CallCost) Overhead() (ns float64, ok bool) {
	if len(c.Plain) == 0 || len(c.Preloaded) == 0 {
		return 0, false
	}
	return median(c.Preloaded) - median(c.Plain), true
}

// add records one figure of one run.
func (p *PassthroughResult) add(call string, preloaded bool, ns float64) {
	i := slices.IndexFunc(p.Calls, func(c *CallCost) bool { return c.Call == call })
	if i < 0 {
		p.Calls = append(p.Calls, &CallCost{Call: call})
		i = len(p.Calls) - 1
	}
	if preloaded {
		p.Calls[i].Preloaded = append(p.Calls[i].Preloaded, ns)
	} else {
		p.Calls[i].Plain = append(p.Calls[i].Plain, ns)
	}
}

// median of xs (the mean of the middle two for an even count), 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
