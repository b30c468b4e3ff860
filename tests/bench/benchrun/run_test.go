package benchrun

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"ivshim.dev/ivshim/tests/cluster"
)

// TestRunSmoke runs the whole benchmark once, small: Open MPI at 2 ranks, two sizes. It checks
// the pipeline (build, cluster, every placement, shim statistics, pass-through, report), not
// the figures.
func TestRunSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("emulated cluster needs root (network namespaces, bind mounts)")
	}
	for _, tool := range []string{"unshare", "mpirun.openmpi", "mpicc.openmpi", "gnuplot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages util-linux, openmpi-bin, libopenmpi-dev, gnuplot-nox)", tool)
		}
	}
	lib := filepath.Join("..", "..", "..", "build", "lib")
	if _, err := os.Stat(filepath.Join(lib, cluster.OpenMPI.ShimLibrary())); err != nil {
		t.Fatalf("shim library not built: run make first (%v)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := t.TempDir()
	var log bytes.Buffer
	rep, err := Run(ctx, Options{Src: "..", Lib: lib, Out: out, Runs: 1, MPIs: []cluster.MPI{cluster.OpenMPI},
		RankCounts: []int{2}, Sizes: []int{0, 1024}, Seconds: 0.01, Log: &log})
	t.Log(log.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cases) != 3 {
		t.Fatalf("%d cases, want native, network and shim", len(rep.Cases))
	}
	for _, c := range rep.Cases {
		if len(c.Runs) != 1 || c.Runs[0].Status != statusOK {
			t.Errorf("%v: runs %+v", c, c.Runs)
			continue
		}
		if p := c.point("Alltoall", 1024); p == nil || p.Usec <= 0 {
			t.Errorf("%v: no Alltoall at 1 KiB: %+v", c, c.Points)
		}
	}
	if shim := rep.caseOf(cluster.OpenMPI, 2, Shim); len(shim.Stats) != 2 {
		t.Errorf("shim run: statistics of %d ranks, want 2", len(shim.Stats))
	}
	if calls := rep.Passthrough[0].Calls; len(calls) != 2 || len(calls[0].Plain) != 1 || len(calls[0].Preloaded) != 1 {
		t.Errorf("pass-through: %+v", rep.Passthrough[0])
	}
	if err := rep.Write(ctx, out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.md", "results.json", "openmpi-pingpong.png", "logs/r1-openmpi-2-shim.txt"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
}
