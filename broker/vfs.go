package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/sriov"
)

// SR-IOV VFs. In production the MPI library's own path between hosts is a VF of the host's
// InfiniBand adapter passed through to the VM. A hypervisor cannot migrate a VM with a
// passed-through device, so the migration coordinator unplugs the VM's VFs (after its ranks
// left the region: their library traffic keeps going until the unplug) and the destination
// gives the VM free VFs of the same models. What travels with the VM is its VF record
// (hypervisor.VM.VFs, libvirt metadata in the broker's own namespace): the models of the VFs it
// had when it left. Every broker's reconcile pass gives each running VM, migrating ones aside,
// a free VF of this host for every recorded model its passed-through devices do not cover yet.
// The VFs a migration unplugs are held for its VM until it ends, and a rollback passes them
// through again. Missing VFs at the destination do not fail a migration: the connections on the
// VM's VFs ended with the unplug, wherever the VM runs on. Which VFs exist,
// of which model, and which one a passed-through device is, comes from the host's sysfs
// (broker/sriov); a VF no running VM has is free if no host driver holds it (bound to vfio-pci
// or to nothing) or its PF is one the configuration lists (vf_pfs).
//
// A VF-bound verbs connection does not survive its VF being unplugged: an MPI job that must
// live through migrations runs its library over a path that does (README, "Migrate a VM").

// passthrough returns the hypervisor's Passthrough side, nil when it has none.
func (b *Broker) passthrough() hypervisor.Passthrough {
	pt, _ := b.hv.(hypervisor.Passthrough)
	return pt
}

// inventory reads the host's VFs, logging each unreadable device once.
func (b *Broker) inventory() (sriov.Inventory, error) {
	inv, err := sriov.Scan(b.cfg.Sysfs)
	if err != nil {
		return inv, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range inv.Problems {
		if b.vfProblems.Note(p, "") {
			b.log.Warn("SR-IOV inventory: device left out", zap.String("problem", p))
		}
	}
	b.vfProblems.EndPass()
	return inv, nil
}

// vfsOf returns the VFs among vm's passed-through devices.
func vfsOf(inv sriov.Inventory, vm hypervisor.VM) []sriov.VF {
	var out []sriov.VF
	for _, a := range vm.PCI {
		if vf, ok := inv.Lookup(a); ok {
			out = append(out, vf)
		}
	}
	return out
}

// missingVFs returns the models of vm's VF record that its passed-through VFs do not cover.
func missingVFs(inv sriov.Inventory, vm hypervisor.VM) []hypervisor.DeviceModel {
	have := map[hypervisor.DeviceModel]int{}
	for _, vf := range vfsOf(inv, vm) {
		have[vf.Model]++
	}
	var out []hypervisor.DeviceModel
	for _, m := range vm.VFs {
		if have[m] > 0 {
			have[m]--
			continue
		}
		out = append(out, m)
	}
	return out
}

// giveVFs passes a free VF through to every running VM, migrating ones aside, for each model of
// its VF record it lacks. A model no free VF of this host has is reported, once per VM and model
// until it changes, and counted in the VFsMissing gauge; the VM keeps running without it.
func (b *Broker) giveVFs(vms []hypervisor.VM) error {
	pt := b.passthrough()
	if pt == nil || !slices.ContainsFunc(vms, func(vm hypervisor.VM) bool { return len(vm.VFs) > 0 }) {
		b.metrics.VFsMissing.Set(0)
		b.vfShort.EndPass() // none noted: all forgotten
		return nil
	}
	inv, err := b.inventory()
	if err != nil {
		return err
	}
	inUse := map[hypervisor.PCIAddr]bool{}
	for _, vm := range vms {
		for _, a := range vm.PCI {
			inUse[a] = true
		}
	}
	b.mu.Lock()
	for a := range b.vfHeld {
		inUse[a] = true // a migration's, for its VM
	}
	b.mu.Unlock()
	var errs []error
	missing := 0
	for _, vm := range vms {
		if len(vm.VFs) == 0 || b.isMigrating(vm.UUID) || vm.NotRunning != "" {
			continue // a VM that does not run gets its VFs once it runs (hypervisor.VM.NotRunning)
		}
		for _, m := range missingVFs(inv, vm) {
			log := b.log.With(zap.String("vm", vm.Name), zap.Stringer("model", m))
			vf, ok := inv.Pick(m, inUse, b.cfg.VFPFs)
			if !ok {
				missing++
				key := vm.UUID.String() + " " + m.String()
				if b.vfShort.Note(key, "") {
					log.Error("no free VF of the VM's recorded model on this host: the VM runs without it")
				}
				continue
			}
			inUse[vf.Addr] = true
			if err := pt.AttachPCI(vm, vf.Addr); err != nil {
				b.metrics.VFAttachErrors.Inc()
				log.Error("pass a VF through", zap.Stringer("vf", vf.Addr), zap.Error(err))
				errs = append(errs, fmt.Errorf("pass VF %s through to VM %s: %w", vf.Addr, vm.Name, err))
				continue
			}
			b.metrics.VFAttaches.Inc()
			log.Info("VF passed through", zap.Stringer("vf", vf.Addr), zap.Stringer("pf", vf.PF))
		}
	}
	b.vfShort.EndPass()
	b.metrics.VFsMissing.Set(missing)
	return errors.Join(errs...)
}

// detachVFs is the VF part of a migration's detach phase: it records the models of the VM's
// VFs (before touching them, so a failure halfway leaves the record), then unplugs each and
// holds it for the VM until the migration ends: no other VM of this host gets it meanwhile, and
// a rollback gives it back. Models of the record the VM lacks here stay in it, for the next host
// to try again. The VM's devices are read again now: the migration has begun, so no reconcile
// pass gives it a VF after this.
func (m *migration) detachVFs(ctx context.Context) error {
	pt := m.b.passthrough()
	if pt == nil {
		return nil
	}
	vm, err := m.b.runningVM(m.vm.Name)
	if err != nil {
		return err
	}
	inv, err := m.b.inventory()
	if err != nil {
		return err
	}
	vfs := vfsOf(inv, vm)
	m.recordBefore, m.record = vm.VFs, vm.VFs
	if len(vfs) == 0 {
		return nil
	}
	m.record = missingVFs(inv, vm)
	for _, vf := range vfs {
		m.record = append(m.record, vf.Model)
	}
	if !sameModels(m.record, vm.VFs) {
		if err := pt.RecordVFs(vm, m.record); err != nil {
			return fmt.Errorf("record the VM's VFs: %w", err)
		}
	}
	for _, vf := range vfs {
		m.vfs = append(m.vfs, vf) // before the unplug, which may half happen: the rollback gives it back
		m.b.holdVF(vf.Addr, true)
		m.res.VFs = append(m.res.VFs, vf.Addr.String()+" ("+vf.Model.String()+")")
		if err := pt.DetachPCI(ctx, vm, vf.Addr); err != nil {
			return fmt.Errorf("unplug VF %s: %w", vf.Addr, err)
		}
	}
	m.log.Info("VFs unplugged", zap.Strings("vfs", m.res.VFs))
	return nil
}

// holdVF keeps the VF at a from giveVFs (or lets it go).
func (b *Broker) holdVF(a hypervisor.PCIAddr, hold bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.vfHeld == nil {
		b.vfHeld = map[hypervisor.PCIAddr]bool{}
	}
	if hold {
		b.vfHeld[a] = true
	} else {
		delete(b.vfHeld, a)
	}
}

// vfsRelease lets the VFs the migration held go: they are free for any VM of this host.
func (m *migration) vfsRelease() {
	for _, vf := range m.vfs {
		m.b.holdVF(vf.Addr, false)
	}
}

// sameModels reports whether a and b hold the same models, in any order.
func sameModels(a, b []hypervisor.DeviceModel) bool {
	key := func(m hypervisor.DeviceModel) uint32 { return uint32(m.Vendor)<<16 | uint32(m.Device) }
	order := func(x, y hypervisor.DeviceModel) int { return cmp.Compare(key(x), key(y)) }
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, order)
	slices.SortFunc(b, order)
	return slices.Equal(a, b)
}

// vfsAt says what VFs the VM at the destination still lacks ("" when none): it must have as many
// devices passed through as it had VFs here. The destination's broker gives only VFs of the
// recorded models; which model each one is, only the destination's sysfs knows.
func (m *migration) vfsAt(ctx context.Context) (string, error) {
	pt := m.b.passthrough()
	if pt == nil || len(m.vfs) == 0 {
		return "", nil
	}
	have, err := pt.PCIAt(ctx, m.dest, m.vm.Name)
	if err != nil {
		return "cannot list the VM's devices at the destination", err
	}
	if len(have) >= len(m.vfs) {
		return "", nil
	}
	return fmt.Sprintf("%d of the VM's %d VFs passed through at the destination; has it a free VF of each model (%s)?",
		len(have), len(m.vfs), modelList(m.record)), nil
}

func modelList(ms []hypervisor.DeviceModel) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.String())
	}
	return strings.Join(s, ",")
}

// vfsTakeBack is the first step of bringing home a VM that went to the destination with a VF
// record: the record there is cleared, so that the destination's broker gives it nothing more,
// and what it gave is unplugged (a hypervisor cannot move a VM with a passed-through device).
func (m *migration) vfsTakeBack(ctx context.Context) error {
	pt := m.b.passthrough()
	if pt == nil || len(m.record) == 0 {
		return nil
	}
	if err := pt.RecordVFsAt(m.dest, m.vm.Name, nil); err != nil {
		return fmt.Errorf("clear the VM's VF record at the destination: %w", err)
	}
	m.recordAway = true
	for range 3 { // a pass of the destination's broker may have been giving one meanwhile
		have, err := pt.PCIAt(ctx, m.dest, m.vm.Name)
		if err != nil || len(have) == 0 {
			return err
		}
		for _, a := range have {
			if err := pt.DetachPCIAt(ctx, m.dest, m.vm.Name, a); err != nil {
				return fmt.Errorf("unplug VF %s at the destination: %w", a, err)
			}
		}
	}
	have, err := pt.PCIAt(ctx, m.dest, m.vm.Name)
	if err != nil || len(have) == 0 {
		return err
	}
	return fmt.Errorf("the destination keeps passing devices through to the VM (%v)", have)
}

// vfsLeaveAt puts the VF record back at the destination for a VM that stays there: its broker
// goes on trying to give it VFs.
func (m *migration) vfsLeaveAt() error {
	if !m.recordAway {
		return nil
	}
	if err := m.b.passthrough().RecordVFsAt(m.dest, m.vm.Name, m.record); err != nil {
		return fmt.Errorf("VF record not restored at the destination: %w", err)
	}
	return nil
}

// vfsGiveBack, for a VM that is home again, restores the VF record it had before the migration
// and passes the VFs the migration unplugged through to it again. It says what it did.
func (m *migration) vfsGiveBack() ([]string, error) {
	pt := m.b.passthrough()
	if pt == nil {
		return nil, nil
	}
	var errs []error
	var done []string
	if m.recordAway || !sameModels(m.record, m.recordBefore) {
		if err := pt.RecordVFs(m.vm, m.recordBefore); err != nil {
			errs = append(errs, fmt.Errorf("VF record not restored: %w", err))
		} else {
			done = append(done, "VF record restored")
		}
	}
	var have []hypervisor.PCIAddr
	if vm, err := m.b.runningVM(m.vm.Name); err == nil {
		have = vm.PCI
	}
	var back []string
	m.b.own.Lock()
	defer m.b.own.Unlock()
	for _, vf := range m.vfs {
		if slices.Contains(have, vf.Addr) {
			continue
		}
		if err := pt.AttachPCI(m.vm, vf.Addr); err != nil {
			errs = append(errs, fmt.Errorf("VF %s not passed through again: %w", vf.Addr, err))
			continue
		}
		back = append(back, vf.Addr.String())
	}
	if len(back) > 0 {
		done = append(done, "VFs "+strings.Join(back, ",")+" passed through again")
	}
	return done, errors.Join(errs...)
}
