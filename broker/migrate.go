package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/sriov"
	"ivshim.dev/ivshim/ivshmem"
)

// DefaultMigrateDeadline bounds the drain of a migrating VM's ranks, and the wait for the
// destination to plug the job's region, when neither the configuration nor the request says.
const DefaultMigrateDeadline = 10 * time.Second

// migrateMoveLimit bounds the hypervisor's own migration step.
const migrateMoveLimit = 10 * time.Minute

// staleBeats is how long a rank's heartbeat may stand still before the drain counts the rank
// as gone (killed without detaching): twenty of the shim's 100 ms beats.
const staleBeats = 2 * time.Second

// drainPoll is how often the drain looks at the ranks' slots.
const drainPoll = 10 * time.Millisecond

// Migration phases, in order; the answer, the logs and the metrics name them so.
const (
	PhaseDrain   = "drain"   // the VM is flagged leaving; its ranks switch to the library and release
	PhaseDetach  = "detach"  // the region and the VM's SR-IOV VFs are unplugged from the VM
	PhaseMigrate = "migrate" // the hypervisor moves the VM
	PhaseAttach  = "attach"  // the destination's broker plugs the job's region and VFs there
)

// Migrate moves a running VM to another host (see the package documentation): it flags the VM
// leaving in its job's region, waits until every rank of the VM has released the region,
// unplugs it and the VM's VFs, has the hypervisor move the VM, and waits until the
// destination's broker has plugged the job's region there (and, within the deadline, VFs of the
// same models: missing ones are reported, not a failure). A failed step or a missed deadline
// rolls back: the VM keeps or regains its region and VFs here and its ranks go on. The answer always carries the phases that
// ran and their durations; the error names the failed step.
func (b *Broker) Migrate(ctx context.Context, req api.MigrateRequest) (api.MigrateResult, error) {
	res := api.MigrateResult{VM: req.VM, Destination: req.Destination, Phases: []api.Phase{}}
	mig, ok := b.hv.(hypervisor.Migrator)
	if !ok {
		b.metrics.MigrationsRefused.Inc()
		return res, fmt.Errorf("%w: the %s hypervisor cannot migrate VMs yet; the VM was not touched", api.ErrNotImplemented, b.hv.Kind())
	}
	if err := mig.CheckDestination(req.Destination); err != nil {
		b.metrics.MigrationsRefused.Inc()
		return res, fmt.Errorf("%w: %v", api.ErrBadDestination, err)
	}
	deadline := b.cfg.migrateDeadline()
	if req.DeadlineMS > 0 {
		deadline = time.Duration(req.DeadlineMS) * time.Millisecond
	}
	vm, err := b.runningVM(req.VM)
	if err != nil {
		b.metrics.MigrationsRefused.Inc()
		return res, err
	}
	res.Job = vm.Job
	if err := b.startMigration(vm); err != nil {
		b.metrics.MigrationsRefused.Inc()
		return res, err
	}
	log := b.log.With(zap.String("vm", vm.Name), zap.String("job", vm.Job), zap.String("destination", req.Destination))
	log.Info("migration started", zap.Duration("deadline", deadline))
	start := time.Now()
	m := &migration{b: b, mig: mig, vm: vm, dest: req.Destination, deadline: deadline, res: &res, log: log}
	err = m.run(ctx)
	m.vfsRelease()
	b.endMigration(vm)
	res.Seconds = time.Since(start).Seconds()
	b.metrics.MigrateTime.Since(start)
	if err != nil {
		b.metrics.MigrationErrors.Inc()
		res.Error = err.Error()
		log.Error("migration failed", zap.String("step", res.FailedStep), zap.Bool("rolled_back", res.RolledBack),
			zap.String("rollback", res.Rollback), zap.Any("phases", res.Phases), zap.Error(err))
	} else {
		b.metrics.Migrations.Inc()
		log.Info("migration done", zap.Any("phases", res.Phases), zap.Duration("took", time.Since(start)))
	}
	// Bring the tables up to date now (the VM left, or regained its region), not at the next event.
	b.pass()
	return res, err
}

// runningVM finds the running VM called name.
func (b *Broker) runningVM(name string) (hypervisor.VM, error) {
	b.own.Lock()
	defer b.own.Unlock()
	vms, err := b.hv.Running()
	if err != nil {
		return hypervisor.VM{}, fmt.Errorf("list running VMs: %w", err)
	}
	for _, vm := range vms {
		if vm.Name == name {
			return vm, nil
		}
	}
	return hypervisor.VM{}, fmt.Errorf("%w: no VM %q runs on this host", api.ErrUnknownVM, name)
}

// startMigration records that vm is migrating, refusing a second migration of it.
func (b *Broker) startMigration(vm hypervisor.VM) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.migrating[vm.UUID] {
		return fmt.Errorf("%w: VM %s is already migrating", api.ErrBusy, vm.Name)
	}
	if b.migrating == nil {
		b.migrating = map[hypervisor.UUID]bool{}
	}
	b.migrating[vm.UUID] = true
	return nil
}

func (b *Broker) endMigration(vm hypervisor.VM) {
	b.mu.Lock()
	delete(b.migrating, vm.UUID)
	b.mu.Unlock()
}

// isMigrating reports whether vm is in a migration: reconcile then leaves its devices alone.
func (b *Broker) isMigrating(u hypervisor.UUID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.migrating[u]
}

// migration is one run of the coordinator.
type migration struct {
	b        *Broker
	mig      hypervisor.Migrator
	vm       hypervisor.VM
	dest     string
	deadline time.Duration
	res      *api.MigrateResult
	log      *zap.Logger
	flagged  bool // the VM's entry in the region was set leaving
	detached bool // the region was unplugged from the VM
	// The VM's SR-IOV VFs (vfs.go): vfs were (being) unplugged here, held for the VM until the
	// migration ends; record is the VF record it took along, recordBefore the one it had;
	// recordAway says a rollback cleared the record at the destination.
	vfs          []sriov.VF
	record       []hypervisor.DeviceModel
	recordBefore []hypervisor.DeviceModel
	recordAway   bool
}

// run performs the phases in order; on failure it rolls back and records the step.
func (m *migration) run(ctx context.Context) error {
	region := ""
	if m.vm.Job != "" {
		region = hypervisor.RegionName(m.vm.Job)
	}
	plugged := region != "" && slices.Contains(m.vm.Plugged, region)
	steps := []struct {
		name string
		do   func(context.Context) error
		hist interface{ Since(time.Time) }
	}{
		{PhaseDrain, m.drain, &m.b.metrics.MigrateDrainTime},
		{PhaseDetach, func(ctx context.Context) error {
			if err := m.detachRegion(region, plugged); err != nil {
				return err
			}
			return m.detachVFs(ctx)
		}, &m.b.metrics.MigrateDetachTime},
		{PhaseMigrate, func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, migrateMoveLimit)
			defer cancel()
			return m.mig.Migrate(ctx, m.vm, m.dest)
		}, &m.b.metrics.MigrateMoveTime},
		{PhaseAttach, func(ctx context.Context) error { return m.attach(ctx, region) }, &m.b.metrics.MigrateAttachTime},
	}
	for _, s := range steps {
		start := time.Now()
		err := s.do(ctx)
		took := time.Since(start)
		s.hist.Since(start)
		m.res.Phases = append(m.res.Phases, api.Phase{Name: s.name, Seconds: took.Seconds()})
		if err != nil {
			m.res.FailedStep = s.name
			m.rollback(ctx, s.name)
			return fmt.Errorf("migrate VM %s: %s: %w", m.vm.Name, s.name, err)
		}
		m.log.Info("migration phase done", zap.String("phase", s.name), zap.Duration("took", took))
	}
	m.res.Migrated = true
	return nil
}

// detachRegion unplugs the job's region from the VM, if plugged.
func (m *migration) detachRegion(region string, plugged bool) error {
	if !plugged {
		return nil
	}
	m.detached = true // even a failed unplug may have half happened: rollback re-plugs
	m.b.own.Lock()
	defer m.b.own.Unlock()
	return m.b.hv.Detach(m.vm, region)
}

// drain flags the VM leaving in its job's region and waits, up to the deadline, until none of
// its ranks holds a slot there. A VM without a job or without an entry has nothing to drain.
func (m *migration) drain(ctx context.Context) error {
	b := m.b
	if m.vm.Job == "" {
		return nil
	}
	b.own.Lock()
	r, idx, ok := b.vmEntry(m.vm)
	if ok {
		ok = r.SetVM(idx, m.vm.UUID, ivshmem.VMLeaving) == nil
		m.flagged = ok
	}
	var ranks map[uint32]slotWatch
	if ok {
		ranks = attachedRanks(r, idx, nil)
		m.res.Ranks = len(ranks)
	}
	b.own.Unlock()
	if !ok {
		return nil
	}
	b.pass() // publish the flag (ivshimctl regions shows the VM leaving)
	timer := time.NewTimer(m.deadline)
	defer timer.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for len(ranks) > 0 {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-timer.C:
			var who []string
			for _, w := range ranks {
				who = append(who, fmt.Sprint(w.worldRank))
			}
			slices.Sort(who)
			return fmt.Errorf("%d of its %d ranks still use the region after %v (world ranks %s): a rank releases it "+
				"inside MPI calls once its pairs and collectives are on the library, so these stayed outside MPI, "+
				"or a peer or a communicator of theirs did", len(ranks), m.res.Ranks, m.deadline, strings.Join(who, ","))
		case <-tick.C:
		}
		b.own.Lock()
		r, idx, ok = b.vmEntry(m.vm)
		if ok {
			ranks = attachedRanks(r, idx, ranks)
		}
		b.own.Unlock()
		if !ok {
			return errors.New("the VM's entry left its region during the drain")
		}
	}
	return nil
}

// vmEntry returns the region of vm's job and vm's index in its VM table. Caller holds b.own.
func (b *Broker) vmEntry(vm hypervisor.VM) (*ivshmem.Region, uint32, bool) {
	rg := b.regions[vm.Job]
	if rg == nil || rg.r == nil {
		return nil, 0, false
	}
	idx, ok := rg.r.FindVM(vm.UUID)
	return rg.r, idx, ok
}

// slotWatch is a slot held by a rank of the draining VM, and since when its heartbeat stands.
type slotWatch struct {
	worldRank uint32
	beat      uint64
	since     time.Time
}

// attachedRanks returns the slots of region r held by ranks of VM entry idx whose heartbeat
// moved within staleBeats; prev is the previous answer. Slot contents are written by the
// job's ranks and only decide whom the drain waits for.
func attachedRanks(r *ivshmem.Region, idx uint32, prev map[uint32]slotWatch) map[uint32]slotWatch {
	now := time.Now()
	out := map[uint32]slotWatch{}
	for i := range r.Layout().SlotCount {
		s, err := r.Slot(i)
		if err != nil || s.State == ivshmem.SlotFree || s.VMIndex != idx {
			continue
		}
		w, seen := prev[i]
		if !seen || w.beat != s.Heartbeat || w.worldRank != s.WorldRank {
			w = slotWatch{worldRank: s.WorldRank, beat: s.Heartbeat, since: now}
		} else if now.Sub(w.since) > staleBeats {
			continue // no heartbeat for staleBeats: the rank is gone
		}
		out[i] = w
	}
	return out
}

// attach waits, up to the deadline, until the destination's broker has plugged the job's
// region into the VM, then, for what is left of the deadline, until it has passed through as
// many VFs as the VM had here. Missing VFs do not fail the migration: the connections on the
// VM's VFs ended with their unplug here, wherever the VM runs now, and the destination's broker
// goes on giving VFs of the VM's record as they come free. The answer says what is missing.
func (m *migration) attach(ctx context.Context, region string) error {
	ctx, cancel := context.WithTimeout(ctx, m.deadline)
	defer cancel()
	if region != "" {
		why, err := waitFor(ctx, func() (string, error) {
			have, err := m.mig.PluggedAt(ctx, m.dest, m.vm.Name)
			if err != nil || !slices.Contains(have, region) {
				return fmt.Sprintf("region %s not plugged at the destination (is its broker running?)", region), err
			}
			return "", nil
		})
		if why != "" {
			return errors.Join(fmt.Errorf("after %v: %s", m.deadline, why), err)
		}
	}
	if why, err := waitFor(ctx, func() (string, error) { return m.vfsAt(ctx) }); why != "" {
		m.res.VFsMissing = why
		if err != nil {
			m.res.VFsMissing += ": " + err.Error()
		}
		m.log.Warn("migration goes on without all of the VM's VFs", zap.String("missing", m.res.VFsMissing))
	}
	return nil
}

// waitFor polls check until it says nothing is missing (""), or ctx ends; it returns what was
// still missing then.
func waitFor(ctx context.Context, check func() (string, error)) (string, error) {
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for {
		why, err := check()
		if why == "" && err == nil {
			return "", nil
		}
		select {
		case <-ctx.Done():
			return why, err
		case <-tick.C:
		}
	}
}

// rollback undoes what the phases up to failed did: a VM that left comes back, and the VM's
// entry is present again (the next reconcile pass re-plugs the region). What it did, or why
// it could not, goes into the answer.
func (m *migration) rollback(ctx context.Context, failed string) {
	var done []string
	var errs []error
	home := true // the VM runs here
	if failed == PhaseAttach {
		// The VM runs at the destination without its region there: bring it home, without what
		// VFs the destination gave it.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), migrateMoveLimit)
		err := m.vfsTakeBack(ctx)
		if err == nil {
			err = m.mig.Recall(ctx, m.vm, m.dest)
		}
		cancel()
		if err != nil {
			home = false
			errs = append(errs, fmt.Errorf("VM left at the destination: %w", err), m.vfsLeaveAt())
		} else {
			done = append(done, "VM migrated back")
		}
	}
	if m.flagged {
		m.b.own.Lock()
		r, idx, ok := m.b.vmEntry(m.vm)
		if ok {
			if err := r.SetVM(idx, m.vm.UUID, ivshmem.VMPresent); err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, "VM flagged present")
			}
		}
		m.b.own.Unlock()
	}
	if m.detached && home {
		done = append(done, "region re-plugged by the reconcile pass")
	}
	if home && (len(m.vfs) > 0 || m.recordAway) {
		d, err := m.vfsGiveBack()
		done, errs = append(done, d...), append(errs, err)
	}
	err := errors.Join(errs...)
	m.res.RolledBack = err == nil
	m.res.Rollback = strings.Join(done, "; ")
	if err != nil {
		m.res.Rollback = strings.TrimPrefix(m.res.Rollback+"; failed: "+err.Error(), "; ")
	}
}
