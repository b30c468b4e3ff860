// Package sriovtest lays out the sysfs files of SR-IOV devices in a directory, for tests of code
// that reads the host's inventory (broker/sriov).
package sriovtest

import (
	"os"
	"path/filepath"
	"testing"

	"ivshim.dev/ivshim/broker/hypervisor"
)

// AddVF makes VF vf of PF pf with model m under the sysfs root, bound to driver (none if ""),
// with the RDMA device and network interface a host driver gives it when rdma != "".
func AddVF(t testing.TB, root string, vf, pf hypervisor.PCIAddr, m hypervisor.DeviceModel, driver, rdma string) {
	t.Helper()
	devs := filepath.Join(root, "bus", "pci", "devices")
	pfDir := filepath.Join(devs, pf.String())
	dir := filepath.Join(devs, vf.String())
	must(t, os.MkdirAll(pfDir, 0o755))
	must(t, os.MkdirAll(dir, 0o755))
	must(t, os.Symlink("../"+pf.String(), filepath.Join(dir, "physfn")))
	must(t, os.WriteFile(filepath.Join(dir, "vendor"), []byte(hex4(m.Vendor)), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "device"), []byte(hex4(m.Device)), 0o644))
	if driver != "" {
		must(t, os.MkdirAll(filepath.Join(root, "bus", "pci", "drivers", driver), 0o755))
		must(t, os.Symlink("../../drivers/"+driver, filepath.Join(dir, "driver")))
	}
	if rdma != "" {
		must(t, os.MkdirAll(filepath.Join(dir, "infiniband", rdma), 0o755))
		must(t, os.MkdirAll(filepath.Join(dir, "net", "ib-"+rdma), 0o755))
	}
}

func hex4(v uint16) string {
	const digits = "0123456789abcdef"
	return "0x" + string([]byte{digits[v>>12], digits[v>>8&15], digits[v>>4&15], digits[v&15]}) + "\n"
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Addr parses a PCI address a test names, failing the test if it does not parse.
func Addr(t testing.TB, s string) hypervisor.PCIAddr {
	t.Helper()
	a, err := hypervisor.ParsePCIAddr(s)
	must(t, err)
	return a
}

// ConnectX6VF is the model of a ConnectX-6 VF (Mellanox 15b3:101c).
var ConnectX6VF = hypervisor.DeviceModel{Vendor: 0x15b3, Device: 0x101c}
