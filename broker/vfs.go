package broker

import (
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
// a free VF of this host for every recorded model its passed-through devices do not cover yet;
// that is also how a VM whose migration failed gets its VFs back at the source. Which VFs exist,
// of which model, and which one a passed-through device is, comes from the host's sysfs
// (broker/sriov); a VF no running VM has is free.
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
	seen := map[string]bool{}
	for _, p := range inv.Problems {
		seen[p] = true
		if !b.vfProblems[p] {
			b.log.Warn("SR-IOV inventory: device left out", zap.String("problem", p))
		}
	}
	b.vfProblems = seen
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
	var errs []error
	missing := 0
	short := map[string]bool{}
	for _, vm := range vms {
		if len(vm.VFs) == 0 || b.isMigrating(vm.UUID) {
			continue
		}
		for _, m := range missingVFs(inv, vm) {
			log := b.log.With(zap.String("vm", vm.Name), zap.Stringer("model", m))
			vf, ok := inv.Pick(m, inUse)
			if !ok {
				missing++
				key := vm.UUID.String() + " " + m.String()
				short[key] = true
				if !b.vfShort[key] {
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
	b.mu.Lock()
	b.vfShort = short
	b.mu.Unlock()
	b.metrics.VFsMissing.Set(missing)
	return errors.Join(errs...)
}

// detachVFs is the VF part of a migration's detach phase: it records the models of the VM's
// VFs (before touching them, so a failure halfway leaves the record), then unplugs each. Models
// of the record the VM lacks here stay in it, for the next host to try again.
func (m *migration) detachVFs(ctx context.Context) error {
	pt := m.b.passthrough()
	if pt == nil {
		return nil
	}
	inv, err := m.b.inventory()
	if err != nil {
		return err
	}
	vfs := vfsOf(inv, m.vm)
	if len(vfs) == 0 {
		return nil
	}
	record := missingVFs(inv, m.vm)
	for _, vf := range vfs {
		record = append(record, vf.Model)
	}
	if !sameModels(record, m.vm.VFs) {
		if err := pt.RecordVFs(m.vm, record); err != nil {
			return fmt.Errorf("record the VM's VFs: %w", err)
		}
	}
	m.wantVFs = len(vfs)
	for _, vf := range vfs {
		m.vfsDetached = true // a failed unplug may have half happened: the rollback gives VFs back
		m.res.VFs = append(m.res.VFs, vf.Addr.String()+" ("+vf.Model.String()+")")
		if err := pt.DetachPCI(ctx, m.vm, vf.Addr); err != nil {
			return fmt.Errorf("unplug VF %s: %w", vf.Addr, err)
		}
	}
	m.log.Info("VFs unplugged", zap.Strings("vfs", m.res.VFs))
	return nil
}

// sameModels reports whether a and b hold the same models, in any order.
func sameModels(a, b []hypervisor.DeviceModel) bool {
	key := func(m hypervisor.DeviceModel) int { return int(m.Vendor)<<16 | int(m.Device) }
	cmp := func(x, y hypervisor.DeviceModel) int { return key(x) - key(y) }
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}

// vfsAt reports whether the VM at the destination has as many passed-through devices as it
// had VFs here, and if not, what it has.
func (m *migration) vfsAt(ctx context.Context) (bool, string, error) {
	pt := m.b.passthrough()
	if pt == nil || m.wantVFs == 0 {
		return true, "", nil
	}
	have, err := pt.PCIAt(ctx, m.dest, m.vm.Name)
	if err != nil {
		return false, "", err
	}
	if len(have) >= m.wantVFs {
		return true, "", nil
	}
	var s []string
	for _, a := range have {
		s = append(s, a.String())
	}
	return false, fmt.Sprintf("%d of the %d it had here (%s); has the destination a free VF of each model?",
		len(have), m.wantVFs, strings.Join(s, ",")), nil
}
