// Package sanitize runs the MPI test programs with the AddressSanitizer +
// UndefinedBehaviorSanitizer build of the front library (make builds it into build/asan/lib) on
// an emulated cluster of 2 hosts × 2 VMs, for both MPIs: every point-to-point conformance
// program (tests/mpi/p2p_*.c) on all four VMs, two of them also on an uneven 2 + 1 layout, and
// coll_check --quick (for MPICH on a few collectives). Any sanitizer report fails the test, as
// does an unclean program report or a rank without the shim's statistics.
//
// The ranks are uninstrumented MPI programs, so the ASan runtime is preloaded before the
// library. That the ranks really ran under it follows from the statistics lines: the library
// that prints them needs the runtime, and a runtime that is loaded but not first in the
// preload list stops the process at start ("ASan runtime does not come first").
//
// IVSHIM_SANITIZE_LIBDIR names another directory holding libivshim-openmpi.so and
// libivshim-mpich.so built with -fsanitize (to check that a broken library fails this test).
package sanitize

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/testenv"
)

const (
	// jobTimeout bounds one job; coll_check with MPICH takes the longest (under a minute).
	jobTimeout = 150 * time.Second
	// finalizeGrace is how long a job may take to end after its complete report.
	finalizeGrace = 20 * time.Second
	// An MPICH job gets cluster.MPICHFinishGrace instead once every rank has also printed its
	// statistics (watch).
	mpichGrace = cluster.MPICHFinishGrace
	// findingGrace is how long a job may go on after a sanitizer finding, for the other ranks'
	// reports: the ranks of a stopped rank's peers may otherwise wait for it until jobTimeout.
	findingGrace = 3 * time.Second
	// collReports is the number of summary lines of coll_check without a selection, one per
	// collective.
	collReports = 15
	// stderrTail is how much of a failed job's standard error a failure quotes.
	stderrTail = 8192
)

var (
	// summaryLine is a program's report line (p2p_check.h, coll_check.c).
	summaryLine = regexp.MustCompile(`^(p2p_\w+|coll_\w+): (\d+) ranks, (\d+) checks, (\d+) failures$`)
	// sanitizerError matches what ASan and UBSan print when they find something.
	sanitizerError = regexp.MustCompile(`ERROR: AddressSanitizer|AddressSanitizer:DEADLYSIGNAL|runtime error:|` +
		`SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)|ASan runtime does not come first`)
)

// unevenPrograms also run on the uneven layout.
var unevenPrograms = map[string]bool{"p2p_comm": true, "p2p_wildcard": true}

// collArgs are coll_check's arguments per MPI. The shim's collectives are the same C code for
// both; MPICH, which spin-waits, runs one collective of each of the shim's kinds (area
// barrier and broadcast, reduction, gather, exchange) to keep the package within minutes.
var collArgs = map[cluster.MPI][]string{
	cluster.OpenMPI: {"--quick"},
	cluster.MPICH:   {"--quick", "barrier", "bcast", "allreduce", "allgather", "alltoall"},
}

// sanitizerEnv is the environment of every rank besides LD_PRELOAD. The MPI libraries leak by
// design, so leak checking is off; the first finding stops the rank.
var sanitizerEnv = map[string]string{
	"ASAN_OPTIONS":   "detect_leaks=0:abort_on_error=1:halt_on_error=1",
	"UBSAN_OPTIONS":  "print_stacktrace=1:halt_on_error=1",
	"IVSHIM_VERBOSE": "1",
}

// TestSanitizers runs the conformance programs and coll_check with the sanitizer build of the
// shim on one cluster of 2 hosts × 2 VMs.
func TestSanitizers(t *testing.T) {
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	libDir := os.Getenv("IVSHIM_SANITIZE_LIBDIR")
	if libDir == "" {
		libDir = filepath.Join(root, "build", "asan", "lib")
	} else {
		t.Logf("sanitizer libraries from IVSHIM_SANITIZE_LIBDIR=%s", libDir)
	}
	ctl := filepath.Join(root, "build", "lib", "libivshim-ctl.so")
	if _, err := os.Stat(ctl); err != nil {
		t.Fatalf("control plane library not built: %v; run make in %s (make test builds it first)", err, root)
	}
	srcs, err := filepath.Glob(filepath.Join(root, "tests", "mpi", "p2p_*.c"))
	if err != nil || len(srcs) == 0 {
		t.Fatalf("no tests/mpi/p2p_*.c under %s: %v", root, err)
	}
	srcs = append(srcs, filepath.Join(root, "tests", "mpi", "coll_check.c"))
	ctx, cancel := testenv.Context(t)
	defer cancel()

	// Before the cluster: a missing runtime skips, a missing library fails.
	libs := map[cluster.MPI]string{}
	for _, m := range cluster.MPIs {
		lib := filepath.Join(libDir, m.ShimLibrary())
		libs[m] = asanRuntime(t, lib) + ":" + lib
	}
	c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 2, VMsPerHost: 2, Regions: true})
	layouts := []struct {
		name string
		vms  []*cluster.VM
	}{
		{"2x2", vms(t, c, "h0v0", "h0v1", "h1v0", "h1v1")},
		{"uneven", vms(t, c, "h0v0", "h0v1", "h1v0")},
	}
	// The uneven layout (a host with one rank, and rank groups of different sizes) runs the
	// programs whose communicators and wildcard matching depend most on the layout; all of them
	// would add half to the package's time.
	for _, m := range cluster.MPIs {
		t.Run(m.String(), func(t *testing.T) {
			bins := build(ctx, t, m, srcs)
			env := map[string]string{"LD_PRELOAD": libs[m], "IVSHIM_CTL_LIB": ctl}
			for k, v := range sanitizerEnv {
				env[k] = v
			}
			for _, src := range srcs {
				name := strings.TrimSuffix(filepath.Base(src), ".c")
				for _, l := range layouts {
					job := cluster.Job{MPI: m, VMs: l.vms, Program: bins[name], Env: env, Timeout: jobTimeout}
					if l.name == "uneven" && !unevenPrograms[name] {
						continue
					}
					reports := 1
					if name == "coll_check" {
						job.Args = collArgs[m]
						reports = len(job.Args) - 1
						if reports == 0 {
							reports = collReports
						}
					}
					t.Run(name+"/"+l.name, func(t *testing.T) { check(ctx, t, job, reports) })
				}
			}
		})
	}
}

// check runs job and requires a clean report of reports summary lines, no sanitizer finding,
// and the shim's statistics from every rank with traffic through the region on at least one.
func check(ctx context.Context, t *testing.T, job cluster.Job, reports int) {
	t.Helper()
	w := &watch{reports: reports, ranks: len(job.VMs), mpich: job.MPI == cluster.MPICH}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	w.kill = cancel
	job.Stdout, job.Stderr = w.out(), w.errs()
	res, err := cluster.Run(actx, job)
	w.stop()
	if res == nil {
		t.Fatal(err)
	}
	if loc := sanitizerError.FindStringIndex(res.Stderr); loc != nil {
		t.Errorf("sanitizer finding:\n%s%s", excerpt(res.Stderr, loc[0]), details(res, false))
		return
	}
	if w.killed.Load() {
		// MPICH 4.0 with UCX over TCP often hangs in MPI_Finalize (EMULATION.md): acceptable
		// once the report is complete and every rank has done the shim's part of MPI_Finalize.
		if job.MPI != cluster.MPICH || !w.complete() {
			t.Errorf("hung %v after its report, before every rank's statistics%s", finalizeGrace, details(res, true))
			return
		}
		t.Logf("MPICH was still in MPI_Finalize %v after the report and every rank's statistics (known MPICH+UCX hang over TCP); killed, the report stands", mpichGrace)
		err = nil
	}
	if err != nil {
		t.Errorf("%v%s", err, details(res, true))
		return
	}
	lines := report(res.Stdout)
	if len(lines) != reports {
		t.Errorf("%d report lines, want %d%s", len(lines), reports, details(res, true))
		return
	}
	for _, l := range lines {
		s := summaryLine.FindStringSubmatch(l)
		if s == nil || s[2] != strconv.Itoa(len(job.VMs)) || s[4] != "0" {
			t.Errorf("not a clean report of %d ranks: %q%s", len(job.VMs), l, details(res, true))
			return
		}
	}
	stats, err := res.ShimStats()
	if err != nil || len(stats) != len(job.VMs) {
		t.Errorf("statistics of %d ranks (%v), want %d (IVSHIM_VERBOSE=1)%s", len(stats), err, len(job.VMs), details(res, true))
		return
	}
	var region uint64
	for _, s := range stats {
		region += s.SHMMsgs + s.CollSHM
	}
	if region == 0 {
		t.Errorf("no rank moved anything through a region: %+v%s", stats, details(res, true))
		return
	}
	more := ""
	if len(lines) > 1 {
		more = fmt.Sprintf(" (and %d more clean reports)", len(lines)-1)
	}
	t.Logf("%v: %s%s", res.Elapsed.Round(time.Millisecond), lines[0], more)
}

// watch receives a job's output as it comes and kills the job (kill) finalizeGrace after its
// report is complete, mpichGrace after an MPICH job's report and every rank's statistics, or
// findingGrace after a sanitizer finding.
type watch struct {
	reports, ranks int
	mpich          bool
	kill           context.CancelFunc
	killed         atomic.Bool // after the report, not after a finding

	mu             sync.Mutex
	stdout, stderr []byte
	seen, stats    int
	found          bool
	stage          int // 0 running, 1 report complete, 2 MPICH finalizing, 3 finding
	timer          *time.Timer
}

type watchWriter struct {
	w      *watch
	stderr bool
}

func (w *watch) out() watchWriter  { return watchWriter{w, false} }
func (w *watch) errs() watchWriter { return watchWriter{w, true} }

// Write counts the report's summary lines in standard output and the shim's statistics lines
// in standard error, by whole lines.
func (ww watchWriter) Write(p []byte) (int, error) {
	w := ww.w
	w.mu.Lock()
	defer w.mu.Unlock()
	buf := &w.stdout
	if ww.stderr {
		buf = &w.stderr
	}
	*buf = append(*buf, p...)
	for {
		i := strings.IndexByte(string(*buf), '\n')
		if i < 0 {
			break
		}
		line := strings.TrimRight(string((*buf)[:i]), "\r ")
		*buf = (*buf)[i+1:]
		switch {
		case ww.stderr && strings.HasPrefix(line, "ivshim: stats "):
			w.stats++
		case ww.stderr && sanitizerError.MatchString(line):
			w.found = true
		case !ww.stderr && summaryLine.MatchString(line):
			w.seen++
		}
	}
	stage, grace := 0, time.Duration(0)
	switch {
	case w.found:
		stage, grace = 3, findingGrace
	case w.mpich && w.seen >= w.reports && w.stats >= w.ranks:
		stage, grace = 2, mpichGrace
	case w.seen >= w.reports:
		stage, grace = 1, finalizeGrace
	}
	if stage > w.stage {
		w.stage = stage
		if w.timer != nil {
			w.timer.Stop()
		}
		w.timer = time.AfterFunc(grace, func() {
			w.killed.Store(stage < 3)
			w.kill()
		})
	}
	return len(p), nil
}

// complete says whether the whole report and every rank's statistics have been seen.
func (w *watch) complete() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen >= w.reports && w.stats >= w.ranks
}

func (w *watch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
}

// asanRuntime returns the ASan runtime the sanitizer library lib needs, to be preloaded before
// it. It fails the test when lib is missing or not built with ASan, and skips it when the
// runtime is not installed.
func asanRuntime(t *testing.T, lib string) string {
	t.Helper()
	if _, err := os.Stat(lib); err != nil {
		t.Fatalf("sanitizer library not built: %v; run make (make test builds build/asan/lib first)", err)
	}
	out, err := exec.Command("ldd", lib).CombinedOutput()
	if err != nil {
		t.Fatalf("ldd %s: %v\n%s", lib, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasPrefix(f[0], "libasan.so") || f[1] != "=>" {
			continue
		}
		if f[2] == "not" {
			t.Skipf("the AddressSanitizer runtime %s that %s needs is not installed (Debian package libasan8)", f[0], lib)
		}
		return f[2]
	}
	t.Fatalf("%s does not load the AddressSanitizer runtime: not built with -fsanitize=address (ldd:\n%s)", lib, out)
	return ""
}

// vms returns the cluster's VMs of the given names.
func vms(t *testing.T, c *cluster.Cluster, names ...string) []*cluster.VM {
	t.Helper()
	var out []*cluster.VM
	for _, n := range names {
		vm, err := c.VM(n)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, vm)
	}
	return out
}

// build compiles every source for m into a test directory, two at a time, warnings being
// errors, and returns the binaries by program name.
func build(ctx context.Context, t *testing.T, m cluster.MPI, srcs []string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	bins := map[string]string{}
	errs := make([]error, len(srcs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for i, src := range srcs {
		name := strings.TrimSuffix(filepath.Base(src), ".c")
		out := filepath.Join(dir, name+"-"+m.String())
		bins[name] = out
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cmd := exec.CommandContext(ctx, m.Compiler(), "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", out, src)
			if msg, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("build %s with %s: %v\n%s", src, m.Compiler(), err, msg)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return bins
}

// report returns the program's report: its standard output without the shim's lines and blank
// lines.
func report(stdout string) []string {
	var lines []string
	for _, l := range strings.Split(stdout, "\n") {
		l = strings.TrimRight(l, "\r ")
		if l != "" && !strings.HasPrefix(l, "ivshim:") {
			lines = append(lines, l)
		}
	}
	return lines
}

// excerpt returns the sanitizer report in stderr starting near offset at: from the start of its
// line, or of the "====" line before it.
func excerpt(stderr string, at int) string {
	start := strings.LastIndex(stderr[:at], "\n") + 1
	if i := strings.LastIndex(stderr[:start], "=================================================================\n"); i >= 0 && start-i < 200 {
		start = i
	}
	end := min(len(stderr), start+stderrTail)
	return stderr[start:end]
}

// details formats a job's command line and output for a failure message.
func details(res *cluster.Result, withStderr bool) string {
	s := fmt.Sprintf("\ncommand: %s\nstdout:\n%s", strings.Join(res.Argv, " "), res.Stdout)
	if withStderr {
		stderr := res.Stderr
		if len(stderr) > stderrTail {
			stderr = "..." + stderr[len(stderr)-stderrTail:]
		}
		s += "\nstderr:\n" + stderr
	}
	return s
}
