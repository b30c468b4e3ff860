package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"ivshim.dev/ivshim/tests/bench/ivbench"
	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/testenv"
)

// build compiles the C program src (relative to this package) for every MPI into a test
// directory.
func build(ctx context.Context, t *testing.T, src string) map[cluster.MPI]string {
	t.Helper()
	dir := t.TempDir()
	bins := map[cluster.MPI]string{}
	for _, m := range cluster.MPIs {
		bin, err := cluster.Build(ctx, m, src, dir)
		if err != nil {
			t.Fatal(err)
		}
		bins[m] = bin
	}
	return bins
}

// run runs job and fails the test on error; a timeout that a retry cured is logged.
func run(ctx context.Context, t *testing.T, job cluster.Job) *cluster.Result {
	t.Helper()
	res, err := cluster.Run(ctx, job)
	if res != nil && res.Timeouts > 0 {
		t.Logf("%s job %s: %d of %d attempts timed out (known MPICH+UCX finalize hang)", job.MPI, job.Program, res.Timeouts, res.Attempts)
	}
	if err != nil {
		if res != nil {
			t.Logf("command: %s\nstdout:\n%s\nstderr:\n%s", strings.Join(res.Argv, " "), res.Stdout, res.Stderr)
		}
		t.Fatal(err)
	}
	return res
}

// TestVMIdentity checks what a process inside each VM sees, the agent's handling of ssh options,
// and that Leftovers sees a live cluster.
func TestVMIdentity(t *testing.T) {
	testenv.RequireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 2, VMsPerHost: 2, Regions: true})

	left, err := cluster.Leftovers(c.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"netns " + c.Prefix + "-h1v1", "link " + c.Prefix + "-br", "file /dev/shm/" + c.Prefix + "-h0"} {
		if !slices.Contains(left, want) {
			t.Errorf("Leftovers of a live cluster = %q, missing %q", left, want)
		}
	}

	bootIDs := map[string]bool{}
	for _, vm := range c.VMs() {
		out, err := vm.Command(ctx, `hostname; cat /proc/sys/kernel/random/boot_id; echo "$IVSHIM_REGION"; getent hosts h1v1 | cut -d" " -f1`).Output()
		if err != nil {
			t.Fatalf("VM %s: %v", vm.Name, err)
		}
		got := strings.Fields(string(out))
		want := []string{vm.Name, vm.BootID, vm.Host.Region(), c.VMs()[3].Addr.String()}
		if !slices.Equal(got, want) {
			t.Errorf("VM %s sees hostname, boot_id, region, address of h1v1 = %q, want %q", vm.Name, got, want)
		}
		bootIDs[vm.BootID] = true
		if fi, err := os.Stat(vm.Host.Region()); err != nil || fi.Size() != cluster.DefaultRegionSize {
			t.Errorf("region of host %s: %v, size %v", vm.Host.Name, err, fi)
		}
	}
	if len(bootIDs) != 4 {
		t.Errorf("boot ids not distinct: %v", bootIDs)
	}

	// Each VM has its own /dev/shm, where its host's region is the very file of the root namespace.
	h0v0, h0v1 := c.VMs()[0], c.VMs()[1]
	region := h0v0.Host.Region()
	var rootRegion syscall.Stat_t
	if err := syscall.Stat(region, &rootRegion); err != nil {
		t.Fatal(err)
	}
	out, err := h0v0.Command(ctx, `echo private >/dev/shm/mine && ls /dev/shm && stat -c %i "$IVSHIM_REGION"`).Output()
	if want := fmt.Sprintf("%s\nmine\n%d\n", filepath.Base(region), rootRegion.Ino); err != nil || string(out) != want {
		t.Errorf("VM %s /dev/shm and region inode: %q, %v; want %q", h0v0.Name, out, err, want)
	}
	out, err = h0v1.Command(ctx, `ls /dev/shm`).Output()
	if want := filepath.Base(region) + "\n"; err != nil || string(out) != want {
		t.Errorf("VM %s sees /dev/shm %q, %v; want only its region %q", h0v1.Name, out, err, want)
	}
	if _, err := os.Stat("/dev/shm/mine"); err == nil {
		t.Errorf("a file of VM %s's /dev/shm is in the root namespace's", h0v0.Name)
	}

	// hydra passes -x before the host; ssh options with an argument take theirs.
	vm := c.VMs()[1]
	out, err = exec.CommandContext(ctx, c.Agent, "-x", "-o", "BatchMode=yes", "-p", "22", vm.Addr.String(), "echo", "$(hostname)").Output()
	if err != nil || strings.TrimSpace(string(out)) != vm.Name {
		t.Errorf("agent with ssh options: %q, %v; want %q", out, err, vm.Name)
	}
	if err := exec.CommandContext(ctx, c.Agent, "nosuchvm", "true").Run(); err == nil {
		t.Error("agent accepted an unknown VM")
	}

	// A withdrawn region is no longer exported.
	if err := c.SetRegion(vm.Host, ""); err != nil {
		t.Fatal(err)
	}
	out, err = vm.Command(ctx, `echo "region=$IVSHIM_REGION"`).Output()
	if err != nil || strings.TrimSpace(string(out)) != "region=" {
		t.Errorf("after SetRegion(\"\"): %q, %v", out, err)
	}
}

// TestMPIAcrossVMs runs hello_ring on one rank per VM of a 2×2 cluster under both MPIs and proves
// that the libraries used the network between VMs: restricted to shared memory, the same job
// fails across VMs (and succeeds natively), and PingPong across VMs is far slower than natively.
func TestMPIAcrossVMs(t *testing.T) {
	testenv.RequireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 2, VMsPerHost: 2, Regions: true})
	hello := build(ctx, t, "../mpi/hello_ring.c")
	bench := build(ctx, t, "../bench/ivbench.c")
	vms := c.VMs()
	sameHost := vms[:2]

	for _, m := range cluster.MPIs {
		t.Run(m.String(), func(t *testing.T) {
			// MPICH 4.0.2 + UCX 1.13 over TCP hangs in MPI_Finalize in a third to half of 4-rank
			// runs (EMULATION.md), with or without namespaces: not the cluster's fault, and the
			// output is still checked.
			res, err := cluster.Run(ctx, helloJob(m, vms, hello[m], nil))
			if res == nil {
				t.Fatal(err)
			}
			tolerateFinalizeHang(t, m, res, err, strings.Count(res.Stdout, "allreduce ok") == len(vms))
			checkHelloRing(t, res.Stdout, vms)

			res, err = cluster.Run(ctx, cluster.Job{MPI: m, VMs: sameHost, Transport: cluster.SharedMemory, Program: hello[m], Timeout: 30 * time.Second})
			switch {
			case errors.Is(err, cluster.ErrTimeout):
				t.Fatalf("shared-memory-only job across VMs hung instead of failing: %v", err)
			case err == nil:
				t.Fatalf("shared-memory-only job across VMs %s and %s succeeded: the VMs share memory transports\n%s", sameHost[0].Name, sameHost[1].Name, res.Stdout)
			}
			if strings.Contains(res.Stdout, "allreduce ok") {
				t.Fatalf("shared-memory-only job across VMs failed only after ranks communicated: %v\n%s", err, res.Stdout)
			}
			// The library's explanation is usually there; hydra sometimes loses it when it aborts.
			t.Logf("shared memory only across VMs fails as it must: %v; says %q: %v", err, unreachable[m],
				strings.Contains(res.Stdout+res.Stderr, unreachable[m]))
			run(ctx, t, cluster.Job{MPI: m, Ranks: 2, Transport: cluster.SharedMemory, Program: hello[m], Timeout: 30 * time.Second})

			native := pingPong0(ctx, t, cluster.Job{MPI: m, Ranks: 2, Program: bench[m]})
			across := pingPong0(ctx, t, cluster.Job{MPI: m, VMs: []*cluster.VM{vms[0], vms[2]}, Program: bench[m]})
			t.Logf("%s PingPong 0 B: native %.2f µs, across VMs %.2f µs", m, native, across)
			switch {
			case native > busyNative:
				t.Logf("native PingPong above %.0f µs: the machine is busy, latencies say nothing about transports", busyNative)
			case across < 3*native:
				t.Errorf("%s PingPong across VMs %.2f µs is not well above native %.2f µs: not over TCP?", m, across, native)
			}
		})
	}
}

// busyNative is a native shared-memory PingPong latency (µs) above which the machine is too
// loaded (other jobs on its 2 cores) for latency comparisons: idle, it is 0.2–0.5 µs.
const busyNative = 2.0

// unreachable is what each library reports when its allowed transports cannot connect two ranks.
var unreachable = map[cluster.MPI]string{
	cluster.OpenMPI: "unable to reach each other",
	cluster.MPICH:   "Destination is unreachable",
}

// checkHelloRing checks one line per rank, each from the VM the rank was placed on.
func checkHelloRing(t *testing.T, stdout string, vms []*cluster.VM) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	slices.Sort(lines)
	if len(lines) != len(vms) {
		t.Fatalf("hello_ring printed %d lines, want %d:\n%s", len(lines), len(vms), stdout)
	}
	for i, vm := range vms {
		want := fmt.Sprintf("rank %d of %d on %s boot_id %s region %s ring ok allreduce ok", i, len(vms), vm.Name, vm.BootID, vm.Device())
		if lines[i] != want {
			t.Errorf("rank %d: %q\nwant %q", i, lines[i], want)
		}
	}
}

// pingPong0 runs ivbench PingPong for 0 bytes and returns its latency in µs.
func pingPong0(ctx context.Context, t *testing.T, job cluster.Job) float64 {
	t.Helper()
	job.Args = []string{"-msglog", "0:0", "-iter", "2000", "PingPong"}
	job.Timeout, job.RetryOnTimeout = 20*time.Second, true
	res := run(ctx, t, job)
	blocks, err := ivbench.Parse(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 1 || len(blocks[0].Rows) == 0 || blocks[0].Rows[0].Bytes != 0 {
		t.Fatalf("unexpected ivbench output:\n%s", res.Stdout)
	}
	return blocks[0].Rows[0].TAvg
}

// TestTimeoutKillsJob checks that an expired job is killed with all its daemons and ranks.
func TestTimeoutKillsJob(t *testing.T) {
	testenv.RequireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 2, VMsPerHost: 1})
	for _, m := range cluster.MPIs {
		start := time.Now()
		res, err := cluster.Run(ctx, cluster.Job{MPI: m, VMs: c.VMs(), Program: "/bin/sleep", Args: []string{"600"}, Timeout: time.Second, RetryOnTimeout: true})
		if !errors.Is(err, cluster.ErrTimeout) {
			t.Fatalf("%s: sleeping job: err = %v, want ErrTimeout", m, err)
		}
		if res.Attempts != 2 || res.Timeouts != 2 {
			t.Errorf("%s: %d attempts, %d timeouts; want 2 and 2", m, res.Attempts, res.Timeouts)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("%s: two 1 s attempts took %v", m, d)
		}
		left, err := cluster.Leftovers(c.Prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range left {
			if strings.HasPrefix(l, "process ") {
				t.Errorf("%s: after timeout: %s", m, l)
			}
		}
		out, err := exec.CommandContext(ctx, "ip", "netns", "pids", c.VMs()[0].Netns).Output()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("%s: processes left in VM %s: %q %v", m, c.VMs()[0].Name, out, err)
		}
	}
}

// clusterCommand builds ivshim-cluster, and beside it the broker it runs, into a test directory.
func clusterCommand(ctx context.Context, t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := cluster.BuildBroker(ctx, dir); err != nil {
		t.Fatal(err)
	}
	bin, err := cluster.BuildCommand(ctx, dir, "ivshim.dev/ivshim/tests/cmd/ivshim-cluster")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// startFirstLine starts cmd and reads its standard output up to the end of the first line; on
// error cmd is killed.
func startFirstLine(cmd *exec.Cmd) (io.ReadCloser, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	for b := []byte{0}; b[0] != '\n'; {
		if _, err := out.Read(b); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("no first line: %w", err)
		}
	}
	return out, nil
}

// prefixInLog finds a cluster's prefix in ivshim-cluster's -v log.
var prefixInLog = regexp.MustCompile(`\biv[0-9a-f]{5}\b`)

// TestClosedOutputTearsDown runs ivshim-cluster with its standard output a pipe that the reader
// closes after the first line (as `| head -1` does). The job goes on to its end, and the command
// still tears its cluster down: no broker, namespace, link or file of it is left.
func TestClosedOutputTearsDown(t *testing.T) {
	testenv.RequireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := clusterCommand(ctx, t)
	cmd := exec.CommandContext(ctx, bin, "run", "-v", "-hosts", "2", "-vms", "1", "-timeout", "60s",
		"/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.2; done")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := startFirstLine(cmd)
	if err != nil {
		t.Fatal(err)
	}
	out.Close()
	err = cmd.Wait()
	prefix := prefixInLog.FindString(stderr.String())
	if prefix == "" {
		t.Fatalf("no cluster prefix in the log (%v):\n%s", err, stderr.String())
	}
	t.Cleanup(func() { cluster.Clean(prefix) })
	if err != nil {
		t.Errorf("ivshim-cluster run with its output closed: %v\n%s", err, stderr.String())
	}
	left, lerr := cluster.Leftovers(prefix)
	if lerr != nil {
		t.Fatal(lerr)
	}
	for _, l := range left {
		t.Errorf("left behind: %s", l)
	}
}

// TestKilledCommandLeavesNothing SIGKILLs ivshim-cluster while its job runs: the command's
// watchdog removes the cluster (brokers, the job's processes, namespaces, links and files)
// without `ivshim-cluster clean`.
func TestKilledCommandLeavesNothing(t *testing.T) {
	testenv.RequireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := clusterCommand(ctx, t)
	cmd := exec.Command(bin, "run", "-v", "-hosts", "2", "-vms", "1", "-timeout", "90s",
		"/bin/sh", "-c", "echo started; sleep 80")
	stderr, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = stderr
	if _, err := startFirstLine(cmd); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(stderr.Name())
	prefix := prefixInLog.FindString(string(log))
	if prefix == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("no cluster prefix in the log:\n%s", log)
	}
	t.Cleanup(func() { cluster.Clean(prefix) })
	left, err := cluster.Leftovers(prefix)
	if err != nil {
		t.Fatal(err)
	}
	brokers := 0
	for _, l := range left {
		if strings.Contains(l, "(ivshim-broker)") {
			brokers++
		}
	}
	if brokers != 2 {
		t.Fatalf("live cluster %s: %d brokers, want 2: %q", prefix, brokers, left)
	}
	cmd.Process.Kill()
	cmd.Wait()
	// The watchdog reports once it is done, after the last leftover went.
	report := "watchdog: its creator is gone without tearing cluster " + prefix + " down; cleaned it"
	deadline := time.Now().Add(45 * time.Second)
	for {
		if left, err = cluster.Leftovers(prefix); err != nil {
			t.Fatal(err)
		}
		log, _ := os.ReadFile(stderr.Name())
		if len(left) == 0 && strings.Contains(string(log), report) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("45 s after ivshim-cluster was killed, cluster %s still has %q, and the watchdog's report %q is missing from the log:\n%s",
				prefix, left, report, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
