package netns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/internal/logonce"
	"ivshim.dev/ivshim/ivshmem"
)

// Hypervisor manages the emulated VMs of one registry. See the package documentation.
type Hypervisor struct {
	reg     Registry
	log     *zap.Logger
	changes *hypervisor.Notify
	watch   *os.File            // inotify on DIR/vms
	bad     logonce.Set[string] // complaints logged, by record name; owned by Running's caller
}

var _ hypervisor.Hypervisor = (*Hypervisor)(nil)

// Open watches the registry in dir, creating it if needed.
func Open(dir string, log *zap.Logger) (*Hypervisor, error) {
	reg := Registry{Dir: dir}
	if err := reg.Init(); err != nil {
		return nil, err
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watch netns registry %s: %w", dir, err)
	}
	const mask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
		unix.IN_CLOSE_WRITE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
	if _, err := unix.InotifyAddWatch(fd, reg.vmsDir(), mask); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch netns registry %s: %w", dir, err)
	}
	// A non-blocking fd goes to Go's poller, so Close wakes the reader.
	h := &Hypervisor{
		reg:     reg,
		log:     log,
		changes: hypervisor.NewNotify(),
		watch:   os.NewFile(uintptr(fd), "inotify"),
	}
	go h.readEvents()
	return h, nil
}

// readEvents turns inotify events into change signals. It ends, closing Changes, when the
// watch is closed or the watched directory is removed or moved.
func (h *Hypervisor) readEvents() {
	defer h.changes.Close()
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := h.watch.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				h.log.Error("netns registry watch failed", zap.String("dir", h.reg.vmsDir()), zap.Error(err))
			}
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := binary.NativeEndian.Uint32(buf[off+12:])
			if mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
				h.log.Error("netns registry directory went away", zap.String("dir", h.reg.vmsDir()))
				return
			}
			off += unix.SizeofInotifyEvent + int(nameLen)
		}
		h.changes.Signal()
	}
}

// Kind implements hypervisor.Hypervisor.
func (h *Hypervisor) Kind() string { return "netns" }

// HostID is the machine id: emulated hosts share one machine, so a harness running several
// gives each broker its own host id in its configuration.
func (h *Hypervisor) HostID() (ivshmem.HostID, error) { return hypervisor.MachineID() }

// Changes implements hypervisor.Hypervisor.
func (h *Hypervisor) Changes() <-chan struct{} { return h.changes.C() }

// Running lists the registered VMs. It also removes the device directories of VMs that are not
// registered: a powered-off VM has no devices.
func (h *Hypervisor) Running() ([]hypervisor.VM, error) {
	names, err := h.reg.names()
	if err != nil {
		return nil, err
	}
	var vms []hypervisor.VM
	for _, name := range names {
		vm, err := h.reg.read(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // unregistered since the directory was read
		}
		h.complain(name, err)
		if err != nil {
			continue
		}
		out := hypervisor.VM{Name: vm.Name, UUID: vm.UUID, Job: vm.Job, VCPUs: vm.VCPUs, VFs: vm.VFs, Problem: vm.vfProblem}
		if vm.Paused {
			out.NotRunning = "paused"
		}
		out.PCI, err = h.reg.PCI(name)
		// The VM runs on, listed without devices; not knowing them, the broker must not give
		// it VFs.
		h.complainAbout(name+"/pci", "cannot list a VM's PCI devices", h.reg.pciDir(name), err)
		if err != nil {
			out.VFs, out.Problem = nil, hypervisor.JoinProblems(out.Problem, "PCI devices unknown: "+err.Error())
		}
		if vm.NIC.HostIface != "" {
			out.NICs = []hypervisor.NIC{vm.NIC}
		}
		if err := ivshmem.CheckJobID(vm.Job); vm.Job != "" && err != nil {
			out.Job, out.Problem = "", hypervisor.JoinProblems(err.Error(), out.Problem)
		}
		target, err := h.reg.Device(name)
		if err != nil {
			return nil, err
		}
		if target != "" {
			out.Plugged = []string{filepath.Base(target)}
		}
		vms = append(vms, out)
	}
	if err := h.removeStaleDevices(); err != nil {
		// Leftover devices of stopped VMs are harmless and must not stop the broker acting.
		h.log.Warn("netns registry cleanup", zap.Error(err))
	}
	return vms, nil
}

// complain logs a record that does not parse or validate, once per record and reason.
func (h *Hypervisor) complain(name string, err error) {
	h.complainAbout(name, "ignoring bad netns VM record", h.reg.recordPath(name), err)
}

// complainAbout logs msg about file once per key and reason; a nil err forgets the key.
func (h *Hypervisor) complainAbout(key, msg, file string, err error) {
	if err == nil {
		h.bad.Forget(key)
		return
	}
	if !h.bad.Note(key, err.Error()) {
		return
	}
	h.log.Warn(msg, zap.String("vm", strings.TrimSuffix(key, "/pci")), zap.String("file", file), zap.Error(err))
}

// removeStaleDevices removes the device directories of VMs that are not registered. The
// directories are listed before the records, so that a VM registered, and given a device, while
// this runs keeps it: its record is then older than the listing of records.
func (h *Hypervisor) removeStaleDevices() error {
	entries, err := os.ReadDir(filepath.Join(h.reg.Dir, "devices"))
	if err != nil {
		return fmt.Errorf("netns devices: %w", err)
	}
	names, err := h.reg.names()
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if !slices.Contains(names, e.Name()) {
			errs = append(errs, os.RemoveAll(filepath.Join(h.reg.Dir, "devices", e.Name())))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove devices of stopped VMs: %w", err)
	}
	return nil
}

// Attach plugs r into vm: DevicePath(vm) becomes a symlink to r.Path, replaced atomically.
func (h *Hypervisor) Attach(vm hypervisor.VM, r hypervisor.Region) error {
	cur, err := h.reg.Device(vm.Name)
	if err != nil {
		return err
	}
	switch cur {
	case r.Path:
		return nil
	case "":
	default:
		return fmt.Errorf("attach %s to VM %s: it has %s plugged", r.Name, vm.Name, cur)
	}
	if err := os.MkdirAll(h.reg.deviceDir(vm.Name), 0o755); err != nil {
		return fmt.Errorf("attach %s to VM %s: %w", r.Name, vm.Name, err)
	}
	if err := ReplaceSymlink(r.Path, h.reg.DevicePath(vm.Name)); err != nil {
		return fmt.Errorf("attach %s to VM %s: %w", r.Name, vm.Name, err)
	}
	return nil
}

// ReplaceSymlink makes link a symlink to target in one step (a new link renamed over the old),
// so a process resolving link sees the old target or the new one, never none: the emulated
// VM's device, repointed when a region is plugged or the VM moves.
func ReplaceSymlink(target, link string) error {
	tmp := link + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// Detach unplugs the device called name from vm.
func (h *Hypervisor) Detach(vm hypervisor.VM, name string) error {
	cur, err := h.reg.Device(vm.Name)
	if err != nil || cur == "" || filepath.Base(cur) != name {
		return err
	}
	if err := os.Remove(h.reg.DevicePath(vm.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach %s from VM %s: %w", name, vm.Name, err)
	}
	return nil
}

// Close stops watching the registry.
func (h *Hypervisor) Close() error {
	if err := h.watch.Close(); err != nil {
		return fmt.Errorf("close netns registry watch: %w", err)
	}
	return nil
}

var _ hypervisor.Migrator = (*Hypervisor)(nil)

// CheckDestination accepts the registry directory of another emulated host: an absolute, clean
// path with a vms directory, other than this host's.
func (h *Hypervisor) CheckDestination(dest string) error {
	if !filepath.IsAbs(dest) || filepath.Clean(dest) != dest {
		return fmt.Errorf("destination %q: want the absolute, clean path of another emulated host's netns registry", dest)
	}
	if same, err := sameDir(dest, h.reg.Dir); err != nil {
		return fmt.Errorf("destination %s: %w", dest, err)
	} else if same {
		return fmt.Errorf("destination %s is this host's own registry", dest)
	}
	info, err := os.Stat(Registry{Dir: dest}.vmsDir())
	if err != nil || !info.IsDir() {
		return fmt.Errorf("destination %s: not a netns registry (no vms directory)", dest)
	}
	return nil
}

func sameDir(a, b string) (bool, error) {
	ia, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	ib, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(ia, ib), nil
}

// Migrate moves vm's record to the registry at dest, as a live migration hands a running VM
// to another hypervisor: the VM appears at dest (whose broker plugs its job's region there)
// before it goes from here. Its network namespace, and with it every process of the VM, keeps
// running throughout. A VM of that name already at dest is refused.
func (h *Hypervisor) Migrate(ctx context.Context, vm hypervisor.VM, dest string) error {
	if err := h.CheckDestination(dest); err != nil {
		return err
	}
	to := Registry{Dir: dest}
	if _, err := os.Lstat(to.recordPath(vm.Name)); err == nil {
		return fmt.Errorf("migrate VM %s: a VM of that name runs at %s", vm.Name, dest)
	}
	return h.move(ctx, "migrate", vm, h.reg, to)
}

// Recall moves vm back from the registry at dest to this host's.
func (h *Hypervisor) Recall(ctx context.Context, vm hypervisor.VM, dest string) error {
	if err := h.CheckDestination(dest); err != nil {
		return err
	}
	return h.move(ctx, "recall", vm, Registry{Dir: dest}, h.reg)
}

var _ hypervisor.Passthrough = (*Hypervisor)(nil)

// AttachPCI passes the host device at a through to vm: a file named by the address in the VM's
// pci device directory. A device passed through to another VM of this host is refused, as the
// kernel refuses a second open of a VFIO device.
func (h *Hypervisor) AttachPCI(vm hypervisor.VM, a hypervisor.PCIAddr) error {
	names, err := h.reg.names()
	if err != nil {
		return err
	}
	for _, n := range names {
		if n == vm.Name {
			continue
		}
		if in, err := h.reg.PCI(n); err == nil && slices.Contains(in, a) {
			return fmt.Errorf("attach PCI device %s to VM %s: VM %s has it", a, vm.Name, n)
		}
	}
	dir := h.reg.pciDir(vm.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("attach PCI device %s to VM %s: %w", a, vm.Name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, a.String()), nil, 0o644); err != nil {
		return fmt.Errorf("attach PCI device %s to VM %s: %w", a, vm.Name, err)
	}
	h.changes.Signal()
	return nil
}

// DetachPCI unplugs the host device at a from vm; one that is not passed through is no error.
func (h *Hypervisor) DetachPCI(_ context.Context, vm hypervisor.VM, a hypervisor.PCIAddr) error {
	if err := h.reg.detachPCI(vm.Name, a); err != nil {
		return err
	}
	h.changes.Signal()
	return nil
}

// DetachPCIAt unplugs the host device at a from VM name in the registry at dest.
func (h *Hypervisor) DetachPCIAt(_ context.Context, dest, name string, a hypervisor.PCIAddr) error {
	return Registry{Dir: dest}.detachPCI(name, a)
}

// RecordVFs rewrites vm's record with models as its VF record.
func (h *Hypervisor) RecordVFs(vm hypervisor.VM, models []hypervisor.DeviceModel) error {
	return h.reg.recordVFs(vm.Name, &vm.UUID, models)
}

// RecordVFsAt rewrites the record of VM name in the registry at dest with models as its VF
// record.
func (h *Hypervisor) RecordVFsAt(dest, name string, models []hypervisor.DeviceModel) error {
	return Registry{Dir: dest}.recordVFs(name, nil, models)
}

// PCIAt lists the host devices passed through to VM name in the registry at dest.
func (h *Hypervisor) PCIAt(_ context.Context, dest, name string) ([]hypervisor.PCIAddr, error) {
	return Registry{Dir: dest}.PCI(name)
}

// move hands vm's record from one registry to the other (verb names the step in errors): it
// is registered at to before it goes from from, and is left in from alone when that fails.
func (h *Hypervisor) move(ctx context.Context, verb string, vm hypervisor.VM, from, to Registry) error {
	rec, err := from.read(vm.Name)
	if err != nil {
		return fmt.Errorf("%s VM %s from %s: %w", verb, vm.Name, from.Dir, err)
	}
	if rec.UUID != vm.UUID {
		return fmt.Errorf("%s VM %s: its record in %s names UUID %s, not %s", verb, vm.Name, from.Dir, rec.UUID, vm.UUID)
	}
	// A hypervisor cannot move a VM's ivshmem device or a passed-through host device (QEMU
	// refuses to migrate with either): the coordinator unplugs them first.
	if dev, err := from.Device(vm.Name); err != nil || dev != "" {
		return errors.Join(fmt.Errorf("%s VM %s: region %s still plugged", verb, vm.Name, filepath.Base(dev)), err)
	}
	if pci, err := from.PCI(vm.Name); err != nil || len(pci) > 0 {
		return errors.Join(fmt.Errorf("%s VM %s: host PCI devices %v still passed through", verb, vm.Name, pci), err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s VM %s: %w", verb, vm.Name, err)
	}
	if err := to.Register(rec); err != nil {
		return fmt.Errorf("%s VM %s: %w", verb, vm.Name, err)
	}
	if err := from.Unregister(vm.Name); err != nil {
		// It runs on both hosts now: undo the arrival, so it runs where it was.
		return errors.Join(fmt.Errorf("%s VM %s: %w", verb, vm.Name, err), to.Unregister(vm.Name))
	}
	h.changes.Signal()
	return nil
}

// PluggedAt lists the device plugged into VM name in the registry at dest.
func (h *Hypervisor) PluggedAt(_ context.Context, dest, name string) ([]string, error) {
	target, err := Registry{Dir: dest}.Device(name)
	if err != nil || target == "" {
		return nil, err
	}
	return []string{filepath.Base(target)}, nil
}
