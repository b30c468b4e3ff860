// Package testenv holds what the MPI test suites (tests/cluster, tests/conformance,
// tests/collectives, tests/preload) share: finding the module, deciding whether this machine
// can host an emulated cluster, and a cluster whose teardown is checked when the test ends.
package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/tests/cluster"
)

// ModuleRoot returns the directory of this module's go.mod, found upwards from the test's
// working directory (its package directory).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// RequireCluster skips the test when this machine cannot host an emulated cluster.
func RequireCluster(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("emulated cluster needs root (network namespaces, bind mounts)")
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		t.Skipf("ip netns does not work here: %v: %s", err, out)
	}
	for _, tool := range []string{"unshare", "mpirun.openmpi", "mpiexec.mpich", "mpicc.openmpi", "mpicc.mpich"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages util-linux, openmpi-bin, libopenmpi-dev, mpich, libmpich-dev)", tool)
		}
	}
}

// logWriter sends the cluster's log lines to t.Log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// NewCluster creates a cluster logging to the test, torn down when the test ends; anything
// left behind fails the test.
func NewCluster(ctx context.Context, t testing.TB, cfg cluster.Config) *cluster.Cluster {
	t.Helper()
	cfg.Log = logWriter{t}
	c, err := cluster.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Teardown(); err != nil {
			t.Error(err)
		}
		left, err := cluster.Leftovers(c.Prefix)
		if err != nil {
			t.Error(err)
		} else if len(left) > 0 {
			t.Errorf("left behind by cluster %s: %s", c.Prefix, strings.Join(left, ", "))
		}
	})
	return c
}

// ShimLibrary returns the path of m's shim library in root's build/lib and fails the test when
// it, or the control plane library it loads from the same directory, is missing.
func ShimLibrary(t testing.TB, root string, m cluster.MPI) string {
	t.Helper()
	dir := filepath.Join(root, "build", "lib")
	for _, name := range []string{m.ShimLibrary(), "libivshim-ctl.so"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("shim library not built: %v; run make in %s (make test builds it first)", err, root)
		}
	}
	return filepath.Join(dir, m.ShimLibrary())
}

// Context ends shortly before the test binary's deadline, so that a hang fails with the job's
// output instead of a panic of the whole binary.
func Context(t *testing.T) (context.Context, context.CancelFunc) {
	if d, ok := t.Deadline(); ok {
		return context.WithDeadline(context.Background(), d.Add(-30*time.Second))
	}
	return context.WithTimeout(context.Background(), 30*time.Minute)
}

// Details formats a job's command line and output for a failure message, quoting at most the
// last tail bytes of its standard error.
func Details(res *cluster.Result, tail int) string {
	if res == nil {
		return ""
	}
	stderr := res.Stderr
	if len(stderr) > tail {
		stderr = "..." + stderr[len(stderr)-tail:]
	}
	return fmt.Sprintf("\ncommand: %s\nstdout:\n%s\nstderr:\n%s", strings.Join(res.Argv, " "), res.Stdout, stderr)
}

// CheckParentGates requires, among the shim's stats lines of a job whose parents spawned
// children (ranks repeat: each MPI_COMM_WORLD has its own), one line per parent rank
// 0..parents-1 that counts gates gates, and no other line counting any: the children, in
// pass-through or in a world of their own, pass none in these programs.
func CheckParentGates(t testing.TB, res *cluster.Result, parents int, gates uint64) {
	t.Helper()
	stats, err := res.AllShimStats()
	if err != nil {
		t.Errorf("with the shim: %v", err)
		return
	}
	var ranks []int
	for _, s := range stats {
		if s.Gates != 0 {
			ranks = append(ranks, s.Rank)
			if s.Gates != gates {
				t.Errorf("with the shim: rank %d passed %d gates, want %d", s.Rank, s.Gates, gates)
			}
		}
	}
	slices.Sort(ranks)
	want := make([]int, parents)
	for i := range want {
		want[i] = i
	}
	if !slices.Equal(ranks, want) {
		t.Errorf("with the shim: ranks %v passed gates, want the %d parents%s", ranks, parents, Details(res, 4096))
	}
}

// RankWrapper writes the script a job's ranks run in front of the program (Job.Program the
// script, Job.Args the program and its arguments): it gives each rank the choices RankEnv put
// in the job's environment, then runs the program.
func RankWrapper(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rank.sh")
	script := `#!/bin/sh
r=${OMPI_COMM_WORLD_RANK:-$PMI_RANK}
case "$IVT_DISABLE" in *",$r,"*) export IVSHIM_DISABLE=1 ;; esac
IVSHIM_TEST_THREAD=$(echo "$IVT_THREAD" | cut -d, -f$((r + 1)))
export IVSHIM_TEST_THREAD
exec "$@"
`
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// The cluster's VMs see the host's file system, but t.TempDir is private to root: make it
	// traversable like the programs' directory.
	if err := os.Chmod(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// RankEnv is the environment that makes RankWrapper set IVSHIM_DISABLE on rank r where
// disable[r] and run it at thread level thread[r] (tests/mpi/test_init.h: "single",
// "funneled", "serialized", "multiple"; "" for MPI_Init). disable may be shorter than thread.
func RankEnv(disable []bool, thread []string) map[string]string {
	var off []string
	for r, d := range disable {
		if d {
			off = append(off, strconv.Itoa(r))
		}
	}
	return map[string]string{"IVT_DISABLE": "," + strings.Join(off, ",") + ",", "IVT_THREAD": strings.Join(thread, ",")}
}

// CheckThreadMultiple requires of rank s.Rank, run at MPI_THREAD_MULTIPLE with the shim, that it
// said it runs in pass-through and left the region alone (what: the job, for the message).
func CheckThreadMultiple(t testing.TB, res *cluster.Result, s cluster.ShimStats, what string) {
	t.Helper()
	line := fmt.Sprintf("ivshim: rank %d pass-through: MPI_THREAD_MULTIPLE", s.Rank)
	if !strings.Contains(res.Stderr, line) || s.SHMMsgs != 0 || s.CollSHM != 0 || s.RegionBytes != 0 {
		t.Errorf("%s with the shim: rank %d runs at MPI_THREAD_MULTIPLE but did not say %q or used the region: %+v%s",
			what, s.Rank, line, s, Details(res, 4096))
	}
}
