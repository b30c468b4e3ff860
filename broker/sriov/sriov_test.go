package sriov_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/sriov"
	"ivshim.dev/ivshim/broker/sriov/sriovtest"
)

func TestScan(t *testing.T) {
	root := t.TempDir()
	pf := sriovtest.Addr(t, "0000:3b:00.0")
	cx6 := sriovtest.ConnectX6VF
	cx7 := hypervisor.DeviceModel{Vendor: 0x15b3, Device: 0x101e}
	sriovtest.AddVF(t, root, sriovtest.Addr(t, "0000:3b:00.3"), pf, cx6, "vfio-pci", "")
	sriovtest.AddVF(t, root, sriovtest.Addr(t, "0000:3b:00.2"), pf, cx6, "mlx5_core", "mlx5_2")
	sriovtest.AddVF(t, root, sriovtest.Addr(t, "0000:d8:00.2"), sriovtest.Addr(t, "0000:d8:00.0"), cx7, "", "")
	inv, err := sriov.Scan(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Problems) != 0 || len(inv.VFs) != 3 {
		t.Fatalf("inventory %+v: want 3 VFs and no problems", inv)
	}
	got := []string{}
	for _, vf := range inv.VFs {
		got = append(got, vf.Addr.String()+" "+vf.PF.String()+" "+vf.Model.String()+" "+vf.Driver+" "+strings.Join(vf.RDMA, ","))
	}
	want := []string{
		"0000:3b:00.2 0000:3b:00.0 15b3:101c mlx5_core mlx5_2",
		"0000:3b:00.3 0000:3b:00.0 15b3:101c vfio-pci ",
		"0000:d8:00.2 0000:d8:00.0 15b3:101e  ",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("inventory:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if vf, ok := inv.Lookup(sriovtest.Addr(t, "0000:3b:00.3")); !ok || vf.Driver != "vfio-pci" {
		t.Errorf("Lookup 0000:3b:00.3 = %+v, %v", vf, ok)
	}
	if _, ok := inv.Lookup(pf); ok {
		t.Error("Lookup found the PF as a VF")
	}
	// Pick: the lowest free address of the model, which no host driver holds unless its PF is
	// listed.
	if vf, ok := inv.Pick(cx6, nil, nil); !ok || vf.Addr.String() != "0000:3b:00.3" {
		t.Errorf("Pick cx6 = %v, %v; want 0000:3b:00.3 (00.2 is the host's, bound to mlx5_core)", vf.Addr, ok)
	}
	if vf, ok := inv.Pick(cx6, nil, []hypervisor.PCIAddr{pf}); !ok || vf.Addr.String() != "0000:3b:00.2" {
		t.Errorf("Pick cx6 with its PF listed = %v, %v; want 0000:3b:00.2", vf.Addr, ok)
	}
	inUse := map[hypervisor.PCIAddr]bool{sriovtest.Addr(t, "0000:3b:00.3"): true}
	if vf, ok := inv.Pick(cx6, inUse, nil); ok {
		t.Errorf("Pick cx6 with the free one in use = %v", vf.Addr)
	}
	if vf, ok := inv.Pick(cx7, nil, nil); !ok || vf.Addr.String() != "0000:d8:00.2" {
		t.Errorf("Pick cx7 (no driver) = %v, %v", vf.Addr, ok)
	}
}

// A host without PCI devices in sysfs (a container) has no VFs, and that is no error.
func TestScanNoPCI(t *testing.T) {
	inv, err := sriov.Scan(t.TempDir())
	if err != nil || len(inv.VFs) != 0 {
		t.Fatalf("Scan = %+v, %v", inv, err)
	}
}

// Broken or hostile sysfs contents leave the device out, named in Problems; nothing fails.
func TestScanBadDevices(t *testing.T) {
	root := t.TempDir()
	devs := filepath.Join(root, "bus", "pci", "devices")
	pf := sriovtest.Addr(t, "0000:3b:00.0")
	good := sriovtest.Addr(t, "0000:3b:00.2")
	sriovtest.AddVF(t, root, good, pf, sriovtest.ConnectX6VF, "", "")
	bad := map[string]func(dir string){
		"0000:3b:00.4": func(d string) { os.WriteFile(filepath.Join(d, "vendor"), []byte("0x15b3000\n"), 0o644) },
		"0000:3b:00.5": func(d string) { os.WriteFile(filepath.Join(d, "device"), []byte("zzzz"), 0o644) },
		"0000:3b:00.6": func(d string) { os.Remove(filepath.Join(d, "device")) },
		"0000:3b:00.7": func(d string) {
			os.Remove(filepath.Join(d, "physfn"))
			os.Symlink("../not-an-address", filepath.Join(d, "physfn"))
		},
		"0000:3b:01.0": func(d string) { os.WriteFile(filepath.Join(d, "vendor"), []byte(strings.Repeat("0", 1<<20)), 0o644) },
	}
	for a, spoil := range bad {
		sriovtest.AddVF(t, root, sriovtest.Addr(t, a), pf, sriovtest.ConnectX6VF, "", "")
		spoil(filepath.Join(devs, a))
	}
	// Entries that are not PCI functions, or not VFs, are skipped silently.
	os.MkdirAll(filepath.Join(devs, "garbage"), 0o755)
	os.MkdirAll(filepath.Join(devs, "0000:3b:00.1"), 0o755)
	inv, err := sriov.Scan(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.VFs) != 1 || inv.VFs[0].Addr != good {
		t.Errorf("VFs %+v: want only %s", inv.VFs, good)
	}
	if len(inv.Problems) != len(bad) {
		t.Errorf("problems %q: want one per broken device (%d)", inv.Problems, len(bad))
	}
	for a := range bad {
		if !slices.ContainsFunc(inv.Problems, func(p string) bool { return strings.HasPrefix(p, a+": ") }) {
			t.Errorf("no problem named for %s in %q", a, inv.Problems)
		}
	}
}

func TestParsePCIAddr(t *testing.T) {
	for _, s := range []string{"0000:3b:00.2", "ffff:ff:1f.7", "0001:00:00.0"} {
		a, err := hypervisor.ParsePCIAddr(s)
		if err != nil || a.String() != s {
			t.Errorf("ParsePCIAddr(%q) = %v, %v", s, a, err)
		}
	}
	for _, s := range []string{"", "0000:3b:00", "0000:3b:20.0", "0000:3b:00.8", "000g:3b:00.0", "0000-3b:00.0", "+000:3b:00.0", "0000:3b:00.2 "} {
		if a, err := hypervisor.ParsePCIAddr(s); err == nil {
			t.Errorf("ParsePCIAddr(%q) = %v, want an error", s, a)
		}
	}
	for _, s := range []string{"15b3:101c", "8086:154c"} {
		m, err := hypervisor.ParseDeviceModel(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseDeviceModel(%q) = %v, %v", s, m, err)
		}
	}
	for _, s := range []string{"", "15b3", "15b3:101", "15b3:101cc", "x5b3:101c", "15b3:-01c"} {
		if m, err := hypervisor.ParseDeviceModel(s); err == nil {
			t.Errorf("ParseDeviceModel(%q) = %v, want an error", s, m)
		}
	}
}
