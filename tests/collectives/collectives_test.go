package collectives

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"ivshim.dev/ivshim/ivshmem"
	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/testenv"
)

const (
	// ranks is the job size: 2 hosts x 2 VMs or 1 host x 4 VMs.
	ranks = 4
	// collectives is the number of summary lines the program's report starts with, one per
	// collective (coll_check.c, coll_name).
	collectives = 15
	// regionSize leaves room for the shim's collective areas (about 0.6 MiB per communicator of
	// 4 co-located ranks) besides its rings; a tight region, for 2 ranks, has tightRoom bytes of
	// heap left (tighten): room for their rings (made on first use) and areas with the largest
	// slot (0.4 MiB each) for only some of the program's communicators, so that the others get
	// smaller slots (a 2 MiB region left some none at all, 4 MiB all the largest).
	regionSize = 64 << 20
	tightRoom  = 3 << 20
	// jobTimeout bounds one launch. The program takes 5-60 s on 2 cores depending on the MPI
	// library and the machine's load; the bound only turns a hang into a failure.
	jobTimeout = 5 * time.Minute
	// finalizeGrace is how long a job may take to exit once its report and the shim's statistics
	// (printed inside MPI_Finalize) are complete: 4 ranks end within a second or two (as in
	// tests/conformance). An MPICH job gets cluster.MPICHFinishGrace instead (see run).
	finalizeGrace = 5 * time.Second
	// stderrTail is how much of a failed job's standard error a failure quotes.
	stderrTail = 6000
)

// summaryLine is one line of the program's report header.
var summaryLine = regexp.MustCompile(`^coll_(\w+): (\d+) ranks, (\d+) checks, (\d+) failures$`)

// smallSlot is what the shim says (IVSHIM_VERBOSE) when a collective area gets a smaller slot.
var smallSlot = regexp.MustCompile(`collective area for \d+ co-located ranks with \d+-byte slots`)

// progressLine is what the program's -v prints to standard error before each case: the last one
// of each rank locates a hang.
var progressLine = regexp.MustCompile(`^coll_check: rank (\d+): `)

// shared holds what the package's tests reuse: the programs built per MPI library and the
// report of each library's run without the shim, which every run with the shim must repeat.
var shared struct {
	mu        sync.Mutex
	dir       string
	programs  map[cluster.MPI]string
	baselines map[cluster.MPI][]string // nil entry: the baseline failed
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ivcoll-build-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared.dir = dir
	shared.programs = map[cluster.MPI]string{}
	shared.baselines = map[cluster.MPI][]string{}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestNative runs the program for each MPI library in one OS: without the shim (the baseline),
// with the shim and one region shared by all ranks (1 host x 4 VMs), and with the shim and two
// regions (ranks {0,1} and {2,3}: 2 hosts x 2 VMs, the hierarchical path).
func TestNative(t *testing.T) {
	root := testenv.ModuleRoot(t)
	ctx, cancel := testContext(t)
	defer cancel()
	for _, m := range cluster.MPIs {
		t.Run(m.String(), func(t *testing.T) {
			requireMPI(t, m)
			lib := shimLibrary(t, root, m)
			want := baseline(ctx, t, root, m)
			if want == nil {
				t.Fatalf("no baseline report from %s without the shim: nothing to compare with", m)
			}
			prog := program(ctx, t, root, m)
			t.Run("1host", func(t *testing.T) {
				job := nativeJob(m, prog)
				job.Env = shimEnv(lib)
				job.Env["IVSHIM_REGION"] = newRegions(t, regionSize)[0]
				check(ctx, t, "natively on 1 host x 4 VMs with the shim", job, want)
			})
			t.Run("2hosts", func(t *testing.T) {
				job := nativeJob(m, prog)
				job.Env = shimEnv(lib)
				job.Args = append([]string{prog}, job.Args...)
				job.Program = hostsWrapper(t, newRegions(t, regionSize, regionSize))
				check(ctx, t, "natively on 2 hosts x 2 VMs with the shim", job, want)
			})
			// One host's region is too small for an area with the largest slot per
			// communicator: its areas get smaller slots than the other host's, and every
			// communicator must use the smallest of its hosts' slots.
			t.Run("2hosts-tight", func(t *testing.T) {
				job := nativeJob(m, prog)
				job.Env = shimEnv(lib)
				job.Args = append([]string{prog}, job.Args...)
				regions := newRegions(t, regionSize, regionSize)
				tighten(t, regions[0], tightRoom)
				job.Program = hostsWrapper(t, regions)
				res := check(ctx, t, "natively on 2 hosts x 2 VMs, one region tight, with the shim", job, want)
				if res != nil && !smallSlot.MatchString(res.Stderr) {
					t.Errorf("no rank said its collective area got a smaller slot: the tight region did not make any%s", details(res))
				}
				if res != nil && strings.Contains(res.Stderr, "no collective area") {
					t.Errorf("a communicator got no collective area, though smaller slots fit the tight region%s", details(res))
				}
			})
		})
	}
}

// TestCluster runs the program with the shim on emulated clusters of 2 hosts x 2 VMs and
// 1 host x 4 VMs, one rank per VM, for each MPI library.
func TestCluster(t *testing.T) {
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	ctx, cancel := testContext(t)
	defer cancel()
	layouts := []struct{ hosts, vms int }{{2, 2}, {1, 4}}
	for _, l := range layouts {
		t.Run(fmt.Sprintf("%dx%d", l.hosts, l.vms), func(t *testing.T) {
			if testing.Short() && l.hosts == 1 {
				t.Skip("-short: the 2 x 2 cluster only")
			}
			c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: l.hosts, VMsPerHost: l.vms, Regions: true, RegionSize: regionSize})
			for _, m := range cluster.MPIs {
				t.Run(m.String(), func(t *testing.T) {
					if testing.Short() && m == cluster.MPICH {
						t.Skip("-short: Open MPI only on clusters")
					}
					lib := shimLibrary(t, root, m)
					want := baseline(ctx, t, root, m)
					if want == nil {
						t.Fatalf("no baseline report from %s without the shim: nothing to compare with", m)
					}
					job := cluster.Job{MPI: m, VMs: c.VMs(), Program: program(ctx, t, root, m), Args: levelArgs(m),
						Env: shimEnv(lib), Timeout: jobTimeout}
					check(ctx, t, fmt.Sprintf("on a %d x %d cluster with the shim", l.hosts, l.vms), job, want)
				})
			}
		})
	}
}

// check runs job with the shim and requires a clean report equal to want and statistics that
// show both of the shim's paths in use on every rank. It returns the job's result (nil if the
// job failed).
func check(ctx context.Context, t *testing.T, what string, job cluster.Job, want []string) *cluster.Result {
	t.Helper()
	res, ok := run(ctx, t, what, job, true)
	if !ok {
		return nil
	}
	if got := report(res.Stdout); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: the report differs from the one without the shim:\nwithout:\n\t%s\nwith:\n\t%s", what,
			strings.Join(want, "\n\t"), strings.Join(got, "\n\t"))
	}
	stats, err := res.ShimStats()
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return res
	}
	if len(stats) != ranks {
		t.Errorf("%s: %d ranks printed the shim's statistics, want %d (IVSHIM_VERBOSE=1)%s", what, len(stats), ranks, details(res))
		return res
	}
	for i, s := range stats {
		if s.Rank != i {
			t.Errorf("%s: statistics of ranks %v, want 0..%d", what, stats, ranks-1)
			return res
		}
		// User-defined ops, v-variants and MPI_COMM_SELF always go to the library (coll_net);
		// the program runs most collectives where the shim can take them, so the shared-memory
		// path (coll_shm) must have carried the majority.
		if s.CollSHM <= s.CollNet || s.CollNet == 0 {
			t.Errorf("%s: rank %d: coll_shm=%d coll_net=%d; want coll_shm > coll_net > 0", what, s.Rank, s.CollSHM, s.CollNet)
		}
	}
	t.Logf("%s: %v, rank 0 coll_shm=%d coll_net=%d", what, res.Elapsed.Round(time.Millisecond), stats[0].CollSHM, stats[0].CollNet)
	return res
}

// baseline returns the report of m's run without the shim, natively, running it on first use;
// nil (after failing t) if that run failed.
func baseline(ctx context.Context, t *testing.T, root string, m cluster.MPI) []string {
	t.Helper()
	prog := program(ctx, t, root, m)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if want, ok := shared.baselines[m]; ok {
		return want
	}
	var want []string
	if res, ok := run(ctx, t, "natively without the shim", nativeJob(m, prog), false); ok {
		want = report(res.Stdout)
		t.Logf("%s natively without the shim: %v", m, res.Elapsed.Round(time.Millisecond))
	}
	shared.baselines[m] = want
	return want
}

// run launches job, whose report must be clean, and says whether it was. Once its report (and
// with the shim every rank's statistics) are complete, an MPICH job still running finalizeGrace
// later is killed and its report accepted (MPICH's own MPI_Finalize hang); any other MPI's is
// a failure. An MPICH job without the shim that timed out is run once more; with the shim a
// hang is a failure, never retried.
func run(ctx context.Context, t *testing.T, what string, job cluster.Job, shim bool) (*cluster.Result, bool) {
	t.Helper()
	job.Args = append(job.Args[:len(job.Args):len(job.Args)], "-v")
	job.Finished = func(stdout, stderr string) bool {
		n := 0
		for _, l := range strings.Split(stdout, "\n") {
			if summaryLine.MatchString(l) {
				n++
			}
		}
		return n >= collectives && (!shim || cluster.StatsLines(stderr) >= ranks)
	}
	job.FinishGrace = finalizeGrace
	if job.MPI == cluster.MPICH {
		job.FinishGrace = cluster.MPICHFinishGrace
	}
	for attempt := 1; ; attempt++ {
		res, err := cluster.Run(ctx, job)
		if errors.Is(err, cluster.ErrFinishGrace) && job.MPI == cluster.MPICH {
			t.Logf("%s: %s did not exit %v after its complete report (MPI_Finalize hang): killed, report accepted",
				what, job.MPI, cluster.MPICHFinishGrace)
			err = nil
		}
		if errors.Is(err, cluster.ErrTimeout) && job.MPI == cluster.MPICH && !shim && attempt == 1 {
			t.Logf("%s: MPICH timed out (%v); running it again%s", what, err, details(res))
			continue
		}
		if err != nil {
			t.Errorf("%s: %v%s", what, err, details(res))
			return res, false
		}
		if !clean(report(res.Stdout)) {
			t.Errorf("%s: exit status 0 but not a clean report of %d ranks%s", what, ranks, details(res))
			return res, false
		}
		return res, true
	}
}

// clean says whether lines are a report of `collectives` summary lines for `ranks` ranks
// without failures, and nothing else.
func clean(lines []string) bool {
	if len(lines) != collectives {
		return false
	}
	for _, l := range lines {
		s := summaryLine.FindStringSubmatch(l)
		if s == nil || s[2] != strconv.Itoa(ranks) || s[3] == "0" || s[4] != "0" {
			return false
		}
	}
	return true
}

// report returns the program's report: its standard output without blank lines.
func report(stdout string) []string {
	var lines []string
	for _, l := range strings.Split(stdout, "\n") {
		if l = strings.TrimRight(l, "\r "); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// details formats a job's command line and output for a failure message: standard output,
// the case each rank started last, and the rest of standard error (its tail).
func details(res *cluster.Result) string {
	if res == nil {
		return ""
	}
	var other []string
	last := map[int]string{}
	for _, l := range strings.Split(res.Stderr, "\n") {
		if m := progressLine.FindStringSubmatch(l); m != nil {
			r, _ := strconv.Atoi(m[1])
			last[r] = l
		} else if l != "" {
			other = append(other, l)
		}
	}
	var cases []string
	for r := range ranks {
		if l, ok := last[r]; ok {
			cases = append(cases, l)
		}
	}
	stderr := strings.Join(other, "\n")
	if len(stderr) > stderrTail {
		stderr = "..." + stderr[len(stderr)-stderrTail:]
	}
	return fmt.Sprintf("\ncommand: %s\nstdout:\n%s\nlast case started by each rank:\n%s\nstderr:\n%s",
		strings.Join(res.Argv, " "), res.Stdout, strings.Join(cases, "\n"), stderr)
}

// levelArgs selects the program's matrix: MPICH (and -short) the quick one.
func levelArgs(m cluster.MPI) []string {
	if m == cluster.MPICH || testing.Short() {
		return []string{"--quick"}
	}
	return nil
}

// nativeJob is a job of `ranks` ranks in this OS.
func nativeJob(m cluster.MPI, prog string) cluster.Job {
	return cluster.Job{MPI: m, Ranks: ranks, Program: prog, Args: levelArgs(m), Timeout: jobTimeout}
}

// shimEnv preloads the shim library lib with its statistics on.
func shimEnv(lib string) map[string]string {
	return map[string]string{"LD_PRELOAD": lib, "IVSHIM_VERBOSE": "1"}
}

// program returns coll_check built for m, building it on first use.
func program(ctx context.Context, t *testing.T, root string, m cluster.MPI) string {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if p, ok := shared.programs[m]; ok {
		return p
	}
	src := filepath.Join(root, "tests", "mpi", "coll_check.c")
	out := filepath.Join(shared.dir, "coll_check-"+m.String())
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, m.Compiler(), "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o", out, src)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s with %s: %v\n%s", src, m.Compiler(), err, msg)
	}
	shared.programs[m] = out
	return out
}

// newRegions creates n fresh region files with distinct host ids, removed when the test ends.
func newRegions(t *testing.T, sizes ...uint64) []string {
	t.Helper()
	var tag [4]byte
	if _, err := rand.Read(tag[:]); err != nil {
		t.Fatal(err)
	}
	paths := make([]string, len(sizes))
	for i := range paths {
		id, err := ivshmem.NewHostID()
		if err != nil {
			t.Fatal(err)
		}
		paths[i] = fmt.Sprintf("/dev/shm/ivcoll-%s-h%d", hex.EncodeToString(tag[:]), i)
		if err := ivshmem.Create(paths[i], ivshmem.Options{Size: sizes[i], HostID: id, JobID: "colltest"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := os.Remove(paths[i]); err != nil {
				t.Error(err)
			}
		})
	}
	return paths
}

// tighten takes all of the heap of the region at path but room bytes, for a session that is not
// the job's (the job's areas and rings see a heap that small).
func tighten(t *testing.T, path string, room uint64) {
	t.Helper()
	r, err := ivshmem.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l := r.Layout()
	heap := uint64(l.ChunkCount) * uint64(l.ChunkSize)
	if _, err := r.Alloc(0xf111, 0, ivshmem.AllocCollective, heap-room); err != nil {
		t.Fatalf("take %d of the %d heap bytes of %s: %v", heap-room, heap, path, err)
	}
}

// hostsWrapper writes a launcher script that emulates two hosts in one OS: it gives world
// ranks [0, n/2) the first region and the others the second, then runs its arguments.
func hostsWrapper(t *testing.T, regions []string) string {
	t.Helper()
	script := fmt.Sprintf(`#!/bin/sh
r=${OMPI_COMM_WORLD_RANK:-$PMI_RANK}
n=${OMPI_COMM_WORLD_SIZE:-$PMI_SIZE}
if [ -z "$r" ] || [ -z "$n" ]; then echo "hosts wrapper: no rank in the environment" >&2; exit 2; fi
if [ "$r" -lt $((n / 2)) ]; then IVSHIM_REGION=%s; else IVSHIM_REGION=%s; fi
export IVSHIM_REGION
exec "$@"
`, regions[0], regions[1])
	path := filepath.Join(t.TempDir(), "hosts.sh")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// shimLibrary returns the path of the shim library for m in the module's build/lib (or in
// $IVSHIM_TEST_LIBDIR, to test another build), failing the test when make has not built it or
// the control plane it loads.
func shimLibrary(t *testing.T, root string, m cluster.MPI) string {
	t.Helper()
	dir := os.Getenv("IVSHIM_TEST_LIBDIR")
	if dir == "" {
		dir = filepath.Join(root, "build", "lib")
	}
	for _, f := range []string{m.ShimLibrary(), "libivshim-ctl.so"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("shim library missing: %v: run `make build` first", err)
		}
	}
	return filepath.Join(dir, m.ShimLibrary())
}

// requireMPI skips the test when m's compiler or launcher is missing.
func requireMPI(t *testing.T, m cluster.MPI) {
	t.Helper()
	launcher := map[cluster.MPI]string{cluster.OpenMPI: "mpirun.openmpi", cluster.MPICH: "mpiexec.mpich"}[m]
	for _, tool := range []string{m.Compiler(), launcher} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages openmpi-bin libopenmpi-dev, mpich libmpich-dev)", tool)
		}
	}
}

// testContext ends shortly before the test binary's deadline, so that a hang fails with the
// job's output instead of a panic of the whole binary.
func testContext(t *testing.T) (context.Context, context.CancelFunc) {
	if d, ok := t.Deadline(); ok {
		return context.WithDeadline(context.Background(), d.Add(-30*time.Second))
	}
	return context.WithTimeout(context.Background(), 30*time.Minute)
}
