package ivbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"ivshim.dev/ivshim/tests/cluster"
)

// A Route is where the two ranks of a ping-pong run, and how.
type Route struct {
	Name string
	// VMs picks the two VMs; nil means a native run, both ranks in the root namespace.
	VMs       func(c *cluster.Cluster) []*cluster.VM
	Transport cluster.Transport
	// Shim preloads the ivshim library; the run must then show that both ranks sent their
	// messages through the region.
	Shim bool
}

// Routes are the placements the demo compares, on a cluster of at least 2 hosts × 2 VMs.
var Routes = []Route{
	{Name: "native, shared memory (one OS)"},
	{Name: "native, TCP loopback (one OS)", Transport: cluster.TCP},
	{Name: "VM to VM, same host (TCP)", VMs: sameHost},
	{Name: "VM to VM, same host, ivshim", VMs: sameHost, Shim: true},
	{Name: "VM to VM, different hosts (TCP)", VMs: func(c *cluster.Cluster) []*cluster.VM {
		return []*cluster.VM{c.Hosts[0].VMs[0], c.Hosts[1].VMs[0]}
	}},
}

// sameHost picks the first two VMs of the first host.
func sameHost(c *cluster.Cluster) []*cluster.VM { return c.Hosts[0].VMs[:2] }

// Latency is the PingPong result of one route under one MPI.
type Latency struct {
	Route string
	MPI   cluster.MPI
	Rows  []Row
	// Timeouts counts attempts that hung and were retried.
	Timeouts int
}

// demoTimeout bounds one PingPong attempt; a run takes about a second.
const demoTimeout = 10 * time.Second

// demoSizes are the message sizes the demo table shows; the run measures 0 and 1 B to 4 KiB.
var demoSizes = []int{0, 1024, 4096}

// PingPong runs ivbench PingPong (with args, e.g. "-msglog", "0:12") on every route for every
// built MPI in bins, two ranks each, and returns the measured rows. Routes with the shim preload
// the library of each MPI from shimDir (libivshim-openmpi.so, libivshim-mpich.so).
func PingPong(ctx context.Context, c *cluster.Cluster, bins map[cluster.MPI]string, shimDir string, args []string) ([]Latency, error) {
	var lats []Latency
	for _, r := range Routes {
		for _, m := range cluster.MPIs {
			job := cluster.Job{MPI: m, Program: bins[m], Args: slices.Concat(args, []string{"PingPong"}), Transport: r.Transport,
				Timeout: demoTimeout, RetryOnTimeout: true}
			if r.VMs != nil {
				job.VMs = r.VMs(c)
			} else {
				job.Ranks = 2
			}
			if r.Shim {
				job.Env = map[string]string{"LD_PRELOAD": filepath.Join(shimDir, m.ShimLibrary()), "IVSHIM_VERBOSE": "1"}
			}
			res, err := cluster.Run(ctx, job)
			if err == nil && r.Shim {
				err = checkShimSHM(res)
			}
			if err != nil {
				out := ""
				if res != nil {
					out = "\n" + res.Stderr
				}
				return nil, fmt.Errorf("PingPong %s, %s: %w%s", m, r.Name, err, out)
			}
			blocks, err := Parse(res.Stdout)
			if err != nil {
				return nil, fmt.Errorf("PingPong %s, %s: %w", m, r.Name, err)
			}
			if len(blocks) != 1 {
				return nil, fmt.Errorf("PingPong %s, %s: %d result blocks in output:\n%s", m, r.Name, len(blocks), res.Stdout)
			}
			lats = append(lats, Latency{Route: r.Name, MPI: m, Rows: blocks[0].Rows, Timeouts: res.Timeouts})
		}
	}
	return lats, nil
}

// checkShimSHM checks that both ranks of a ping-pong with the shim sent through the region, so
// that a shim that fell back to the library cannot pass for one that did not.
func checkShimSHM(res *cluster.Result) error {
	stats, err := res.ShimStats()
	if err != nil {
		return err
	}
	if len(stats) != 2 || stats[0].SHMMsgs == 0 || stats[1].SHMMsgs == 0 {
		return fmt.Errorf("the shim did not carry the ping-pong through the region: stats %+v", stats)
	}
	return nil
}

// WriteTable prints lats as one row per route, one column per MPI and size (µs), and which runs
// had to be retried after a hang.
func WriteTable(w io.Writer, lats []Latency) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%-34s", "ivbench PingPong, t[usec]")
	for _, m := range cluster.MPIs {
		fmt.Fprintf(&b, "%*s", 10*len(demoSizes), m)
	}
	fmt.Fprintf(&b, "\n%-34s", "")
	for range cluster.MPIs {
		for _, size := range demoSizes {
			fmt.Fprintf(&b, "%10s", fmt.Sprintf("%d B", size))
		}
	}
	b.WriteString("\n")
	for _, r := range Routes {
		fmt.Fprintf(&b, "%-34s", r.Name)
		for _, m := range cluster.MPIs {
			for _, size := range demoSizes {
				fmt.Fprintf(&b, "%10s", latencyAt(lats, r.Name, m, size))
			}
		}
		b.WriteString("\n")
	}
	for _, l := range lats {
		if l.Timeouts > 0 {
			fmt.Fprintf(&b, "note: %s, %s hung %d time(s) and was retried (MPICH+UCX over TCP finalize hang)\n", l.MPI, l.Route, l.Timeouts)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// latencyAt formats the t[usec] of one cell, "-" if it was not measured.
func latencyAt(lats []Latency, route string, m cluster.MPI, size int) string {
	for _, l := range lats {
		if l.Route != route || l.MPI != m {
			continue
		}
		for _, row := range l.Rows {
			if row.Bytes == size {
				return fmt.Sprintf("%.2f", row.TAvg)
			}
		}
	}
	return "-"
}

// Demo creates a 2-host × 2-VM cluster whose regions come from an ivshim-broker per host,
// builds ivbench from src (ivbench.c) for both MPIs, prints the PingPong latency table of all
// Routes to out and tears the cluster down. buildDir is make's output directory: it holds
// ivshim-broker and lib/ with the shim libraries. log receives the cluster's progress lines
// (nil: none).
func Demo(ctx context.Context, src, buildDir string, out, log io.Writer) (err error) {
	broker, shimDir := filepath.Join(buildDir, "ivshim-broker"), filepath.Join(buildDir, "lib")
	need := []string{broker}
	for _, m := range cluster.MPIs {
		need = append(need, filepath.Join(shimDir, m.ShimLibrary()))
	}
	for _, f := range need {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("demo: %w (run make)", err)
		}
	}
	c, err := cluster.Create(ctx, cluster.Config{Hosts: 2, VMsPerHost: 2, Broker: broker, Log: log})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() { err = errors.Join(err, c.Teardown()) }()
	fmt.Fprintf(out, "cluster %s: 2 hosts × 2 VMs on bridge %s (%s), regions from ivshim-broker: %s and %s\n",
		c.Prefix, c.Bridge, c.Subnet, c.Hosts[0].Region(), c.Hosts[1].Region())
	bins := map[cluster.MPI]string{}
	for _, m := range cluster.MPIs {
		bin, err := cluster.Build(ctx, m, src, c.Dir)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		bins[m] = bin
	}
	lats, err := PingPong(ctx, c, bins, shimDir, []string{"-msglog", "0:12"})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintln(out)
	if err := WriteTable(out, lats); err != nil {
		return err
	}
	return demoMigration(ctx, c, bins[cluster.OpenMPI], shimDir, out)
}

// demoMigration moves VM h0v1 to host h1 through h0's broker while an MPI job (ivbench
// Allreduce, Open MPI, one rank per VM, with the shim) runs on all four VMs, as a
// co-scheduler would: the rank in h0v1 moves its traffic to the library and releases the
// region, the VM moves, the job completes. It prints the coordinator's phases, what the moved
// rank said, and where the VM's region comes from afterwards.
func demoMigration(ctx context.Context, c *cluster.Cluster, bin, shimDir string, out io.Writer) error {
	vm, dest := c.Hosts[0].VMs[1], c.Hosts[1]
	started := &startWatch{seen: make(chan struct{})}
	job := cluster.Job{MPI: cluster.OpenMPI, VMs: c.VMs(), Program: bin, Args: []string{"-msglog", "0:12", "-iter", "1000000", "-time", "0.3", "-npmin", "4", "Allreduce"},
		Env: map[string]string{"LD_PRELOAD": filepath.Join(shimDir, cluster.OpenMPI.ShimLibrary()), "IVSHIM_VERBOSE": "1"}, Timeout: 2 * time.Minute,
		Stdout: started}
	type outcome struct {
		res *cluster.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := cluster.Run(ctx, job)
		done <- outcome{res, err}
	}()
	select { // the job is past MPI_Init and into its benchmark
	case <-started.seen:
	case o := <-done:
		return fmt.Errorf("demo: the job for the migration ended before its benchmark began: %v", o.err)
	}
	fmt.Fprintf(out, "\nmigrating %s from %s to %s while ivbench runs on all four VMs (ivshimctl migrate %s %s):\n",
		vm.Name, vm.Host.Name, dest.Name, vm.Name, dest.Dir)
	res, err := c.Migrate(ctx, vm, dest, 0)
	o := <-done
	if err != nil {
		return fmt.Errorf("demo: migrate %s: %w", vm.Name, err)
	}
	if o.err != nil {
		return fmt.Errorf("demo: the job during the migration: %w\n%s", o.err, o.res.Stderr)
	}
	for _, p := range res.Phases {
		fmt.Fprintf(out, "  %-8s %8.2f ms\n", p.Name, p.Seconds*1e3)
	}
	fmt.Fprintf(out, "  %-8s %8.2f ms (%d ranks drained)\n", "total", res.Seconds*1e3, res.Ranks)
	said, joined, mover, moved := false, false, "", ""
	for _, l := range strings.Split(o.res.Stderr, "\n") {
		switch {
		case strings.Contains(l, "released the region"):
			fmt.Fprintf(out, "  %s\n", l)
			said = true
			mover, _, _ = strings.Cut(l, ": moved")
			moved = mover
		case joined && moved != "" && strings.HasPrefix(l, moved+": messages to rank") && strings.Contains(l, "take the region again"):
			fmt.Fprintf(out, "  %s\n", l) // its point-to-point with a new neighbour, on a ring again
		case strings.Contains(l, "joined the region of its VM's host again"):
			fmt.Fprintf(out, "  %s\n", l)
			joined = true
		case joined && mover != "" && strings.HasPrefix(l, mover+": collectives") && strings.Contains(l, "re-planned"):
			fmt.Fprintf(out, "  %s\n", l) // its collectives on the destination's region
			mover = ""
		}
	}
	if !said {
		return fmt.Errorf("demo: no rank released the region during the migration:\n%s", o.res.Stderr)
	}
	if !joined {
		fmt.Fprintf(out, "  (the job ended before the moved rank joined the region of %s)\n", dest.Name)
	}
	target, err := os.Readlink(vm.Region())
	if err != nil {
		return fmt.Errorf("demo: %s after the migration: %w", vm.Name, err)
	}
	fmt.Fprintf(out, "the job completed (data checked by ivbench); %s now runs on %s with region %s, shared with %d other VMs of the job there\n",
		vm.Name, vm.Host.Name, target, len(dest.VMs)-1)
	return nil
}

// startWatch closes seen when ivbench's output announces its first benchmark.
type startWatch struct {
	mu   sync.Mutex
	out  strings.Builder
	seen chan struct{}
}

func (w *startWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !strings.Contains(w.out.String(), "# Benchmarking") {
		w.out.Write(p)
		if strings.Contains(w.out.String(), "# Benchmarking") {
			close(w.seen)
		}
	}
	return len(p), nil
}
