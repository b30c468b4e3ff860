package layouts

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/ivshmem"
	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/testenv"
)

var (
	flagScale    = flag.String("scale", "16", "co-located rank counts TestColocatedScale runs, comma-separated (e.g. 16,64)")
	flagScaleMPI = flag.String("scale-mpi", "openmpi,mpich", "MPI libraries TestColocatedScale runs, comma-separated")
)

// TestColocatedScale runs groups of many co-located ranks, oversubscribed on this machine
// (correctness only): one host whose broker sizes the job's region by itself for VMs of 2 vCPUs
// (ivshmem.SizeFor), 2 ranks per VM. Each group size runs a conformance program and coll_check
// with the shim, both MPIs, and requires clean reports, every rank's traffic through the region
// (no group may fall back to the library, no communicator may lack its collective area) and
// the region the broker sized.
func TestColocatedScale(t *testing.T) {
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	ctx, progs, wrapper := prepare(t, root)
	bin, err := cluster.BuildBroker(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range strings.Split(*flagScale, ",") {
		var ranks int
		if _, err := fmt.Sscan(n, &ranks); err != nil || ranks < 2 || ranks%2 != 0 {
			t.Fatalf("-scale %q: want even rank counts >= 2", *flagScale)
		}
		t.Run(fmt.Sprintf("%d", ranks), func(t *testing.T) {
			c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 1, VMsPerHost: ranks / 2, Broker: bin, VCPUs: 2})
			checkRegion(t, c, ranks)
			for _, m := range cluster.MPIs {
				if !strings.Contains(","+*flagScaleMPI+",", ","+m.String()+",") {
					continue
				}
				l := layout{mpi: m, vms: c.VMs(), p2p: "p2p_order"}
				for range l.vms {
					l.perVM = append(l.perVM, 2)
				}
				for r := 0; r < ranks; r++ {
					l.disable = append(l.disable, false)
					l.thread = append(l.thread, "single")
				}
				lib := filepath.Join(root, "build", "lib", m.ShimLibrary())
				for _, prog := range []string{l.p2p, "coll_check"} {
					t.Run(m.String()+"/"+prog, func(t *testing.T) {
						job := cluster.Job{MPI: m, VMs: l.vms, PerVM: l.perVM, Program: wrapper,
							Args: []string{progs[m][prog]}, Timeout: jobTimeout * time.Duration(max(2, ranks/8)), Env: l.env()}
						if prog == "coll_check" {
							job.Args = append(job.Args, "--quick")
						}
						job.Env["LD_PRELOAD"] = lib
						job.Env["IVSHIM_VERBOSE"] = "1"
						res, ok := run(ctx, t, "with the shim", job, l, true)
						if !ok {
							return
						}
						t.Logf("%s, %d co-located ranks: %v", prog, ranks, res.Elapsed)
						stats, err := res.ShimStats()
						if err != nil || len(stats) != ranks {
							t.Fatalf("statistics of %d ranks (%v), want %d%s", len(stats), err, ranks, testenv.Details(res, stderrTail))
						}
						if strings.Contains(res.Stderr, "no collective area") {
							t.Errorf("a communicator got no collective area: its collectives fell back to the library:\n%s", fallbackLines(res.Stderr))
						}
						for _, s := range stats {
							if s.SHMMsgs+s.CollSHM == 0 || s.NetMsgs != 0 {
								t.Errorf("rank %d: %+v: want traffic through the region only; the shim said:\n%s", s.Rank, s, fallbackLines(res.Stderr))
								break
							}
						}
					})
				}
			}
		})
	}
}

var rankNumber = regexp.MustCompile(`rank \d+`)

// fallbackLines are the lines of the shim's standard error that say why ranks pass through,
// one of each kind.
func fallbackLines(stderr string) string {
	seen := map[string]bool{}
	var out []string
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.Contains(l, "pass-through") && !strings.Contains(l, "use the MPI library") && !strings.Contains(l, "no collective area") &&
			!strings.Contains(l, "take the MPI library") {
			continue
		}
		key := rankNumber.ReplaceAllString(l, "rank N")
		if !seen[key] {
			seen[key] = true
			out = append(out, "\t"+l)
		}
	}
	if len(out) == 0 {
		return "\t(nothing)"
	}
	return strings.Join(out, "\n")
}

// openRegion maps the region at path for the rest of the test and returns it with the fair
// ring capacity of a group of ranks in it (ivshmem.Layout.RingCapacity).
func openRegion(t *testing.T, path string, ranks int) (*ivshmem.Region, uint64) {
	t.Helper()
	r, err := ivshmem.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	l := r.Layout()
	capacity, err := l.RingCapacity(ranks)
	if err != nil {
		t.Fatalf("region %s (%d bytes, %d slots): %v", path, l.TotalSize, l.SlotCount, err)
	}
	return r, capacity
}

// checkRegion requires the region the broker made for ranks co-located ranks to be what
// ivshmem.SizeFor gives: enough slots, within the default cap, and rings for the whole group.
func checkRegion(t *testing.T, c *cluster.Cluster, ranks int) {
	t.Helper()
	path := c.Hosts[0].Broker.Region(c.Job)
	r, capacity := openRegion(t, path, ranks)
	l := r.Layout()
	info, _ := os.Stat(path)
	t.Logf("region of %d ranks: %d MiB (file %d MiB), %d slots, %d-byte rings", ranks, l.TotalSize>>20, info.Size()>>20, l.SlotCount, capacity)
	if l.TotalSize > ivshmem.DefaultRegionCap || int(l.SlotCount) < ranks {
		t.Errorf("region for %d ranks: %d bytes, %d slots; want at most %d bytes and %d slots", ranks, l.TotalSize, l.SlotCount, ivshmem.DefaultRegionCap, ranks)
	}
	// Within the default cap, up to 16 ranks get full rings (ivshmem's TestSizeFor): the broker
	// must have sized the region for all the VMs' vCPUs, not for the first VM it saw.
	if ranks <= 16 && capacity != ivshmem.DefaultRingSize {
		t.Errorf("region for %d ranks gives %d-byte rings, want the full %d: not sized for the job's vCPUs", ranks, capacity, ivshmem.DefaultRingSize)
	}
}
