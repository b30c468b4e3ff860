package libvirtreal

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/libvirt"
	"ivshim.dev/ivshim/ivshmem"
)

// Bounds. Under TCG on a loaded 2-core machine the guest takes 3–20 s to boot; the broker
// reacts to a libvirt event within milliseconds and the guest notices a hot-plug within its
// 100 ms poll plus ACPI handling.
const (
	testTimeout        = 4 * time.Minute
	guestTimeout       = 90 * time.Second // from defining the domain to its first region report
	deviceTimeout      = 30 * time.Second // for the broker's and the guest's reaction to a change
	brokerStartTimeout = 30 * time.Second
	brokerStopTimeout  = 10 * time.Second
	pollInterval       = 50 * time.Millisecond
)

// regionSize is the broker's region_size in this test.
const regionSize = 4 << 20

// Region ownership the broker applies by default (broker/daemon) and the test checks.
const (
	regionOwner = "libvirt-qemu"
	regionGroup = "kvm"
	regionMode  = 0o660
)

// brokerConf is the broker's configuration (libvirt URI, region size in MiB, API socket); region
// owner, group and mode keep their defaults.
// The hour-long resync makes every reaction in the test one to a libvirt event.
const brokerConf = `hypervisor = libvirt
libvirt_uri = %s
region_dir = /dev/shm
region_size = %dM
socket = %s
resync_interval = 1h
log_level = debug
`

// Console lines of guestinit.
var (
	regionLine = regexp.MustCompile(`^IVSHMEM-REGION (\S+) job=(\S+) host=(\S+) size=(\d+) vm-registered=(\w+)$`)
	goneLine   = regexp.MustCompile(`^IVSHMEM-GONE (\S+)$`)
	badLine    = regexp.MustCompile(`IVSHMEM-ERROR|GUEST-FAILED|Kernel panic`)
)

// TestLibvirtHotplug runs the broker against a private libvirtd and a real guest, and checks
// that the guest's job region is plugged, unplugged when the guest leaves the job, plugged
// again when it rejoins and removed when the guest stops.
func TestLibvirtHotplug(t *testing.T) {
	libvirtdBin := requireHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	start := time.Now()

	dir := testDir(t)
	hostUUID := hypervisor.UUID(randomBytes(t)).String()
	// The daemon probes QEMU (seconds) while the guest and the broker are built.
	d := startLibvirtd(ctx, t, libvirtdBin, filepath.Join(dir, "libvirt"), hostUUID)
	g := newGuest(ctx, t, dir, "realtest")
	brokerLog := filepath.Join(dir, "broker.log")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("guest console, broker, QEMU and libvirtd logs:\n%s", tails(g.tty, brokerLog,
				filepath.Join(d.dir, "log", "qemu", g.name+".log"), d.out(), d.log()))
		}
	})
	buildInitramfs(ctx, t, dir, g.initrd)
	brokerBin := goBuild(ctx, t, filepath.Join(dir, "ivshim-broker"), "ivshim.dev/ivshim/broker/cmd/ivshim-broker")
	d.awaitReady(t)
	conn, err := lv.NewConnect(d.URI())
	if err != nil {
		t.Fatalf("connect to the private libvirtd: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	startBroker(ctx, t, brokerBin, dir, brokerLog, d.URI(), regionSize)
	region := filepath.Join("/dev/shm", hypervisor.RegionName(g.job))
	t.Cleanup(func() {
		if err := os.Remove(region); err == nil && !t.Failed() {
			t.Errorf("region %s was left behind", region)
		}
	})
	t.Logf("set up in %v: private libvirtd %s, broker, kernel %s", time.Since(start).Round(time.Millisecond), d.URI(), g.kernel)

	dom := startGuest(t, conn, g)
	con := &console{path: g.tty}
	step := time.Now()
	waitRegion(ctx, t, region, true)
	waitPlugged(ctx, t, dom, g, true)
	checkRegionFile(t, region, g, hostUUID)
	addr := waitGuestRegion(ctx, t, con, guestTimeout, g, hostUUID)
	t.Logf("guest sees the region at PCI %s, %v after start", addr, time.Since(step).Round(time.Millisecond))

	step = time.Now()
	if err := dom.SetMetadata(lv.DOMAIN_METADATA_ELEMENT, "", "", libvirt.Namespace, lv.DOMAIN_AFFECT_LIVE); err != nil {
		t.Fatalf("untag the guest: %v", err)
	}
	waitPlugged(ctx, t, dom, g, false)
	con.wait(ctx, t, deviceTimeout, goneLine)
	waitRegion(ctx, t, region, false)
	t.Logf("untagged guest lost its region, which was removed, in %v", time.Since(step).Round(time.Millisecond))

	step = time.Now()
	tag := fmt.Sprintf(`<job id="%s"/>`, g.job)
	if err := dom.SetMetadata(lv.DOMAIN_METADATA_ELEMENT, tag, "ivshim", libvirt.Namespace, lv.DOMAIN_AFFECT_LIVE); err != nil {
		t.Fatalf("tag the guest again: %v", err)
	}
	waitRegion(ctx, t, region, true)
	waitPlugged(ctx, t, dom, g, true)
	checkRegionFile(t, region, g, hostUUID)
	addr = waitGuestRegion(ctx, t, con, deviceTimeout, g, hostUUID)
	t.Logf("tagged again: guest sees a new region at PCI %s after %v", addr, time.Since(step).Round(time.Millisecond))

	step = time.Now()
	if err := dom.Destroy(); err != nil {
		t.Fatalf("destroy the guest: %v", err)
	}
	waitRegion(ctx, t, region, false)
	t.Logf("guest destroyed: region removed after %v; whole test %v", time.Since(step).Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond))
}

// testDir is the test's directory, which QEMU (as libvirt-qemu) can traverse to open the
// kernel, initramfs and console file in it.
func testDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// newGuest describes a guest of a job of its own, named after kind, with its files in dir.
func newGuest(ctx context.Context, t *testing.T, dir, kind string) guest {
	t.Helper()
	random := randomBytes(t)
	id := hex.EncodeToString(random[:4])
	kernel, _ := guestKernel(ctx, t, dir)
	return guest{
		name:   "ivshim-" + kind + "-vm-" + id,
		uuid:   hypervisor.UUID(randomBytes(t)).String(),
		job:    kind + "-" + id,
		kernel: kernel,
		initrd: filepath.Join(dir, "initramfs.cpio"),
		tty:    filepath.Join(dir, "console.log"),
	}
}

// requireHost skips the test unless this machine can run it, and returns the libvirtd binary.
func requireHost(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a private libvirtd, whose QEMU runs as libvirt-qemu")
	}
	paths := map[string]string{}
	for _, tool := range []struct{ name, pkg string }{
		{"libvirtd", "libvirt-daemon-system"}, {"qemu-system-x86_64", "qemu-system-x86"}, {"xz", "xz-utils"},
	} {
		p, err := exec.LookPath(tool.name)
		if err != nil {
			p, err = exec.LookPath(filepath.Join("/usr/sbin", tool.name))
		}
		if err != nil {
			t.Skipf("%s not installed (Debian package %s)", tool.name, tool.pkg)
		}
		paths[tool.name] = p
	}
	if _, err := user.Lookup(regionOwner); err != nil {
		t.Skipf("no %s user, as which libvirt runs QEMU (Debian package libvirt-daemon-system): %v", regionOwner, err)
	}
	out, err := exec.Command(paths["qemu-system-x86_64"], "-accel", "help").CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^tcg$`).Match(out) {
		t.Skipf("qemu-system-x86_64 offers no TCG accelerator: %v: %s", err, out)
	}
	return paths["libvirtd"]
}

// randomBytes returns 16 random bytes, for UUIDs and names no other run uses.
func randomBytes(t *testing.T) [16]byte {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return b
}

// goBuild compiles the package pkg of this module into out.
func goBuild(ctx context.Context, t *testing.T, out, pkg string, env ...string) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.CommandContext(ctx, goCmd, "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// buildInitramfs writes the guest's initramfs: a static guestinit as /init, and /dev/console
// for its output.
func buildInitramfs(ctx context.Context, t *testing.T, dir, path string) {
	t.Helper()
	bin := goBuild(ctx, t, filepath.Join(dir, "guestinit"), "ivshim.dev/ivshim/tests/libvirtreal/guestinit", "CGO_ENABLED=0")
	init, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	err = writeInitramfs(path, []cpioFile{
		{name: "dev", mode: cpioDir | 0o755},
		{name: "dev/console", mode: cpioChar | 0o600, major: 5, minor: 1},
		{name: "init", mode: cpioReg | 0o755, data: init},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// startBroker runs the broker binary bin against the libvirtd at uri, logging to log, and
// waits until its API answers; its configuration and socket are in dir, its command starts
// with prefix (nsenter into a daemon's namespace); its regions have size bytes. It skips the test when another broker
// manages /dev/shm, and registers the broker's stop. It returns the API socket.
func startBroker(ctx context.Context, t *testing.T, bin, dir, log, uri string, size int, prefix ...string) string {
	t.Helper()
	conf := filepath.Join(dir, "broker.conf")
	socket := filepath.Join(dir, "broker.sock")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(brokerConf, uri, size>>20, socket)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	argv := append(append(prefix[:len(prefix):len(prefix)], bin), "-config", conf)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start broker: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(brokerStopTimeout):
			cmd.Process.Kill()
			<-done
			t.Errorf("broker ignored SIGTERM for %v: killed", brokerStopTimeout)
		}
	})
	client := api.NewClient(socket)
	ctx, cancel := context.WithTimeout(ctx, brokerStartTimeout)
	defer cancel()
	for {
		_, err := client.Status(ctx)
		if err == nil {
			return socket
		}
		select {
		case <-done:
			text := tails(log)
			if strings.Contains(text, "in use by another broker") {
				t.Skipf("another ivshim-broker manages /dev/shm:\n%s", text)
			}
			t.Fatalf("broker exited (%v):\n%s", cmd.ProcessState, text)
		case <-ctx.Done():
			t.Fatalf("broker API not answering after %v: %v\n%s", brokerStartTimeout, err, tails(log))
		case <-time.After(pollInterval):
		}
	}
}

// startGuest defines and starts g, and registers its destruction and removal. It skips the
// test when QEMU cannot start the guest.
func startGuest(t *testing.T, conn *lv.Connect, g guest) *lv.Domain {
	t.Helper()
	dom, err := conn.DomainDefineXML(g.domainXML())
	if err != nil {
		t.Fatalf("define guest: %v", err)
	}
	t.Cleanup(func() {
		if active, err := dom.IsActive(); err == nil && active {
			if err := dom.Destroy(); err != nil {
				t.Errorf("destroy guest: %v", err)
			}
		}
		if err := dom.Undefine(); err != nil {
			t.Errorf("undefine guest: %v", err)
		}
		dom.Free()
	})
	if err := dom.Create(); err != nil {
		t.Skipf("QEMU cannot start a TCG guest here: %v", err)
	}
	return dom
}

// poll calls done every pollInterval until it returns true (poll returns true) or timeout
// passes (false).
func poll(ctx context.Context, timeout time.Duration, done func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for !done() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(pollInterval):
		}
	}
	return true
}

// waitRegion waits until the region file exists, or no longer does.
func waitRegion(ctx context.Context, t *testing.T, region string, exists bool) {
	t.Helper()
	ok := poll(ctx, deviceTimeout, func() bool {
		_, err := os.Lstat(region)
		return (err == nil) == exists
	})
	if !ok {
		t.Fatalf("after %v: region %s exists: %t, want %t", deviceTimeout, region, !exists, exists)
	}
}

// waitPlugged waits until the guest's live definition has its region's <shmem> device, or no
// longer has it, and checks the device.
func waitPlugged(ctx context.Context, t *testing.T, dom *lv.Domain, g guest, plugged bool) {
	t.Helper()
	name := hypervisor.RegionName(g.job)
	var found *liveShmem
	var err error
	ok := poll(ctx, deviceTimeout, func() bool {
		var x string
		if x, err = dom.GetXMLDesc(0); err != nil {
			return false
		}
		var shmems []liveShmem
		if shmems, err = parseShmems(x); err != nil {
			return false
		}
		found = nil
		for i := range shmems {
			if shmems[i].Name == name {
				found = &shmems[i]
			}
		}
		return (found != nil) == plugged
	})
	if !ok {
		t.Fatalf("after %v: <shmem name='%s'> in the live definition: %t, want %t (%v)", deviceTimeout, name, !plugged, plugged, err)
	}
	if found != nil && (found.Model.Type != "ivshmem-plain" || found.Size.Value<<20 != regionSize ||
		found.Size.Unit != "M" || found.Address.Type != "pci") {
		t.Errorf("plugged device: %+v, want an ivshmem-plain of %d MiB on PCI", *found, regionSize>>20)
	}
}

// checkRegionFile checks the region file's ownership and mode (QEMU must open it, nobody else)
// and its header: the guest's job, the libvirt host's UUID, the guest in the VM table.
func checkRegionFile(t *testing.T, region string, g guest, hostUUID string) {
	t.Helper()
	info, err := os.Lstat(region)
	if err != nil {
		t.Fatal(err)
	}
	st := info.Sys().(*syscall.Stat_t)
	u, err := user.Lookup(regionOwner)
	if err != nil {
		t.Fatal(err)
	}
	grp, err := user.LookupGroup(regionGroup)
	if err != nil {
		t.Fatal(err)
	}
	if owner, group := strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid)); owner != u.Uid || group != grp.Gid ||
		info.Mode() != regionMode || info.Size() != regionSize {
		t.Errorf("region %s: owner %s group %s mode %v size %d, want %s (%s) %s (%s) %v %d", region, owner, group,
			info.Mode(), info.Size(), u.Uid, regionOwner, grp.Gid, regionGroup, os.FileMode(regionMode), regionSize)
	}
	r, err := ivshmem.Open(region)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	uuid, err := hypervisor.ParseUUID(g.uuid)
	if err != nil {
		t.Fatal(err)
	}
	_, registered := r.FindVM(uuid)
	if r.JobID() != g.job || r.HostID().String() != hostUUID || !registered {
		t.Errorf("region %s: job %q host %s, guest registered %t; want job %q host %s, registered",
			region, r.JobID(), r.HostID(), registered, g.job, hostUUID)
	}
}

// waitGuestRegion waits for the guest's next report of a region and checks that the guest
// read, through the device's BAR, the header the broker wrote: its job, this host, its size
// and the guest's own entry in the VM table. It returns the device's PCI address.
func waitGuestRegion(ctx context.Context, t *testing.T, con *console, timeout time.Duration, g guest, hostUUID string) string {
	t.Helper()
	m := con.wait(ctx, t, timeout, regionLine)
	if m[2] != g.job || m[3] != hostUUID || m[4] != strconv.Itoa(regionSize) || m[5] != "true" {
		t.Fatalf("guest reports %q; want job=%s host=%s size=%d vm-registered=true", m[0], g.job, hostUUID, regionSize)
	}
	return m[1]
}

// console reads the guest's serial console file as it grows.
type console struct {
	path string
	off  int // bytes consumed by earlier waits
}

// wait waits for the next complete line matching re and returns its submatches. It fails the
// test at once when the guest reports an error.
func (c *console) wait(ctx context.Context, t *testing.T, timeout time.Duration, re *regexp.Regexp) []string {
	t.Helper()
	var m []string
	ok := poll(ctx, timeout, func() bool {
		b, err := os.ReadFile(c.path)
		if err != nil || len(b) < c.off {
			return false
		}
		for {
			nl := bytes.IndexByte(b[c.off:], '\n')
			if nl < 0 {
				return false
			}
			line := strings.TrimRight(string(b[c.off:c.off+nl]), "\r")
			c.off += nl + 1
			if badLine.MatchString(line) {
				t.Fatalf("guest console: %s", line)
			}
			if m = re.FindStringSubmatch(line); m != nil {
				return true
			}
		}
	})
	if !ok {
		t.Fatalf("after %v: no guest console line matching %s", timeout, re)
	}
	return m
}
