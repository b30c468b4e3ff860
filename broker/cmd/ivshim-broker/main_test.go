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

// TestEmulatedClusterSurvivesBrokerKill runs two brokers for a 2-host × 2-VM job (plus a VM of
// another job), kills one broker with SIGKILL while a rank uses its region, and restarts it.
func TestEmulatedClusterSurvivesBrokerKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin, ctlBin := build(t, ctx)
	h0, h1 := newHost(t, "h0", bin), newHost(t, "h1", bin)
	for _, h := range []*host{h0, h1} {
		h.start(ctx)
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
	out, err = ctl(t, ctx, ctlBin, "-socket", h0.socket, "migrate", "h0v0", "h1")
	if err == nil || !strings.Contains(out, "not implemented") {
		t.Errorf("ivshimctl migrate: %v, %q; want a failure saying not implemented", err, out)
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
