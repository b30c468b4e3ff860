package netns_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/netns"
)

func TestRegisterValidates(t *testing.T) {
	reg := netns.Registry{Dir: t.TempDir()}
	for _, vm := range []netns.VM{
		{Name: "", Job: "j"},
		{Name: "../x", Job: "j"},
		{Name: ".hidden", Job: "j"},
		{Name: "a b", Job: "j"},
		{Name: "ok", Job: "bad job"},
		{Name: "ok", Job: "../j"},
		{Name: "ok", NIC: hypervisor.NIC{HostIface: "../eth0", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}},
		{Name: "ok", NIC: hypervisor.NIC{HostIface: "veth-name-too-long", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}},
		{Name: "ok", NIC: hypervisor.NIC{HostIface: "veth0", MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}}},
		{Name: "ok", NIC: hypervisor.NIC{HostIface: "veth0"}},
		{Name: "ok", VCPUs: -1},
		{Name: "ok", VCPUs: hypervisor.MaxVCPUs + 1},
	} {
		if err := reg.Register(vm); err == nil {
			t.Errorf("Register(%+v) accepted", vm)
		}
	}
	if err := reg.Unregister("../../etc"); err == nil {
		t.Error("Unregister accepted a path")
	}
	if err := reg.Register(netns.VM{Name: "idle"}); err != nil {
		t.Errorf("a VM of no job: %v", err)
	}
}

func open(t *testing.T) (*netns.Hypervisor, netns.Registry) {
	t.Helper()
	reg := netns.Registry{Dir: t.TempDir()}
	hv, err := netns.Open(reg.Dir, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hv.Close() })
	return hv, reg
}

func TestRunningAttachDetach(t *testing.T) {
	hv, reg := open(t)
	u, _ := hypervisor.ParseUUID("01234567-89ab-cdef-0123-456789abcdef")
	nic := hypervisor.NIC{HostIface: "iv00000-v0", MAC: net.HardwareAddr{2, 0x1e, 0, 0, 0, 1}}
	if err := reg.Register(netns.VM{Name: "h0v0", UUID: u, Job: "j1", Netns: "iv00000-h0v0", NIC: nic, VCPUs: 4}); err != nil {
		t.Fatal(err)
	}
	vms, err := hv.Running()
	if err != nil || len(vms) != 1 || vms[0].Name != "h0v0" || vms[0].UUID != u || vms[0].Job != "j1" || len(vms[0].Plugged) != 0 || vms[0].VCPUs != 4 {
		t.Fatalf("Running = %+v, %v", vms, err)
	}
	if len(vms[0].NICs) != 1 || vms[0].NICs[0].HostIface != nic.HostIface || vms[0].NICs[0].MAC.String() != nic.MAC.String() {
		t.Errorf("NICs = %v, want [%v]", vms[0].NICs, nic)
	}
	region := filepath.Join(t.TempDir(), "ivshim-j1")
	r := hypervisor.Region{Name: "ivshim-j1", Path: region, Size: 1 << 20}
	if err := hv.Attach(vms[0], r); err != nil {
		t.Fatal(err)
	}
	if err := hv.Attach(vms[0], r); err != nil {
		t.Errorf("attaching again: %v", err)
	}
	if err := hv.Attach(vms[0], hypervisor.Region{Name: "ivshim-j2", Path: "/x/ivshim-j2"}); err == nil {
		t.Error("a second region was plugged over the first")
	}
	if got, _ := reg.Device("h0v0"); got != region {
		t.Errorf("device = %q, want %q", got, region)
	}
	if target, err := os.Readlink(reg.DevicePath("h0v0")); err != nil || target != region {
		t.Errorf("device path %s -> %q, %v", reg.DevicePath("h0v0"), target, err)
	}
	vms, _ = hv.Running()
	if len(vms[0].Plugged) != 1 || vms[0].Plugged[0] != "ivshim-j1" {
		t.Errorf("Plugged = %v", vms[0].Plugged)
	}
	if err := hv.Detach(vms[0], "ivshim-other"); err != nil {
		t.Errorf("detaching a device that is not plugged: %v", err)
	}
	if got, _ := reg.Device("h0v0"); got != region {
		t.Error("detaching another name removed the device")
	}
	if err := hv.Detach(vms[0], "ivshim-j1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := reg.Device("h0v0"); got != "" {
		t.Errorf("device after detach = %q", got)
	}
}

func TestStoppedVMLosesDevices(t *testing.T) {
	hv, reg := open(t)
	if err := reg.Register(netns.VM{Name: "v", Job: "j"}); err != nil {
		t.Fatal(err)
	}
	vms, _ := hv.Running()
	if err := hv.Attach(vms[0], hypervisor.Region{Name: "ivshim-j", Path: "/dev/shm/ivshim-j"}); err != nil {
		t.Fatal(err)
	}
	// The record goes without Unregister (as if removed by hand): the next listing removes
	// the stopped VM's devices.
	if err := os.Remove(filepath.Join(reg.Dir, "vms", "v.json")); err != nil {
		t.Fatal(err)
	}
	if vms, err := hv.Running(); err != nil || len(vms) != 0 {
		t.Fatalf("Running = %+v, %v", vms, err)
	}
	if _, err := os.Lstat(filepath.Join(reg.Dir, "devices", "v")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("devices of a stopped VM remain: %v", err)
	}
}

func TestChangesAndWaitDevice(t *testing.T) {
	hv, reg := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := reg.Register(netns.VM{Name: "v", Job: "j"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hv.Changes():
	case <-ctx.Done():
		t.Fatal("no change reported for a registration")
	}
	got := make(chan string, 1)
	go func() {
		p, err := reg.WaitDevice(ctx, "v")
		if err != nil {
			t.Error(err)
		}
		got <- p
	}()
	vms, _ := hv.Running()
	if err := hv.Attach(vms[0], hypervisor.Region{Name: "ivshim-j", Path: "/dev/shm/ivshim-j"}); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p != "/dev/shm/ivshim-j" {
		t.Errorf("WaitDevice = %q", p)
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := reg.WaitDevice(short, "nothing"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitDevice of a VM that never gets a device: %v", err)
	}
	if err := hv.Close(); err != nil {
		t.Fatal(err)
	}
	for range hv.Changes() {
	}
}
