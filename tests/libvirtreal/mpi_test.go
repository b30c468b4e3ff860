package libvirtreal

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/libvirtreal/agentwire"
	"ivshim.dev/ivshim/tests/testenv"
)

// Bounds of the MPI job test: three guests boot under TCG at once on two cores.
const (
	mpiGuestTimeout = 3 * time.Minute  // from starting the guests to every agent and region
	mpiJobTimeout   = 4 * time.Minute  // one mpirun or mpiexec
	finalizeGrace   = 10 * time.Second // MPICH's hang in MPI_Finalize: how long after the job's output
)

// mpiRegionSize is the brokers' region size in the MPI job test: room for the rings and
// collective areas of two co-located ranks without the shim's "region is tight" fallbacks.
const mpiRegionSize = 16 << 20

// guestFull runs every conformance program both ways and coll_check --quick whole in the
// guests (about 15 s per program per run under TCG on two cores: too long for make test).
var guestFull = flag.Bool("guest-full", false, "TestLibvirtMPIJob: every conformance program with and without the shim, and all of coll_check --quick")

// guestMPI restricts TestLibvirtMPIJob's per-MPI runs to one library.
var guestMPI = flag.String("guest-mpi", "", "TestLibvirtMPIJob: openmpi or mpich only (empty: both)")

// guestModules are the kernel modules a guest loads for its NIC, by name; their dependencies
// come from the kernel's modules.dep.
var guestModules = []string{"virtio_pci", "virtio_net"}

// mpiTrees are the files and directories of each MPI family the guests need beyond what the
// dynamic linker resolves (plugins, help texts, configuration), when they exist.
var mpiTrees = map[cluster.MPI][]string{
	cluster.OpenMPI: {"/usr/bin/orted", "/usr/lib/x86_64-linux-gnu/openmpi", "/usr/lib/x86_64-linux-gnu/pmix2",
		"/usr/share/openmpi", "/usr/share/pmix", "/etc/openmpi", "/usr/share/hwloc"},
	cluster.MPICH: {"/usr/bin/hydra_pmi_proxy", "/usr/lib/x86_64-linux-gnu/ucx", "/etc/mpich"},
}

// mpiGuest is one guest of the job and where it runs.
type mpiGuest struct {
	guest
	host *host
	ip   string
	con  *console
}

// TestLibvirtMPIJob runs MPI jobs, unchanged programs with the shim preloaded, in real QEMU
// guests on two libvirt hosts of this machine (private libvirtds with their own host UUIDs,
// each with its broker in libvirt mode): guests g0 and g1 on host a, g2 on host b, all of one
// job by their libvirt metadata, on one bridge. The brokers hot-plug the job's region of each
// host; the ranks (the guest's ordinary user) find it through the PCI device's BAR2.
// mpirun and mpiexec run on this machine and start their daemons in the guests through
// guestexec. Each job's output must be right, its path table must show g0 and g1 sharing a
// region and g2 alone on its own, and its stats must show traffic through the region.
func TestLibvirtMPIJob(t *testing.T) {
	libvirtdBin := requireHost(t)
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	whole := 3 * testTimeout
	if *guestFull {
		whole = 45 * time.Minute // about 25 min under TCG on two cores
	}
	ctx, cancel := context.WithTimeout(context.Background(), whole)
	defer cancel()
	start := time.Now()
	dir := testDir(t)
	a, b := newHost(ctx, t, libvirtdBin, dir, "a"), newHost(ctx, t, libvirtdBin, dir, "b")
	bridge, subnet := hostBridge(t)

	random := randomBytes(t)
	job := "mpijob-" + hex.EncodeToString(random[:4])
	kernel, version := guestKernel(ctx, t, dir)
	var guests []*mpiGuest
	for i, h := range []*host{a, a, b} {
		name := fmt.Sprintf("g%d", i)
		ip := subnet.IP.To4()
		ip = net.IPv4(ip[0], ip[1], ip[2], byte(11+i))
		u := randomBytes(t)
		g := &mpiGuest{host: h, ip: ip.String(), guest: guest{
			name: "ivshim-" + job + "-" + name, uuid: hypervisor.UUID(u).String(), job: job,
			kernel: kernel, initrd: filepath.Join(dir, "initramfs-mpi.cpio"), tty: filepath.Join(dir, name+".console"),
			memMiB: 768, vcpus: 2, // two vCPUs: only then does TCG make guest atomics atomic for other processes
			appendTTY: true, // the console survives a migration
			cmdline:   fmt.Sprintf("ivshim.ip=%s/24 ivshim.hostname=%s", ip, name),
			bridge:    bridge, mac: fmt.Sprintf("52:54:00:%02x:%02x:%02x", random[4], random[5], i),
		}}
		g.con = &console{path: g.tty}
		guests = append(guests, g)
	}
	t.Cleanup(func() {
		if t.Failed() {
			var files []string
			for _, g := range guests {
				files = append(files, g.tty)
			}
			t.Logf("guest consoles and brokers:\n%s", tails(append(files, a.log, b.log)...))
		}
	})
	agent := goBuild(ctx, t, filepath.Join(dir, "guestexec"), "ivshim.dev/ivshim/tests/libvirtreal/guestexec")
	shims := map[cluster.MPI]string{}
	progs := map[cluster.MPI]map[string]string{} // program name -> binary
	extra := []string{agent, filepath.Join(root, "build", "lib", "libivshim-ctl.so")}
	srcs, _ := filepath.Glob(filepath.Join(root, "tests", "mpi", "p2p_*.c"))
	srcs = append(srcs, filepath.Join(root, "tests", "mpi", "coll_check.c"), filepath.Join(root, "tests", "mpi", "hello_ring.c"),
		filepath.Join(root, "tests", "mpi", "ring_soak.c"), filepath.Join(root, "tests", "bench", "ivbench.c"))
	bin := filepath.Join(dir, "programs")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, m := range cluster.MPIs {
		shims[m] = testenv.ShimLibrary(t, root, m)
		progs[m] = map[string]string{}
		for _, src := range srcs {
			out, err := cluster.Build(ctx, m, src, bin)
			if err != nil {
				t.Fatal(err)
			}
			progs[m][strings.TrimSuffix(filepath.Base(src), ".c")] = out
			extra = append(extra, out)
		}
		extra = append(extra, shims[m])
	}
	buildMPIInitramfs(ctx, t, dir, guests[0].initrd, version, guests, extra)
	startHostBrokers(ctx, t, dir, mpiRegionSize, a, b)
	conns := map[*host]*lv.Connect{}
	for _, h := range []*host{a, b} {
		conn, err := lv.NewConnect(h.d.URI())
		if err != nil {
			t.Fatalf("connect to host %s: %v", h.name, err)
		}
		t.Cleanup(func() { conn.Close() })
		conns[h] = conn
	}
	t.Logf("set up in %v: hosts a (%s) and b (%s), bridge %s %s", time.Since(start).Round(time.Millisecond), a.uuid, b.uuid, bridge, subnet)

	boot := time.Now()
	for _, g := range guests {
		startGuest(t, conns[g.host], g.guest)
	}
	agentLine := regexp.MustCompile(`^GUEST-AGENT addr=`)
	for _, g := range guests {
		(&console{path: g.tty}).wait(ctx, t, mpiGuestTimeout, agentLine) // the agent and the region come in any order
		m := g.con.wait(ctx, t, mpiGuestTimeout, regionLine)
		if m[2] != g.job || m[3] != g.host.uuid || m[4] != fmt.Sprint(mpiRegionSize) || m[5] != "true" {
			t.Fatalf("%s reports %q; want job=%s host=%s size=%d vm-registered=true", g.name, m[0], g.job, g.host.uuid, mpiRegionSize)
		}
	}
	t.Logf("3 guests up, network and regions in %v", time.Since(boot).Round(time.Millisecond))

	hosts := []string{guests[0].ip, guests[1].ip, guests[2].ip}
	if os.Getenv("IVSHIM_TEST_HOLD") != "" { // development: keep the guests up until the file goes
		hold := filepath.Join(os.TempDir(), "ivshim-hold.env")
		os.WriteFile(hold, []byte(fmt.Sprintf("AGENT=%s\nHOSTS=%s\nSUBNET=%s\nPROGS=%s\n", agent, strings.Join(hosts, ","), subnet, bin)), 0o644)
		t.Logf("holding the guests until %s is removed", hold)
		poll(ctx, 3*testTimeout, func() bool { _, err := os.Stat(hold); return err != nil })
	}
	for _, m := range cluster.MPIs {
		if *guestMPI != "" && *guestMPI != m.String() {
			continue
		}
		t.Run(m.String(), func(t *testing.T) {
			job := guestJob{mpi: m, agent: agent, hosts: hosts, subnet: subnet, shim: shims[m]}
			lib := job
			lib.noShim = true
			// hello_ring: the path table, the region's traffic, and whether the guests' mappings
			// of BAR2 are cached (IVSHIM_VERBOSE=2: a line per rank).
			v2 := job
			v2.verbose = 2
			stdout, stderr := v2.run(ctx, t, lineCount("ring ok allreduce ok", len(hosts)), progs[m]["hello_ring"])
			if n := strings.Count(stdout, "ring ok allreduce ok"); n != len(hosts) {
				t.Errorf("hello_ring output:\n%s\nstderr:\n%s", stdout, stderr)
			}
			checkGuestShimReport(t, stderr)
			cached := regexp.MustCompile(`(?m)^ivshim: rank \d+: region \S+resource2 read cost ([\d.]+)x memory \(cached\)$`)
			if costs := cached.FindAllStringSubmatch(stderr, -1); len(costs) != len(hosts) {
				t.Errorf("want every rank's BAR2 mapping measured and cached, got %d lines; stderr:\n%s", len(costs), stderr)
			} else {
				t.Logf("BAR2 read cost in the guests: %s, %s and %s times memory", costs[0][1], costs[1][1], costs[2][1])
			}
			if m == cluster.MPICH && !*guestFull {
				t.Log("MPICH: hello_ring only; -guest-full runs the rest on it too (make test's time)")
				return
			}
			// Conformance programs: the same report with and without the shim.
			conformance := []string{"p2p_order"}
			if *guestFull {
				conformance = nil
				for name := range progs[m] {
					if strings.HasPrefix(name, "p2p_") {
						conformance = append(conformance, name)
					}
				}
				sort.Strings(conformance)
			}
			for _, name := range conformance {
				summary := regexp.MustCompile(`(?m)^` + name + `: 3 ranks, \d+ checks, \d+ failures$`)
				done := func(out string) bool { return summary.MatchString(out) }
				want, _ := lib.run(ctx, t, done, progs[m][name])
				got, stderr := job.run(ctx, t, done, progs[m][name])
				w, g := summary.FindString(want), summary.FindString(got)
				if w == "" || w != g || !strings.HasSuffix(g, " 0 failures") {
					t.Errorf("%s: with the shim %q, without %q\nstdout with the shim:\n%s\nstderr:\n%s", name, g, w, got, stderr)
				}
			}
			// Collectives, checked against the library's own results inside the program.
			checkGuestColl(ctx, t, job, progs[m]["coll_check"])
			// ivbench PingPong between the co-located guests: the shim through BAR2 against the
			// library's own path (TCP between the guests); reported, not asserted (a benchmark).
			pair := job
			pair.hosts = hosts[:2]
			pairLib := pair
			pairLib.noShim = true
			end := func(out string) bool { return strings.Contains(out, "All processes entering MPI_Finalize") }
			bench := []string{"-msglog", "0:16", "-iter", "20", "-check", "PingPong"}
			shimOut, _ := pair.run(ctx, t, end, progs[m]["ivbench"], bench...)
			libOut := "" // TCP between TCG guests takes milliseconds a message: only in the full run
			if *guestFull {
				libOut, _ = pairLib.run(ctx, t, end, progs[m]["ivbench"], bench...)
			}
			t.Logf("ivbench PingPong g0 <-> g1 (t[usec]): bytes, the shim through the region, the library alone:\n%s", pingPongTable(shimOut, libOut))
		})
	}

	// Live migrations during a job: g1 moves from host a to host b and back while ring_soak runs
	// on the three guests (Open MPI), until g1's rank has joined host a's region again and its
	// pair with g0's rank has moved to a ring again both ways: then the test stops the job
	// (SIGUSR1 to mpirun, which passes it on; at most soakMax). A UDP echo in g1, pinged every
	// 500 µs, shows how long the guest did not answer each time.
	t.Run("migrate", func(t *testing.T) {
		const soakMax = 150 * time.Second // within mpiJobTimeout
		g1 := guests[1]
		stopSoak := make(chan os.Signal, 1)
		job := guestJob{mpi: cluster.OpenMPI, agent: agent, hosts: hosts, subnet: subnet, shim: shims[cluster.OpenMPI], signals: stopSoak}
		soak := progs[cluster.OpenMPI]["ring_soak"]
		type outcome struct {
			stdout, stderr string
			err            error
		}
		ended := make(chan outcome, 1)
		stderr := outputFile(t, "stderr")
		go func() {
			o := outcome{}
			o.stdout, o.stderr, _, o.err = job.exec(ctx, t, lineCount(" ok", len(hosts)), stderr.f, soak, fmt.Sprint(soakMax.Seconds()))
			ended <- o
		}()
		if !poll(ctx, mpiJobTimeout, func() bool { return strings.Contains(stderr.String(), "ivshim: init ") }) {
			t.Fatalf("ring_soak did not start; stderr:\n%s", stderr.String())
		}
		time.Sleep(3 * time.Second) // the ranks exchange messages through the region meanwhile
		joinedRow := regexp.MustCompile(`(?m)^ivshim: rank 1: joined the region of its VM's host again .*$`)
		moved, err := migrateGuest(ctx, t, g1, a, b)
		if err != nil {
			<-ended
			t.Fatal(err)
		}
		// At host b the rank finds the device its broker hot-plugged and joins that region
		// through its BAR2, where g2's rank (alone on host b at start, a group of one) kept it;
		// then g1 goes back to host a, where g0's rank kept the region.
		if !poll(ctx, 20*time.Second, func() bool { return len(joinedRow.FindAllString(stderr.String(), -1)) >= 1 }) {
			<-ended
			t.Fatalf("rank 1 (in g1) did not join host b's region after the move; stderr:\n%s", stderr.String())
		}
		back, err := migrateGuest(ctx, t, g1, b, a)
		if err == nil {
			// Back on host a: rank 1 joins host a's region, and the pair of ranks 0 and 1 moves
			// to rings (below); then the job may end.
			switched := func() bool {
				s := stderr.String()
				return len(joinedRow.FindAllString(s, -1)) >= 2 && strings.Contains(s, "ivshim: rank 0: messages to rank 1 take the region again") &&
					strings.Contains(s, "ivshim: rank 1: messages to rank 0 take the region again")
			}
			if !poll(ctx, 90*time.Second, switched) {
				t.Logf("90 s after g1 came back its rank has not joined host a's region and switched both ways; the job runs on until %v", soakMax)
			}
		}
		stopSoak <- syscall.SIGUSR1
		o := <-ended // the job's goroutine logs to t: it ends first
		if err != nil {
			t.Fatal(err)
		}
		if o.err != nil || strings.Count(o.stdout, " ok") != len(hosts) {
			t.Fatalf("ring_soak across the migration: %v\nstdout:\n%s\nstderr:\n%s", o.err, o.stdout, o.stderr)
		}
		released := regexp.MustCompile(`(?m)^ivshim: rank 1: moved its traffic with \d+ co-located ranks to the MPI library and released the region ([\d.]+) ms after its VM was flagged leaving$`)
		rel := released.FindAllStringSubmatch(o.stderr, -1)
		if len(rel) != 2 {
			t.Fatalf("rank 1 (in g1) said %d times that it released the region, want 2 (one per move); stderr:\n%s", len(rel), o.stderr)
		}
		t.Logf("ring_soak: every payload checked across the moves:\n%s", o.stdout)
		joins := joinedRow.FindAllString(o.stderr, -1)
		if len(joins) != 2 {
			t.Fatalf("rank 1 (in g1) joined %d regions, want 2 (host b's, then host a's again); stderr:\n%s", len(joins), o.stderr)
		}
		t.Logf("after the moves: %s", strings.Join(joins, "; "))
		if !strings.Contains(joins[0], "): 1 ranks of the job there") {
			t.Errorf("rank 1 (in g1) did not find rank 2 in host b's region (g2's rank, alone there at start, keeps its region): %s", joins[0])
		}
		// Back on host a, the pair of ranks 0 and 1 is made again (a join) and its point-to-point
		// moves from the library to rings of host a's region (the join switch).
		for _, dir := range []string{"rank 0: messages to rank 1", "rank 1: messages to rank 0"} {
			l := regexp.MustCompile(`(?m)^ivshim: ` + dir + ` take the region again.*$`).FindString(o.stderr)
			if l == "" {
				t.Errorf("after g1 came back: no line %q ... take the region again; stderr:\n%s", dir, o.stderr)
			}
			t.Logf("after g1 came back: %s", l)
		}
		t.Logf("live migration of g1 (%d MiB, TCG) with a job running (its rank released the region %s ms after the flag): %s", g1.memMiB, rel[0][1], moved)
		t.Logf("live migration of g1 back, the job still running (released after %s ms): %s", rel[1][1], back)
	})
}

// migrateGuest moves g live from one host to the other through the source broker's
// coordinator while a UDP echo in g is pinged every 500 µs, and describes the migration: its
// phases and how long g did not answer.
func migrateGuest(ctx context.Context, t *testing.T, g *mpiGuest, from, to *host) (string, error) {
	t.Helper()
	stop := pingEcho(t, g.ip, 500*time.Microsecond)
	start := time.Now()
	res, err := api.NewClient(from.socket).Migrate(ctx, api.MigrateRequest{VM: g.name, Destination: to.d.URI(),
		DeadlineMS: migrateDeadline.Milliseconds()})
	took := time.Since(start)
	time.Sleep(time.Second) // answers after the guest resumed
	p := stop()
	if err != nil || !res.Migrated {
		return "", fmt.Errorf("migrate %s from %s to %s: %+v: %v", g.name, from.name, to.name, res, err)
	}
	g.host = to
	var phases []string
	for _, ph := range res.Phases {
		phases = append(phases, fmt.Sprintf("%s %.1f ms", ph.Name, ph.Seconds*1e3))
	}
	return fmt.Sprintf("%v in all (%s); pings: %d sent, %d unanswered, longest silence %v",
		took.Round(time.Millisecond), strings.Join(phases, ", "), p.sent, p.sent-p.answered, p.longest.Round(100*time.Microsecond)), nil
}

// pings is what pingEcho saw.
type pings struct {
	sent, answered int
	longest        time.Duration // the longest time without an answer
}

// pingEcho sends a datagram to the guest's UDP echo every interval until the returned
// function is called, which reports.
func pingEcho(t *testing.T, ip string, interval time.Duration) func() pings {
	t.Helper()
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.ParseIP(ip), Port: agentwire.EchoPort})
	if err != nil {
		t.Fatal(err)
	}
	var p pings
	quit := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		n := 0
		for {
			select {
			case <-quit:
				sent <- n
				return
			case <-tick.C:
				c.Write([]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)})
				n++
			}
		}
	}()
	answers := make(chan struct{})
	go func() {
		defer close(answers)
		last := time.Now()
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				if gap := time.Since(last); gap > p.longest {
					p.longest = gap
				}
				return
			}
			now := time.Now()
			if gap := now.Sub(last); gap > p.longest {
				p.longest = gap
			}
			last = now
			p.answered++
		}
	}()
	return func() pings {
		close(quit)
		p.sent = <-sent
		time.Sleep(100 * time.Millisecond) // the last answers
		c.Close()
		<-answers
		return p
	}
}

// checkGuestColl runs coll_check with the shim: bcast and allreduce on
// MPI_COMM_WORLD (everything --quick covers with -guest-full); every check must pass, and rank
// 0's collectives must go through the region.
func checkGuestColl(ctx context.Context, t *testing.T, job guestJob, prog string) {
	t.Helper()
	args := []string{"--quick"}
	if !*guestFull {
		args = append(args, "--comm=world", "bcast", "allreduce")
	}
	last := regexp.MustCompile(`(?m)^coll_\w+: 3 ranks, \d+ checks, \d+ failures$`)
	want := 2
	if *guestFull {
		want = 15
	}
	stdout, stderr := job.run(ctx, t, func(out string) bool { return len(last.FindAllString(out, -1)) == want }, prog, args...)
	if lines := last.FindAllString(stdout, -1); len(lines) != want || strings.Contains(stdout, "FAIL") {
		t.Errorf("coll_check %v: %d reports, want %d, or a failure:\n%s\nstderr:\n%s", args, len(lines), want, stdout, stderr)
	} else {
		for _, l := range lines {
			if !strings.HasSuffix(l, " 0 failures") {
				t.Errorf("coll_check: %s", l)
			}
		}
	}
	if stats, err := (&cluster.Result{Stderr: stderr}).ShimStats(); err != nil || len(stats) != 3 || stats[0].CollSHM == 0 {
		t.Errorf("coll_check: shim stats %+v (%v): want rank 0's collectives through the region", stats, err)
	}
}

// lineCount is a job's end: its standard output holds n lines containing s.
func lineCount(s string, n int) func(string) bool {
	return func(out string) bool { return strings.Count(out, s) == n }
}

// pingPongTable puts the t[usec] columns of two ivbench PingPong outputs side by side.
func pingPongTable(a, b string) string {
	row := regexp.MustCompile(`(?m)^\s+(\d+)\s+\d+\s+([\d.]+)\s+[\d.]+(\s+\d+)?\s*$`)
	times := func(out string) map[string]string {
		m := map[string]string{}
		for _, r := range row.FindAllStringSubmatch(out, -1) {
			m[r[1]] = r[2]
		}
		return m
	}
	ta, tb := times(a), times(b)
	var sb strings.Builder
	for _, r := range row.FindAllStringSubmatch(a, -1) {
		fmt.Fprintf(&sb, "%10s %12s %12s\n", r[1], ta[r[1]], tb[r[1]])
	}
	return sb.String()
}

// hostBridge creates a bridge on this machine with an address in a free 10.x.y.0/24, removed
// when the test ends, and returns its name and subnet.
func hostBridge(t *testing.T) (string, *net.IPNet) {
	t.Helper()
	r := randomBytes(t)
	name := "ivsbr" + hex.EncodeToString(r[:3])
	used := map[string]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			used[n.IP.Mask(net.CIDRMask(24, 32)).String()] = true
		}
	}
	var subnet *net.IPNet
	for i := 0; i < 256; i++ {
		n := &net.IPNet{IP: net.IPv4(10, 213, byte(int(r[3])+i), 0).To4(), Mask: net.CIDRMask(24, 32)}
		if !used[n.IP.String()] {
			subnet = n
			break
		}
	}
	if subnet == nil {
		t.Skip("no free 10.213.x.0/24 for the guests' bridge")
	}
	gw := net.IPv4(subnet.IP[0], subnet.IP[1], subnet.IP[2], 1)
	for _, args := range [][]string{{"link", "add", name, "type", "bridge"}, {"addr", "add", gw.String() + "/24", "dev", name},
		{"link", "set", name, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			exec.Command("ip", "link", "del", name).Run()
			t.Skipf("cannot make a bridge for the guests (ip %s): %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "link", "del", name).CombinedOutput(); err != nil {
			t.Errorf("remove bridge %s: %v: %s", name, err, out)
		}
	})
	return name, subnet
}

// guestJob is how jobs run on the guests: one rank on each of hosts, launched from this
// machine through agent, with the shim library shim preloaded unless noShim.
type guestJob struct {
	mpi     cluster.MPI
	agent   string
	hosts   []string
	subnet  *net.IPNet
	shim    string
	noShim  bool
	verbose int              // IVSHIM_VERBOSE; 1 when zero
	signals <-chan os.Signal // to the launcher while the job runs (cluster.Job.Signals)
}

// run runs prog with IVSHIM_VERBOSE=1 and returns its standard output and error; a failure or
// a timeout fails the test. done says whether the output is complete: MPICH 4.0 with UCX over
// TCP may hang in MPI_Finalize (EMULATION.md, also without the shim), so an MPICH job still
// running finalizeGrace after its output was complete is ended, logged, and taken as done.
func (j guestJob) run(ctx context.Context, t *testing.T, done func(stdout string) bool, prog string, args ...string) (string, string) {
	t.Helper()
	stdout, stderr, hung, err := j.exec(ctx, t, done, outputFile(t, "stderr").f, prog, args...)
	if hung {
		t.Logf("MPICH hung in MPI_Finalize %v after the program's output was complete (known MPICH+UCX problem over TCP): ended", finalizeGrace)
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout, stderr
}

// exec is run without failing the test (it may run in a goroutine): the job's error says what
// went wrong; its standard error goes to stderr as it comes. The launcher runs on this machine
// and starts its daemons in the guests through the agent (tests/cluster's command line, placed
// on the guests).
func (j guestJob) exec(ctx context.Context, t *testing.T, done func(stdout string) bool, stderr io.Writer, prog string, args ...string) (string, string, bool, error) {
	subnet, err := netip.ParsePrefix(j.subnet.String())
	if err != nil {
		return "", "", false, err
	}
	gw, _ := netip.AddrFromSlice(net.IPv4(j.subnet.IP[0], j.subnet.IP[1], j.subnet.IP[2], 1).To4())
	job := cluster.Job{MPI: j.mpi, Transport: cluster.TCP, Program: prog, Args: args, Timeout: mpiJobTimeout,
		Env:    map[string]string{"IVSHIM_VERBOSE": fmt.Sprint(max(j.verbose, 1))},
		Stderr: stderr, Finished: func(stdout, _ string) bool { return done(stdout) }, FinishGrace: finalizeGrace, Signals: j.signals,
		Placement: &cluster.Placement{Agent: j.agent, Subnet: subnet, Local: gw, Hosts: strings.Join(j.hosts, ","),
			Size: len(j.hosts), WorkDir: "/home/mpi"}}
	if !j.noShim {
		job.Env["LD_PRELOAD"] = j.shim
	}
	if *guestFull {
		job.Timeout = 3 * mpiJobTimeout // all of coll_check --quick on MPICH, which spin-waits
	}
	res, err := cluster.Run(ctx, job)
	if res == nil {
		return "", "", false, err
	}
	t.Logf("%s: %v in %v", strings.Join(res.Argv, " "), err, res.Elapsed.Round(time.Millisecond))
	if j.mpi == cluster.MPICH && errors.Is(err, cluster.ErrFinishGrace) {
		return res.Stdout, res.Stderr, true, nil
	}
	if err == nil && !done(res.Stdout) {
		err = errors.New("incomplete output")
	}
	if err != nil {
		return res.Stdout, res.Stderr, false, fmt.Errorf("job failed: %v\nstdout:\n%s\nstderr:\n%s", err, res.Stdout, res.Stderr)
	}
	return res.Stdout, res.Stderr, false, nil
}

// jobOutput is a file that receives a job's standard error, which the test may read while the
// job runs.
type jobOutput struct{ f *os.File }

func outputFile(t *testing.T, name string) jobOutput {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return jobOutput{f}
}

// String is what the job wrote so far.
func (o jobOutput) String() string {
	b, _ := os.ReadFile(o.f.Name())
	return string(b)
}

// checkGuestShimReport checks the shim's report of a job on g0, g1 (host a) and g2 (host b):
// two groups, ranks 0 and 1 sharing a region, rank 2 reached by the network, and traffic
// through the region between ranks 0 and 1.
func checkGuestShimReport(t *testing.T, stderr string) {
	t.Helper()
	if !strings.Contains(stderr, "ivshim: init ranks=3 groups=2 ") {
		t.Errorf("shim report: no init line for 3 ranks in 2 groups; stderr:\n%s", stderr)
	}
	for rank, path := range []string{"shm", "shm", "net"} {
		row := regexp.MustCompile(fmt.Sprintf(`(?m)^ivshim: path rank=%d host=\S+ group=\d+ slot=(\d+|-) path=%s vm=\d+$`, rank, path))
		if !row.MatchString(stderr) {
			t.Errorf("shim path table: no row %q; stderr:\n%s", row, stderr)
		}
	}
	stats, err := (&cluster.Result{Stderr: stderr}).ShimStats()
	if err != nil || len(stats) != 3 {
		t.Fatalf("shim stats: %v, %d of 3 ranks; stderr:\n%s", err, len(stats), stderr)
	}
	// hello_ring sends around the ring: 0 -> 1 through the region, 1 -> 2 and 2 -> 0 by the network.
	if stats[0].SHMMsgs == 0 || stats[1].RegionBytes == 0 || stats[2].SHMMsgs != 0 {
		t.Errorf("want rank 0 sending through the region it shares with rank 1, rank 2 not: %+v", stats)
	}
	t.Logf("shim stats: %+v", stats)
}

// buildMPIInitramfs writes the MPI guests' initramfs: guestinit as /init, busybox as /bin/sh,
// the NIC's kernel modules, both MPI families with everything they load, the files in extra
// (the shim, the test programs) at their paths on this machine, and /etc files for the user
// "mpi" (group "ivshim" for the BARs) and the guests' names.
func buildMPIInitramfs(ctx context.Context, t *testing.T, dir, path, version string, guests []*mpiGuest, extra []string) {
	t.Helper()
	bin := goBuild(ctx, t, filepath.Join(dir, "guestinit"), "ivshim.dev/ivshim/tests/libvirtreal/guestinit", "CGO_ENABLED=0")
	init, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (Debian package busybox)")
	}
	files := newFileSet()
	files.add(cpioFile{name: "dev", mode: cpioDir | 0o755})
	files.add(cpioFile{name: "dev/console", mode: cpioChar | 0o600, major: 5, minor: 1})
	files.add(cpioFile{name: "init", mode: cpioReg | 0o755, data: init})
	for _, d := range []string{"proc", "sys", "tmp", "run", "home", "etc", "etc/ivshim", "bin"} {
		files.add(cpioFile{name: d, mode: cpioDir | 0o755})
	}
	var hostsFile strings.Builder
	hostsFile.WriteString("127.0.0.1 localhost\n")
	for i, g := range guests {
		fmt.Fprintf(&hostsFile, "%s g%d\n", g.ip, i)
	}
	for name, text := range map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/bin/sh\nmpi:x:1000:1000:mpi:/home/mpi:/bin/sh\n",
		"etc/group":         "root:x:0:\nmpi:x:1000:\nivshim:x:1001:mpi\n",
		"etc/hosts":         hostsFile.String(),
		"etc/shells":        "/bin/sh\n",
		"etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
	} {
		files.add(cpioFile{name: name, mode: cpioReg | 0o644, data: []byte(text)})
	}
	files.addPath(t, busybox)
	files.add(cpioFile{name: "bin/sh", mode: cpioLink | 0o777, data: []byte(busybox)})
	mods := moduleOrder(t, version, guestModules)
	for _, m := range mods {
		files.addPath(t, m)
	}
	files.add(cpioFile{name: "etc/ivshim/modules", mode: cpioReg | 0o644, data: []byte(strings.Join(mods, "\n") + "\n")})
	for _, m := range []cluster.MPI{cluster.OpenMPI, cluster.MPICH} {
		for _, tree := range mpiTrees[m] {
			if _, err := os.Lstat(tree); err == nil {
				files.addTree(t, tree)
			}
		}
	}
	for _, f := range extra {
		files.addPath(t, f)
	}
	files.addLibraries(t)
	if err := writeInitramfs(path, files.files); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err == nil {
		t.Logf("guest initramfs: %d files, %d MiB", len(files.files), st.Size()>>20)
	}
}

// moduleOrder returns the paths of the modules names and their dependencies, in load order.
func moduleOrder(t *testing.T, version string, names []string) []string {
	t.Helper()
	base := filepath.Join("/lib/modules", version)
	dep, err := os.ReadFile(filepath.Join(base, "modules.dep"))
	if err != nil {
		t.Skipf("no modules of the guest kernel %s: %v", version, err)
	}
	deps := map[string][]string{} // module path (relative) -> its dependencies, as listed
	byName := map[string]string{}
	for _, line := range strings.Split(string(dep), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		n := strings.TrimSuffix(filepath.Base(mod), ".ko")
		byName[strings.ReplaceAll(n, "-", "_")] = mod
	}
	var order []string
	seen := map[string]bool{}
	var visit func(mod string)
	visit = func(mod string) {
		if seen[mod] {
			return
		}
		seen[mod] = true
		list := deps[mod]
		for i := len(list) - 1; i >= 0; i-- { // modprobe loads the last listed first
			visit(list[i])
		}
		order = append(order, filepath.Join(base, mod))
	}
	for _, n := range names {
		mod, ok := byName[n]
		if !ok {
			t.Skipf("guest kernel %s has no module %s (built in or missing)", version, n)
		}
		visit(mod)
	}
	return order
}

// fileSet collects the initramfs entries, each path once, parent directories and symbolic
// links on the way included.
type fileSet struct {
	files []cpioFile
	have  map[string]bool
	elfs  []string // ELF files added, whose libraries addLibraries adds
}

func newFileSet() *fileSet { return &fileSet{have: map[string]bool{}} }

func (s *fileSet) add(f cpioFile) {
	if s.have[f.name] {
		return
	}
	s.have[f.name] = true
	s.files = append(s.files, f)
}

// addPath adds the file at the absolute path p as it is on this machine: its directories,
// any symbolic link on the way (and what it points to), and the file itself.
func (s *fileSet) addPath(t *testing.T, p string) {
	t.Helper()
	p = filepath.Clean(p)
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := ""
	for i, part := range parts {
		cur += "/" + part
		name := strings.TrimPrefix(cur, "/")
		st, err := os.Lstat(cur)
		if err != nil {
			t.Fatalf("guest initramfs: %v", err)
		}
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(cur)
			if err != nil {
				t.Fatal(err)
			}
			s.add(cpioFile{name: name, mode: cpioLink | 0o777, data: []byte(target)})
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(cur), target)
			}
			s.addPath(t, filepath.Join(append([]string{target}, parts[i+1:]...)...))
			return
		case st.IsDir():
			s.add(cpioFile{name: name, mode: cpioDir | uint32(st.Mode().Perm())})
		case st.Mode().IsRegular():
			if s.have[name] {
				return
			}
			data, err := os.ReadFile(cur)
			if err != nil {
				t.Fatal(err)
			}
			s.add(cpioFile{name: name, mode: cpioReg | uint32(st.Mode().Perm()), data: data})
			if bytes.HasPrefix(data, []byte("\x7fELF")) {
				s.elfs = append(s.elfs, cur)
			}
		}
	}
}

// addTree adds root and everything under it.
func (s *fileSet) addTree(t *testing.T, root string) {
	t.Helper()
	s.addPath(t, root)
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		s.addPath(t, p)
		return nil
	})
	if err != nil {
		t.Fatalf("guest initramfs: %v", err)
	}
}

// addLibraries adds the dynamic linker and every shared library the ELF files added so far
// need, as ldd resolves them on this machine, until nothing new comes.
func (s *fileSet) addLibraries(t *testing.T) {
	t.Helper()
	resolved := regexp.MustCompile(`(?m)(?:=>\s*)?(/\S+)\s+\(0x`)
	for done := 0; done < len(s.elfs); done++ {
		f := s.elfs[done]
		if e, err := elf.Open(f); err != nil {
			continue
		} else {
			dyn := e.Section(".dynamic") != nil
			e.Close()
			if !dyn {
				continue
			}
		}
		out, err := exec.Command("ldd", f).CombinedOutput()
		if err != nil {
			continue // not dynamic after all (ldd says so)
		}
		if bytes.Contains(out, []byte("not found")) {
			t.Logf("guest initramfs: %s: a library is missing on this machine:\n%s", f, out)
		}
		for _, m := range resolved.FindAllStringSubmatch(string(out), -1) {
			s.addPath(t, m[1])
		}
	}
}
