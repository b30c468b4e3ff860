package benchrun

import (
	"fmt"
	"strings"

	"ivshim.dev/ivshim/tests/cluster"
)

// A target is one criterion on a collective's ratio shim/native at one size; larger jobs
// report these for usability.
type target struct {
	benchmark string
	bytes     int
	goal      float64
}

func (t target) String() string {
	if t.benchmark == "Barrier" {
		return "Barrier latency"
	}
	return fmt.Sprintf("%s %s latency", t.benchmark, sizeName(t.bytes))
}

// goalText is the target's goal as the report states it.
func (t target) goalText() string { return fmt.Sprintf("≤ %.1f× native", t.goal) }

// The project's goals: with two co-located VMs every benchmark at every size at most as slow
// as the library's own shared memory, and PingPong's bandwidth from 64 KiB at least 0.95 of
// it; across two hosts (2x2) never slower than the library alone.
const (
	latencyGoal    = 1.0
	bandwidthGoal  = 0.95
	bandwidthFrom  = 64 << 10
	twoHostGoal    = 1.0
	twoHostRanks   = 4
	coLocatedRanks = 2
	// maxListed bounds the sizes a verdict's note names.
	maxListed = 8
)

// collectiveTargets are the points the usability check of larger co-located jobs reports.
var collectiveTargets = []target{
	{benchmark: "Barrier", bytes: 0, goal: latencyGoal},
	{benchmark: "Allreduce", bytes: 8, goal: latencyGoal},
	{benchmark: "Bcast", bytes: 8, goal: latencyGoal},
	{benchmark: "Alltoall", bytes: 1 << 10, goal: latencyGoal},
	{benchmark: "Allgather", bytes: 1 << 10, goal: latencyGoal},
}

// passthroughGoal is the target for the shim's own cost per pass-through call, in ns.
const passthroughGoal = 10.0

// Verdict is the outcome of one acceptance criterion for one library.
type Verdict struct {
	Target string  `json:"target"`
	MPI    string  `json:"mpi"`
	Goal   string  `json:"goal"`
	Value  float64 `json:"value"`
	// Unit is "×" for a ratio, " ns" for the pass-through overhead.
	Unit string `json:"unit"`
	// Measured is false when a configuration lacks the point (Note says why); Met is then false.
	Measured bool `json:"measured"`
	Met      bool `json:"met"`
	// Outcome says it in words: "met", "not met", "usable", "not usable" or "not measured".
	Outcome string `json:"outcome"`
	Note    string `json:"note,omitempty"`
}

// settle sets Met and Outcome: yes if met, else no, or "not measured" without a figure.
func (v *Verdict) settle(met bool, yes, no string) {
	v.Met, v.Outcome = met, no
	switch {
	case met:
		v.Outcome = yes
	case !v.Measured:
		v.Outcome = "not measured"
	}
}

// Acceptance evaluates the goals for every library: every benchmark at every size at 2
// co-located ranks against native, PingPong's bandwidth, every benchmark of all ranks on 2x2
// against the library's network path, the collectives again at every larger co-located rank
// count measured (where the goal is usability: every shim run completed, no livelock; the
// ratio is reported), and the pass-through overhead.
func (r *Report) Acceptance() []Verdict {
	var vs []Verdict
	for _, m := range r.mpis() {
		for _, b := range allBenchmarks {
			vs = append(vs, r.gridVerdict(grid{mpi: m, ranks: coLocatedRanks, num: Shim, den: Native, benchmark: b, goal: latencyGoal}))
		}
		vs = append(vs, r.gridVerdict(grid{mpi: m, ranks: coLocatedRanks, num: Shim, den: Native, benchmark: "PingPong",
			from: bandwidthFrom, bandwidth: true, goal: bandwidthGoal}))
		if c := r.caseOf(m, twoHostRanks, Shim2x2); c != nil {
			// A spinning library measures only some benchmarks there (see Case.workload).
			for _, b := range c.workload(r.Sizes).benchmarks {
				vs = append(vs, r.gridVerdict(grid{mpi: m, ranks: twoHostRanks, num: Shim2x2, den: Network2x2, benchmark: b,
					goal: twoHostGoal}))
			}
		}
		for _, n := range r.rankCounts() {
			if n == coLocatedRanks {
				continue
			}
			for _, t := range collectiveTargets {
				vs = append(vs, r.usabilityVerdict(m, n, t))
			}
		}
		vs = append(vs, r.passthroughVerdict(m))
	}
	return vs
}

// grid is one goal over the sizes of one benchmark: the ratio num/den of times at most goal,
// or of bandwidths at least goal, at every size from from bytes.
type grid struct {
	mpi       cluster.MPI
	ranks     int
	num, den  Placement
	benchmark string
	from      int
	bandwidth bool
	goal      float64
}

// worse reports whether ratio a is worse than b for g: higher for times, lower for bandwidths.
func (g grid) worse(a, b float64) bool {
	if g.bandwidth {
		return a < b
	}
	return a > b
}

// gridVerdict judges g. The value is the worst ratio over the sizes measured; the verdict is
// met only if every size has a ratio and every ratio meets the goal. The note names the sizes
// that did not.
func (r *Report) gridVerdict(g grid) Verdict {
	what, op := "latency", "≤"
	if g.bandwidth {
		what, op = "bandwidth", "≥"
	}
	sizes := "every size"
	if g.from > 0 {
		sizes = "every size from " + sizeName(g.from)
	}
	v := Verdict{Target: fmt.Sprintf("%s %s at %s, %d ranks, %s/%s", g.benchmark, what, sizes, g.ranks, g.num, g.den),
		MPI: g.mpi.String(), Goal: fmt.Sprintf("%s %.2f× %s", op, g.goal, g.den), Unit: "×"}
	var failed, missing, tiny []string
	judged, bestWorst, bestAt := 0, 0.0, -1
	for _, bytes := range r.gridSizes(g) {
		if bytes < g.from {
			continue
		}
		judged++
		x, ok, why := r.ratio(g.mpi, g.ranks, g.num, g.den, g.benchmark, bytes, g.bandwidth)
		switch {
		case !ok && why == unresolved:
			tiny = append(tiny, sizeName(bytes))
			continue
		case !ok:
			missing = append(missing, fmt.Sprintf("%s (%s)", sizeName(bytes), why))
			continue
		case !v.Measured || g.worse(x, v.Value):
			v.Value = x
		}
		v.Measured = true
		if y, ok, _ := r.ratioOf(g.mpi, g.ranks, g.num, g.den, g.benchmark, bytes, g.bandwidth, true); ok && (bestAt < 0 || g.worse(y, bestWorst)) {
			bestWorst, bestAt = y, bytes
		}
		if g.worse(x, g.goal) {
			failed = append(failed, fmt.Sprintf("%s %.2f", sizeName(bytes), x))
		}
	}
	var notes []string
	if len(failed) > 0 {
		notes = append(notes, fmt.Sprintf("missed at %d of %d sizes: %s", len(failed), judged, listed(failed)))
	}
	if len(missing) > 0 {
		notes = append(notes, fmt.Sprintf("no ratio at %d of %d sizes: %s", len(missing), judged, listed(missing)))
	}
	if len(tiny) > 0 {
		notes = append(notes, fmt.Sprintf("not judged at %s: %s", strings.Join(tiny, ", "), unresolved))
	}
	if len(failed) > 0 && bestAt >= 0 {
		notes = append(notes, fmt.Sprintf("fastest runs: worst %.2f at %s", bestWorst, sizeName(bestAt)))
	}
	v.Note = strings.Join(notes, "; ")
	v.settle(v.Measured && len(failed) == 0 && len(missing) == 0, "met", "not met")
	return v
}

// listed joins items, at most maxListed of them.
func listed(items []string) string {
	if len(items) > maxListed {
		return strings.Join(items[:maxListed], ", ") + fmt.Sprintf(" and %d more", len(items)-maxListed)
	}
	return strings.Join(items, ", ")
}

// gridSizes are the sizes g is judged at: Barrier has one (0), the reductions the multiples of
// their 4-byte element, the others every size g's configuration measures.
func (r *Report) gridSizes(g grid) []int {
	benchmark := g.benchmark
	if benchmark == "Barrier" {
		return []int{0}
	}
	all := r.Sizes
	if c := r.caseOf(g.mpi, g.ranks, g.num); c != nil {
		all = c.workload(r.Sizes).sizes
	}
	var sizes []int
	for _, b := range all {
		if (benchmark == "Reduce" || benchmark == "Allreduce") && b%4 != 0 {
			continue
		}
		sizes = append(sizes, b)
	}
	return sizes
}

// usabilityVerdict reports t's ratio at ranks ranks; the criterion met is that every shim run
// of that size completed.
func (r *Report) usabilityVerdict(m cluster.MPI, ranks int, t target) Verdict {
	v := Verdict{Target: fmt.Sprintf("%s, %d ranks on %d CPUs, shim/native", t, ranks, r.CPUs), MPI: m.String(),
		Goal: "usable (every run completes); ratio reported", Unit: "×"}
	v.Value, v.Measured, v.Note = r.ratio(m, ranks, Shim, Native, t.benchmark, t.bytes, false)
	shim := r.caseOf(m, ranks, Shim)
	if shim == nil {
		v.settle(false, "usable", "not usable")
		return v
	}
	incomplete := len(shim.Runs) - shim.count(statusOK) - shim.count(statusFinalizeHang)
	v.settle(v.Measured && incomplete == 0, "usable", "not usable")
	switch {
	case incomplete > 0:
		// A run that did not complete is the failure this criterion is about, figure or not.
		v.Outcome = "not usable"
		v.Note = fmt.Sprintf("%d of %d shim runs did not complete", incomplete, len(shim.Runs))
	case v.Measured:
		within := "within"
		if v.Value > t.goal {
			within = "above"
		}
		v.Note = fmt.Sprintf("ratio %s the 2-rank goal %s", within, t.goalText())
	}
	return v
}

// passthroughVerdict judges the largest overhead over the measured calls.
func (r *Report) passthroughVerdict(m cluster.MPI) Verdict {
	v := Verdict{Target: "pass-through overhead per call (largest over the calls), no region", MPI: m.String(),
		Goal: fmt.Sprintf("≤ %.0f ns", passthroughGoal), Unit: " ns"}
	for _, p := range r.Passthrough {
		if p.MPI != m {
			continue
		}
		for _, c := range p.Calls {
			ns, ok := c.Overhead()
			if !ok {
				continue
			}
			if !v.Measured || ns > v.Value {
				v.Value, v.Note = ns, c.Call
			}
			v.Measured = true
		}
	}
	if !v.Measured {
		v.Note = "no complete pair of runs"
	}
	v.settle(v.Measured && v.Value <= passthroughGoal, "met", "not met")
	return v
}

// ivbench prints µs with ivbenchDigits decimals (IMB's two cannot tell 0.08 from 0.09 µs
// apart), so a time is off by up to ivbenchRounding. A ratio is taken only where that moves it
// by at most maxRoundingError: not of a library's zero-byte collective that returns at once.
const (
	ivbenchDigits    = 3
	ivbenchRounding  = 0.0005
	maxRoundingError = 0.1
)

// unresolved is why a ratio is missing when both times are too small to compare: a 0-byte
// collective that the library returns from at once. It is reported, not judged.
const unresolved = "times too close to ivbench's 0.001 µs resolution for a ratio"

// ratio returns num/den for benchmark at bytes (times, or PingPong bandwidths), with a note
// saying why when a configuration has no usable figure.
func (r *Report) ratio(m cluster.MPI, ranks int, num, den Placement, benchmark string, bytes int, bandwidth bool) (float64, bool, string) {
	return r.ratioOf(m, ranks, num, den, benchmark, bytes, bandwidth, false)
}

// ratioOf is ratio of the medians, or with best of the fastest runs.
func (r *Report) ratioOf(m cluster.MPI, ranks int, num, den Placement, benchmark string, bytes int, bandwidth, best bool) (float64, bool, string) {
	a, aNote := r.figure(m, ranks, num, benchmark, bytes, bandwidth, best)
	b, bNote := r.figure(m, ranks, den, benchmark, bytes, bandwidth, best)
	switch {
	case aNote != "":
		return 0, false, fmt.Sprintf("%s: %s", num, aNote)
	case bNote != "":
		return 0, false, fmt.Sprintf("%s: %s", den, bNote)
	case !bandwidth && ivbenchRounding/a+ivbenchRounding/b > maxRoundingError:
		return 0, false, unresolved
	}
	return a / b, true, ""
}

// figure returns the median time (or bandwidth) of one point, or with best the fastest run's,
// or why there is none.
func (r *Report) figure(m cluster.MPI, ranks int, p Placement, benchmark string, bytes int, bandwidth, best bool) (float64, string) {
	c := r.caseOf(m, ranks, p)
	if c == nil {
		return 0, "not run"
	}
	pt := c.point(benchmark, bytes)
	if pt == nil {
		return 0, c.missingReason()
	}
	usec, mbps := pt.Usec, pt.MBps
	if best {
		usec, mbps = pt.Best, pt.BestMBps
	}
	switch {
	case bandwidth && mbps > 0:
		return mbps, ""
	case !bandwidth && usec > 0:
		return usec, ""
	}
	return 0, "measured zero"
}

// missingReason says why a point a case should have measured is missing.
func (c *CaseResult) missingReason() string {
	for _, s := range []string{statusTimeout, statusFailed, statusNoShim} {
		if n := c.count(s); n > 0 {
			return fmt.Sprintf("%s in %d of %d runs", s, n, len(c.Runs))
		}
	}
	return "not measured"
}

// caseOf returns the results of one configuration, nil if it was not run.
func (r *Report) caseOf(m cluster.MPI, ranks int, p Placement) *CaseResult {
	for _, c := range r.Cases {
		if c.MPI == m && c.Ranks == ranks && c.Placement == p {
			return c
		}
	}
	return nil
}

// mpis returns the libraries measured, in run order.
func (r *Report) mpis() []cluster.MPI {
	var ms []cluster.MPI
	for _, c := range r.Cases {
		if len(ms) == 0 || ms[len(ms)-1] != c.MPI {
			ms = append(ms, c.MPI)
		}
	}
	return ms
}

// rankCounts returns the rank counts measured, in run order.
func (r *Report) rankCounts() []int {
	var ns []int
	for _, c := range r.Cases {
		if c.MPI == r.Cases[0].MPI && (len(ns) == 0 || ns[len(ns)-1] != c.Ranks) {
			ns = append(ns, c.Ranks)
		}
	}
	return ns
}

// sizeName is bytes as the report names sizes: "0 B", "8 B", "1 KiB", "1 MiB".
func sizeName(bytes int) string {
	switch {
	case bytes >= 1<<20 && bytes%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", bytes>>20)
	case bytes >= 1<<10 && bytes%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", bytes>>10)
	}
	return fmt.Sprintf("%d B", bytes)
}
