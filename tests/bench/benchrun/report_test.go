package benchrun

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/tests/bench/ivbench"
	"ivshim.dev/ivshim/tests/cluster"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestPlan(t *testing.T) {
	cases := plan([]cluster.MPI{cluster.OpenMPI, cluster.MPICH}, []int{2, 4})
	if len(cases) != 16 {
		t.Fatalf("plan has %d cases, want 2 MPIs × (3 at 2 ranks + 5 at 4 ranks) = 16: %v", len(cases), cases)
	}
	for _, c := range cases {
		if c.Placement.twoHosts() && c.Ranks != 4 {
			t.Errorf("%v: two-host placement below 4 ranks", c)
		}
	}
	mpich4 := Case{MPI: cluster.MPICH, Ranks: 4, Placement: Native}.workload(DefaultSizes)
	if spinning := 4 > runtime.NumCPU(); spinning != (len(mpich4.sizes) == len(spinSizes)) {
		t.Errorf("MPICH at 4 ranks on %d CPUs measures sizes %v", runtime.NumCPU(), mpich4.sizes)
	}
	w := Case{MPI: cluster.OpenMPI, Ranks: 2, Placement: Shim}.workload(DefaultSizes)
	args := strings.Join(w.args(2, "/x/msglen.txt", 0.05, false), " ")
	if want := "-msglen /x/msglen.txt -iter 100000 -time 0.05 -npmin 2 -digits 3 PingPong PingPing Sendrecv Exchange Barrier"; !strings.HasPrefix(args, want) {
		t.Errorf("ivbench args %q, want prefix %q", args, want)
	}
	args = strings.Join(w.args(2, "/x/msglen.txt", 0.05, true), " ")
	if want := "-digits 3 -root_shift on PingPong"; !strings.Contains(args, want) {
		t.Errorf("ivbench args with the root shift %q, want %q in them", args, want)
	}
}

// sampleReport is a report of one library at 2 ranks with three runs each, as Run builds it.
func sampleReport(t *testing.T) *Report {
	t.Helper()
	r := &Report{Started: time.Now(), Runs: 3, Sizes: []int{0, 8, 1024, 1 << 20}, Seconds: 0.05, CPUs: 2}
	// Per placement: PingPong 0 B, PingPong 1 MiB (µs, MB/s), Barrier, Allreduce 8 B.
	figures := map[Placement][][4]float64{
		Native:  {{0.20, 100, 10000, 0.30}, {0.22, 102, 9800, 0.31}, {0.21, 101, 9900, 0.29}},
		Network: {{8.0, 900, 1100, 10.0}, {8.2, 910, 1090, 10.5}, {7.9, 905, 1095, 10.2}},
		Shim:    {{0.25, 110, 9000, 0.28}, {0.24, 111, 9100, 0.30}, {0.26, 112, 8900, 0.29}},
	}
	for p := Native; p <= Shim; p++ {
		c := &CaseResult{Case: Case{MPI: cluster.OpenMPI, Ranks: 2, Placement: p}}
		for round, f := range figures[p] {
			c.add([]ivbench.Block{
				{Name: "PingPong", Procs: 2, Rows: []ivbench.Row{{Bytes: 0, TAvg: f[0]}, {Bytes: 1 << 20, TAvg: f[1], MBps: f[2]}}},
				{Name: "Barrier", Procs: 2, Rows: []ivbench.Row{{TAvg: f[3]}}},
			})
			c.Runs = append(c.Runs, RunRecord{Round: round + 1, Status: statusOK, Attempts: 1, Load: 0.5})
		}
		r.Cases = append(r.Cases, c)
	}
	// The shim's third run died before Allreduce; native and network measured it three times.
	for _, c := range r.Cases {
		for i := range 3 {
			if c.Placement == Shim && i == 2 {
				continue
			}
			c.add([]ivbench.Block{{Name: "Allreduce", Procs: 2, Rows: []ivbench.Row{{Bytes: 8, TAvg: 1 + float64(i)}}}})
		}
	}
	r.Cases[2].Runs[2].Status, r.Cases[2].Runs[2].Error = statusFailed, "exit status 70: ivshim: fatal on rank 1"
	r.Passthrough = []*PassthroughResult{{MPI: cluster.OpenMPI, Calls: []*CallCost{
		{Call: "MPI_Test(null)", Plain: []float64{3, 3.2, 3.1}, Preloaded: []float64{5, 5.1, 5.3}},
		{Call: "MPI_Comm_size", Plain: []float64{1, 1, 1}, Preloaded: []float64{12, 13, 11}},
	}}}
	r.finish()
	return r
}

func TestAcceptance(t *testing.T) {
	r := sampleReport(t)
	got := map[string]Verdict{}
	for _, v := range r.Acceptance() {
		got[v.Target] = v
	}
	for _, want := range []struct {
		target   string
		value    float64
		measured bool
		met      bool
		note     string
	}{
		// Medians 0.25 / 0.21 and 111 / 101; the runs measured neither 8 B nor 1 KiB.
		{"PingPong latency at every size, 2 ranks, shim/native", 0.25 / 0.21, true, false,
			"missed at 2 of 4 sizes: 0 B 1.19, 1 MiB 1.10; no ratio at 2 of 4 sizes: 8 B (shim: failed in 1 of 3 runs), 1 KiB (shim: failed in 1 of 3 runs); fastest runs: worst 1.20 at 0 B"},
		// Bandwidth, which must stay above the goal: 9000 / 9900; fastest runs 9100 / 10000.
		{"PingPong bandwidth at every size from 64 KiB, 2 ranks, shim/native", 9000.0 / 9900, true, false,
			"missed at 1 of 1 sizes: 1 MiB 0.91; fastest runs: worst 0.91 at 1 MiB"},
		{"Barrier latency at every size, 2 ranks, shim/native", 0.29 / 0.30, true, true, ""},
		// The shim's median is of its two samples, 1.5; native's 2. Allreduce's sizes are
		// those of 4-byte floats.
		{"Allreduce latency at every size, 2 ranks, shim/native", 1.5 / 2, true, false,
			"no ratio at 3 of 4 sizes: 0 B (shim: failed in 1 of 3 runs), 1 KiB (shim: failed in 1 of 3 runs), 1 MiB (shim: failed in 1 of 3 runs)"},
		// MPI_Comm_size: 12 - 1.
		{"pass-through overhead per call (largest over the calls), no region", 11, true, false, "MPI_Comm_size"},
	} {
		v, ok := got[want.target]
		if !ok {
			t.Errorf("no verdict for %q", want.target)
			continue
		}
		if v.Measured != want.measured || v.Met != want.met || v.Note != want.note || (want.measured && !near(v.Value, want.value)) {
			t.Errorf("%s: got %+v, want value %.3f measured %v met %v note %q", want.target, v, want.value, want.measured, want.met, want.note)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestMarkdown(t *testing.T) {
	r := sampleReport(t)
	var b bytes.Buffer
	r.markdown(&b, []string{"openmpi-pingpong.png"})
	md := b.String()
	for _, want := range []string{
		"| benchmark | bytes | native µs | network µs | shim µs | shim / native | shim / network | shim min–max | shim / native, fastest runs |",
		"| PingPong | 0 | 0.210 | 8.00 | 0.250 | 1.19 | 0.03 | 0.240–0.260 | 1.20 |",
		"| Allreduce | 8 | 2.00 | 2.00 | 1.50 (2/3) | 0.75 | 0.75 | 1.00–2.00 | 1.00 |",
		"| 1048576 | 9900 | 1095 | 9000 | 0.91 | 8.22 |",
		"| Open MPI | MPI_Comm_size | 1.00 | 12.00 | 11.00 | 3 / 3 |",
		"| openmpi 2 ranks shim | 3 | 2 | 0.0 | run 3: failed: exit status 70: ivshim: fatal on rank 1 |",
		"| PingPong bandwidth at every size from 64 KiB, 2 ranks, shim/native | openmpi | ≥ 0.95× native | 0.91× | **not met** (missed at 1 of 1 sizes: 1 MiB 0.91; fastest runs: worst 0.91 at 1 MiB) |",
		"| Barrier latency at every size, 2 ranks, shim/native | openmpi | ≤ 1.00× native | 0.97× | met |",
		"| PingPing latency at every size, 2 ranks, shim/native | openmpi | ≤ 1.00× native | – | **not measured** (no ratio at 4 of 4 sizes: 0 B (shim: failed in 1 of 3 runs),",
		"![openmpi-pingpong](openmpi-pingpong.png)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestCompetingWork: the report calls a run disturbed by the work that ran beside it, not by
// the benchmark's own load.
func TestCompetingWork(t *testing.T) {
	r := sampleReport(t)
	var quiet bytes.Buffer
	r.markdown(&quiet, nil)
	if strings.Contains(quiet.String(), "busy machine") || strings.Contains(quiet.String(), "competed") {
		t.Errorf("quiet runs reported as disturbed:\n%s", quiet.String())
	}
	r.Cases[0].Runs[1].Competing = 1.2
	var busy bytes.Buffer
	r.markdown(&busy, nil)
	for _, want := range []string{"median 0.00, max 1.20", "other work competed for the CPUs before 1 of", "**Measured on a busy machine"} {
		if !strings.Contains(busy.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, busy.String())
		}
	}
}

func TestWrite(t *testing.T) {
	if _, err := exec.LookPath("gnuplot"); err != nil {
		t.Skip("gnuplot not installed (Debian package gnuplot-nox)")
	}
	dir := t.TempDir()
	if err := sampleReport(t).Write(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.md", "openmpi-pingpong.png", "openmpi-allreduce.png"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
	js, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Cases []struct {
			MPI       string `json:"mpi"`
			Placement string `json:"placement"`
			Points    []struct {
				Benchmark string    `json:"benchmark"`
				Usec      float64   `json:"usec"`
				Samples   []float64 `json:"samples_usec"`
			} `json:"points"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(js, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Cases) != 3 || got.Cases[2].Placement != "shim" || got.Cases[2].MPI != "openmpi" ||
		got.Cases[2].Points[0].Usec != 0.25 || len(got.Cases[2].Points[0].Samples) != 3 {
		t.Errorf("results.json: %s", js)
	}
}

// TestAcceptanceTwoHosts: on 2x2 every benchmark of all ranks must be at most as slow as the
// library alone; a library that spin-waits there is judged at what it measured only.
func TestAcceptanceTwoHosts(t *testing.T) {
	r := &Report{Started: time.Now(), Runs: 1, Sizes: []int{8, 1 << 10}, Seconds: 0.05, CPUs: runtime.NumCPU()}
	// Per placement: Sendrecv and Allreduce at 8 B and 1 KiB.
	figures := map[Placement][4]float64{Network2x2: {20, 30, 40, 60}, Shim2x2: {10, 33, 20, 30}}
	for _, m := range []cluster.MPI{cluster.OpenMPI, cluster.MPICH} {
		for p := Network2x2; p <= Shim2x2; p++ {
			f := figures[p]
			c := &CaseResult{Case: Case{MPI: m, Ranks: 4, Placement: p}}
			c.add([]ivbench.Block{
				{Name: "Sendrecv", Procs: 4, Rows: []ivbench.Row{{Bytes: 8, TAvg: f[0]}, {Bytes: 1 << 10, TAvg: f[1]}}},
				{Name: "Allreduce", Procs: 4, Rows: []ivbench.Row{{Bytes: 8, TAvg: f[2]}, {Bytes: 1 << 10, TAvg: f[3]}}},
			})
			c.Runs = []RunRecord{{Round: 1, Status: statusOK, Attempts: 1}}
			r.Cases = append(r.Cases, c)
		}
	}
	r.finish()
	got := map[string]Verdict{}
	for _, v := range r.Acceptance() {
		got[v.MPI+" "+v.Target] = v
	}
	const sendrecv, allreduce = "Sendrecv latency at every size, 4 ranks, 2x2 shim/2x2 network", "Allreduce latency at every size, 4 ranks, 2x2 shim/2x2 network"
	if v := got["openmpi "+sendrecv]; !v.Measured || v.Met || !near(v.Value, 1.1) || v.Note != "missed at 1 of 2 sizes: 1 KiB 1.10; fastest runs: worst 1.10 at 1 KiB" {
		t.Errorf("openmpi %s: %+v", sendrecv, v)
	}
	if v := got["openmpi "+allreduce]; !v.Measured || !v.Met || !near(v.Value, 0.5) {
		t.Errorf("openmpi %s: %+v", allreduce, v)
	}
	spinning := Case{MPI: cluster.MPICH, Ranks: 4}.spinning()
	if _, judged := got["mpich "+sendrecv]; judged == spinning {
		t.Errorf("mpich %s judged %v with MPICH spinning %v at 4 ranks on %d CPUs", sendrecv, judged, spinning, runtime.NumCPU())
	}
	if v := got["mpich "+allreduce]; !v.Met {
		t.Errorf("mpich %s: %+v", allreduce, v)
	}
}

// TestUnresolvedNotJudged: a size whose times are both too small for a ratio is named in the
// verdict but neither meets nor misses the goal.
func TestUnresolvedNotJudged(t *testing.T) {
	r := &Report{Started: time.Now(), Runs: 1, Sizes: []int{0, 8}, Seconds: 0.05, CPUs: 2}
	for p, f := range map[Placement][2]float64{Native: {0.006, 0.30}, Shim: {0.005, 0.20}} {
		c := &CaseResult{Case: Case{MPI: cluster.OpenMPI, Ranks: 2, Placement: p}}
		c.add([]ivbench.Block{{Name: "Bcast", Procs: 2, Rows: []ivbench.Row{{Bytes: 0, TAvg: f[0]}, {Bytes: 8, TAvg: f[1]}}}})
		c.Runs = []RunRecord{{Round: 1, Status: statusOK, Attempts: 1}}
		r.Cases = append(r.Cases, c)
	}
	r.finish()
	for _, v := range r.Acceptance() {
		if v.Target != "Bcast latency at every size, 2 ranks, shim/native" {
			continue
		}
		if !v.Met || !near(v.Value, 0.2/0.3) || !strings.Contains(v.Note, "not judged at 0 B") {
			t.Errorf("%+v", v)
		}
		return
	}
	t.Error("no Bcast verdict")
}
