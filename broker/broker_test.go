package broker_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"ivshim.dev/ivshim/broker"
	"ivshim.dev/ivshim/broker/brokertest"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/netns"
	"ivshim.dev/ivshim/broker/traffic"
	"ivshim.dev/ivshim/ivshmem"
)

// env is one emulated host: a netns registry, a region directory and a broker over them.
type env struct {
	t    *testing.T
	dir  string // region directory
	reg  netns.Registry
	host ivshmem.HostID
	logs *observer.ObservedLogs
	hv   *netns.Hypervisor
	b    *broker.Broker
	cap  uint64 // broker.Config.RegionCap
	// sysfs is the host's sysfs as its broker reads it for SR-IOV VFs (sriovtest lays them out).
	sysfs string
}

func newEnv(t *testing.T) *env { return newEnvCap(t, 0) }

// newEnvCap is newEnv with regions that grow up to regionCap for their VMs' vCPUs.
func newEnvCap(t *testing.T, regionCap uint64) *env {
	t.Helper()
	host, err := ivshmem.NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: t.TempDir(), reg: netns.Registry{Dir: t.TempDir()}, host: host, cap: regionCap, sysfs: t.TempDir()}
	e.start()
	return e
}

func (e *env) config() broker.Config {
	return broker.Config{RegionDir: e.dir, RegionSize: ivshmem.MinRegionSize, RegionCap: e.cap, HostID: e.host, Mode: 0o640, Resync: time.Hour, Sysfs: e.sysfs}
}

// start opens a hypervisor and a broker, as a (re)started daemon does.
func (e *env) start() {
	e.t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	e.logs = logs
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(e.t).Core()))
	hv, err := netns.Open(e.reg.Dir, log)
	if err != nil {
		e.t.Fatal(err)
	}
	b, err := broker.New(e.config(), hv, log)
	if err != nil {
		hv.Close()
		e.t.Fatal(err)
	}
	e.hv, e.b = hv, b
	e.t.Cleanup(e.stop)
}

// stop closes broker and hypervisor; it may run twice.
func (e *env) stop() {
	if e.b == nil {
		return
	}
	if err := e.b.Close(); err != nil {
		e.t.Error(err)
	}
	if err := e.hv.Close(); err != nil {
		e.t.Error(err)
	}
	e.b, e.hv = nil, nil
}

func (e *env) register(name, job string) netns.VM {
	e.t.Helper()
	vm := netns.VM{Name: name, UUID: uuidOf(name), Job: job}
	if err := e.reg.Register(vm); err != nil {
		e.t.Fatal(err)
	}
	return vm
}

func uuidOf(name string) hypervisor.UUID {
	var u hypervisor.UUID
	copy(u[:], name)
	u[15] = 0x5a
	return u
}

func (e *env) reconcile() {
	e.t.Helper()
	if err := e.b.Reconcile(); err != nil {
		e.t.Fatalf("reconcile: %v", err)
	}
}

func (e *env) regionPath(job string) string { return filepath.Join(e.dir, "ivshim-"+job) }

// device returns the region file plugged into vm, "" if none.
func (e *env) device(vm string) string {
	e.t.Helper()
	d, err := e.reg.Device(vm)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) wantDevice(vm, region string) {
	e.t.Helper()
	if got := e.device(vm); got != region {
		e.t.Fatalf("VM %s has %q plugged, want %q", vm, got, region)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// regionFiles lists the entries of the region directory other than the lock.
func (e *env) regionFiles() []string {
	e.t.Helper()
	entries, err := os.ReadDir(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, d := range entries {
		if d.Name() != ".ivshim-broker.lock" {
			out = append(out, d.Name())
		}
	}
	return out
}

// vmTable returns the present UUIDs of a region's VM table.
func vmTable(t *testing.T, path string) map[hypervisor.UUID]bool {
	t.Helper()
	r, err := ivshmem.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := map[hypervisor.UUID]bool{}
	for i := range r.Layout().VMCount {
		v, err := r.VMAt(i)
		if err != nil {
			t.Fatal(err)
		}
		if v.State == ivshmem.VMPresent {
			out[hypervisor.UUID(v.UUID)] = true
		}
	}
	return out
}

// TestPausedVMGetsNoDevice: a VM that runs no code (paused, or the destination's copy during an
// incoming live migration, whose devices must stay the source's until it is done) gets its
// region plugged only once it runs, and a foreign device stays in it until then. A plug into
// an incoming migration's domain crashed a real guest's kernel after the move (its memory
// corrupted), which TestLibvirtMPIJob/migrate saw once.
func TestPausedVMGetsNoDevice(t *testing.T) {
	e := newEnv(t)
	a0 := e.register("a0", "jobA")
	a1 := netns.VM{Name: "a1", UUID: uuidOf("a1"), Job: "jobA", Paused: true}
	if err := e.reg.Register(a1); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	pa := e.regionPath("jobA")
	e.wantDevice(a0.Name, pa)
	e.wantDevice("a1", "")
	a1.Paused = false
	if err := e.reg.Register(a1); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	e.wantDevice("a1", pa)
}

func TestRegionsPerJobPluggedIntoItsVMsOnly(t *testing.T) {
	e := newEnv(t)
	a0, a1 := e.register("a0", "jobA"), e.register("a1", "jobA")
	b0 := e.register("b0", "jobB")
	e.register("none", "")
	e.reconcile()

	pa, pb := e.regionPath("jobA"), e.regionPath("jobB")
	e.wantDevice("a0", pa)
	e.wantDevice("a1", pa)
	e.wantDevice("b0", pb)
	e.wantDevice("none", "")
	for job, path := range map[string]string{"jobA": pa, "jobB": pb} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o640 {
			t.Errorf("region %s has mode %v, want 0640 (never world-readable)", path, info.Mode().Perm())
		}
		r, err := ivshmem.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if r.JobID() != job || r.HostID() != e.host || r.Layout().TotalSize != ivshmem.MinRegionSize {
			t.Errorf("region %s: job %q host %s size %d", path, r.JobID(), r.HostID(), r.Layout().TotalSize)
		}
		r.Close()
	}
	if got := vmTable(t, pa); len(got) != 2 || !got[a0.UUID] || !got[a1.UUID] {
		t.Errorf("VM table of jobA = %v, want a0 and a1", got)
	}
	if got := vmTable(t, pb); len(got) != 1 || !got[b0.UUID] {
		t.Errorf("VM table of jobB = %v, want b0", got)
	}
	s := e.b.Snapshot()
	if s.Status.Regions != 2 || s.Status.Jobs != 2 || s.Status.VMs != 4 || s.Status.LastError != "" {
		t.Errorf("status = %+v", s.Status)
	}
}

// TestRegionSizedForVCPUs: the broker sizes each job's region for the vCPUs of its VMs on the
// host, within the cap, and says so when it had to cap one.
func TestRegionSizedForVCPUs(t *testing.T) {
	e := newEnvCap(t, ivshmem.DefaultRegionCap)
	for _, vm := range []netns.VM{{Name: "s0", Job: "small", VCPUs: 2}, {Name: "s1", Job: "small", VCPUs: 2}} {
		vm.UUID = uuidOf(vm.Name)
		if err := e.reg.Register(vm); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 8; i++ { // 8 VMs of 16 vCPUs: 128 ranks
		vm := netns.VM{Name: "b" + string(rune('0'+i)), Job: "big", VCPUs: 16}
		vm.UUID = uuidOf(vm.Name)
		if err := e.reg.Register(vm); err != nil {
			t.Fatal(err)
		}
	}
	e.reconcile()
	for _, tc := range []struct {
		job   string
		ranks int
		full  bool
	}{{"small", 4, true}, {"big", 128, false}} {
		r, err := ivshmem.Open(e.regionPath(tc.job))
		if err != nil {
			t.Fatal(err)
		}
		l := r.Layout()
		r.Close()
		c, err := l.RingCapacity(tc.ranks)
		if err != nil || l.TotalSize > ivshmem.DefaultRegionCap || int(l.SlotCount) < tc.ranks || (c == ivshmem.DefaultRingSize) != tc.full {
			t.Errorf("region of %s (%d ranks): %d bytes, %d slots, %d-byte rings (%v); want at most %d bytes, full rings %v",
				tc.job, tc.ranks, l.TotalSize, l.SlotCount, c, err, ivshmem.DefaultRegionCap, tc.full)
		}
		if tc.full && l.TotalSize == ivshmem.MinRegionSize {
			t.Errorf("region of %s stayed at the minimum size %d", tc.job, l.TotalSize)
		}
	}
	if n := e.logs.FilterMessageSnippet("region capped").FilterField(zap.String("job", "big")).Len(); n != 1 {
		t.Errorf("%d 'region capped' warnings for job big, want 1", n)
	}
	var m bytes.Buffer
	if err := e.b.WriteMetrics(&m); err != nil || !strings.Contains(m.String(), "ivshim_broker_regions_undersized_total 1\n") {
		t.Errorf("metrics (%v) do not count the one capped region:\n%s", err, m.String())
	}
}

func TestForeignDeviceUnplugged(t *testing.T) {
	e := newEnv(t)
	e.register("a0", "jobA")
	e.register("b0", "jobB")
	e.register("none", "")
	e.reconcile()
	// Plug jobA's region into the VM of jobB and into a VM of no job behind the broker's back.
	for _, vm := range []string{"b0", "none"} {
		link := e.reg.DevicePath(vm)
		os.MkdirAll(filepath.Dir(link), 0o755)
		os.Remove(link)
		if err := os.Symlink(e.regionPath("jobA"), link); err != nil {
			t.Fatal(err)
		}
	}
	e.reconcile()
	e.wantDevice("b0", e.regionPath("jobB"))
	e.wantDevice("none", "")
	e.wantDevice("a0", e.regionPath("jobA"))
}

func TestJobChangeMovesVM(t *testing.T) {
	e := newEnv(t)
	e.register("a0", "jobA")
	b0 := e.register("b0", "jobB")
	e.reconcile()
	b0.Job = "jobA"
	if err := e.reg.Register(b0); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	e.wantDevice("b0", e.regionPath("jobA"))
	if exists(e.regionPath("jobB")) {
		t.Error("jobB's region outlived its last VM")
	}
	if got := vmTable(t, e.regionPath("jobA")); !got[b0.UUID] || len(got) != 2 {
		t.Errorf("VM table of jobA = %v, want a0 and b0", got)
	}
}

func TestLastVMGoneRemovesRegion(t *testing.T) {
	e := newEnv(t)
	a0, a1 := e.register("a0", "jobA"), e.register("a1", "jobA")
	e.reconcile()
	if err := e.reg.Unregister("a0"); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	if got := vmTable(t, e.regionPath("jobA")); len(got) != 1 || !got[a1.UUID] || got[a0.UUID] {
		t.Errorf("VM table after a0 left = %v, want a1 only", got)
	}
	if err := e.reg.Unregister("a1"); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	if files := e.regionFiles(); len(files) != 0 {
		t.Errorf("region directory after the last VM left: %v, want empty", files)
	}
}

func TestBadRecordsAndJobsGetNothing(t *testing.T) {
	e := newEnv(t)
	e.register("a0", "jobA")
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(e.reg.Dir, "vms", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("evil.json", `{"name":"evil","uuid":"00000000-0000-0000-0000-0000000000e1","job":"../../etc/passwd","netns":""}`)
	write("long.json", `{"name":"long","uuid":"00000000-0000-0000-0000-0000000000e2","job":"`+strings.Repeat("j", 200)+`","netns":""}`)
	write("extra.json", `{"name":"extra","uuid":"00000000-0000-0000-0000-0000000000e3","job":"jobA","netns":"","root":true}`)
	write("liar.json", `{"name":"a0","uuid":"00000000-0000-0000-0000-0000000000e4","job":"jobA","netns":""}`)
	write("garbage.json", "\x00\xff{{{")
	write("huge.json", `{"name":"huge","uuid":"00000000-0000-0000-0000-0000000000e5","job":"jobA","netns":"`+strings.Repeat("x", 8192)+`"}`)
	e.reconcile()
	e.wantDevice("a0", e.regionPath("jobA"))
	for _, vm := range []string{"evil", "long", "extra", "garbage", "huge"} {
		e.wantDevice(vm, "")
	}
	if files := e.regionFiles(); len(files) != 1 || files[0] != "ivshim-jobA" {
		t.Errorf("region files = %v, want ivshim-jobA only", files)
	}
	s := e.b.Snapshot()
	problems := 0
	for _, vm := range s.VMs {
		if vm.Problem != "" {
			problems++
		}
	}
	if problems != 2 {
		t.Errorf("snapshot VMs %+v: want 2 with a problem (evil, long)", s.VMs)
	}
	if n := e.logs.FilterMessage("ivshim metadata of a VM rejected").FilterField(zap.String("vm", "evil")).Len(); n != 1 {
		t.Errorf("%d log lines rejecting VM evil, want 1", n)
	}
	if n := e.logs.FilterMessage("ignoring bad netns VM record").Len(); n != 4 {
		t.Errorf("%d log lines for bad records, want 4 (extra, liar, garbage, huge)", n)
	}
	e.reconcile()
	if n := e.logs.FilterMessage("ivshim metadata of a VM rejected").Len(); n != 2 {
		t.Errorf("rejections logged again on the second pass: %d lines, want 2", n)
	}
}

// fileBytes reads a whole file.
func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Sys().(*syscall.Stat_t).Ino
}

func TestRestartKeepsUsedRegionsAndRemovesOrphans(t *testing.T) {
	e := newEnv(t)
	e.register("a0", "jobA")
	e.register("a1", "jobA")
	e.register("b0", "jobB")
	e.register("c0", "jobC")
	e.reconcile()

	// A job uses region A: a rank claims a slot and a ring, as the shim does.
	pa := e.regionPath("jobA")
	r, err := ivshmem.Open(e.device("a0"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.ClaimSession(0xabc); err != nil {
		t.Fatal(err)
	}
	slot, err := r.ClaimSlot(ivshmem.SlotIdentity{Session: 0xabc, WorldSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Alloc(0xabc, slot, ivshmem.AllocRing, 8192); err != nil {
		t.Fatal(err)
	}
	r.Beat(slot)
	before, ino := fileBytes(t, pa), inodeOf(t, pa)

	// The broker dies. Meanwhile jobB's VM stops, jobC's region is corrupted and its VM stops,
	// and the dead broker leaves a half-made region and another user plants a file.
	e.stop()
	if err := e.reg.Unregister("b0"); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Unregister("c0"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.regionPath("jobC"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	temp := filepath.Join(e.dir, ".ivshim-jobD.tmp-12345")
	if err := os.WriteFile(temp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(e.dir, "unrelated")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	e.start()
	e.reconcile()
	if got := inodeOf(t, pa); got != ino {
		t.Errorf("region A was recreated (inode %d, was %d)", got, ino)
	}
	if after := fileBytes(t, pa); !bytes.Equal(before, after) {
		t.Error("region A's contents changed across the broker restart")
	}
	e.wantDevice("a0", pa)
	e.wantDevice("a1", pa)
	for _, gone := range []string{e.regionPath("jobB"), e.regionPath("jobC"), temp} {
		if exists(gone) {
			t.Errorf("%s survived the restart", gone)
		}
	}
	if !exists(other) {
		t.Error("a file that is not the broker's was removed")
	}
	if s := e.b.Snapshot(); s.Status.Regions != 1 || s.Regions[0].Inode != ino || !s.Regions[0].Usable {
		t.Errorf("snapshot after restart: %+v", s.Regions)
	}
}

func TestRestartRebuildsVMTable(t *testing.T) {
	e := newEnv(t)
	a0, a1 := e.register("a0", "jobA"), e.register("a1", "jobA")
	e.reconcile()
	e.stop()
	if err := e.reg.Unregister("a0"); err != nil {
		t.Fatal(err)
	}
	a2 := e.register("a2", "jobA")
	e.start()
	e.reconcile()
	got := vmTable(t, e.regionPath("jobA"))
	if len(got) != 2 || !got[a1.UUID] || !got[a2.UUID] || got[a0.UUID] {
		t.Errorf("VM table after restart = %v, want a1 and a2", got)
	}
	e.wantDevice("a2", e.regionPath("jobA"))
}

func TestUnusableRegionInUseIsLeftAlone(t *testing.T) {
	e := newEnv(t)
	path := e.regionPath("jobA")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xee}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	e.register("a0", "jobA")
	err := e.b.Reconcile()
	if err == nil || !strings.Contains(err.Error(), "VM a0 gets no region") {
		t.Fatalf("reconcile = %v, want a0 refused a region", err)
	}
	e.wantDevice("a0", "")
	if !exists(path) {
		t.Fatal("an in-use (if unusable) region file was removed")
	}
	if s := e.b.Snapshot(); len(s.Regions) != 1 || s.Regions[0].Usable || s.Regions[0].Error == "" {
		t.Errorf("snapshot regions = %+v, want one unusable with a reason", s.Regions)
	}
	if err := e.reg.Unregister("a0"); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	if exists(path) {
		t.Error("the unusable region outlived its job's last VM")
	}
}

func TestOtherHostsRegionUnusable(t *testing.T) {
	e := newEnv(t)
	other, err := ivshmem.NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	if err := ivshmem.Create(e.regionPath("jobA"), ivshmem.Options{Size: ivshmem.MinRegionSize, HostID: other, JobID: "jobA"}); err != nil {
		t.Fatal(err)
	}
	e.register("a0", "jobA")
	if err := e.b.Reconcile(); err == nil || !strings.Contains(err.Error(), "header names host") {
		t.Fatalf("reconcile = %v, want the host id mismatch reported", err)
	}
	e.wantDevice("a0", "")
}

func TestForeignFileNeverTouched(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a file owned by another user")
	}
	e := newEnv(t)
	path := e.regionPath("jobA")
	if err := os.WriteFile(path, []byte("planted"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	e.register("a0", "jobA")
	if err := e.b.Reconcile(); err == nil || !strings.Contains(err.Error(), "not made by the broker") {
		t.Fatalf("reconcile = %v, want the planted file reported", err)
	}
	e.wantDevice("a0", "")
	if err := e.reg.Unregister("a0"); err != nil {
		t.Fatal(err)
	}
	e.b.Reconcile()
	if b, err := os.ReadFile(path); err != nil || string(b) != "planted" {
		t.Errorf("planted file: %q, %v; want it untouched", b, err)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o666 {
		t.Errorf("planted file's mode changed: %v, %v", info.Mode(), err)
	}
}

func TestChownedRegion(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown region files")
	}
	e := newEnv(t)
	e.stop()
	cfg := e.config()
	cfg.Chown, cfg.UID, cfg.GID, cfg.Mode = true, 65534, 65534, 0o660
	hv, err := netns.Open(e.reg.Dir, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer hv.Close()
	b, err := broker.New(cfg, hv, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	e.register("a0", "jobA")
	if err := b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(e.regionPath("jobA"))
	if err != nil {
		t.Fatal(err)
	}
	st := info.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65534 || info.Mode().Perm() != 0o660 {
		t.Errorf("region owner %d:%d mode %v, want 65534:65534 0660", st.Uid, st.Gid, info.Mode().Perm())
	}
	// Still the broker's after a restart, though owned by the configured user.
	if err := b.Reconcile(); err != nil {
		t.Fatal(err)
	}
}

func TestWorldReadableRegionRestricted(t *testing.T) {
	e := newEnv(t)
	e.register("a0", "jobA")
	e.reconcile()
	if err := os.Chmod(e.regionPath("jobA"), 0o666); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	info, err := os.Stat(e.regionPath("jobA"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o640 {
		t.Errorf("mode %v after reconcile, want 0640", info.Mode().Perm())
	}
}

func TestCorruptVMTableRepaired(t *testing.T) {
	e := newEnv(t)
	a0 := e.register("a0", "jobA")
	e.reconcile()
	// A guest scribbles over the VM table: a bogus state, a duplicate and a stranger.
	r, err := ivshmem.Open(e.regionPath("jobA"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetVM(5, a0.UUID, ivshmem.VMPresent)
	r.SetVM(6, uuidOf("stranger"), ivshmem.VMPresent)
	r.SetVM(7, uuidOf("x"), ivshmem.VMState(99))
	e.reconcile()
	if got := vmTable(t, e.regionPath("jobA")); len(got) != 1 || !got[a0.UUID] {
		t.Errorf("VM table = %v, want a0 only", got)
	}
	present := 0
	for i := range r.Layout().VMCount {
		if v, err := r.VMAt(i); err != nil {
			t.Errorf("entry %d still corrupt: %v", i, err)
		} else if v.State != ivshmem.VMEmpty {
			present++
		}
	}
	if present != 1 {
		t.Errorf("%d non-empty entries, want 1", present)
	}
}

func TestSecondBrokerRefused(t *testing.T) {
	e := newEnv(t)
	_, err := broker.New(e.config(), e.hv, zaptest.NewLogger(t))
	if !errors.Is(err, broker.ErrLocked) {
		t.Fatalf("second broker on one directory: %v, want ErrLocked", err)
	}
}

func TestBadConfigRefused(t *testing.T) {
	e := newEnv(t)
	for name, mut := range map[string]func(*broker.Config){
		"world-readable": func(c *broker.Config) { c.Mode = 0o644 },
		"no owner rw":    func(c *broker.Config) { c.Mode = 0o060 },
		"size":           func(c *broker.Config) { c.RegionSize = 3 << 20 },
		"host":           func(c *broker.Config) { c.HostID = ivshmem.HostID{} },
	} {
		c := e.config()
		mut(&c)
		if _, err := broker.New(c, e.hv, zaptest.NewLogger(t)); err == nil {
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
}

// TestRunFollowsEvents drives the broker only through registry changes, as the emulated
// cluster does.
func TestRunFollowsEvents(t *testing.T) {
	e := newEnv(t)
	ctx := brokertest.Start(t, e.b, 20*time.Second)
	e.register("a0", "jobA")
	e.register("b0", "jobB")
	for _, vm := range []string{"a0", "b0"} {
		if _, err := e.reg.WaitDevice(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	e.wantDevice("a0", e.regionPath("jobA"))
	e.wantDevice("b0", e.regionPath("jobB"))
	if err := e.reg.Unregister("b0"); err != nil {
		t.Fatal(err)
	}
	for exists(e.regionPath("jobB")) {
		if ctx.Err() != nil {
			t.Fatal("jobB's region not removed after its VM was unregistered")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunStopsWhenHypervisorLost(t *testing.T) {
	e := newEnv(t)
	done := make(chan error, 1)
	go func() { done <- e.b.Run(context.Background()) }()
	if err := os.RemoveAll(filepath.Join(e.reg.Dir, "vms")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, broker.ErrHypervisorLost) {
			t.Errorf("Run = %v, want ErrHypervisorLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run went on after the registry was removed")
	}
}

// fakeCounter stands in for broker/traffic: interfaces are numbered as they are first watched.
type fakeCounter struct {
	index map[string]int
	kept  map[int]bool
	flows []traffic.Flow
}

func (f *fakeCounter) Watch(iface string) (int, error) {
	if strings.HasPrefix(iface, "bad") {
		return 0, errors.New("no such interface")
	}
	if f.index[iface] == 0 {
		f.index[iface] = len(f.index) + 10
	}
	return f.index[iface], nil
}

func (f *fakeCounter) Keep(ifindexes map[int]bool) error { f.kept = ifindexes; return nil }

func (f *fakeCounter) Flows() ([]traffic.Flow, error) { return f.flows, nil }

// TestTrafficPerVMPair: the broker watches the running VMs' interfaces, stops watching those of
// stopped VMs, and exports the counted flows per (sending VM, receiving VM).
func TestTrafficPerVMPair(t *testing.T) {
	e := newEnv(t)
	fc := &fakeCounter{index: map[string]int{}}
	e.b.CountTraffic(fc)
	mac := func(last byte) net.HardwareAddr { return net.HardwareAddr{2, 0x1e, 0, 0, 0, last} }
	for i, name := range []string{"a0", "a1", "a2"} {
		iface := "veth-" + name
		if name == "a2" {
			iface = "bad-" + name
		}
		vm := netns.VM{Name: name, UUID: uuidOf(name), Job: "jobA", NIC: hypervisor.NIC{HostIface: iface, MAC: mac(byte(i + 1))}}
		if err := e.reg.Register(vm); err != nil {
			t.Fatal(err)
		}
	}
	e.reconcile()
	a0, a1 := fc.index["veth-a0"], fc.index["veth-a1"]
	if len(fc.kept) != 2 || !fc.kept[a0] || !fc.kept[a1] {
		t.Errorf("kept %v, want the interfaces of a0 (%d) and a1 (%d)", fc.kept, a0, a1)
	}
	if e.logs.FilterMessage("cannot count a VM's traffic").Len() != 1 {
		t.Error("the interface that cannot be watched was not logged once")
	}
	fc.flows = []traffic.Flow{
		{Ifindex: a0, DstMAC: mac(2), Packets: 10, Bytes: 10000},
		{Ifindex: a0, DstMAC: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, Packets: 1, Bytes: 42},
		{Ifindex: a0, DstMAC: mac(9), Packets: 2, Bytes: 200},
		{Ifindex: a1, DstMAC: mac(1), Packets: 5, Bytes: 500},
		{Ifindex: 99, DstMAC: mac(1), Packets: 7, Bytes: 700}, // a VM gone since
	}
	var b strings.Builder
	if err := e.b.WriteMetrics(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`ivshim_broker_vm_network_bytes_total{src="a0",dst="a1"} 10000`,
		`ivshim_broker_vm_network_bytes_total{src="a0",dst="elsewhere"} 242`,
		`ivshim_broker_vm_network_frames_total{src="a0",dst="elsewhere"} 3`,
		`ivshim_broker_vm_network_bytes_total{src="a1",dst="a0"} 500`,
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, "ivshim_broker_vm_network_") && (strings.HasSuffix(line, " 700") || strings.HasSuffix(line, " 7")) {
			t.Errorf("a flow of an unknown interface was exported: %s", line)
		}
	}
	if err := e.reg.Unregister("a1"); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	if len(fc.kept) != 1 || !fc.kept[a0] {
		t.Errorf("kept %v after a1 stopped, want a0's interface %d only", fc.kept, a0)
	}
	if e.logs.FilterMessage("cannot count a VM's traffic").Len() != 1 {
		t.Error("the same unwatchable interface was logged again")
	}
}
