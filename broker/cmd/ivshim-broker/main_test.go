package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/daemon"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/netns"
	"ivshim.dev/ivshim/ivshmem"
)

// binDir holds the binaries under test, built once per test run by build.
var (
	binDir    string
	buildOnce sync.Once
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ivshim-broker-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// goTool finds the go command that builds the binaries under test.
func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no go command to build ivshim-broker with: %w", err)
	}
	return p, nil
}

// build compiles the broker and ivshimctl, once, and returns their paths.
func build(t *testing.T, ctx context.Context) (broker, ctl string) {
	t.Helper()
	buildOnce.Do(func() {
		var goCmd string
		if goCmd, buildErr = goTool(); buildErr != nil {
			return
		}
		cmd := exec.CommandContext(ctx, goCmd, "build", "-o", binDir+"/", "ivshim.dev/ivshim/broker/cmd/ivshim-broker", "ivshim.dev/ivshim/broker/cmd/ivshimctl")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "ivshim-broker"), filepath.Join(binDir, "ivshimctl")
}

// host is an emulated host served by a broker process.
type host struct {
	t       *testing.T
	name    string
	bin     string
	conf    string
	reg     netns.Registry
	regions string // region directory
	socket  string
	id      ivshmem.HostID
	log     string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// regionDir makes a private region directory in /dev/shm, where production regions live, or in
// a temporary directory if the machine has no /dev/shm.
func regionDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "ivshim-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newHost(t *testing.T, name, bin string) *host {
	dir := t.TempDir()
	id, err := ivshmem.NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, name: name, bin: bin, conf: filepath.Join(dir, "broker.conf"), reg: netns.Registry{Dir: filepath.Join(dir, "netns")},
		regions: regionDir(t), socket: filepath.Join(dir, "run", "broker.sock"), id: id, log: filepath.Join(dir, "broker.log")}
	conf := daemon.EmulatedHost{NetnsDir: h.reg.Dir, RegionDir: h.regions, Socket: h.socket, HostID: id, RegionSize: ivshmem.MinRegionSize}.ConfigText()
	if err := os.WriteFile(h.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.kill)
	return h
}

// start runs the broker and waits until it answers on its socket.
func (h *host) start(ctx context.Context) {
	h.t.Helper()
	logf, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		h.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(h.bin, "-config", h.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.cmd = cmd
	h.mu.Unlock()
	c := api.NewClient(h.socket)
	for {
		if _, err := c.Status(ctx); err == nil {
			return
		}
		if ctx.Err() != nil {
			h.t.Fatalf("broker of %s did not come up; log:\n%s", h.name, h.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *host) logText() string {
	b, _ := os.ReadFile(h.log)
	return string(b)
}

// kill sends SIGKILL, as a crash would, and reaps the process.
func (h *host) kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil {
		return
	}
	h.cmd.Process.Kill()
	h.cmd.Wait()
	h.cmd = nil
}

// stop sends SIGTERM and expects a clean exit.
func (h *host) stop() {
	h.t.Helper()
	h.mu.Lock()
	cmd := h.cmd
	h.cmd = nil
	h.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			h.t.Errorf("broker of %s exited with %v; log:\n%s", h.name, err, h.logText())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		h.t.Errorf("broker of %s ignored SIGTERM", h.name)
	}
}

func (h *host) region(job string) string { return filepath.Join(h.regions, hypervisor.RegionName(job)) }

func (h *host) register(name, job string) {
	h.t.Helper()
	var u hypervisor.UUID
	copy(u[:], h.name+"/"+name)
	if err := h.reg.Register(netns.VM{Name: name, UUID: u, Job: job, Netns: "test-" + name}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) waitDevice(ctx context.Context, vm, want string) {
	h.t.Helper()
	got, err := h.reg.WaitDevice(ctx, vm)
	if err != nil {
		h.t.Fatalf("%v; broker log:\n%s", err, h.logText())
	}
	if got != want {
		h.t.Fatalf("VM %s on %s got %s, want %s", vm, h.name, got, want)
	}
}

func waitGone(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	for {
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s still exists", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// files lists a directory's entries other than the broker's lock.
func files(t *testing.T, dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.Name() != ".ivshim-broker.lock" {
			out = append(out, e.Name())
		}
	}
	return out
}

func ctl(t *testing.T, ctx context.Context, bin string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// twoBrokers starts the brokers of two emulated hosts, h0 and h1, for a test that ends within
// 3 minutes (ctx), and returns the ivshimctl binary with them.
func twoBrokers(t *testing.T) (ctx context.Context, ctlBin string, h0, h1 *host) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	bin, ctlBin := build(t, ctx)
	h0, h1 = newHost(t, "h0", bin), newHost(t, "h1", bin)
	for _, h := range []*host{h0, h1} {
		h.start(ctx)
	}
	return ctx, ctlBin, h0, h1
}

// TestEmulatedClusterSurvivesBrokerKill runs two brokers for a 2-host × 2-VM job (plus a VM of
// another job), kills one broker with SIGKILL while a rank uses its region, and restarts it.
func TestEmulatedClusterSurvivesBrokerKill(t *testing.T) {
	ctx, ctlBin, h0, h1 := twoBrokers(t)
	for _, h := range []*host{h0, h1} {
		info, err := os.Lstat(h.socket)
		if err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("API socket of %s: %v, %v; want mode 0600", h.name, info.Mode(), err)
		}
		h.register(h.name+"v0", "jobA")
		h.register(h.name+"v1", "jobA")
	}
	h0.register("h0v2", "jobB")
	for _, h := range []*host{h0, h1} {
		h.waitDevice(ctx, h.name+"v0", h.region("jobA"))
		h.waitDevice(ctx, h.name+"v1", h.region("jobA"))
	}
	h0.waitDevice(ctx, "h0v2", h0.region("jobB"))
	for _, path := range []string{h0.region("jobA"), h1.region("jobA"), h0.region("jobB")} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", path, info.Mode().Perm())
		}
	}

	// A rank in h0v0 maps the region through its device, as the shim does with IVSHIM_REGION,
	// and keeps working while the broker is killed.
	r, err := ivshmem.Open(h0.reg.DevicePath("h0v0"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.HostID() != h0.id || r.JobID() != "jobA" {
		t.Fatalf("h0v0's region: host %s job %q, want host %s jobA", r.HostID(), r.JobID(), h0.id)
	}
	if r1, err := ivshmem.Open(h1.reg.DevicePath("h1v0")); err != nil || r1.HostID() != h1.id {
		t.Fatalf("h1v0's region: %v, host id must be h1's", err)
	} else {
		r1.Close()
	}
	if err := r.ClaimSession(0x5e55); err != nil {
		t.Fatal(err)
	}
	slot, err := r.ClaimSlot(ivshmem.SlotIdentity{Session: 0x5e55, WorldSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	var beats atomic.Uint64
	stopJob := make(chan struct{})
	jobDone := make(chan struct{})
	go func() {
		defer close(jobDone)
		for {
			select {
			case <-stopJob:
				return
			default:
			}
			r.Beat(slot)
			beats.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()

	h0.kill()
	before := beats.Load()
	h0.register("h0v2", "") // jobB's only VM is re-tagged while the broker is down: jobB's region is an orphan
	time.Sleep(50 * time.Millisecond)
	close(stopJob)
	<-jobDone
	if beats.Load() == before {
		t.Error("the rank made no progress while the broker was dead")
	}
	pa := h0.region("jobA")
	inoBefore, bytesBefore := inode(t, pa), read(t, pa)

	h0.start(ctx)
	waitGone(t, ctx, h0.region("jobB"))
	if got := inode(t, pa); got != inoBefore {
		t.Errorf("region A was recreated across the restart (inode %d, was %d)", got, inoBefore)
	}
	if !bytes.Equal(read(t, pa), bytesBefore) {
		t.Error("region A's contents changed across the restart")
	}
	if d, _ := h0.reg.Device("h0v2"); d != "" {
		t.Errorf("h0v2, no longer of jobB, still has %s plugged", d)
	}
	if s, err := r.Slot(slot); err != nil || s.State != ivshmem.SlotActive || s.Session != 0x5e55 {
		t.Errorf("the rank's slot after the restart: %+v, %v", s, err)
	}

	// The restarted broker keeps working: a new VM of the job gets the same region.
	h0.register("h0v3", "jobA")
	h0.waitDevice(ctx, "h0v3", pa)

	// ivshimctl against the real daemon.
	out, err := ctl(t, ctx, ctlBin, "-socket", h0.socket, "-json", "regions")
	if err != nil {
		t.Fatalf("ivshimctl regions: %v\n%s", err, out)
	}
	var regions []api.Region
	if err := json.Unmarshal([]byte(out), &regions); err != nil {
		t.Fatalf("ivshimctl -json regions: %v\n%s", err, out)
	}
	if len(regions) != 1 || regions[0].Job != "jobA" || regions[0].Inode != inoBefore || len(regions[0].VMs) != 3 {
		t.Errorf("regions of h0 = %+v, want jobA with 3 VMs", regions)
	}
	for _, cmd := range []string{"status", "jobs", "vms", "regions"} {
		if out, err := ctl(t, ctx, ctlBin, "-socket", h0.socket, cmd); err != nil {
			t.Errorf("ivshimctl %s: %v\n%s", cmd, err, out)
		}
	}
	out, err = ctl(t, ctx, ctlBin, "-socket", h0.socket, "metrics")
	if err != nil || !strings.Contains(out, `ivshim_broker_attach_total{result="ok"} 1`) || !strings.Contains(out, "ivshim_broker_regions 1") {
		t.Errorf("metrics after restart (one attach: h0v3): %v\n%s", err, out)
	}

	// The job ends: every VM powers off, every region goes, and the brokers exit cleanly.
	for _, h := range []*host{h0, h1} {
		names, _ := os.ReadDir(filepath.Join(h.reg.Dir, "vms"))
		for _, n := range names {
			if err := h.reg.Unregister(strings.TrimSuffix(n.Name(), ".json")); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, h := range []*host{h0, h1} {
		waitGone(t, ctx, h.region("jobA"))
		h.stop()
		if left := files(t, h.regions); len(left) != 0 {
			t.Errorf("files left in %s's region directory: %v", h.name, left)
		}
		if _, err := os.Lstat(h.socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket of %s left after a clean stop: %v", h.name, err)
		}
	}
	if strings.Contains(h0.logText(), `"level":"error"`) {
		t.Errorf("h0's broker logged errors:\n%s", h0.logText())
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Sys().(*syscall.Stat_t).Ino
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSecondBrokerOnSameDirectoryExits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, _ := build(t, ctx)
	h := newHost(t, "h0", bin)
	h.start(ctx)
	out, err := exec.CommandContext(ctx, bin, "-config", h.conf).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another broker") {
		t.Errorf("second broker: %v\n%s", err, out)
	}
	if _, err := api.NewClient(h.socket).Status(ctx); err != nil {
		t.Errorf("the first broker's socket broke: %v", err)
	}
}

func TestBadConfigExits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, _ := build(t, ctx)
	conf := filepath.Join(t.TempDir(), "bad.conf")
	os.WriteFile(conf, []byte("hypervisor = netns\nregion_mode = 0666\n"), 0o600)
	out, err := exec.CommandContext(ctx, bin, "-config", conf, "-check").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "region_mode") || !strings.Contains(string(out), "netns_dir") {
		t.Errorf("bad config: %v\n%s", err, out)
	}
}

// fakeRank is a rank of a VM holding a slot in its job's region, as the shim does: it beats,
// and when release is set it releases its slot once it sees its VM flagged leaving, after delay.
type fakeRank struct {
	r    *ivshmem.Region
	slot uint32
	stop chan struct{}
	done chan struct{}
}

func attachRank(t *testing.T, device string, vm hypervisor.UUID, release bool, delay time.Duration) *fakeRank {
	t.Helper()
	r, err := ivshmem.Open(device)
	if err != nil {
		t.Fatal(err)
	}
	idx, ok := r.FindVM(vm)
	if !ok {
		t.Fatalf("VM %s has no entry in %s", vm, device)
	}
	r.ClaimSession(0x5e55) // the first rank claims it; the others join it
	slot, err := r.ClaimSlot(ivshmem.SlotIdentity{Session: 0x5e55, VMIndex: idx, WorldRank: 7, WorldSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRank{r: r, slot: slot, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		var seen time.Time
		for {
			select {
			case <-f.stop:
				r.ReleaseSlot(slot)
				return
			case <-time.After(5 * time.Millisecond):
			}
			r.Beat(slot)
			e, err := r.VMAt(idx)
			if !release || err != nil || e.State != ivshmem.VMLeaving {
				seen = time.Time{}
				continue
			}
			if seen.IsZero() {
				seen = time.Now()
			}
			if time.Since(seen) >= delay {
				r.ReleaseSlot(slot)
				return
			}
		}
	}()
	t.Cleanup(f.close)
	return f
}

func (f *fakeRank) close() {
	select {
	case <-f.done:
	default:
		close(f.stop)
		<-f.done
	}
	f.r.Close()
}

// vmState returns the state of VM name's entry in job's region on h ("" without one).
func vmState(t *testing.T, ctx context.Context, h *host, job string, u hypervisor.UUID) string {
	t.Helper()
	regions, err := api.NewClient(h.socket).Regions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regions {
		for _, e := range r.VMs {
			if r.Job == job && e.UUID == u.String() {
				return e.State
			}
		}
	}
	return ""
}

func uuidOf(h *host, name string) hypervisor.UUID {
	var u hypervisor.UUID
	copy(u[:], h.name+"/"+name)
	return u
}

// migrate runs ivshimctl migrate and decodes its JSON answer.
func migrate(t *testing.T, ctx context.Context, ctlBin string, from *host, vm, dest string, deadline time.Duration) (api.MigrateResult, string, error) {
	t.Helper()
	out, err := exec.CommandContext(ctx, ctlBin, "-socket", from.socket, "-json", "migrate", "-deadline", deadline.String(), vm, dest).Output()
	var res api.MigrateResult
	if len(out) > 0 {
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			t.Fatalf("ivshimctl migrate %s: %v: %q", vm, jerr, out)
		}
	}
	msg := ""
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		msg = string(ee.Stderr)
	}
	return res, msg, err
}

func phaseNames(res api.MigrateResult) string {
	var n []string
	for _, p := range res.Phases {
		n = append(n, p.Name)
	}
	return strings.Join(n, ",")
}

// TestMigrateEmulated drives the migration coordinator of two real brokers over the emulated
// hypervisor: a VM whose rank never releases the region is rolled back at the deadline, a
// second migration of a VM in flight is refused, a VM whose rank releases moves with its
// phases timed and gets the destination's region there, a failed move and a destination
// that never plugs the region roll back, and VMs move back and forth.
func TestMigrateEmulated(t *testing.T) {
	ctx, ctlBin, h0, h1 := twoBrokers(t)
	h0.register("h0v0", "jobA")
	h0.register("h0v1", "jobA")
	h1.register("h1v0", "jobA")
	h0.waitDevice(ctx, "h0v0", h0.region("jobA"))
	h0.waitDevice(ctx, "h0v1", h0.region("jobA"))
	h1.waitDevice(ctx, "h1v0", h1.region("jobA"))
	u0 := uuidOf(h0, "h0v0")

	// Refused untouched: unknown VM, bad destinations.
	for _, tc := range []struct{ vm, dest, want string }{
		{"nosuch", h1.reg.Dir, "404"},
		{"h0v0", h0.reg.Dir, "own registry"},
		{"h0v0", "relative/dir", "absolute"},
		{"h0v0", t.TempDir(), "not a netns registry"},
	} {
		res, msg, err := migrate(t, ctx, ctlBin, h0, tc.vm, tc.dest, time.Second)
		if err == nil || !strings.Contains(msg, tc.want) || res.VM != "" {
			t.Errorf("migrate %s to %s: %v, %q; want a refusal saying %q", tc.vm, tc.dest, err, msg, tc.want)
		}
	}

	// A rank that never releases: the drain misses its deadline and the migration rolls back.
	stuck := attachRank(t, h0.reg.DevicePath("h0v0"), u0, false, 0)
	res, msg, err := migrate(t, ctx, ctlBin, h0, "h0v0", h1.reg.Dir, 300*time.Millisecond)
	if err == nil || res.Migrated || res.FailedStep != "drain" || !res.RolledBack || res.Ranks != 1 || phaseNames(res) != "drain" ||
		!strings.Contains(msg, "world ranks 7") {
		t.Errorf("migration with a stuck rank: %+v, %v, %q; want a drain failure naming world rank 7, rolled back", res, err, msg)
	}
	if res.Phases[0].Seconds < 0.3 {
		t.Errorf("the drain gave up after %.3f s, before its 300 ms deadline", res.Phases[0].Seconds)
	}
	if st := vmState(t, ctx, h0, "jobA", u0); st != "present" {
		t.Errorf("h0v0 after the rollback: %q in the region, want present", st)
	}
	if d, _ := h0.reg.Device("h0v0"); d != h0.region("jobA") {
		t.Errorf("h0v0 after the rollback has %q plugged", d)
	}
	stuck.close()

	// A rank that releases 300 ms after its VM is flagged: a second migration meanwhile is
	// refused, then the VM moves and the destination plugs its job's region there.
	attachRank(t, h0.reg.DevicePath("h0v0"), u0, true, 300*time.Millisecond)
	type answer struct {
		res api.MigrateResult
		msg string
		err error
	}
	first := make(chan answer, 1)
	go func() {
		r, m, e := migrate(t, ctx, ctlBin, h0, "h0v0", h1.reg.Dir, 5*time.Second)
		first <- answer{r, m, e}
	}()
	for vmState(t, ctx, h0, "jobA", u0) != "leaving" {
		if ctx.Err() != nil {
			t.Fatal("h0v0 never flagged leaving")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, msg, err := migrate(t, ctx, ctlBin, h0, "h0v0", h1.reg.Dir, time.Second); err == nil || !strings.Contains(msg, "already migrating") {
		t.Errorf("a second migration of h0v0 in flight: %v, %q; want it refused", err, msg)
	}
	a := <-first
	if a.err != nil || !a.res.Migrated || phaseNames(a.res) != "drain,detach,migrate,attach" || a.res.Ranks != 1 {
		t.Fatalf("migration of h0v0: %+v, %v, %q; broker logs:\n%s\n%s", a.res, a.err, a.msg, h0.logText(), h1.logText())
	}
	if a.res.Phases[0].Seconds < 0.3 {
		t.Errorf("drain took %.3f s, but the rank released only 300 ms after the flag", a.res.Phases[0].Seconds)
	}
	if d, _ := h1.reg.Device("h0v0"); d != h1.region("jobA") {
		t.Errorf("h0v0 at h1 has %q plugged, want %s", d, h1.region("jobA"))
	}
	if _, err := os.Lstat(filepath.Join(h0.reg.Dir, "vms", "h0v0.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("h0v0 still registered at h0: %v", err)
	}
	if st := vmState(t, ctx, h0, "jobA", u0); st != "" {
		t.Errorf("h0v0 left h0 but its entry there is %q", st)
	}
	if st := vmState(t, ctx, h1, "jobA", u0); st != "present" {
		t.Errorf("h0v0 at h1: entry %q, want present", st)
	}

	// The move fails (a VM of that name runs at the destination): rolled back, region re-plugged.
	h0.register("h1v0", "")
	res, msg, err = migrate(t, ctx, ctlBin, h1, "h1v0", h0.reg.Dir, time.Second)
	if err == nil || res.FailedStep != "migrate" || !res.RolledBack || !strings.Contains(msg, "runs at") {
		t.Errorf("migration onto a name in use: %+v, %v, %q; want the migrate step to fail and roll back", res, err, msg)
	}
	h1.waitDevice(ctx, "h1v0", h1.region("jobA"))
	if st := vmState(t, ctx, h1, "jobA", uuidOf(h1, "h1v0")); st != "present" {
		t.Errorf("h1v0 after the rollback: %q", st)
	}
	h0.reg.Unregister("h1v0")

	// The destination never plugs the region (its broker is down): the VM is migrated back.
	h0.kill()
	res, msg, err = migrate(t, ctx, ctlBin, h1, "h1v0", h0.reg.Dir, 300*time.Millisecond)
	if err == nil || res.FailedStep != "attach" || !res.RolledBack || !strings.Contains(res.Rollback, "migrated back") {
		t.Errorf("migration to a host without a broker: %+v, %v, %q; want attach to fail and the VM to come back", res, err, msg)
	}
	if _, err := os.Lstat(filepath.Join(h1.reg.Dir, "vms", "h1v0.json")); err != nil {
		t.Errorf("h1v0 is not back at h1: %v", err)
	}
	h1.waitDevice(ctx, "h1v0", h1.region("jobA"))
	h0.start(ctx)

	// Back and forth: every move ends with the destination's region plugged.
	from, to := h1, h0
	for i := 0; i < 6; i++ {
		res, msg, err := migrate(t, ctx, ctlBin, from, "h0v0", to.reg.Dir, 5*time.Second)
		if err != nil || !res.Migrated {
			t.Fatalf("move %d of h0v0 %s -> %s: %+v, %v, %q", i, from.name, to.name, res, err, msg)
		}
		if d, _ := to.reg.Device("h0v0"); d != to.region("jobA") {
			t.Fatalf("move %d: h0v0 at %s has %q plugged", i, to.name, d)
		}
		from, to = to, from
	}
	out, err := ctl(t, ctx, ctlBin, "-socket", h1.socket, "metrics")
	if err != nil || !strings.Contains(out, `ivshim_broker_migrations_total{result="ok"}`) || !strings.Contains(out, "ivshim_broker_migrate_drain_seconds_count") {
		t.Errorf("metrics: %v\n%s", err, out)
	}
	out, err = ctl(t, ctx, ctlBin, "-socket", from.socket, "migrate", "h0v0", to.reg.Dir)
	if err != nil || !strings.Contains(out, "result") || !strings.Contains(out, "drain") || !strings.Contains(out, "attach") {
		t.Errorf("ivshimctl migrate (table): %v\n%s", err, out)
	}
}
