package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/ivshmem"
)

// maxRecord bounds the bytes read from one VM record; a real one is about 150.
const maxRecord = 4096

// validName is the form of a VM name: it is a file name in the registry.
var validName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}$`)

// VM is an emulated VM as the harness registers it.
type VM struct {
	Name  string
	UUID  hypervisor.UUID
	Job   string // "" for a VM that belongs to no job
	Netns string
	// NIC is the VM's network interface (the root end of its veth and the MAC of the end
	// inside); a zero NIC means none is known.
	NIC hypervisor.NIC
	// VCPUs is how many ranks the emulated VM runs (0: unknown), 0..hypervisor.MaxVCPUs.
	VCPUs int
	// VFs is the broker's VF record (hypervisor.VM.VFs): it moves with the VM, as libvirt's
	// metadata does.
	VFs []hypervisor.DeviceModel
	// Paused stands for a VM that runs no code now (hypervisor.VM.NotRunning): a paused one,
	// or the destination's copy during a live migration.
	Paused bool
	// vfProblem says why the record's VF record was rejected (read leaves VFs empty then).
	vfProblem string
}

// record is the JSON form of a VM in DIR/vms/NAME.json.
type record struct {
	Name      string   `json:"name"`
	UUID      string   `json:"uuid"`
	Job       string   `json:"job"`
	Netns     string   `json:"netns"`
	HostIface string   `json:"host_iface,omitempty"`
	MAC       string   `json:"mac,omitempty"`
	VCPUs     int      `json:"vcpus,omitempty"`
	VFs       []string `json:"vfs,omitempty"`
	Paused    bool     `json:"paused,omitempty"`
}

// Registry is the state directory of one emulated host (see the package documentation).
type Registry struct {
	Dir string
}

func (g Registry) vmsDir() string             { return filepath.Join(g.Dir, "vms") }
func (g Registry) recordPath(n string) string { return filepath.Join(g.vmsDir(), n+".json") }
func (g Registry) deviceDir(n string) string  { return filepath.Join(g.Dir, "devices", n) }
func (g Registry) pciDir(n string) string     { return filepath.Join(g.deviceDir(n), "pci") }

// DevicePath is where VM name's ivshmem device appears: the value of IVSHIM_REGION in the VM.
func (g Registry) DevicePath(name string) string {
	return filepath.Join(g.deviceDir(name), "ivshmem")
}

// Init creates the registry's directories.
func (g Registry) Init() error {
	for _, d := range []string{g.vmsDir(), filepath.Join(g.Dir, "devices")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("netns registry %s: %w", g.Dir, err)
		}
	}
	return nil
}

func checkName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("bad VM name %q: want 1-63 bytes of [A-Za-z0-9._-], not starting with '.' or '-'", name)
	}
	return nil
}

// Register boots vm: it writes its record atomically, creating the registry if needed.
func (g Registry) Register(vm VM) error {
	if err := checkName(vm.Name); err != nil {
		return fmt.Errorf("register VM: %w", err)
	}
	if vm.Job != "" {
		if err := ivshmem.CheckJobID(vm.Job); err != nil {
			return fmt.Errorf("register VM %s: %w", vm.Name, err)
		}
	}
	if err := g.Init(); err != nil {
		return err
	}
	if vm.VCPUs < 0 || vm.VCPUs > hypervisor.MaxVCPUs {
		return fmt.Errorf("register VM %s: %d vCPUs: want 0..%d", vm.Name, vm.VCPUs, hypervisor.MaxVCPUs)
	}
	rec := record{Name: vm.Name, UUID: vm.UUID.String(), Job: vm.Job, Netns: vm.Netns, VCPUs: vm.VCPUs, Paused: vm.Paused}
	if len(vm.VFs) > hypervisor.MaxVFs {
		return fmt.Errorf("register VM %s: %d VFs: want at most %d", vm.Name, len(vm.VFs), hypervisor.MaxVFs)
	}
	for _, m := range vm.VFs {
		rec.VFs = append(rec.VFs, m.String())
	}
	if vm.NIC.HostIface != "" {
		if err := hypervisor.CheckNIC(vm.NIC); err != nil {
			return fmt.Errorf("register VM %s: %w", vm.Name, err)
		}
		rec.HostIface, rec.MAC = vm.NIC.HostIface, vm.NIC.MAC.String()
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("register VM %s: %w", vm.Name, err)
	}
	f, err := os.CreateTemp(g.vmsDir(), "."+vm.Name+".tmp-*")
	if err != nil {
		return fmt.Errorf("register VM %s: %w", vm.Name, err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), g.recordPath(vm.Name))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("register VM %s: %w", vm.Name, err)
	}
	return nil
}

// Unregister powers VM name off: its record and its devices go. An unknown VM is not an error.
func (g Registry) Unregister(name string) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("unregister VM: %w", err)
	}
	if err := os.Remove(g.recordPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unregister VM %s: %w", name, err)
	}
	// A broker that read the record before it went may be plugging a device right now: its
	// write lands in the directory being removed (ENOTEMPTY). It writes nothing more once it
	// sees the VM gone, so the removal is tried again for a while.
	var err error
	for wait := time.Now().Add(unregisterRace); ; {
		err = os.RemoveAll(g.deviceDir(name))
		if err == nil || !errors.Is(err, syscall.ENOTEMPTY) || time.Now().After(wait) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("unregister VM %s: devices: %w", name, err)
	}
	return nil
}

// unregisterRace bounds how long Unregister retries removing a device directory a broker is
// still writing into.
const unregisterRace = 2 * time.Second

// Device returns the region file plugged into VM name, "" if none.
func (g Registry) Device(name string) (string, error) {
	target, err := os.Readlink(g.DevicePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("device of VM %s: %w", name, err)
	}
	return target, nil
}

// PCI lists the host PCI devices passed through to VM name: the files of its pci device
// directory, each named by an address.
func (g Registry) PCI(name string) ([]hypervisor.PCIAddr, error) {
	entries, err := os.ReadDir(g.pciDir(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("PCI devices of VM %s: %w", name, err)
	}
	var out []hypervisor.PCIAddr
	for _, e := range entries {
		if a, err := hypervisor.ParsePCIAddr(e.Name()); err == nil {
			out = append(out, a)
		}
	}
	return out, nil
}

// detachPCI removes the host device at a from VM name; one it does not have is no error.
func (g Registry) detachPCI(name string, a hypervisor.PCIAddr) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(g.pciDir(name), a.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach PCI device %s from VM %s: %w", a, name, err)
	}
	return nil
}

// recordVFs rewrites the record of VM name (whose UUID must be *uuid unless nil) with models as
// its VF record.
func (g Registry) recordVFs(name string, uuid *hypervisor.UUID, models []hypervisor.DeviceModel) error {
	if err := checkName(name); err != nil {
		return err
	}
	rec, err := g.read(name)
	if err != nil {
		return fmt.Errorf("record the VFs of VM %s: %w", name, err)
	}
	if uuid != nil && rec.UUID != *uuid {
		return fmt.Errorf("record the VFs of VM %s: its record names UUID %s, not %s", name, rec.UUID, *uuid)
	}
	rec.VFs = models
	return g.Register(rec)
}

// WaitDevice waits until the broker has plugged a region into VM name and returns the region
// file's path. Callers start ranks in the VM only after it returns.
func (g Registry) WaitDevice(ctx context.Context, name string) (string, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		target, err := g.Device(name)
		if err != nil || target != "" {
			return target, err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for the ivshmem device of VM %s: %w", name, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// read loads and validates the record of VM name.
func (g Registry) read(name string) (VM, error) {
	f, err := os.Open(g.recordPath(name))
	if err != nil {
		return VM{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRecord+1))
	if err != nil {
		return VM{}, fmt.Errorf("read: %w", err)
	}
	if len(b) > maxRecord {
		return VM{}, fmt.Errorf("record longer than %d bytes", maxRecord)
	}
	var r record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return VM{}, fmt.Errorf("parse: %w", err)
	}
	if dec.More() {
		return VM{}, errors.New("parse: data after the record")
	}
	if r.Name != name {
		return VM{}, fmt.Errorf("record names VM %q, file names %q", r.Name, name)
	}
	u, err := hypervisor.ParseUUID(r.UUID)
	if err != nil {
		return VM{}, err
	}
	if r.VCPUs < 0 || r.VCPUs > hypervisor.MaxVCPUs {
		return VM{}, fmt.Errorf("record of VM %s: %d vCPUs: want 0..%d", name, r.VCPUs, hypervisor.MaxVCPUs)
	}
	vm := VM{Name: r.Name, UUID: u, Job: r.Job, Netns: r.Netns, VCPUs: r.VCPUs, Paused: r.Paused}
	vm.VFs, err = parseVFs(r.VFs)
	if err != nil {
		vm.VFs, vm.vfProblem = nil, "VF record: "+err.Error()
	}
	if r.HostIface != "" || r.MAC != "" {
		mac, err := net.ParseMAC(r.MAC)
		if err != nil {
			return VM{}, fmt.Errorf("record of VM %s: %w", name, err)
		}
		vm.NIC = hypervisor.NIC{HostIface: r.HostIface, MAC: mac}
		if err := hypervisor.CheckNIC(vm.NIC); err != nil {
			return VM{}, fmt.Errorf("record of VM %s: %w", name, err)
		}
	}
	return vm, nil
}

// parseVFs reads a record's VF record (models VVVV:DDDD, at most hypervisor.MaxVFs).
func parseVFs(in []string) ([]hypervisor.DeviceModel, error) {
	if len(in) > hypervisor.MaxVFs {
		return nil, fmt.Errorf("%d VFs, more than %d", len(in), hypervisor.MaxVFs)
	}
	var out []hypervisor.DeviceModel
	for _, s := range in {
		m, err := hypervisor.ParseDeviceModel(s)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// names lists the names of the registered VMs: files NAME.json with a valid NAME.
func (g Registry) names() ([]string, error) {
	entries, err := os.ReadDir(g.vmsDir())
	if err != nil {
		return nil, fmt.Errorf("netns registry: %w", err)
	}
	var out []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && e.Type().IsRegular() && checkName(name) == nil {
			out = append(out, name)
		}
	}
	return out, nil
}
