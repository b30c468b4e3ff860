package broker

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/ivshmem"
)

func (b *Broker) reconcile() error {
	vms, err := b.hv.Running()
	if err != nil {
		return fmt.Errorf("list running VMs: %w", err)
	}
	b.noteProblems(vms)
	var errs []error
	if err := b.scan(); err != nil {
		// The regions that could be examined are still right to act on; the rest waits.
		errs = append(errs, err)
	}
	byJob := map[string][]hypervisor.VM{}
	for _, vm := range vms {
		if vm.Job != "" {
			byJob[vm.Job] = append(byJob[vm.Job], vm)
		}
	}
	for _, job := range sortedKeys(byJob) {
		if b.regions[job] == nil {
			errs = append(errs, b.create(job, byJob[job]))
		}
	}
	// Unplug first: a VM must never hold another job's region, and a VM whose tag changed
	// sheds its old region before it gets the new one.
	for i := range vms {
		errs = append(errs, b.unplugForeign(&vms[i]))
	}
	for _, job := range sortedKeys(b.regions) {
		if rg := b.regions[job]; rg.r != nil {
			errs = append(errs, b.syncVMTable(rg, byJob[job]))
		}
	}
	for i := range vms {
		errs = append(errs, b.plugOwn(&vms[i]))
	}
	errs = append(errs, b.giveVFs(vms))
	for _, job := range sortedKeys(b.regions) {
		rg := b.regions[job]
		if len(byJob[job]) > 0 || rg.foreign {
			continue
		}
		if holder := pluggedInto(vms, rg.name()); holder != "" {
			errs = append(errs, fmt.Errorf("region %s kept: still plugged into VM %s", rg.path, holder))
			continue
		}
		errs = append(errs, b.remove(rg))
	}
	b.publish(vms, byJob)
	b.followTraffic(vms)
	return errors.Join(errs...)
}

// noteProblems logs each VM whose ivshim metadata (job tag, VF record) was rejected, once per
// VM and reason.
func (b *Broker) noteProblems(vms []hypervisor.VM) {
	rejected := 0
	for _, vm := range vms {
		if vm.Problem == "" {
			continue
		}
		rejected++
		if !b.problems.Note(vm.UUID, vm.Problem) {
			continue
		}
		b.log.Warn("ivshim metadata of a VM rejected", zap.String("vm", vm.Name),
			zap.Stringer("uuid", vm.UUID), zap.String("problem", vm.Problem))
	}
	b.problems.EndPass()
	b.metrics.RejectedVMs.Set(rejected)
}

// unplugForeign unplugs from vm every ivshim device other than its own job's region, and
// leaves in vm.Plugged what is still plugged.
func (b *Broker) unplugForeign(vm *hypervisor.VM) error {
	if vm.NotRunning != "" {
		return nil // its devices change once it runs (hypervisor.VM.NotRunning)
	}
	own := ""
	if vm.Job != "" {
		own = hypervisor.RegionName(vm.Job)
	}
	var errs []error
	kept := vm.Plugged[:0:0]
	for _, name := range vm.Plugged {
		if name == own {
			kept = append(kept, name)
			continue
		}
		start := time.Now()
		err := b.hv.Detach(*vm, name)
		b.metrics.DetachTime.Since(start)
		log := b.log.With(zap.String("job", vm.Job), zap.String("vm", vm.Name), zap.String("region", filepath.Join(b.cfg.RegionDir, name)))
		if err != nil {
			b.metrics.DetachErrors.Inc()
			log.Error("unplug region from a VM of another job", zap.Error(err))
			errs = append(errs, fmt.Errorf("unplug %s from VM %s: %w", name, vm.Name, err))
			kept = append(kept, name)
			continue
		}
		b.metrics.Detaches.Inc()
		log.Info("region unplugged from a VM that is not of its job")
	}
	vm.Plugged = kept
	return errors.Join(errs...)
}

// plugOwn plugs the region of vm's job into vm if it is usable and not plugged yet.
func (b *Broker) plugOwn(vm *hypervisor.VM) error {
	if vm.Job == "" || b.isMigrating(vm.UUID) {
		return nil // a migrating VM's region is the coordinator's (migrate.go)
	}
	if vm.NotRunning != "" {
		b.log.Debug("VM not running: its region is plugged once it runs", zap.String("vm", vm.Name), zap.String("state", vm.NotRunning))
		return nil
	}
	rg := b.regions[vm.Job]
	if rg == nil {
		return nil // its creation failed and was reported
	}
	if slices.Contains(vm.Plugged, rg.name()) {
		return nil
	}
	if rg.r == nil {
		return fmt.Errorf("VM %s gets no region: %w", vm.Name, rg.err)
	}
	if !registered(rg, *vm) {
		return nil // the VM table is full, reported by syncVMTable
	}
	log := b.log.With(zap.String("job", vm.Job), zap.String("vm", vm.Name), zap.String("region", rg.path))
	start := time.Now()
	err := b.hv.Attach(*vm, hypervisor.Region{Name: rg.name(), Path: rg.path, Size: rg.r.Layout().TotalSize})
	b.metrics.AttachTime.Since(start)
	if err != nil {
		b.metrics.AttachErrors.Inc()
		log.Error("plug region", zap.Error(err))
		return fmt.Errorf("plug %s into VM %s: %w", rg.name(), vm.Name, err)
	}
	b.metrics.Attaches.Inc()
	log.Info("region plugged", zap.Duration("took", time.Since(start)))
	vm.Plugged = append(vm.Plugged, rg.name())
	return nil
}

// pluggedInto returns the name of a VM that has the device name plugged, "" if none.
func pluggedInto(vms []hypervisor.VM, name string) string {
	for _, vm := range vms {
		if slices.Contains(vm.Plugged, name) {
			return vm.Name
		}
	}
	return ""
}

var vmStates = map[ivshmem.VMState]string{ivshmem.VMPresent: "present", ivshmem.VMLeaving: "leaving"}

// publish stores what this pass saw for the API and the gauges.
func (b *Broker) publish(vms []hypervisor.VM, byJob map[string][]hypervisor.VM) {
	var snap api.Snapshot
	snap.Status = b.status()
	for _, vm := range vms {
		v := api.VM{Name: vm.Name, UUID: vm.UUID.String(), Job: vm.Job, Problem: vm.Problem, Plugged: vm.Plugged}
		for _, a := range vm.PCI {
			v.PCI = append(v.PCI, a.String())
		}
		for _, m := range vm.VFs {
			v.VFs = append(v.VFs, m.String())
		}
		snap.VMs = append(snap.VMs, v)
	}
	for _, job := range sortedKeys(byJob) {
		j := api.Job{ID: job, Region: hypervisor.RegionName(job)}
		for _, vm := range byJob[job] {
			j.VMs = append(j.VMs, vm.Name)
		}
		snap.Jobs = append(snap.Jobs, j)
	}
	for _, job := range sortedKeys(b.regions) {
		rg := b.regions[job]
		out := api.Region{Job: job, Path: rg.path, Size: uint64(rg.info.Size()), Inode: inode(rg.info), Usable: rg.r != nil}
		if rg.err != nil {
			out.Error = rg.err.Error()
		}
		if rg.r != nil {
			out.Generation = rg.r.Generation()
			for i := range rg.r.Layout().VMCount {
				if e, err := rg.r.VMAt(i); err == nil && e.State != ivshmem.VMEmpty {
					out.VMs = append(out.VMs, api.RegionVM{Index: i, UUID: hypervisor.UUID(e.UUID).String(), State: vmStates[e.State]})
				}
			}
		}
		snap.Regions = append(snap.Regions, out)
	}
	snap.Status.Jobs, snap.Status.Regions, snap.Status.VMs = len(snap.Jobs), len(snap.Regions), len(vms)
	b.metrics.Regions.Set(len(b.regions))
	jobVMs := 0
	for _, v := range byJob {
		jobVMs += len(v)
	}
	b.metrics.VMs.Set(jobVMs)
	b.mu.Lock()
	snap.Status.LastReconcile, snap.Status.LastError = b.snap.Status.LastReconcile, b.snap.Status.LastError
	b.snap = snap
	b.mu.Unlock()
}
