package libvirt_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/libvirt"
	"ivshim.dev/ivshim/broker/sriov/sriovtest"
)

func (f *fixture) vm(name string) hypervisor.VM {
	f.t.Helper()
	vms, err := f.hv.Running()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, vm := range vms {
		if vm.Name == name {
			return vm
		}
	}
	f.t.Fatalf("domain %s not running", name)
	return hypervisor.VM{}
}

func addrs(as []hypervisor.PCIAddr) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

// A VM's VF record, stored in its live metadata, makes the broker pass free VFs of the recorded
// models through to it with managed <hostdev> elements; one that goes is replaced; what the host
// cannot give is logged once; hostile records are rejected with a reason and give nothing.
func TestVFRecordPassthrough(t *testing.T) {
	f := newFixture(t)
	pf := sriovtest.Addr(t, "0000:3b:00.0")
	for _, a := range []string{"0000:3b:00.2", "0000:3b:00.3"} {
		sriovtest.AddVF(t, f.sysfs, sriovtest.Addr(t, a), pf, sriovtest.ConnectX6VF, "mlx5_core", "mlx5_"+a[11:])
	}
	// A VF of another PF the host's driver holds: not the broker's to give (vf_pfs lists 3b:00.0).
	sriovtest.AddVF(t, f.sysfs, sriovtest.Addr(t, "0000:3a:00.2"), sriovtest.Addr(t, "0000:3a:00.0"), sriovtest.ConnectX6VF, "mlx5_core", "mlx5_9")
	cx6 := sriovtest.ConnectX6VF
	if err := f.hv.RecordVFs(f.vm("a1"), []hypervisor.DeviceModel{cx6, cx6}); err != nil {
		t.Fatal(err)
	}
	if got := f.vm("a1").VFs; !slices.Equal(got, []hypervisor.DeviceModel{cx6, cx6}) {
		t.Fatalf("VF record read back as %v", got)
	}
	if err := f.b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if got := addrs(f.vm("a1").PCI); !slices.Equal(got, []string{"0000:3b:00.2", "0000:3b:00.3"}) {
		t.Fatalf("a1 has %v passed through, want both VFs", got)
	}
	f.wantPlugged("a1", "ivshim-jobA")

	// A third VF the host has not: logged once, counted, the others stay.
	if err := f.hv.RecordVFs(f.vm("a1"), []hypervisor.DeviceModel{cx6, cx6, cx6}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := f.b.Reconcile(); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.logs.FilterMessage("no free VF of the VM's recorded model on this host: the VM runs without it").Len(); n != 1 {
		t.Errorf("missing VF logged %d times, want once", n)
	}
	var m strings.Builder
	if err := f.b.WriteMetrics(&m); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.String(), "ivshim_broker_vfs_missing 1\n") || !strings.Contains(m.String(), `ivshim_broker_vf_attach_total{result="ok"} 2`+"\n") {
		t.Errorf("metrics lack the VF counts:\n%s", m.String())
	}

	// A VF that leaves the VM is replaced at the next pass.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.hv.DetachPCI(ctx, f.vm("a1"), sriovtest.Addr(t, "0000:3b:00.2")); err != nil {
		t.Fatal(err)
	}
	if got := addrs(f.vm("a1").PCI); !slices.Equal(got, []string{"0000:3b:00.3"}) {
		t.Fatalf("after the unplug a1 has %v", got)
	}
	if err := f.b.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if got := addrs(f.vm("a1").PCI); !slices.Equal(got, []string{"0000:3b:00.3", "0000:3b:00.2"}) {
		t.Fatalf("a1 has %v passed through, want its VF back", got)
	}

	// Hostile records on b1: rejected with a reason; b1 keeps its region and gets no VF.
	dom, err := f.hv.Conn().LookupDomainByName("b1")
	if err != nil {
		t.Fatal(err)
	}
	defer dom.Free()
	for _, evil := range []struct{ xml, why string }{
		{"<vfs><vf model='zz'/></vfs>", "device model"},
		{"<vfs><vf model='15b3:101c' x='1'/></vfs>", "want <vf model"},
		{"<vfs><vf model='15b3:101c'><vf model='15b3:101c'/></vf></vfs>", "want <vf model"},
		{"<vfs><other/></vfs>", "want <vfs>"},
		{"<vfs>text</vfs>", "want <vfs>"},
		{"<job id='x'/>", "want <vfs>"},
		{"<vfs>" + strings.Repeat("<vf model='15b3:101c'/>", hypervisor.MaxVFs+1) + "</vfs>", "VFs, more than"},
		{"<vfs>" + strings.Repeat(" ", 2000) + "</vfs>", "bytes, more than"},
	} {
		if err := dom.SetMetadata(lv.DOMAIN_METADATA_ELEMENT, evil.xml, "v", libvirt.VFNamespace, lv.DOMAIN_AFFECT_LIVE); err != nil {
			t.Fatal(err)
		}
		if err := f.b.Reconcile(); err != nil {
			t.Fatal(err)
		}
		vm := f.vm("b1")
		if len(vm.VFs) != 0 || len(vm.PCI) != 0 || !strings.Contains(vm.Problem, evil.why) {
			t.Errorf("record %.60s: VFs %v, PCI %v, problem %q (want %q)", evil.xml, vm.VFs, vm.PCI, vm.Problem, evil.why)
		}
		f.wantPlugged("b1", "ivshim-jobB")
	}
}

func TestParseHostdevs(t *testing.T) {
	x := `<domain><devices>
	  <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x3b' slot='0x00' function='0x2'/></source></hostdev>
	  <hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/></source></hostdev>
	  <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='94' slot='1' function='7'/></source></hostdev>
	  <hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x3b' slot='0x20' function='0x0'/></source></hostdev>
	  <hostdev mode='subsystem' type='pci'><source><address domain='0x10000' bus='0x3b' slot='0x00' function='0x0'/></source></hostdev>
	  <hostdev mode='capabilities' type='net'><source><interface>eth0</interface></source></hostdev>
	</devices></domain>`
	got, err := libvirt.ParseHostdevs(x)
	if err != nil {
		t.Fatal(err)
	}
	if s := addrs(got); !slices.Equal(s, []string{"0000:3b:00.2", "0000:5e:01.7"}) {
		t.Errorf("ParseHostdevs = %v", s)
	}
	a := sriovtest.Addr(t, "0001:d8:1f.7")
	back, err := libvirt.ParseHostdevs("<domain><devices>" + libvirt.HostdevXML(a) + "</devices></domain>")
	if err != nil || len(back) != 1 || back[0] != a {
		t.Errorf("HostdevXML round trip: %v, %v", back, err)
	}
	models := []hypervisor.DeviceModel{sriovtest.ConnectX6VF, {Vendor: 0x8086, Device: 0x154c}}
	if got, err := libvirt.ParseVFRecord(libvirt.VFRecordXML(models)); err != nil || !slices.Equal(got, models) {
		t.Errorf("VF record round trip: %v, %v", got, err)
	}
	if got, err := libvirt.ParseVFRecord("<vfs/>"); err != nil || len(got) != 0 {
		t.Errorf("empty VF record: %v, %v", got, err)
	}
}
