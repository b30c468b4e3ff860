// Command ivshim-bench is `make bench`: it measures the shim against the MPI libraries' own
// shared memory and their network path on an emulated cluster, for Open MPI and MPICH, and
// writes results.md, results.json and PNG plots (see package
// ivshim.dev/ivshim/tests/bench/benchrun). It needs root and the shim libraries built by make.
//
//	ivshim-bench [-out build/bench] [-lib build/lib] [-src tests/bench] [-runs 3]
//	             [-mpi openmpi,mpich] [-ranks 2,4] [-time 0.05] [-v]
//
// It tears its cluster down on exit, on error and on SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"ivshim.dev/ivshim/tests/bench/benchrun"
	"ivshim.dev/ivshim/tests/cluster"
)

func main() {
	var o benchrun.Options
	flag.StringVar(&o.Out, "out", "build/bench", "directory for the report, plots, programs and logs")
	flag.StringVar(&o.Lib, "lib", "build/lib", "directory with libivshim-openmpi.so, libivshim-mpich.so, libivshim-ctl.so")
	flag.StringVar(&o.Src, "src", "tests/bench", "directory with ivbench.c and passthrough.c")
	flag.IntVar(&o.Runs, "runs", 5, "runs of every configuration (medians over them)")
	mpis := flag.String("mpi", "openmpi,mpich", "MPI libraries, comma-separated")
	ranks := flag.String("ranks", "2,4", "rank counts, comma-separated")
	flag.Float64Var(&o.Seconds, "time", 0.05, "ivbench -time: at most this many seconds per message size")
	flag.BoolVar(&o.RootShift, "root-shift", false, "ivbench -root_shift on: Bcast, Reduce, Gather and Scatter move their root every repetition")
	verbose := flag.Bool("v", false, "log the cluster's steps and commands to stderr")
	flag.Parse()
	o.Log = os.Stderr
	if *verbose {
		o.ClusterLog = os.Stderr
	}
	if err := run(o, *mpis, *ranks); err != nil {
		fmt.Fprintln(os.Stderr, "ivshim-bench:", err)
		os.Exit(1)
	}
}

func run(o benchrun.Options, mpis, ranks string) error {
	var err error
	if o.MPIs, err = parseMPIs(mpis); err != nil {
		return err
	}
	if o.RankCounts, err = parseInts(ranks); err != nil {
		return err
	}
	ctx, stop := cluster.SignalContext(context.Background())
	defer stop()
	rep, err := benchrun.Run(ctx, o)
	if err != nil {
		return err
	}
	if err := rep.Write(ctx, o.Out); err != nil {
		return err
	}
	for _, v := range rep.Acceptance() {
		verdict := v.Outcome
		if !v.Met {
			verdict = strings.ToUpper(verdict)
		}
		value := "not measured"
		if v.Measured {
			value = fmt.Sprintf("%.2f%s", v.Value, v.Unit)
		}
		if v.Note != "" {
			verdict += ": " + v.Note
		}
		fmt.Printf("%-8s %-66s %-12s %s (goal %s)\n", v.MPI, v.Target, value, verdict, v.Goal)
	}
	fmt.Printf("report: %s (%s)\n", filepath.Join(o.Out, "results.md"), rep.Elapsed.Round(time.Second))
	return nil
}

func parseMPIs(s string) ([]cluster.MPI, error) {
	var ms []cluster.MPI
	for _, name := range strings.Split(s, ",") {
		found := false
		for _, m := range cluster.MPIs {
			if m.String() == name {
				ms, found = append(ms, m), true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown MPI %q: want openmpi or mpich", name)
		}
	}
	return ms, nil
}

func parseInts(s string) ([]int, error) {
	var ns []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 2 {
			return nil, fmt.Errorf("rank count %q: want an integer of at least 2", f)
		}
		ns = append(ns, n)
	}
	return ns, nil
}
