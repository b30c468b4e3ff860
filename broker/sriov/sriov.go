// Package sriov is the host's inventory of SR-IOV virtual functions: which PCI devices are VFs,
// of which physical function (PF) and device model, and what the host sees of them now (the
// driver bound to each, its RDMA device and network interface when the host's driver holds it).
// The broker reads it to know which of a VM's passed-through devices are VFs it must move at a
// migration, and which free VF of the same model to give a VM arriving on this host.
//
// It reads sysfs as rdmamap (github.com/Mellanox/rdmamap) and the kernel's SR-IOV documentation
// describe it: a VF's directory under bus/pci/devices has a physfn link to its PF, vendor and
// device files with its ids, a driver link, and infiniband/ and net/ directories listing its RDMA
// device and network interfaces while a host driver (mlx5_core) is bound. A VF passed through to
// a VM is bound to vfio-pci and has neither. The root is a parameter so tests can lay out a tree.
//
// Nothing read here is trusted to be well formed: a device whose files do not parse is left out
// of the inventory and named in Inventory.Problems, never a reason to fail.
package sriov

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"ivshim.dev/ivshim/broker/hypervisor"
)

// DefaultSysfs is where sysfs is mounted.
const DefaultSysfs = "/sys"

// maxIDFile bounds the bytes read from a vendor or device file ("0x15b3\n").
const maxIDFile = 64

// VF is one virtual function of the host.
type VF struct {
	Addr  hypervisor.PCIAddr
	PF    hypervisor.PCIAddr
	Model hypervisor.DeviceModel
	// Driver is the driver bound now ("vfio-pci" while a VM has it, "mlx5_core" on the host,
	// "" when none).
	Driver string
	// RDMA and Netdevs are the RDMA devices and network interfaces the host sees on the VF (none
	// while it is passed through).
	RDMA, Netdevs []string
}

// Inventory is the host's VFs, sorted by address.
type Inventory struct {
	VFs []VF
	// Problems names the devices that looked like VFs but could not be read.
	Problems []string
}

// Lookup returns the VF at a.
func (inv Inventory) Lookup(a hypervisor.PCIAddr) (VF, bool) {
	i, ok := slices.BinarySearchFunc(inv.VFs, a, func(v VF, a hypervisor.PCIAddr) int { return cmpAddr(v.Addr, a) })
	if !ok {
		return VF{}, false
	}
	return inv.VFs[i], true
}

func cmpAddr(a, b hypervisor.PCIAddr) int {
	key := func(a hypervisor.PCIAddr) uint64 {
		return uint64(a.Domain)<<24 | uint64(a.Bus)<<16 | uint64(a.Slot)<<8 | uint64(a.Fn)
	}
	return cmp.Compare(key(a), key(b))
}

// Scan reads the VFs under sysfs (DefaultSysfs if ""). A host without PCI devices in sysfs
// (a container) has none; only an unreadable device directory is an error.
func Scan(sysfs string) (Inventory, error) {
	if sysfs == "" {
		sysfs = DefaultSysfs
	}
	dir := filepath.Join(sysfs, "bus", "pci", "devices")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return Inventory{}, nil
	}
	if err != nil {
		return Inventory{}, fmt.Errorf("SR-IOV inventory: %w", err)
	}
	var inv Inventory
	for _, e := range entries {
		addr, err := hypervisor.ParsePCIAddr(e.Name())
		if err != nil {
			continue // not a PCI function's directory
		}
		dev := filepath.Join(dir, e.Name())
		pf, err := os.Readlink(filepath.Join(dev, "physfn"))
		if errors.Is(err, os.ErrNotExist) {
			continue // not a VF
		}
		vf, err := readVF(dev, addr, pf, err)
		if err != nil {
			inv.Problems = append(inv.Problems, fmt.Sprintf("%s: %v", addr, err))
			continue
		}
		inv.VFs = append(inv.VFs, vf)
	}
	slices.SortFunc(inv.VFs, func(a, b VF) int { return cmpAddr(a.Addr, b.Addr) })
	return inv, nil
}

// readVF reads the VF whose sysfs directory is dev; pf and pfErr are its physfn link's target.
func readVF(dev string, addr hypervisor.PCIAddr, pf string, pfErr error) (VF, error) {
	if pfErr != nil {
		return VF{}, fmt.Errorf("physfn: %w", pfErr)
	}
	pfAddr, err := hypervisor.ParsePCIAddr(filepath.Base(pf))
	if err != nil {
		return VF{}, fmt.Errorf("physfn: %w", err)
	}
	vendor, err := readID(filepath.Join(dev, "vendor"))
	if err != nil {
		return VF{}, err
	}
	device, err := readID(filepath.Join(dev, "device"))
	if err != nil {
		return VF{}, err
	}
	vf := VF{Addr: addr, PF: pfAddr, Model: hypervisor.DeviceModel{Vendor: vendor, Device: device}}
	if d, err := os.Readlink(filepath.Join(dev, "driver")); err == nil {
		vf.Driver = filepath.Base(d)
	}
	vf.RDMA = names(filepath.Join(dev, "infiniband"))
	vf.Netdevs = names(filepath.Join(dev, "net"))
	return vf, nil
}

// readID reads a sysfs id file: "0x" and four hex digits, then a newline.
func readID(path string) (uint16, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b := make([]byte, maxIDFile)
	n, err := f.Read(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	s, ok := strings.CutPrefix(strings.TrimSpace(string(b[:n])), "0x")
	if !ok || len(s) != 4 {
		return 0, fmt.Errorf("%s: %q is not 0x and four hex digits", filepath.Base(path), b[:n])
	}
	v, err := strconv.ParseUint(s, 16, 16)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not 0x and four hex digits", filepath.Base(path), b[:n])
	}
	return uint16(v), nil
}

// names lists the entries of dir, sorted; none when it does not exist.
func names(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// Givable reports whether vf may be passed through to a VM: no host driver holds it (it is bound
// to vfio-pci, or to nothing), or it is a VF of one of the PFs in pfs, whose VFs the operator
// gives to VMs while the host's driver holds them (libvirt's managed passthrough unbinds it).
func (vf VF) Givable(pfs []hypervisor.PCIAddr) bool {
	return vf.Driver == "" || vf.Driver == "vfio-pci" || slices.Contains(pfs, vf.PF)
}

// Pick returns a givable VF of model m that is not in use, the lowest address first.
func (inv Inventory) Pick(m hypervisor.DeviceModel, inUse map[hypervisor.PCIAddr]bool, pfs []hypervisor.PCIAddr) (VF, bool) {
	for _, vf := range inv.VFs {
		if vf.Model == m && !inUse[vf.Addr] && vf.Givable(pfs) {
			return vf, true
		}
	}
	return VF{}, false
}
