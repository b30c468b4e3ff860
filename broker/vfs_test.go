package broker_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/brokertest"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/netns"
	"ivshim.dev/ivshim/broker/sriov/sriovtest"
)

var otherVF = hypervisor.DeviceModel{Vendor: 0x15b3, Device: 0x101e}

// vfHost lays out VFs on e's host: PF pf with one VF per model at functions 2, 3, ...
func vfHost(e *env, pf string, models ...hypervisor.DeviceModel) {
	p := sriovtest.Addr(e.t, pf)
	for i, m := range models {
		vf := p
		vf.Fn = uint8(2 + i)
		sriovtest.AddVF(e.t, e.sysfs, vf, p, m, "vfio-pci", "")
	}
}

// pci returns the devices passed through to VM name on e's host, as strings.
func (e *env) pci(name string) []string {
	e.t.Helper()
	got, err := e.reg.PCI(name)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, a := range got {
		out = append(out, a.String())
	}
	return out
}

// waitPCI waits until VM name on e's host has exactly want passed through.
func (e *env) waitPCI(ctx context.Context, name string, want ...string) {
	e.t.Helper()
	for !slices.Equal(e.pci(name), want) {
		if ctx.Err() != nil {
			e.t.Fatalf("VM %s has PCI devices %v, want %v", name, e.pci(name), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startVMWithVF registers VM name of job on e's host with the VF at addr passed through, as an
// operator's domain definition would have it, and waits for its region.
func startVMWithVF(ctx context.Context, e *env, name, job, addr string) netns.VM {
	e.t.Helper()
	vm := e.register(name, job)
	if err := e.hv.AttachPCI(hypervisor.VM{Name: name, UUID: vm.UUID}, sriovtest.Addr(e.t, addr)); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.reg.WaitDevice(ctx, name); err != nil {
		e.t.Fatal(err)
	}
	return vm
}

// A migrating VM's VF is unplugged at the source, its model recorded, and a free VF of that
// model passed through at the destination before the attach phase ends; a second VF of
// another model on the destination is left alone, and the way back works the same.
func TestMigrateMovesVFs(t *testing.T) {
	src, dst := newEnv(t), newEnv(t)
	vfHost(src, "0000:3b:00.0", sriovtest.ConnectX6VF, sriovtest.ConnectX6VF)
	vfHost(dst, "0000:5e:00.0", otherVF, sriovtest.ConnectX6VF)
	ctx := brokertest.Start(t, src.b, 30*time.Second)
	brokertest.Start(t, dst.b, 30*time.Second)
	startVMWithVF(ctx, src, "a", "j1", "0000:3b:00.3")

	res, err := src.b.Migrate(ctx, api.MigrateRequest{VM: "a", Destination: dst.reg.Dir, DeadlineMS: 5000})
	if err != nil {
		t.Fatalf("migrate: %v (%+v)", err, res)
	}
	if !slices.Equal(res.VFs, []string{"0000:3b:00.3 (15b3:101c)"}) || res.VFsMissing != "" {
		t.Errorf("result VFs %q, missing %q", res.VFs, res.VFsMissing)
	}
	if got := dst.pci("a"); !slices.Equal(got, []string{"0000:5e:00.3"}) {
		t.Errorf("at the destination the VM has %v, want the free VF of its model 0000:5e:00.3", got)
	}
	if got := src.pci("a"); len(got) != 0 {
		t.Errorf("the source still lists %v for the VM", got)
	}
	dst.reconcile() // the snapshot is published at the end of a pass
	snap := dst.b.Snapshot()
	i := slices.IndexFunc(snap.VMs, func(v api.VM) bool { return v.Name == "a" })
	if i < 0 || !slices.Equal(snap.VMs[i].VFs, []string{"15b3:101c"}) {
		t.Errorf("destination's view of the VM: %+v", snap.VMs)
	}

	// Back home: the destination's broker coordinates, the source gives the lowest free VF.
	res, err = dst.b.Migrate(ctx, api.MigrateRequest{VM: "a", Destination: src.reg.Dir, DeadlineMS: 5000})
	if err != nil {
		t.Fatalf("migrate back: %v (%+v)", err, res)
	}
	src.waitPCI(ctx, "a", "0000:3b:00.2")
	if got := dst.pci("a"); len(got) != 0 {
		t.Errorf("the destination still lists %v for the VM", got)
	}
}

// A destination without a free VF of the VM's model does not stop the migration (the VF's
// connections ended with its unplug wherever the VM runs): the answer says what is missing, the
// destination gives the VF once one comes free, and the source's VF, held for the VM during the
// migration, is free afterwards.
func TestMigrateWithoutFreeVF(t *testing.T) {
	src, dst := newEnv(t), newEnv(t)
	vfHost(src, "0000:3b:00.0", sriovtest.ConnectX6VF)
	vfHost(dst, "0000:5e:00.0", otherVF, sriovtest.ConnectX6VF)
	ctx := brokertest.Start(t, src.b, 30*time.Second)
	brokertest.Start(t, dst.b, 30*time.Second)
	startVMWithVF(ctx, src, "a", "j1", "0000:3b:00.2")
	startVMWithVF(ctx, dst, "busy", "j2", "0000:5e:00.3") // the destination's only VF of the model
	// A VM of the source that wants a VF of the model and has none: the VF the migration
	// unplugs stays a's until the migration ends.
	wants := netns.VM{Name: "wants", UUID: uuidOf("wants"), Job: "j1", VFs: []hypervisor.DeviceModel{sriovtest.ConnectX6VF}}
	if err := src.reg.Register(wants); err != nil {
		t.Fatal(err)
	}
	if _, err := src.reg.WaitDevice(ctx, "wants"); err != nil {
		t.Fatal(err)
	}

	res, err := src.b.Migrate(ctx, api.MigrateRequest{VM: "a", Destination: dst.reg.Dir, DeadlineMS: 1000})
	if err != nil || !res.Migrated {
		t.Fatalf("migrate: %v (%+v)", err, res)
	}
	if want := "0 of the VM's 1 VFs passed through at the destination; has it a free VF of each model (15b3:101c)?"; res.VFsMissing != want {
		t.Errorf("VFs missing %q, want %q", res.VFsMissing, want)
	}
	if _, err := dst.reg.WaitDevice(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := dst.pci("busy"); !slices.Equal(got, []string{"0000:5e:00.3"}) {
		t.Errorf("the destination's other VM has %v", got)
	}
	if n := dst.logs.FilterMessage("no free VF of the VM's recorded model on this host: the VM runs without it").Len(); n != 1 {
		t.Errorf("destination logged the missing VF %d times, want once", n)
	}
	src.waitPCI(ctx, "wants", "0000:3b:00.2") // free once the migration ended
	if err := dst.reg.Unregister("busy"); err != nil {
		t.Fatal(err)
	}
	dst.waitPCI(ctx, "a", "0000:5e:00.3")
}

// A migration whose attach phase fails (here: the destination cannot make the job's region)
// brings the VM home: what VFs the destination gave are unplugged first (a hypervisor cannot
// move a VM with a passed-through device), the VF record is what it was, and the VFs held for
// the VM are passed through again, none of them given to another VM meanwhile. The same for a
// VM that has a VF record but no VF at the source.
func TestMigrateRollbackGivesVFsBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to plant a region file the destination's broker will not touch")
	}
	src, dst := newEnv(t), newEnv(t)
	vfHost(src, "0000:3b:00.0", sriovtest.ConnectX6VF)
	vfHost(dst, "0000:5e:00.0", sriovtest.ConnectX6VF, sriovtest.ConnectX6VF)
	planted := dst.regionPath("j1")
	if err := os.WriteFile(planted, []byte("planted"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(planted, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	ctx := brokertest.Start(t, src.b, 30*time.Second)
	brokertest.Start(t, dst.b, 30*time.Second)
	startVMWithVF(ctx, src, "a", "j1", "0000:3b:00.2")
	wants := netns.VM{Name: "wants", UUID: uuidOf("wants"), Job: "j1", VFs: []hypervisor.DeviceModel{sriovtest.ConnectX6VF}}
	if err := src.reg.Register(wants); err != nil {
		t.Fatal(err)
	}
	if _, err := src.reg.WaitDevice(ctx, "wants"); err != nil {
		t.Fatal(err)
	}

	for _, vm := range []struct{ name, vfs string }{{"a", "0000:3b:00.2"}, {"wants", ""}} {
		res, err := src.b.Migrate(ctx, api.MigrateRequest{VM: vm.name, Destination: dst.reg.Dir, DeadlineMS: 1000})
		if err == nil || res.FailedStep != "attach" || !res.RolledBack || !strings.Contains(res.Rollback, "VM migrated back") {
			t.Fatalf("migrate %s: %v (%+v): want a rolled-back attach", vm.name, err, res)
		}
		if vm.vfs != "" && !strings.Contains(res.Rollback, "VFs "+vm.vfs+" passed through again") {
			t.Errorf("rollback %q does not give %s back", res.Rollback, vm.vfs)
		}
		if _, err := src.reg.WaitDevice(ctx, vm.name); err != nil {
			t.Fatal(err)
		}
		if got := dst.pci(vm.name); len(got) != 0 {
			t.Errorf("%s left %v behind at the destination", vm.name, got)
		}
	}
	src.waitPCI(ctx, "a", "0000:3b:00.2")
	if got := src.pci("wants"); len(got) != 0 {
		t.Errorf("the source's other VM took %v", got)
	}
	src.reconcile()
	for _, v := range src.b.Snapshot().VMs {
		want := map[string][]string{"a": nil, "wants": {"15b3:101c"}}[v.Name]
		if !slices.Equal(v.VFs, want) {
			t.Errorf("VF record of %s after the rollback: %v, want %v", v.Name, v.VFs, want)
		}
	}
}

// A VF record that does not parse is rejected with a reason and gives the VM nothing; the
// broker keeps serving the VM's region. A VM's device directory that cannot be read leaves that
// VM without devices, not the broker without VMs.
func TestBadVFRecordGetsNothing(t *testing.T) {
	e := newEnv(t)
	vfHost(e, "0000:3b:00.0", sriovtest.ConnectX6VF)
	vm := e.register("a", "j1")
	vm.VFs = make([]hypervisor.DeviceModel, hypervisor.MaxVFs+1)
	if err := e.reg.Register(vm); err == nil {
		t.Fatal("registered a VF record longer than MaxVFs")
	}
	for _, bad := range []struct{ vfs, why string }{
		{`["zz"]`, "device model"},
		{`["15b3:101c", 7]`, "parse"},
		{`[` + strings.Repeat(`"15b3:101c",`, hypervisor.MaxVFs) + `"15b3:101c"]`, "VFs, more than"},
	} {
		rec := `{"name":"a","uuid":"` + vm.UUID.String() + `","job":"j1","netns":"","vfs":` + bad.vfs + `}`
		if err := os.WriteFile(filepath.Join(e.reg.Dir, "vms", "a.json"), []byte(rec), 0o644); err != nil {
			t.Fatal(err)
		}
		e.reconcile()
		snap := e.b.Snapshot()
		if bad.why == "parse" { // not a record at all: ignored, as every unparsable record
			if len(snap.VMs) != 0 || e.logs.FilterMessage("ignoring bad netns VM record").Len() == 0 {
				t.Errorf("record %s: VMs %+v", bad.vfs, snap.VMs)
			}
			continue
		}
		if len(snap.VMs) != 1 || !strings.Contains(snap.VMs[0].Problem, "VF record: ") ||
			!strings.Contains(snap.VMs[0].Problem, bad.why) || len(snap.VMs[0].VFs) != 0 {
			t.Errorf("record %.40s: VMs %+v, want a with the problem %q", bad.vfs, snap.VMs, bad.why)
		}
		e.wantDevice("a", e.regionPath("j1"))
		if got := e.pci("a"); len(got) != 0 {
			t.Errorf("VM with a bad VF record got %v", got)
		}
	}
	e.register("a", "j1")
	if err := os.MkdirAll(filepath.Join(e.reg.Dir, "devices", "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.reg.Dir, "devices", "a", "pci"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.register("b", "j1")
	e.reconcile()
	e.reconcile()
	if n := len(e.b.Snapshot().VMs); n != 2 {
		t.Errorf("%d VMs listed with a's devices unreadable, want 2", n)
	}
	e.wantDevice("b", e.regionPath("j1"))
	if n := e.logs.FilterMessage("cannot list a VM's PCI devices").Len(); n != 1 {
		t.Errorf("unreadable devices logged %d times, want once", n)
	}
}

// A destination that gives the VM only some of its VFs: the migration completes and says which
// are missing.
func TestMigratePartialVFs(t *testing.T) {
	src, dst := newEnv(t), newEnv(t)
	vfHost(src, "0000:3b:00.0", sriovtest.ConnectX6VF, sriovtest.ConnectX6VF)
	vfHost(dst, "0000:5e:00.0", sriovtest.ConnectX6VF)
	ctx := brokertest.Start(t, src.b, 30*time.Second)
	brokertest.Start(t, dst.b, 30*time.Second)
	vm := startVMWithVF(ctx, src, "a", "j1", "0000:3b:00.2")
	if err := src.hv.AttachPCI(hypervisor.VM{Name: "a", UUID: vm.UUID}, sriovtest.Addr(t, "0000:3b:00.3")); err != nil {
		t.Fatal(err)
	}
	res, err := src.b.Migrate(ctx, api.MigrateRequest{VM: "a", Destination: dst.reg.Dir, DeadlineMS: 1000})
	if err != nil || !strings.HasPrefix(res.VFsMissing, "1 of the VM's 2 VFs passed through at the destination") {
		t.Fatalf("migrate: %v (%+v): want it done, one VF missing", err, res)
	}
	dst.waitPCI(ctx, "a", "0000:5e:00.2")
	dst.reconcile()
	if v := dst.b.Snapshot().VMs; len(v) != 1 || !slices.Equal(v[0].VFs, []string{"15b3:101c", "15b3:101c"}) {
		t.Errorf("VF record at the destination: %+v", v)
	}
}
