package ivshmem

import (
	"errors"
	"fmt"
	"io/fs"
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

// ErrDeviceUnusable is wrapped, with ErrNoRegion, when ivshmem devices are present but this
// process may not map them or they hold no ivshim region: the shim passes everything through,
// and the user should hear why once.
var ErrDeviceUnusable = errors.New("ivshmem device present but unusable")

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

// Discovery says where to look for this process's region. The zero value looks where the
// shim does in a real guest.
type Discovery struct {
	Getenv func(string) string // reads IVSHIM_REGION; os.Getenv when nil
	Sysfs  string              // sysfs root; "/sys" when empty
	Job    string              // use only a PCI device whose region belongs to this job ("" = any)
	// Open maps a region file; the package's Open when nil. Tests use it to produce failures
	// the test machine cannot (a permission error while running as root).
	Open func(path string) (*Region, error)
}

// Discover is Discovery{Getenv: getenv, Sysfs: sysfsRoot, Job: job}.Find().
func Discover(getenv func(string) string, sysfsRoot, job string) (*Region, error) {
	return Discovery{Getenv: getenv, Sysfs: sysfsRoot, Job: job}.Find()
}

// Find maps this process's region: the file named by IVSHIM_REGION if set, else the ivshmem
// PCI device whose region belongs to d.Job (any job if empty).
//
// IVSHIM_REGION is taken as an order: if that file cannot be opened or is not a valid region,
// Find fails with an error that is not ErrNoRegion, whatever the reason (permission included),
// except one: a path that does not exist (a dangling link included) is a device that is not
// plugged now, as in a VM being migrated (its device unplugged at the source, not yet plugged
// at the destination): the error then wraps both ErrNoRegion and fs.ErrNotExist.
//
// For PCI devices, which the process did not choose, Find tells three cases apart:
//
//   - a device it may not open or map (resource2 is root-only in sysfs unless a udev rule
//     gives a group access: EACCES, EPERM) or one whose BAR does not start with the ivshim
//     magic (an unrelated ivshmem device) is skipped;
//   - a device whose BAR has the magic but fails validation, or that fails to open for any
//     other reason, is an error: an ivshim region that cannot be trusted must stop the job,
//     not silently slow it down;
//   - a device with a valid region of another job is skipped.
//
// One valid region of the job is the result; two are an error (ambiguous). With none, a
// device error is returned as is; otherwise the error wraps ErrNoRegion, and also
// ErrDeviceUnusable when some device was skipped for the first reason, so that the caller can
// warn that the shim runs in pass-through although an ivshmem device is there.
func (d Discovery) Find() (*Region, error) {
	getenv, sysfs, open := d.Getenv, d.Sysfs, d.Open
	if getenv == nil {
		getenv = os.Getenv
	}
	if sysfs == "" {
		sysfs = "/sys"
	}
	if open == nil {
		open = Open
	}
	if p := getenv("IVSHIM_REGION"); p != "" {
		r, err := open(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: IVSHIM_REGION %s does not exist (no device plugged now): %w", ErrNoRegion, p, err)
		}
		if err != nil {
			return nil, fmt.Errorf("IVSHIM_REGION: %w", err)
		}
		return r, nil
	}
	devs, err := FindPCI(sysfs)
	if err != nil {
		return nil, err
	}
	var (
		found    []*Region
		bad      joinedErrors // fatal unless a region of the job is found
		unusable []string     // skipped: may not map, or not ivshim
		skipped  []string     // everything skipped, for the message
	)
	for _, dev := range devs {
		r, err := open(dev.Resource2)
		switch {
		case err == nil && d.Job != "" && r.JobID() != d.Job:
			r.Close()
			skipped = append(skipped, fmt.Sprintf("%s belongs to job %q", dev.Addr, r.JobID()))
		case err == nil:
			found = append(found, r)
		case errors.Is(err, fs.ErrPermission):
			why := fmt.Sprintf("%s: %v (resource2 is root-only unless a udev rule gives a group access)", dev.Addr, err)
			unusable = append(unusable, why)
			skipped = append(skipped, why)
		case errors.Is(err, ErrNotIvshim):
			why := fmt.Sprintf("%s holds no ivshim region (%v)", dev.Addr, err)
			unusable = append(unusable, why)
			skipped = append(skipped, why)
		case errors.Is(err, ErrInvalid):
			bad = append(bad, fmt.Errorf("ivshmem device %s holds a corrupt ivshim region: %w", dev.Addr, err))
		default:
			bad = append(bad, fmt.Errorf("ivshmem device %s: %w", dev.Addr, err))
		}
	}
	switch len(found) {
	case 0:
		if len(bad) > 0 {
			return nil, bad
		}
		if len(unusable) > 0 {
			return nil, fmt.Errorf("%w: %w: %s", ErrNoRegion, ErrDeviceUnusable, strings.Join(skipped, "; "))
		}
		msg := fmt.Sprintf("no IVSHIM_REGION and no usable ivshmem device (%d found", len(devs))
		if len(skipped) > 0 {
			msg += ": " + strings.Join(skipped, "; ")
		}
		return nil, fmt.Errorf("%w: %s)", ErrNoRegion, msg)
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

// joinedErrors is errors.Join on one line: the message reaches a terminal through the front's
// single-line fatal report.
type joinedErrors []error

func (e joinedErrors) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (e joinedErrors) Unwrap() []error { return e }
