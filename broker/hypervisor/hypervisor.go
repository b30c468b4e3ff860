package hypervisor

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"ivshim.dev/ivshim/ivshmem"
)

// DevicePrefix starts the name of every region file and of every device the broker plugs. A
// plugged device whose name starts with it is the broker's to remove; others are not its
// business.
const DevicePrefix = "ivshim-"

// RegionName is the file and device name of job's region: DevicePrefix + job.
func RegionName(job string) string { return DevicePrefix + job }

// JobOfDevice returns the job whose region name is name. ok is false for names the broker
// never makes (another prefix, or an invalid job id after it).
func JobOfDevice(name string) (job string, ok bool) {
	job, ok = strings.CutPrefix(name, DevicePrefix)
	if !ok || ivshmem.CheckJobID(job) != nil {
		return "", false
	}
	return job, true
}

// UUID is a VM's 128-bit identity (the SMBIOS system UUID of a real guest).
type UUID [16]byte

// String formats u in the canonical 8-4-4-4-12 form.
func (u UUID) String() string {
	x := hex.EncodeToString(u[:])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// ParseUUID parses the canonical 8-4-4-4-12 hex form.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("parse uuid %q: want the 8-4-4-4-12 hex form", s)
	}
	if _, err := hex.Decode(u[:], []byte(strings.ReplaceAll(s, "-", ""))); err != nil {
		return UUID{}, fmt.Errorf("parse uuid %q: %w", s, err)
	}
	return u, nil
}

// VM is a running VM as the hypervisor reports it.
type VM struct {
	Name string
	UUID UUID
	// Job is the VM's validated ivshim job id; "" when the VM has no job tag or a bad one.
	Job string
	// Problem says why the VM's ivshim metadata was rejected (malformed or hostile): a job tag,
	// and then Job is "", or a VF record, and then VFs is empty; "" otherwise. The broker logs
	// it once per VM and reason.
	Problem string
	// Plugged lists the names of the ivshim devices (DevicePrefix...) plugged into the VM now.
	Plugged []string
	// NICs are the VM's network interfaces whose host side the hypervisor knows.
	NICs []NIC
	// VCPUs is the VM's virtual CPU count, at most MaxVCPUs: the most MPI ranks it is expected
	// to run, which the broker sizes the job's region by. 0 when unknown (counted as 1).
	VCPUs int
	// PCI lists the host PCI devices passed through to the VM now (libvirt's <hostdev>).
	PCI []PCIAddr
	// VFs is the broker's record of the SR-IOV VF models the VM had when it last left a host
	// (Passthrough.RecordVFs): the broker of the host it runs on attaches free VFs of these
	// models. Empty when there is none.
	VFs []DeviceModel
	// NotRunning says why the VM takes no device now, "" when it runs: a domain that is paused,
	// in particular the destination's copy during an incoming live migration, whose device
	// set must stay the source's until the migration is done. The broker leaves its devices as
	// they are and plugs once it runs (its resume is a change).
	NotRunning string
}

// JoinProblems joins two reasons for VM.Problem, either of which may be "".
func JoinProblems(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "; " + b
}

// MaxVCPUs bounds VM.VCPUs as read from a hypervisor; a larger claim is taken as unknown.
const MaxVCPUs = 1024

// NIC is one network interface of a VM: the interface on the host that carries its frames (a
// tap, or the root end of a veth) and the MAC the guest uses.
type NIC struct {
	HostIface string
	MAC       net.HardwareAddr
}

// CheckNIC validates n as read from a hypervisor: a host interface name Linux accepts and a
// 6-byte unicast MAC.
func CheckNIC(n NIC) error {
	if n.HostIface == "" || len(n.HostIface) > 15 || strings.ContainsAny(n.HostIface, "/: \t\n") || n.HostIface == "." || n.HostIface == ".." {
		return fmt.Errorf("bad host interface name %q", n.HostIface)
	}
	if len(n.MAC) != 6 || n.MAC[0]&1 != 0 {
		return fmt.Errorf("interface %s: bad MAC %q: want a 6-byte unicast address", n.HostIface, n.MAC)
	}
	return nil
}

// Region is a region as the hypervisor needs it to plug it: the device name, the host file
// backing it and its exact size.
type Region struct {
	Name string
	Path string
	Size uint64
}

// Hypervisor is what the broker needs from a hypervisor. Methods may be called from one
// goroutine at a time, except Changes, and the Migrator methods, which the migration
// coordinator calls while the other methods run.
type Hypervisor interface {
	// Kind names the implementation ("libvirt", "netns") for logs and status.
	Kind() string
	// HostID is the identity of this host, written into every region the broker creates.
	HostID() (ivshmem.HostID, error)
	// Running lists the VMs running now, with their job and plugged ivshim devices.
	Running() ([]VM, error)
	// Changes receives a value whenever the running VMs or their job tags may have changed;
	// bursts are coalesced. It is closed when changes can no longer be reported.
	Changes() <-chan struct{}
	// Attach plugs region r into running VM vm.
	Attach(vm VM, r Region) error
	// Detach unplugs the ivshim device called name from vm; a device that is not plugged is
	// not an error.
	Detach(vm VM, name string) error
	// Close releases the hypervisor connection.
	Close() error
}

// Migrator is implemented by a hypervisor that can move a running VM to another host. The broker's
// migration coordinator drives it (broker/migrate.go); the destination's broker plugs the
// region there on its own, from its own hypervisor's events.
type Migrator interface {
	// CheckDestination validates dest, whose form is the hypervisor's (a libvirt URI, a netns
	// registry directory), before anything is touched.
	CheckDestination(dest string) error
	// Migrate moves vm to dest; when it fails, the VM still runs here.
	Migrate(ctx context.Context, vm VM, dest string) error
	// PluggedAt lists the ivshim devices plugged into the VM called name at dest.
	PluggedAt(ctx context.Context, dest, name string) ([]string, error)
	// Recall moves vm, which Migrate moved to dest, back to this host.
	Recall(ctx context.Context, vm VM, dest string) error
}

// Notify is the coalescing signal behind a Hypervisor's Changes channel. Signal and Close may
// be called from any goroutine (libvirt calls back on its event loop).
type Notify struct {
	mu     sync.Mutex
	ch     chan struct{}
	closed bool
}

// NewNotify returns a signal whose pending notifications coalesce into one.
func NewNotify() *Notify { return &Notify{ch: make(chan struct{}, 1)} }

// C is the channel Changes returns.
func (n *Notify) C() <-chan struct{} { return n.ch }

// Signal records a change without blocking. After Close it does nothing.
func (n *Notify) Signal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	select {
	case n.ch <- struct{}{}:
	default:
	}
}

// Close closes the channel; later calls do nothing.
func (n *Notify) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		n.closed = true
		close(n.ch)
	}
}

// MachineID reads this machine's id from /etc/machine-id (32 hex digits), the host id of a
// hypervisor that has none of its own.
func MachineID() (ivshmem.HostID, error) {
	b, err := os.ReadFile("/etc/machine-id")
	if err != nil {
		return ivshmem.HostID{}, fmt.Errorf("machine id: %w", err)
	}
	h, err := ivshmem.ParseHostID(string(b))
	if err != nil {
		return ivshmem.HostID{}, fmt.Errorf("machine id: %w", err)
	}
	return h, nil
}

// PCIAddr is the address of a host PCI device, domain:bus:slot.function.
type PCIAddr struct {
	Domain        uint16
	Bus, Slot, Fn uint8
}

// ParsePCIAddr parses the sysfs form DDDD:BB:SS.F (hex; slot below 0x20, function below 8).
func ParsePCIAddr(s string) (PCIAddr, error) {
	var a PCIAddr
	bad := fmt.Errorf("PCI address %q: want DDDD:BB:SS.F in hex", s)
	if len(s) != 12 || s[4] != ':' || s[7] != ':' || s[10] != '.' {
		return a, bad
	}
	var parts [4]uint64
	for i, f := range []string{s[0:4], s[5:7], s[8:10], s[11:12]} {
		v, err := strconv.ParseUint(f, 16, 16)
		if err != nil {
			return a, bad
		}
		parts[i] = v
	}
	if parts[2] >= 0x20 || parts[3] >= 8 {
		return a, bad
	}
	return PCIAddr{Domain: uint16(parts[0]), Bus: uint8(parts[1]), Slot: uint8(parts[2]), Fn: uint8(parts[3])}, nil
}

// String formats a in the sysfs form.
func (a PCIAddr) String() string {
	return fmt.Sprintf("%04x:%02x:%02x.%x", a.Domain, a.Bus, a.Slot, a.Fn)
}

// DeviceModel is a PCI device's vendor and device id: what makes two SR-IOV VFs
// interchangeable for a guest's driver.
type DeviceModel struct {
	Vendor, Device uint16
}

// ParseDeviceModel parses the lspci form VVVV:DDDD (hex).
func ParseDeviceModel(s string) (DeviceModel, error) {
	v, d, ok := strings.Cut(s, ":")
	if !ok || len(v) != 4 || len(d) != 4 {
		return DeviceModel{}, fmt.Errorf("device model %q: want VVVV:DDDD in hex", s)
	}
	vv, err1 := strconv.ParseUint(v, 16, 16)
	dd, err2 := strconv.ParseUint(d, 16, 16)
	if err1 != nil || err2 != nil {
		return DeviceModel{}, fmt.Errorf("device model %q: want VVVV:DDDD in hex", s)
	}
	return DeviceModel{Vendor: uint16(vv), Device: uint16(dd)}, nil
}

// String formats m in the lspci form.
func (m DeviceModel) String() string { return fmt.Sprintf("%04x:%04x", m.Vendor, m.Device) }

// MaxVFs bounds the VF record of one VM, as read from a hypervisor.
const MaxVFs = 16

// Passthrough is implemented by a hypervisor that passes host PCI devices through to VMs: the
// SR-IOV VFs of the MPI library's network path, which a live migration must unplug on the source
// and replace on the destination (broker/vfs.go). Like Migrator's, its methods may be called
// while the others run.
type Passthrough interface {
	// AttachPCI passes the host device at a through to vm, live.
	AttachPCI(vm VM, a PCIAddr) error
	// DetachPCI unplugs the host device at a from vm; it returns once the device has left the
	// VM (a guest may take a moment to let it go), or with an error.
	DetachPCI(ctx context.Context, vm VM, a PCIAddr) error
	// RecordVFs stores models as vm's VF record (VM.VFs), which travels with the VM to the host
	// it migrates to.
	RecordVFs(vm VM, models []DeviceModel) error
	// PCIAt lists the host devices passed through to the VM called name at dest, a Migrator
	// destination; DetachPCIAt unplugs one of them, as DetachPCI does here, and RecordVFsAt
	// replaces that VM's VF record. A migration whose destination could not give the VM all its
	// VFs takes back what it gave before it brings the VM home (a hypervisor cannot move a VM
	// with a passed-through device).
	PCIAt(ctx context.Context, dest, name string) ([]PCIAddr, error)
	DetachPCIAt(ctx context.Context, dest, name string, a PCIAddr) error
	RecordVFsAt(dest, name string, models []DeviceModel) error
}
