package libvirt

import (
	"context"
	"fmt"
	"slices"

	lv "libvirt.org/go/libvirt"

	"ivshim.dev/ivshim/broker/hypervisor"
)

// Passthrough of SR-IOV VFs (broker/vfs.go): <hostdev> elements, managed by libvirt, and the
// broker's VF record in the domain's metadata under VFNamespace.

var _ hypervisor.Passthrough = (*Hypervisor)(nil)

// AttachPCI hot-plugs the host device at a into vm.
func (h *Hypervisor) AttachPCI(vm hypervisor.VM, a hypervisor.PCIAddr) error {
	dom, err := h.lookup(vm)
	if err != nil {
		return err
	}
	defer dom.Free()
	if err := h.dev.Attach(dom, HostdevXML(a)); err != nil {
		return fmt.Errorf("pass %s through to domain %s: %w", a, vm.Name, err)
	}
	return nil
}

// DetachPCI unplugs the host device at a from vm and waits, until ctx ends, for it to be gone
// from the live definition (the guest's driver lets it go first).
func (h *Hypervisor) DetachPCI(ctx context.Context, vm hypervisor.VM, a hypervisor.PCIAddr) error {
	dom, err := h.lookup(vm)
	if err != nil {
		return err
	}
	defer dom.Free()
	return h.detachPCI(ctx, dom, vm.Name, a)
}

// DetachPCIAt unplugs the host device at a from the domain called name at dest.
func (h *Hypervisor) DetachPCIAt(ctx context.Context, dest, name string, a hypervisor.PCIAddr) error {
	dom, err := h.destDomain(dest, name)
	if err != nil {
		return err
	}
	defer dom.Free()
	return h.detachPCI(ctx, dom, name+" at "+dest, a)
}

func (h *Hypervisor) detachPCI(ctx context.Context, dom *lv.Domain, name string, a hypervisor.PCIAddr) error {
	have, err := h.list(dom)
	if err != nil {
		return fmt.Errorf("unplug %s from domain %s: %w", a, name, err)
	}
	if !slices.Contains(have.PCI, a) {
		return nil
	}
	if err := h.dev.Detach(dom, HostdevXML(a)); err != nil {
		return fmt.Errorf("unplug %s from domain %s: %w", a, name, err)
	}
	for {
		have, err := h.list(dom)
		if err != nil {
			return fmt.Errorf("unplug %s from domain %s: %w", a, name, err)
		}
		if !slices.Contains(have.PCI, a) {
			return nil
		}
		if err := sleepCtx(ctx); err != nil {
			return fmt.Errorf("unplug %s from domain %s: the guest has not let it go: %w", a, name, err)
		}
	}
}

// RecordVFs stores models as vm's VF record, in its live definition.
func (h *Hypervisor) RecordVFs(vm hypervisor.VM, models []hypervisor.DeviceModel) error {
	dom, err := h.lookup(vm)
	if err != nil {
		return err
	}
	defer dom.Free()
	return recordVFs(dom, vm.Name, models)
}

// RecordVFsAt stores models as the VF record of the domain called name at dest.
func (h *Hypervisor) RecordVFsAt(dest, name string, models []hypervisor.DeviceModel) error {
	dom, err := h.destDomain(dest, name)
	if err != nil {
		return err
	}
	defer dom.Free()
	return recordVFs(dom, name+" at "+dest, models)
}

func recordVFs(dom *lv.Domain, name string, models []hypervisor.DeviceModel) error {
	if len(models) > hypervisor.MaxVFs {
		return fmt.Errorf("record the VFs of domain %s: %d, more than %d", name, len(models), hypervisor.MaxVFs)
	}
	if err := dom.SetMetadata(lv.DOMAIN_METADATA_ELEMENT, VFRecordXML(models), "ivshimvf", VFNamespace, lv.DOMAIN_AFFECT_LIVE); err != nil {
		return fmt.Errorf("record the VFs of domain %s: %w", name, err)
	}
	return nil
}

// PCIAt lists the host devices passed through to the domain called name at dest.
func (h *Hypervisor) PCIAt(_ context.Context, dest, name string) ([]hypervisor.PCIAddr, error) {
	dom, err := h.destDomain(dest, name)
	if err != nil {
		return nil, err
	}
	defer dom.Free()
	devs, err := h.list(dom)
	if err != nil {
		return nil, fmt.Errorf("domain %s at %s: %w", name, dest, err)
	}
	return devs.PCI, nil
}
