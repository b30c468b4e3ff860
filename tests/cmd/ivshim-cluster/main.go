// Command ivshim-cluster creates an emulated cluster of hosts and VMs on this machine (see package
// ivshim.dev/ivshim/tests/cluster) and launches MPI jobs into it. It needs root.
//
//	ivshim-cluster up [flags]            create a cluster, print how to use it, keep it until Ctrl-C
//	ivshim-cluster run [flags] PROG ARGS create a cluster, run PROG on its VMs, tear it down
//	ivshim-cluster demo [-v] [-src F]    PingPong latency: native, VMs on one host (with and
//	                                     without the shim), VMs on two hosts
//	ivshim-cluster clean PREFIX...       remove what a killed run left behind
//
// Every command tears its cluster down on exit, on error and on SIGINT/SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"ivshim.dev/ivshim/tests/bench/ivbench"
	"ivshim.dev/ivshim/tests/cluster"
)

const usage = `usage: ivshim-cluster COMMAND [flags]

  up [-hosts N] [-vms N] [-vcpus N] [-region-size BYTES] [-regions] [-broker PATH] [-v]
        create a cluster, print how to use it, keep it until Ctrl-C
  run [-hosts N] [-vms N] [-vcpus N] [-region-size BYTES] [-regions] [-broker PATH] [-v]
      [-mpi openmpi|mpich] [-on VM,...]
      [-ranks-per-vm N] [-transport default|tcp|shm] [-env K=V]... [-timeout D] [-retry]
      [-migrate-every D [-migrate-seed N] [-migrate-deadline D]]
      PROGRAM [ARGS...]
        create a cluster, run one MPI job in its VMs (default: one rank on every VM), tear down;
        with -migrate-every the brokers move the job's VMs between hosts while it runs
  demo [-v] [-src tests/bench/ivbench.c] [-build DIR]
        2 hosts x 2 VMs served by brokers: ivbench PingPong native, between VMs of one host
        (TCP, and through the shim) and of two hosts
  clean PREFIX...
        kill the processes and remove the namespaces, links and files of a killed run

Regions come from an ivshim-broker per host (-broker, default: the one next to this program);
with -broker '' the harness creates bare region files instead; -regions=false gives none.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := cluster.SignalContext(context.Background())
	defer stop()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "up":
		err = up(ctx, args)
	case "run":
		err = run(ctx, args)
	case "demo":
		err = demo(ctx, args)
	case "clean":
		err = clean(args)
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
	default:
		err = fmt.Errorf("unknown command %q\n%s", cmd, usage)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ivshim-cluster:", err)
		os.Exit(1)
	}
}

// clusterFlags are the flags of commands that create a cluster.
type clusterFlags struct {
	cfg     cluster.Config
	regions bool
	broker  string
	verbose bool
}

func (f *clusterFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.cfg.Hosts, "hosts", 2, "emulated hosts")
	fs.IntVar(&f.cfg.VMsPerHost, "vms", 2, "VMs per host")
	fs.BoolVar(&f.regions, "regions", true, "give every host a region (IVSHIM_REGION in its VMs)")
	fs.StringVar(&f.broker, "broker", filepath.Join(buildDir(), "ivshim-broker"),
		"ivshim-broker binary that serves each host's region; empty: bare region files made by the harness")
	fs.IntVar(&f.cfg.VCPUs, "vcpus", 0, "vCPUs every VM reports to its broker, which sizes the region for them (0: 1)")
	fs.Uint64Var(&f.cfg.RegionSize, "region-size", 0, "bytes of each region, a power of two (with a broker: the smallest it makes; 0: 16 MiB)")
	fs.BoolVar(&f.verbose, "v", false, "log every step and command to stderr")
}

// buildDir is the directory of this program, where make also puts ivshim-broker and lib/.
func buildDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "."
	}
	return filepath.Dir(exe)
}

// create makes the cluster and returns it with its teardown.
func (f *clusterFlags) create(ctx context.Context) (*cluster.Cluster, func() error, error) {
	if f.verbose {
		f.cfg.Log = os.Stderr
	}
	if f.regions {
		f.cfg.Broker = f.broker
		f.cfg.Regions = f.broker == ""
	}
	c, err := cluster.Create(ctx, f.cfg)
	if err != nil {
		return nil, nil, err
	}
	return c, c.Teardown, nil
}

func up(ctx context.Context, args []string) (err error) {
	var f clusterFlags
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	f.register(fs)
	fs.Parse(args)
	c, teardown, err := f.create(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, teardown()) }()
	if err := describe(os.Stdout, c); err != nil {
		return err
	}
	<-ctx.Done()
	fmt.Println("\ntearing down", c.Prefix)
	return nil
}

// describe prints the cluster and command lines to use it.
func describe(w io.Writer, c *cluster.Cluster) error {
	fmt.Fprintf(w, "cluster %s is up: bridge %s %s, subnet %s (Ctrl-C tears it down)\n", c.Prefix, c.Bridge, c.BridgeAddr, c.Subnet)
	for _, h := range c.Hosts {
		region := h.Region()
		if region == "" {
			region = "none"
		}
		fmt.Fprintf(w, "  host %s  id %s  region %s\n", h.Name, h.ID, region)
		if h.Broker != nil {
			fmt.Fprintf(w, "    broker: ivshimctl -socket %s status   (log %s)\n", h.Broker.Socket(), h.Broker.LogFile())
		}
		for _, vm := range h.VMs {
			fmt.Fprintf(w, "    VM %-6s %-15s netns %s  boot_id %s\n", vm.Name, vm.Addr, vm.Netns, vm.BootID)
		}
	}
	vms := c.VMs()
	fmt.Fprintf(w, "\nshell in a VM:  %s %s 'hostname; echo $IVSHIM_REGION; exec sh -i'\n", c.Agent, vms[0].Name)
	for _, m := range cluster.MPIs {
		argv, err := cluster.Job{MPI: m, VMs: vms, Program: "PROGRAM"}.Argv()
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%-15s %s\n", m.String()+":", strings.Join(argv, " "))
	}
	fmt.Fprintf(w, "after a crash:  ivshim-cluster clean %s\n", c.Prefix)
	return nil
}

// envFlag collects -env K=V flags.
type envFlag map[string]string

func (e envFlag) String() string { return fmt.Sprint(map[string]string(e)) }

func (e envFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want K=V, got %q", s)
	}
	e[k] = v
	return nil
}

func run(ctx context.Context, args []string) (err error) {
	var f clusterFlags
	env := envFlag{}
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	f.register(fs)
	mpiName := fs.String("mpi", "openmpi", "MPI library: openmpi or mpich")
	on := fs.String("on", "", "comma-separated VMs for the ranks, in rank order (default: all)")
	perVM := fs.Int("ranks-per-vm", 1, "ranks per VM")
	transport := fs.String("transport", "default", "default, tcp (network path only) or shm (shared memory only)")
	fs.Var(env, "env", "K=V set in every rank (repeatable)")
	timeout := fs.Duration("timeout", cluster.DefaultTimeout, "kill the job after this long")
	retry := fs.Bool("retry", false, "run once more after a timeout (MPICH finalize hang)")
	mv := cluster.Moves{Log: prefixed{os.Stderr, "ivshim-cluster: "}}
	fs.DurationVar(&mv.Every, "migrate-every", 0, "while the job runs, move one of its VMs (picked at random) to "+
		"another host (picked at random) this often through the brokers' migration coordinator, one move at a "+
		"time (0: never)")
	fs.Uint64Var(&mv.Seed, "migrate-seed", 0, "seed of the moves' picks (0: from the clock; printed)")
	fs.DurationVar(&mv.Deadline, "migrate-deadline", 0, "drain and attach deadline of each move (0: the broker's default)")
	fs.Parse(args)
	if fs.NArg() == 0 {
		return fmt.Errorf("run: no program\n%s", usage)
	}
	job := cluster.Job{Program: fs.Arg(0), Args: fs.Args()[1:], RanksPerVM: *perVM, Env: env,
		Timeout: *timeout, RetryOnTimeout: *retry, Stdout: os.Stdout, Stderr: os.Stderr}
	if job.MPI, err = parseMPI(*mpiName); err != nil {
		return err
	}
	if job.Transport, err = parseTransport(*transport); err != nil {
		return err
	}
	c, teardown, err := f.create(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, teardown()) }()
	job.VMs = c.VMs()
	if *on != "" {
		job.VMs = nil
		for _, name := range strings.Split(*on, ",") {
			vm, err := c.VM(name)
			if err != nil {
				return err
			}
			job.VMs = append(job.VMs, vm)
		}
	}
	if mv.Every > 0 {
		if len(c.Hosts) < 2 || c.Hosts[0].Broker == nil {
			return errors.New("run: -migrate-every needs 2 or more hosts with brokers (-hosts, -broker)")
		}
		stop := c.StartMoves(job.VMs, mv)
		defer func() {
			_, merr := stop()
			err = errors.Join(err, merr)
		}()
	}
	res, err := cluster.Run(ctx, job)
	if res != nil {
		fmt.Fprintf(os.Stderr, "ivshim-cluster: %s: %v, %d attempt(s), %d timed out, %d stray processes killed\n",
			strings.Join(res.Argv, " "), res.Elapsed.Round(time.Millisecond), res.Attempts, res.Timeouts, res.Stragglers)
	}
	return err
}

// prefixed writes each line it gets with a prefix (one Write per line, as Moves makes them).
type prefixed struct {
	w      io.Writer
	prefix string
}

func (p prefixed) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}

func parseMPI(s string) (cluster.MPI, error) {
	for _, m := range cluster.MPIs {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown MPI %q: want openmpi or mpich", s)
}

func parseTransport(s string) (cluster.Transport, error) {
	switch s {
	case "default":
		return cluster.Default, nil
	case "tcp":
		return cluster.TCP, nil
	case "shm":
		return cluster.SharedMemory, nil
	}
	return 0, fmt.Errorf("unknown transport %q: want default, tcp or shm", s)
}

func demo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	verbose := fs.Bool("v", false, "log every step and command to stderr")
	src := fs.String("src", "tests/bench/ivbench.c", "ivbench source to build for both MPIs")
	dir := fs.String("build", buildDir(), "make's output directory, with ivshim-broker and lib/")
	fs.Parse(args)
	var log io.Writer
	if *verbose {
		log = os.Stderr
	}
	return ivbench.Demo(ctx, *src, *dir, os.Stdout, log)
}

func clean(prefixes []string) error {
	if len(prefixes) == 0 {
		return fmt.Errorf("clean: no prefix\n%s", usage)
	}
	var errs []error
	for _, p := range prefixes {
		if err := cluster.Clean(p); err != nil {
			errs = append(errs, err)
			continue
		}
		left, err := cluster.Leftovers(p)
		if err != nil || len(left) > 0 {
			errs = append(errs, fmt.Errorf("clean %s: still there: %s %v", p, strings.Join(left, ", "), err))
		}
	}
	return errors.Join(errs...)
}
