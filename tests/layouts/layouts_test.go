// Package layouts runs the MPI test programs on layouts drawn at random, as a scheduler would
// produce them, with and without the shim, and requires identical reports.
//
// A layout is 1-3 hosts, 1-4 VMs on each (a random subset of the host's VMs), 1-2 ranks in
// each VM, at most 8 ranks, VMs listed in random order (so co-located ranks are not contiguous
// in MPI_COMM_WORLD); every rank draws IVSHIM_DISABLE (1 in 6) and its thread level
// (MPI_THREAD_MULTIPLE 1 in 6, else single, funneled or serialized). Each layout runs one
// conformance program (tests/mpi/p2p_*.c, drawn) and coll_check --quick.
//
// MPICH 4.0.2 (ch4:ucx over TCP) limits what can be compared, because without the shim it
// fails by itself (measured here): it busy-waits (minutes per program beyond 2 ranks per core)
// and hangs in MPI_Finalize in a fair share of 4-rank runs, so its layouts have at most 3 ranks;
// its MPI_Reduce of 64 KiB and more returns wrong sums when the VMs hold different numbers of
// ranks, and under MPI_THREAD_MULTIPLE, so its layouts put the same number of ranks in every
// VM and no rank at MPI_THREAD_MULTIPLE. Hosts still hold different numbers of VMs. Open MPI
// 4.1 alone never returns from an MPI_Waitall holding an already failed request above
// MPI_THREAD_SINGLE: p2p_modes waits for such requests one at a time there. Its one-sided
// component over TCP (osc pt2pt) refuses windows at MPI_THREAD_MULTIPLE, so p2p_pscw's Open
// MPI layouts have no rank at that level.
//
//	go test ./tests/layouts -layouts 60 -budget 0    # more layouts
//	go test ./tests/layouts -seed 1234 -layouts 1    # replay the first layout of seed 1234
//
// A failure names the seed, the layout's index and the layout itself. Layouts differ a lot in
// what they cost (an MPICH layout across hosts takes about 30 s, a small Open MPI one 5 s), so
// the run stops drawing once -budget is spent and at least minLayouts have run, and says so: it
// keeps make test within its time whatever the clock's seed draws.
package layouts

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/testenv"
)

var (
	flagLayouts = flag.Int("layouts", 16, "random layouts to run")
	flagSeed    = flag.Uint64("seed", 0, "seed of the layouts (0: a new one, logged)")
	flagBudget  = flag.Duration("budget", 5*time.Minute, "no new layout once this time is spent and minLayouts have run (0: no limit)")
)

const (
	hosts, vmsPerHost = 3, 4
	maxRanks          = 8
	maxRanksMPICH     = 3
	regionSize        = 64 << 20
	// jobTimeout bounds one launch; finalizeGrace is how long an MPICH job may take to exit
	// once its report and, with the shim, every rank's statistics are complete. Open MPI has
	// no such hang: its jobs get jobTimeout, and a hang is a failure.
	jobTimeout    = 3 * time.Minute
	finalizeGrace = cluster.MPICHFinishGrace // per 8 ranks: 16 ranks on 2 CPUs take longer to finalize
	stderrTail    = 4000
	minLayouts    = 10
)

// A layout is one drawn job shape.
type layout struct {
	mpi     cluster.MPI
	vms     []*cluster.VM
	perVM   []int
	disable []bool   // by world rank
	thread  []string // by world rank: single, funneled, serialized, multiple
	p2p     string   // the conformance program
}

func (l layout) ranks() int {
	n := 0
	for _, k := range l.perVM {
		n += k
	}
	return n
}

func (l layout) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %d ranks:", l.mpi, l.ranks())
	r := 0
	for i, vm := range l.vms {
		fmt.Fprintf(&b, " %s[", vm.Name)
		for k := 0; k < l.perVM[i]; k++ {
			if k > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(&b, "r%d", r)
			if l.disable[r] {
				b.WriteString(":off")
			}
			if l.thread[r] != "single" {
				b.WriteString(":" + l.thread[r])
			}
			r++
		}
		b.WriteString("]")
	}
	fmt.Fprintf(&b, "; %s + coll_check", l.p2p)
	return b.String()
}

// draw picks the next layout of rng's sequence.
func draw(rng *rand.Rand, c *cluster.Cluster, p2p []string) layout {
	l := layout{mpi: cluster.MPIs[rng.IntN(len(cluster.MPIs))]}
	limit := maxRanks
	if l.mpi == cluster.MPICH {
		limit = maxRanksMPICH
	}
	for l.ranks() < 2 {
		l.vms, l.perVM = nil, nil
		nh := 1 + rng.IntN(hosts)
		uniform := 1 + rng.IntN(2) // MPICH: every VM gets this many
		for _, h := range rng.Perm(hosts)[:nh] {
			vms := c.Hosts[h].VMs
			for _, v := range rng.Perm(len(vms))[:1+rng.IntN(len(vms))] {
				k := 1 + rng.IntN(2)
				if l.mpi == cluster.MPICH {
					k = uniform
				}
				if l.ranks()+k > limit {
					continue
				}
				l.vms = append(l.vms, vms[v])
				l.perVM = append(l.perVM, k)
			}
		}
	}
	rng.Shuffle(len(l.vms), func(a, b int) {
		l.vms[a], l.vms[b] = l.vms[b], l.vms[a]
		l.perVM[a], l.perVM[b] = l.perVM[b], l.perVM[a]
	})
	levels := []string{"single", "funneled", "serialized"}
	for r := 0; r < l.ranks(); r++ {
		l.disable = append(l.disable, rng.IntN(6) == 0)
		if rng.IntN(6) == 0 && l.mpi != cluster.MPICH {
			l.thread = append(l.thread, "multiple")
		} else {
			l.thread = append(l.thread, levels[rng.IntN(len(levels))])
		}
	}
	l.p2p = p2p[rng.IntN(len(p2p))]
	if l.p2p == "p2p_pscw" && l.mpi == cluster.OpenMPI {
		// Open MPI 4.1's one-sided component over TCP (osc pt2pt) refuses MPI_Win_create at
		// MPI_THREAD_MULTIPLE, on that rank alone, and the job aborts without the shim.
		for r := range l.thread {
			if l.thread[r] == "multiple" {
				l.thread[r] = "serialized"
			}
		}
	}
	return l
}

// sharing says whether the job must show traffic through the region: some host has two ranks
// that use the shim, and no rank runs at MPI_THREAD_MULTIPLE. Every program ends with
// collectives on MPI_COMM_WORLD (the gathers of its report), which such ranks then move through
// their host's area. A member at MPI_THREAD_MULTIPLE sends MPI_COMM_WORLD's collectives to the
// library (the agreement on a communicator's collectives includes every member's level), and
// whether the program's point-to-point pairs share a host is up to the draw.
// statsRanks is how many ranks print the shim's statistics (IVSHIM_VERBOSE) at MPI_Finalize:
// every rank once one of them may use its region (not disabled, not at MPI_THREAD_MULTIPLE;
// every VM has a region), as the shim loads its control plane on all ranks or none. -1: none,
// or all if the library granted less than MPI_THREAD_MULTIPLE.
func (l layout) statsRanks() int {
	for r := range l.disable {
		if !l.disable[r] && l.thread[r] != "multiple" {
			return l.ranks()
		}
	}
	return -1
}

func (l layout) sharing() bool {
	if slices.Contains(l.thread, "multiple") {
		return false
	}
	per := map[*cluster.Host]int{}
	r := 0
	for i, vm := range l.vms {
		for k := 0; k < l.perVM[i]; k++ {
			if !l.disable[r] {
				per[vm.Host]++
			}
			r++
		}
	}
	for _, n := range per {
		if n >= 2 {
			return true
		}
	}
	return false
}

func TestRandomLayouts(t *testing.T) {
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay: go test ./tests/layouts -seed %d -layouts %d)", seed, seed, *flagLayouts)
	ctx, progs, wrapper := prepare(t, root)
	c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: hosts, VMsPerHost: vmsPerHost, Regions: true, RegionSize: regionSize})
	var names []string
	for name := range progs[cluster.OpenMPI] {
		if strings.HasPrefix(name, "p2p_") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	rng := rand.New(rand.NewPCG(seed, 0x1a7a))
	start := time.Now()
	for i := 0; i < *flagLayouts; i++ {
		if spent := time.Since(start); *flagBudget > 0 && i >= minLayouts && spent > *flagBudget {
			t.Logf("ran %d of %d layouts: the budget of %v is spent (%v); the rest of seed %d run with -budget 0",
				i, *flagLayouts, *flagBudget, spent.Round(time.Second), seed)
			break
		}
		l := draw(rng, c, names)
		t.Run(fmt.Sprintf("%02d", i), func(t *testing.T) {
			t.Logf("layout %d of seed %d: %s", i, seed, l)
			lib := filepath.Join(root, "build", "lib", l.mpi.ShimLibrary())
			for _, prog := range []string{l.p2p, "coll_check"} {
				job := cluster.Job{MPI: l.mpi, VMs: l.vms, PerVM: l.perVM, Program: wrapper,
					Args: []string{progs[l.mpi][prog]}, Timeout: jobTimeout, Env: l.env()}
				if prog == "coll_check" {
					job.Args = append(job.Args, "--quick")
				}
				plain, ok := run(ctx, t, "without the shim", job, l, false)
				if !ok {
					continue
				}
				job.Env["LD_PRELOAD"] = lib
				job.Env["IVSHIM_VERBOSE"] = "1"
				shim, ok := run(ctx, t, "with the shim", job, l, true)
				if !ok {
					continue
				}
				if want, got := report(plain.Stdout), report(shim.Stdout); want != got {
					t.Errorf("seed %d layout %d (%s), %s: the report with the shim differs:\nwithout:\n%s\nwith:\n%s", seed, i, l, prog, want, got)
				}
				checkStats(t, shim, l, prog)
				// Every library message on a counted communicator was counted on both sides
				// (the join switch after a migration relies on it; the shim checks at
				// MPI_Finalize and says so with IVSHIM_VERBOSE).
				if strings.Contains(shim.Stderr, "counts disagree") {
					t.Errorf("seed %d layout %d (%s), %s: the shim's library message counts disagree:\n%s", seed, i, l, prog, shim.Stderr)
				}
			}
		})
		if t.Failed() && testing.Short() {
			break
		}
	}
}

// env is the per-rank choices, read by the wrapper script (testenv.RankWrapper).
func (l layout) env() map[string]string {
	return testenv.RankEnv(l.disable, l.thread)
}

// checkStats requires the shim's statistics from every rank, no region use by a rank at
// MPI_THREAD_MULTIPLE and, where the layout has two ranks on one host that use the shim,
// traffic through the region.
func checkStats(t *testing.T, res *cluster.Result, l layout, prog string) {
	t.Helper()
	stats, err := res.ShimStats()
	if err != nil {
		t.Errorf("%s with the shim: %v", prog, err)
		return
	}
	if want := l.statsRanks(); want > 0 && len(stats) != want {
		t.Errorf("%s with the shim: statistics of %d ranks, want %d:%s", prog, len(stats), want, testenv.Details(res, stderrTail))
		return
	}
	// A rank at MPI_THREAD_MULTIPLE (both libraries grant it here) runs in pass-through, also
	// inside a host's group of ranks that use the region.
	for _, s := range stats {
		r := s.Rank
		if r >= len(l.thread) || l.thread[r] != "multiple" || l.disable[r] {
			continue
		}
		testenv.CheckThreadMultiple(t, res, s, prog)
	}
	if !l.sharing() {
		return
	}
	var region uint64
	for _, s := range stats {
		region += s.SHMMsgs + s.CollSHM
	}
	if region == 0 {
		t.Errorf("%s with the shim: no rank moved anything through a region, though ranks share a host:%s", prog, testenv.Details(res, stderrTail))
	}
}

var summary = regexp.MustCompile(`^(p2p_\w+|coll_\w+): (\d+) ranks, (\d+) checks, (\d+) failures$`)

// complete says whether stdout holds a whole report: one summary line for a p2p program, 15
// for coll_check (one per collective).
func complete(stdout, prog string) bool {
	n := 0
	for _, line := range strings.Split(stdout, "\n") {
		if summary.MatchString(strings.TrimSpace(line)) {
			n++
		}
	}
	if strings.HasPrefix(prog, "coll_check") {
		return n >= 15
	}
	return n >= 1
}

// clean says whether a report has only summary lines, each for `ranks` ranks and 0 failures.
func clean(rep string, ranks int) bool {
	for _, line := range strings.Split(rep, "\n") {
		s := summary.FindStringSubmatch(line)
		if s == nil || s[2] != strconv.Itoa(ranks) || s[4] != "0" {
			return false
		}
	}
	return rep != ""
}

// run launches job once; an MPICH job that has not exited finalizeGrace after its complete
// report (with the shim: and every rank's statistics) is killed and its report accepted
// (MPI_Finalize hang of MPICH+UCX, logged).
func run(ctx context.Context, t *testing.T, what string, job cluster.Job, l layout, shim bool) (*cluster.Result, bool) {
	t.Helper()
	prog := filepath.Base(job.Args[0])
	if l.mpi == cluster.MPICH {
		job.Finished = func(stdout, stderr string) bool {
			return complete(stdout, prog) && (!shim || cluster.StatsLines(stderr) >= l.statsRanks())
		}
		job.FinishGrace = finalizeGrace * time.Duration(max(1, (l.ranks()+7)/8))
	}
	res, err := cluster.Run(ctx, job)
	if errors.Is(err, cluster.ErrFinishGrace) {
		t.Logf("%s: %s did not exit %v after its complete report (MPI_Finalize hang): killed, report accepted", what, prog, job.FinishGrace)
		err = nil
	}
	if err != nil {
		t.Errorf("%s, %s: %v%s", what, prog, err, testenv.Details(res, stderrTail))
		return res, false
	}
	if !clean(report(res.Stdout), l.ranks()) {
		t.Errorf("%s, %s: not a clean report of %d ranks%s", what, prog, l.ranks(), testenv.Details(res, stderrTail))
		return res, false
	}
	return res, true
}

// report is the program's standard output without the shim's lines and blank lines.
func report(stdout string) string {
	var lines []string
	for _, l := range strings.Split(stdout, "\n") {
		l = strings.TrimRight(l, "\r ")
		if l != "" && !strings.HasPrefix(l, "ivshim:") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// prepare is what every test here starts with: its context (cancelled when it ends), the
// programs built for both MPIs and the ranks' wrapper script.
func prepare(t *testing.T, root string) (context.Context, map[cluster.MPI]map[string]string, string) {
	t.Helper()
	ctx, cancel := testenv.Context(t)
	t.Cleanup(cancel)
	return ctx, buildPrograms(ctx, t, root), testenv.RankWrapper(t)
}

// buildPrograms compiles every tests/mpi/p2p_*.c and coll_check.c for both MPIs into a
// directory the VMs can read; result[mpi][name] is the binary.
func buildPrograms(ctx context.Context, t *testing.T, root string) map[cluster.MPI]map[string]string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	srcs, err := filepath.Glob(filepath.Join(root, "tests", "mpi", "p2p_*.c"))
	if err != nil || len(srcs) == 0 {
		t.Fatalf("no tests/mpi/p2p_*.c: %v", err)
	}
	srcs = append(srcs, filepath.Join(root, "tests", "mpi", "coll_check.c"))
	out := map[cluster.MPI]map[string]string{}
	for _, m := range cluster.MPIs {
		out[m] = map[string]string{}
		for _, src := range srcs {
			name := strings.TrimSuffix(filepath.Base(src), ".c")
			bin := filepath.Join(dir, name+"-"+m.String())
			cmd := exec.CommandContext(ctx, m.Compiler(), "-O2", "-std=gnu11", "-Wall", "-Wextra", "-o", bin, src)
			if msg, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("build %s with %s: %v\n%s", src, m.Compiler(), err, msg)
			}
			out[m][name] = bin
		}
	}
	return out
}
