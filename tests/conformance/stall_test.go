package conformance

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/testenv"
)

// stallLine is the shim's report of a wait that lasts (IVSHIM_STALL_SECONDS, cgo/front/stall.c).
var stallLine = regexp.MustCompile(`(?m)^ivshim: rank (\d+): one wait has gone on (\d+) s: (.*)$`)

// TestStallReport runs tests/mpi/stall_wait.c on two co-located VMs: rank 1 waits in the shim
// for a message rank 0 sends after sleeping 3 s, then for the ACK of a synchronous send that
// rank 0 receives after sleeping again. Without the shim and with IVSHIM_VERBOSE alone (stall
// reports after 60 s) the reports must match and no wait reports; with IVSHIM_STALL_SECONDS=1
// rank 1 must report each wait at 1 s, and again at 2 s (the doubling), naming the receive
// posted from rank 0 with tag 7, then the synchronous send awaiting its ACK; rank 0, asleep
// outside MPI, must report nothing.
func TestStallReport(t *testing.T) {
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	ctx, cancel := testenv.Context(t)
	defer cancel()
	for _, m := range cluster.MPIs {
		t.Run(m.String(), func(t *testing.T) {
			lib := testenv.ShimLibrary(t, root, m)
			bin := build(ctx, t, m, []program{{"stall_wait", filepath.Join(root, "tests", "mpi", "stall_wait.c")}})["stall_wait"]
			c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 1, VMsPerHost: 2, Regions: true})
			job := cluster.Job{MPI: m, VMs: c.VMs(), Program: bin, Args: []string{"3"}, Timeout: attemptTimeout}

			plain, ok := run(ctx, t, "without the shim", job)
			job.Env = map[string]string{"LD_PRELOAD": lib, "IVSHIM_VERBOSE": "1"}
			quiet, ok2 := run(ctx, t, "with the shim, stall reports after the default 60 s", job)
			if !ok || !ok2 {
				return
			}
			if want, got := report(plain.Stdout), report(quiet.Stdout); !equal(want, got) {
				t.Errorf("the report with the shim differs from the report without it:\nwithout:\n\t%s\nwith:\n\t%s",
					strings.Join(want, "\n\t"), strings.Join(got, "\n\t"))
			}
			if l := stallLine.FindAllString(quiet.Stderr, -1); len(l) != 0 {
				t.Errorf("waits of 3 s reported with the default of 60 s:\n%s", strings.Join(l, "\n"))
			}

			job.Env["IVSHIM_STALL_SECONDS"] = "1"
			res, ok := run(ctx, t, "with the shim and IVSHIM_STALL_SECONDS=1", job)
			if !ok {
				return
			}
			checkTraffic1Host(t, res)
			var recv, ssend []int // seconds reported during each wait
			for _, l := range stallLine.FindAllStringSubmatch(res.Stderr, -1) {
				s, _ := strconv.Atoi(l[2])
				switch {
				case l[1] != "1":
					t.Errorf("rank %s reported a wait; only rank 1 waits in MPI: %s", l[1], l[0])
				case strings.Contains(l[3], "1 receives posted (the oldest from 0, tag 7,"):
					recv = append(recv, s)
				case strings.Contains(l[3], "1 synchronous sends await ACKs") && strings.Contains(l[3], "0 receives posted"):
					ssend = append(ssend, s)
				default:
					t.Errorf("rank 1 reported a wait that is neither of its two: %s", l[0])
				}
			}
			for _, w := range []struct {
				what string
				got  []int
			}{{"the receive", recv}, {"the synchronous send", ssend}} {
				// 1 s, 2 s, and 4 s only if the 3 s sleep ran late
				if len(w.got) < 2 || len(w.got) > 3 || w.got[0] != 1 || w.got[1] != 2 || len(w.got) == 3 && w.got[2] != 4 {
					t.Errorf("rank 1 reported its wait in %s at %v s, want 1 and 2 (and 4 if late); stderr:\n%s", w.what, w.got, res.Stderr)
				}
			}
			t.Logf("%s:\n%s", m, strings.Join(stallLine.FindAllString(res.Stderr, -1), "\n"))
		})
	}
}

// checkTraffic1Host requires both ranks' statistics with the traffic through the region.
func checkTraffic1Host(t *testing.T, res *cluster.Result) {
	t.Helper()
	stats, err := res.ShimStats()
	if err != nil || len(stats) != 2 {
		t.Errorf("with the shim: statistics of %d ranks (%v), want 2%s", len(stats), err, testenv.Details(res, stderrTail))
		return
	}
	for _, s := range stats {
		if s.SHMMsgs == 0 || s.NetMsgs != 0 {
			t.Errorf("with the shim: rank %d: %+v, want every message through the region", s.Rank, s)
		}
	}
}
