package ivshmem

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// PCI identity of QEMU's ivshmem device (ivshmem-plain and ivshmem-doorbell).
const (
	PCIVendorRedHat  = 0x1af4
	PCIDeviceIvshmem = 0x1110
)

// ErrNoRegion means no region is configured and no ivshmem device is present: the shim runs in
// pure pass-through mode.
var ErrNoRegion = errors.New("no ivshim region")

// PCIDevice is an ivshmem device found in sysfs; Resource2 is the file that maps its BAR2, the
// shared memory.
type PCIDevice struct {
	Addr      string // PCI address, e.g. 0000:00:05.0
	Resource2 string
}

// ParsePCIID parses a sysfs vendor or device file's content, "0x1af4\n".
func ParsePCIID(s string) (uint16, error) {
	t := strings.TrimSpace(s)
	if !strings.HasPrefix(t, "0x") || len(t) < 3 || len(t) > 6 {
		return 0, fmt.Errorf("parse pci id %q: want 0x and 1-4 hex digits", s)
	}
	v, err := strconv.ParseUint(t[2:], 16, 16)
	if err != nil {
		return 0, fmt.Errorf("parse pci id %q: %w", s, err)
	}
	return uint16(v), nil
}

func readPCIID(path string) (uint16, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return ParsePCIID(string(b))
}

// FindPCI lists the ivshmem devices under sysfsRoot (normally "/sys") that expose a BAR2
// resource file, sorted by PCI address. Devices whose identity files cannot be read are skipped:
// sysfs holds many unrelated devices.
func FindPCI(sysfsRoot string) ([]PCIDevice, error) {
	dir := filepath.Join(sysfsRoot, "bus", "pci", "devices")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find ivshmem devices: %w", err)
	}
	var out []PCIDevice
	for _, e := range entries {
		dev := filepath.Join(dir, e.Name())
		vendor, err := readPCIID(filepath.Join(dev, "vendor"))
		if err != nil || vendor != PCIVendorRedHat {
			continue
		}
		device, err := readPCIID(filepath.Join(dev, "device"))
		if err != nil || device != PCIDeviceIvshmem {
			continue
		}
		res := filepath.Join(dev, "resource2")
		if _, err := os.Stat(res); err != nil {
			continue
		}
		out = append(out, PCIDevice{Addr: e.Name(), Resource2: res})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out, nil
}

// Discover finds this process's region: the file named by IVSHIM_REGION if set, else the
// ivshmem PCI device under sysfsRoot whose region belongs to job (any job if job is empty).
// It returns an error wrapping ErrNoRegion when there is nothing to use, and another error when
// a region is there but invalid: a corrupt region must stop the job, not silently slow it.
func Discover(getenv func(string) string, sysfsRoot, job string) (*Region, error) {
	if p := getenv("IVSHIM_REGION"); p != "" {
		r, err := Open(p)
		if err != nil {
			return nil, fmt.Errorf("IVSHIM_REGION: %w", err)
		}
		return r, nil
	}
	devs, err := FindPCI(sysfsRoot)
	if err != nil {
		return nil, err
	}
	var found []*Region
	var errs []error
	for _, d := range devs {
		r, err := Open(d.Resource2)
		if err != nil {
			errs = append(errs, fmt.Errorf("ivshmem device %s: %w", d.Addr, err))
			continue
		}
		if job != "" && r.JobID() != job {
			r.Close()
			continue
		}
		found = append(found, r)
	}
	switch len(found) {
	case 0:
		if len(errs) > 0 {
			return nil, fmt.Errorf("ivshmem device present but unusable: %w", errors.Join(errs...))
		}
		return nil, fmt.Errorf("%w: no IVSHIM_REGION and no usable ivshmem device (%d found)", ErrNoRegion, len(devs))
	case 1:
		return found[0], nil
	default:
		srcs := make([]string, len(found))
		for i, r := range found {
			srcs[i] = r.Source() + " (job " + r.JobID() + ")"
			r.Close()
		}
		return nil, fmt.Errorf("ivshim region ambiguous: %d regions (%s); set IVSHIM_JOB or IVSHIM_REGION", len(found), strings.Join(srcs, ", "))
	}
}
