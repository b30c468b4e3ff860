package benchrun

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"ivshim.dev/ivshim/tests/cluster"
)

// Write writes results.md, results.json and the plots into dir.
func (r *Report) Write(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	// Without plots the tables still count: write them, then report the plot's error.
	plots, plotErr := r.plot(ctx, dir)
	var md bytes.Buffer
	r.markdown(&md, plots)
	js, err := json.MarshalIndent(r.jsonReport(), "", "  ")
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	for name, data := range map[string][]byte{"results.md": md.Bytes(), "results.json": append(js, '\n')} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	if plotErr != nil {
		return fmt.Errorf("write report: %w", plotErr)
	}
	return nil
}

// mpiTitle is the library's name in headings.
func mpiTitle(m cluster.MPI) string {
	if m == cluster.OpenMPI {
		return "Open MPI"
	}
	return "MPICH"
}

// markdown writes the whole report; plots are the PNG files' base names.
func (r *Report) markdown(w io.Writer, plots []string) {
	fmt.Fprintf(w, "# ivshim benchmark\n\n")
	fmt.Fprintf(w, "Measured %s on %d CPUs (Linux %s) by ivshim-bench (`make bench`) in %s. ", r.Started.Format("2006-01-02 15:04 MST"), r.CPUs, r.Kernel,
		r.Elapsed.Round(time.Second))
	fmt.Fprintf(w, "Every configuration ran %d times, interleaved round by round; every figure is the median of its runs. ", r.Runs)
	fmt.Fprintf(w, "ivbench spent at most %g s per message size; times are µs, PingPong's the half round trip, PingPing's "+
		"the time per repetition, the others' t_avg (mean over ranks); \"min–max\" columns give the range of a shim "+
		"configuration's runs. ", r.Seconds)
	if r.RootShift {
		fmt.Fprintf(w, "The root of Bcast, Reduce, Gather and Scatter moved on by one rank every repetition (`-root-shift`).\n\n")
	} else {
		fmt.Fprintf(w, "Bcast, Reduce, Gather and Scatter are rooted at rank 0 (IMB's default).\n\n")
	}
	r.writeLoad(w)
	fmt.Fprintf(w, "Configurations (one rank per VM; when the ranks fit the %d CPUs, rank r is pinned to CPU r in every "+
		"configuration, else the kernel places them):\n\n", r.CPUs)
	fmt.Fprintf(w, "- **native**: all ranks in one OS, the MPI library's own shared memory (the ceiling);\n")
	fmt.Fprintf(w, "- **network**: ranks in separate emulated VMs on one host, no shim: the library's TCP path (the floor);\n")
	fmt.Fprintf(w, "- **shim**: the same VMs with the shim preloaded, sharing the host's region;\n")
	fmt.Fprintf(w, "- **2x2 network**, **2x2 shim** (4 ranks): two hosts with two VMs each; the shim's hierarchical path "+
		"(shared memory within a host, the library between hosts).\n\n")
	fmt.Fprintf(w, "A cell with fewer samples than runs shows them as (n/runs); a missing one says why. A ratio that "+
		"rounding to ivbench's 0.001 µs could move by more than %.0f%% is left out (\"–\").\n\n", maxRoundingError*100)

	fmt.Fprintf(w, "## Acceptance\n\n")
	if _, busy := r.competing(); busy > 0 {
		fmt.Fprintf(w, "**Measured on a busy machine (see the load above): the verdicts below say what was measured, not what "+
			"the shim achieves on an idle one.**\n\n")
	}
	fmt.Fprintf(w, "| target | MPI | goal | measured | verdict |\n|---|---|---|---|---|\n")
	for _, v := range r.Acceptance() {
		measured := "–"
		if v.Measured {
			measured = fmt.Sprintf("%.2f%s", v.Value, v.Unit)
		}
		verdict := v.Outcome
		if !v.Met {
			verdict = "**" + verdict + "**"
		}
		if v.Note != "" {
			verdict += " (" + v.Note + ")"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", v.Target, v.MPI, v.Goal, measured, verdict)
	}
	fmt.Fprintln(w)

	for _, m := range r.mpis() {
		fmt.Fprintf(w, "## %s\n\n", mpiTitle(m))
		for _, n := range r.rankCounts() {
			r.writeGroup(w, m, n)
		}
	}
	r.writePassthrough(w)
	r.writeRuns(w)
	if len(plots) > 0 {
		fmt.Fprintf(w, "## Plots\n\n")
		for _, p := range plots {
			fmt.Fprintf(w, "![%s](%s)\n\n", strings.TrimSuffix(p, ".png"), p)
		}
	}
}

// competingThreshold is the CPU time of other processes before a run, in CPUs, from which the
// run counts as disturbed: other work then held a CPU about half the time.
const competingThreshold = 0.5

// competing returns the other processes' CPU use measured before every run, and how many runs
// reached competingThreshold.
func (r *Report) competing() (samples []float64, busy int) {
	for _, c := range r.Cases {
		for _, run := range c.Runs {
			samples = append(samples, run.Competing)
		}
	}
	for _, p := range r.Passthrough {
		for _, run := range p.Runs {
			samples = append(samples, run.Competing)
		}
	}
	for _, v := range samples {
		if v >= competingThreshold {
			busy++
		}
	}
	return samples, busy
}

// writeLoad states how busy the machine was: other jobs on a small machine distort latencies.
func (r *Report) writeLoad(w io.Writer) {
	samples, busy := r.competing()
	fmt.Fprintf(w, "Load average (/proc/loadavg) before: `%s`, after: `%s` (the benchmark's own runs count in it).",
		r.LoadBefore, r.LoadAfter)
	if len(samples) > 0 {
		fmt.Fprintf(w, " CPU time of other processes in the %v before each run (/proc/stat), in CPUs: median %.2f, max %.2f",
			competingWindow, median(samples), slices.Max(samples))
		if busy > 0 {
			fmt.Fprintf(w, "; **other work competed for the CPUs before %d of %d runs (≥ %.1f CPU), which distorts latencies**",
				busy, len(samples), competingThreshold)
		}
		fmt.Fprintf(w, ".")
	}
	fmt.Fprintf(w, "\n\n")
}

// columnHeads writes the heads of a group's figure columns (placement, then unit) and ratio
// columns, each closed by "|".
func columnHeads(w io.Writer, cases []*CaseResult, ratios []ratioColumn, unit string) {
	for _, c := range cases {
		fmt.Fprintf(w, " %s%s |", c.Placement, unit)
	}
	for _, rc := range ratios {
		fmt.Fprintf(w, " %s / %s |", rc.num, rc.den)
	}
}

// ratioColumn is a ratio column of a group's table.
type ratioColumn struct {
	num, den Placement
}

// writeGroup writes the table of one library and rank count.
func (r *Report) writeGroup(w io.Writer, m cluster.MPI, ranks int) {
	var cases []*CaseResult
	for _, c := range r.Cases {
		if c.MPI == m && c.Ranks == ranks {
			cases = append(cases, c)
		}
	}
	if len(cases) == 0 {
		return
	}
	fmt.Fprintf(w, "### %s, %d ranks\n\n", mpiTitle(m), ranks)
	if cases[0].spinning() {
		fmt.Fprintf(w, "%s spin-waits and has no working yield: with more ranks than the %d CPUs a collective takes "+
			"milliseconds natively and over TCP, so this size measures only the targets' collectives and sizes, "+
			"at most %d repetitions each.\n\n", mpiTitle(m), r.CPUs, iterSpinning)
	}
	ratios := []ratioColumn{{Shim, Native}, {Shim, Network}}
	if r.caseOf(m, ranks, Shim2x2) != nil {
		ratios = append(ratios, ratioColumn{Shim2x2, Network2x2})
	}
	var shims []*CaseResult
	for _, c := range cases {
		if c.Placement.Shim() {
			shims = append(shims, c)
		}
	}
	fmt.Fprintf(w, "| benchmark | bytes |")
	columnHeads(w, cases, ratios, " µs")
	for _, c := range shims {
		fmt.Fprintf(w, " %s min–max | %s / %s, fastest runs |", c.Placement, c.Placement, baseline(c.Placement))
	}
	fmt.Fprintf(w, "\n|---|--:|%s\n", strings.Repeat("--:|", len(cases)+len(ratios)+2*len(shims)))
	for _, k := range pointKeys(cases) {
		fmt.Fprintf(w, "| %s | %d |", k.benchmark, k.bytes)
		for _, c := range cases {
			fmt.Fprintf(w, " %s |", c.cell(k.benchmark, k.bytes, false))
		}
		for _, rc := range ratios {
			fmt.Fprintf(w, " %s |", r.ratioCell(m, ranks, rc, k.benchmark, k.bytes, false, false))
		}
		for _, c := range shims {
			fastest := r.ratioCell(m, ranks, ratioColumn{c.Placement, baseline(c.Placement)}, k.benchmark, k.bytes, false, true)
			fmt.Fprintf(w, " %s | %s |", c.spread(k.benchmark, k.bytes), fastest)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	var large []int
	for _, k := range pointKeys(cases) {
		if k.benchmark == "PingPong" && k.bytes >= bandwidthFrom {
			large = append(large, k.bytes)
		}
	}
	if len(large) == 0 {
		return
	}
	fmt.Fprintf(w, "PingPong bandwidth, MB/s:\n\n| bytes |")
	columnHeads(w, cases, ratios, "")
	fmt.Fprintf(w, "\n|--:|%s\n", strings.Repeat("--:|", len(cases)+len(ratios)))
	for _, b := range large {
		fmt.Fprintf(w, "| %d |", b)
		for _, c := range cases {
			fmt.Fprintf(w, " %s |", c.cell("PingPong", b, true))
		}
		for _, rc := range ratios {
			fmt.Fprintf(w, " %s |", r.ratioCell(m, ranks, rc, "PingPong", b, true, false))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

// pointKey names a row of a table.
type pointKey struct {
	benchmark string
	bytes     int
}

// pointKeys returns every point any of cases measured, in report order.
func pointKeys(cases []*CaseResult) []pointKey {
	var keys []pointKey
	for _, c := range cases {
		for _, p := range c.Points {
			if k := (pointKey{p.Benchmark, p.Bytes}); !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.SortFunc(keys, func(a, b pointKey) int {
		return cmp.Or(cmp.Compare(benchmarkOrder(a.benchmark), benchmarkOrder(b.benchmark)), cmp.Compare(a.bytes, b.bytes))
	})
	return keys
}

// cell is one configuration's figure for a table: the median time (or MB/s), the sample count
// if some runs lack it, or why it is missing.
func (c *CaseResult) cell(benchmark string, bytes int, bandwidth bool) string {
	p := c.point(benchmark, bytes)
	if p == nil {
		return c.missingReason()
	}
	s := formatUsec(p.Usec)
	if bandwidth {
		s = fmt.Sprintf("%.0f", p.MBps)
	}
	if len(p.Samples) < len(c.Runs) {
		s += fmt.Sprintf(" (%d/%d)", len(p.Samples), len(c.Runs))
	}
	return s
}

// baseline is what a shim placement is judged against: the library's shared memory on one
// host, its network path on 2x2.
func baseline(p Placement) Placement {
	if p == Shim2x2 {
		return Network2x2
	}
	return Native
}

// spread is the range of a point's samples for a table, "–" if it has none.
func (c *CaseResult) spread(benchmark string, bytes int) string {
	p := c.point(benchmark, bytes)
	if p == nil || len(p.Samples) == 0 {
		return "–"
	}
	return formatUsec(p.Best) + "–" + formatUsec(slices.Max(p.Samples))
}

// ratioCell is a ratio of medians (with best, of the fastest runs) for a table, "–" if either
// side is missing.
func (r *Report) ratioCell(m cluster.MPI, ranks int, rc ratioColumn, benchmark string, bytes int, bandwidth, best bool) string {
	v, ok, _ := r.ratioOf(m, ranks, rc.num, rc.den, benchmark, bytes, bandwidth, best)
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.2f", v)
}

// formatUsec gives a time about three significant digits.
func formatUsec(us float64) string {
	switch {
	case us < 1:
		return fmt.Sprintf("%.3f", us)
	case us < 10:
		return fmt.Sprintf("%.2f", us)
	case us < 100:
		return fmt.Sprintf("%.1f", us)
	}
	return fmt.Sprintf("%.0f", us)
}

// writePassthrough writes the pass-through table.
func (r *Report) writePassthrough(w io.Writer) {
	if len(r.Passthrough) == 0 {
		return
	}
	fmt.Fprintf(w, "## Pass-through\n\n")
	fmt.Fprintf(w, "passthrough.c on one rank in one OS, no region: each run reports the median over 15 batches of 2,000,000 "+
		"calls; below are the medians over the runs without and with the shim preloaded, and their difference, the "+
		"shim's cost per call.\n\n")
	fmt.Fprintf(w, "| MPI | call | plain ns | preloaded ns | overhead ns | runs plain / preloaded |\n|---|---|--:|--:|--:|--:|\n")
	for _, p := range r.Passthrough {
		if len(p.Calls) == 0 {
			fmt.Fprintf(w, "| %s | – | – | – | – | no run completed |\n", mpiTitle(p.MPI))
		}
		for _, c := range p.Calls {
			ns, ok := c.Overhead()
			overhead := "–"
			if ok {
				overhead = fmt.Sprintf("%.2f", ns)
			}
			fmt.Fprintf(w, "| %s | %s | %.2f | %.2f | %s | %d / %d |\n", mpiTitle(p.MPI), c.Call, median(c.Plain), median(c.Preloaded),
				overhead, len(c.Plain), len(c.Preloaded))
		}
	}
	fmt.Fprintln(w)
}

// writeRuns lists how every configuration's runs went and what the shim reported.
func (r *Report) writeRuns(w io.Writer) {
	fmt.Fprintf(w, "## Runs\n\n")
	fmt.Fprintf(w, "Completed means the program printed all its results (\"finalize hang\": then it did not exit within %v, "+
		"a hang in MPI_Finalize known for MPICH+UCX over TCP, and was killed). Raw output of every run is in logs/.\n\n", finalizeGrace)
	fmt.Fprintf(w, "| configuration | runs | completed | median s | notes |\n|---|--:|--:|--:|---|\n")
	for _, c := range r.Cases {
		writeRunRow(w, c.String(), c.Runs)
	}
	for _, p := range r.Passthrough {
		writeRunRow(w, p.MPI.String()+" passthrough", p.Runs)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Shim statistics of the last completed run of each shim configuration, summed over its ranks "+
		"(IVSHIM_VERBOSE=1); region MiB is what the ranks held in their hosts' regions at MPI_Finalize (pair rings "+
		"and collective areas), over all hosts of the configuration:\n\n")
	fmt.Fprintf(w, "| configuration | ranks | shm_msgs | shm_bytes | net_msgs | net_bytes | coll_shm | coll_net | region MiB |\n"+
		"|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range r.Cases {
		if !c.Placement.Shim() {
			continue
		}
		var sum cluster.ShimStats
		for _, s := range c.Stats {
			sum.SHMMsgs += s.SHMMsgs
			sum.SHMBytes += s.SHMBytes
			sum.NetMsgs += s.NetMsgs
			sum.NetBytes += s.NetBytes
			sum.CollSHM += s.CollSHM
			sum.CollNet += s.CollNet
			sum.RegionBytes += s.RegionBytes
		}
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %d | %d | %.1f |\n", c, len(c.Stats), sum.SHMMsgs, sum.SHMBytes, sum.NetMsgs,
			sum.NetBytes, sum.CollSHM, sum.CollNet, float64(sum.RegionBytes)/(1<<20))
	}
	fmt.Fprintln(w)
}

// writeRunRow writes one row of the runs table.
func writeRunRow(w io.Writer, name string, runs []RunRecord) {
	var secs []float64
	var notes []string
	completed, retried := 0, 0
	for _, run := range runs {
		secs = append(secs, run.Elapsed)
		retried += run.Timeouts
		switch run.Status {
		case statusOK:
			completed++
			continue
		case statusFinalizeHang:
			completed++
		}
		note := fmt.Sprintf("run %d: %s", run.Round, run.Status)
		if run.Error != "" {
			note += ": " + strings.ReplaceAll(run.Error, "|", "/")
		}
		notes = append(notes, note)
	}
	if retried > 0 {
		notes = append(notes, fmt.Sprintf("%d attempt(s) timed out and were retried", retried))
	}
	fmt.Fprintf(w, "| %s | %d | %d | %.1f | %s |\n", name, len(runs), completed, median(secs), strings.Join(notes, "; "))
}

// jsonReport is results.json: the raw medians and samples, runs and verdicts.
type jsonReport struct {
	Started        time.Time         `json:"started"`
	ElapsedS       float64           `json:"elapsed_s"`
	Runs           int               `json:"runs"`
	Sizes          []int             `json:"sizes"`
	SecondsPerSize float64           `json:"seconds_per_size"`
	RootShift      bool              `json:"root_shift"`
	CPUs           int               `json:"cpus"`
	Kernel         string            `json:"kernel"`
	LoadBefore     string            `json:"loadavg_before"`
	LoadAfter      string            `json:"loadavg_after"`
	Cases          []jsonCase        `json:"cases"`
	Passthrough    []jsonPassthrough `json:"passthrough"`
	Acceptance     []Verdict         `json:"acceptance"`
}

type jsonCase struct {
	MPI string `json:"mpi"`
	*CaseResult
}

type jsonPassthrough struct {
	MPI   string        `json:"mpi"`
	Runs  []RunRecord   `json:"runs"`
	Calls []jsonCallSet `json:"calls"`
}

type jsonCallSet struct {
	Call        string    `json:"call"`
	PlainNs     []float64 `json:"plain_ns"`
	PreloadedNs []float64 `json:"preloaded_ns"`
	OverheadNs  *float64  `json:"overhead_ns"`
}

func (r *Report) jsonReport() jsonReport {
	j := jsonReport{Started: r.Started, ElapsedS: r.Elapsed.Seconds(), Runs: r.Runs, Sizes: r.Sizes, SecondsPerSize: r.Seconds, RootShift: r.RootShift,
		CPUs: r.CPUs, Kernel: r.Kernel, LoadBefore: r.LoadBefore, LoadAfter: r.LoadAfter, Acceptance: r.Acceptance()}
	for _, c := range r.Cases {
		j.Cases = append(j.Cases, jsonCase{MPI: c.MPI.String(), CaseResult: c})
	}
	for _, p := range r.Passthrough {
		jp := jsonPassthrough{MPI: p.MPI.String(), Runs: p.Runs}
		for _, c := range p.Calls {
			cs := jsonCallSet{Call: c.Call, PlainNs: c.Plain, PreloadedNs: c.Preloaded}
			if ns, ok := c.Overhead(); ok {
				cs.OverheadNs = &ns
			}
			jp.Calls = append(jp.Calls, cs)
		}
		j.Passthrough = append(j.Passthrough, jp)
	}
	return j
}
