package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/ivshmem"
)

// region is a region file the broker knows of.
type region struct {
	job  string
	path string
	info os.FileInfo     // Lstat when adopted; identifies the file across passes
	r    *ivshmem.Region // mapped region; nil when the file is unusable
	err  error           // why r is nil
	// foreign files were not made by the broker: never opened, plugged or removed.
	foreign bool
}

func (rg *region) name() string { return filepath.Base(rg.path) }

func (rg *region) close() error {
	if rg.r == nil {
		return nil
	}
	err := rg.r.Close()
	rg.r = nil
	return err
}

func inode(info os.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// ownedByBroker reports whether a file in the region directory was made by this broker: a
// regular file owned by the broker's user or by the configured region owner. The region
// directory is world-writable, so anything else may be planted by another user.
func (b *Broker) ownedByBroker(info os.FileInfo) error {
	if !info.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%v)", info.Mode().Type())
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("no owner information")
	}
	if int(st.Uid) != os.Geteuid() && !(b.cfg.Chown && int(st.Uid) == b.cfg.UID) {
		return fmt.Errorf("owned by uid %d, not the broker's", st.Uid)
	}
	return nil
}

// isCreateTemp reports whether name is a temporary file of ivshmem.Create for a region.
func isCreateTemp(name string) bool {
	return strings.HasPrefix(name, "."+hypervisor.DevicePrefix) && strings.Contains(name, ".tmp-")
}

// scan brings b.regions in line with the region directory: files that appeared are adopted,
// files that vanished or were replaced are forgotten. On the first scan it also removes the
// temporary files of region creations a killed broker did not finish.
func (b *Broker) scan() error {
	entries, err := os.ReadDir(b.cfg.RegionDir)
	if err != nil {
		return fmt.Errorf("scan region directory: %w", err)
	}
	first := !b.scanned
	b.scanned = true
	var errs []error
	present := map[string]bool{}
	for _, e := range entries {
		path := filepath.Join(b.cfg.RegionDir, e.Name())
		if first && isCreateTemp(e.Name()) {
			errs = append(errs, b.removeTemp(path))
			continue
		}
		job, ok := hypervisor.JobOfDevice(e.Name())
		if !ok {
			continue
		}
		info, err := os.Lstat(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("scan region %s: %w", path, err))
			continue
		}
		present[job] = true
		if rg := b.regions[job]; rg != nil {
			if os.SameFile(rg.info, info) {
				if !rg.foreign {
					b.restrictMode(rg, info)
				}
				continue
			}
			b.log.Error("region file replaced by another file; adopting the new one", zap.String("job", job), zap.String("region", path))
			errs = append(errs, rg.close())
		}
		rg := b.adopt(job, path, info)
		if rg.r != nil {
			b.log.Info("region adopted", zap.String("job", job), zap.String("region", path),
				zap.Uint64("size", rg.r.Layout().TotalSize), zap.Uint64("generation", rg.r.Generation()))
		}
		b.regions[job] = rg
	}
	for job, rg := range b.regions {
		if !present[job] {
			b.log.Error("region file removed behind the broker's back", zap.String("job", job), zap.String("region", rg.path))
			errs = append(errs, rg.close())
			delete(b.regions, job)
		}
	}
	return errors.Join(errs...)
}

// removeTemp removes a temporary region file left by a killed broker, if it is the broker's.
func (b *Broker) removeTemp(path string) error {
	info, err := os.Lstat(path)
	if err != nil || b.ownedByBroker(info) != nil {
		return nil
	}
	b.log.Info("removing unfinished region file of an earlier broker", zap.String("region", path))
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove unfinished region file: %w", err)
	}
	return nil
}

// adopt takes over the region file at path, found with info, for job, and logs why if it is
// not usable.
func (b *Broker) adopt(job, path string, info os.FileInfo) *region {
	rg := &region{job: job, path: path, info: info}
	log := b.log.With(zap.String("job", job), zap.String("region", path))
	if err := b.ownedByBroker(info); err != nil {
		rg.foreign, rg.err = true, fmt.Errorf("not made by the broker: %w", err)
		log.Error("region name taken by a file the broker did not make; the job gets no region until it is removed", zap.Error(rg.err))
		return rg
	}
	r, err := b.openRegion(job, path, info)
	if err != nil {
		rg.err = err
		log.Error("unusable region file: not plugged anywhere, removed when no VM of its job runs", zap.Error(err))
		return rg
	}
	rg.r = r
	b.restrictMode(rg, info)
	return rg
}

// openRegion maps the file and checks that it is the region of job on this host and still the
// file that was found.
func (b *Broker) openRegion(job, path string, info os.FileInfo) (*ivshmem.Region, error) {
	r, err := ivshmem.Open(path)
	if err != nil {
		return nil, err
	}
	after, err := os.Lstat(path)
	switch {
	case err != nil:
	case !os.SameFile(info, after):
		err = errors.New("replaced while being opened")
	case r.JobID() != job:
		err = fmt.Errorf("header names job %q", r.JobID())
	case r.HostID() != b.cfg.HostID:
		err = fmt.Errorf("header names host %s", r.HostID())
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("region %s: %w", path, err)
	}
	return r, nil
}

// restrictMode takes away any access for others that someone gave a region file.
func (b *Broker) restrictMode(rg *region, info os.FileInfo) {
	if info.Mode().Perm()&0o007 == 0 {
		return
	}
	b.log.Warn("region file was accessible to others; restricting it", zap.String("job", rg.job),
		zap.String("region", rg.path), zap.Stringer("mode", info.Mode().Perm()))
	if err := os.Chmod(rg.path, b.cfg.Mode); err != nil {
		b.log.Error("restrict region file mode", zap.String("job", rg.job), zap.String("region", rg.path), zap.Error(err))
	}
}

// regionParams sizes the region of a job whose VMs on this host are vms: room for as many ranks
// as they have vCPUs (a VM of unknown count as 1), every pair ring at the default ring size,
// between the configured region size and cap. A region capped below that still serves the
// group, with smaller rings (ivshmem.Layout.RingCapacity), or not at all: both are logged and
// counted (ivshim_regions_undersized_total), never silent.
func (b *Broker) regionParams(job string, vms []hypervisor.VM) ivshmem.Params {
	ranks := 0
	for _, vm := range vms {
		ranks += max(vm.VCPUs, 1)
	}
	base := ivshmem.Params{TotalSize: b.cfg.RegionSize, SlotCount: ivshmem.DefaultSlots, VMCount: ivshmem.DefaultVMs,
		ChunkSize: ivshmem.DefaultChunkSize, RingSize: ivshmem.DefaultRingSize}
	p, ring, err := ivshmem.SizeFor(min(ranks, ivshmem.MaxSlots), base, b.cfg.regionCap())
	if ring == uint64(base.RingSize) {
		return p
	}
	b.metrics.RegionsUndersized.Inc()
	fields := []zap.Field{zap.String("job", job), zap.Int("vcpus", ranks), zap.Uint64("size", p.TotalSize),
		zap.Uint64("cap", b.cfg.regionCap())}
	if err != nil {
		b.log.Warn("region too small for the job's vCPUs: a group that large falls back to the MPI library", append(fields, zap.Error(err))...)
	} else {
		b.log.Warn("region capped: rings smaller than the default for a group of all the job's vCPUs",
			append(fields, zap.Uint64("ring_bytes", ring), zap.Uint32("default_ring_bytes", base.RingSize))...)
	}
	return p
}

// create makes the region of job, whose VMs on this host are vms, and adopts it.
func (b *Broker) create(job string, vms []hypervisor.VM) error {
	path := filepath.Join(b.cfg.RegionDir, hypervisor.RegionName(job))
	p := b.regionParams(job, vms)
	err := ivshmem.Create(path, ivshmem.Options{
		Size: p.TotalSize, Slots: p.SlotCount, VMs: p.VMCount, ChunkSize: p.ChunkSize, RingSize: p.RingSize,
		HostID: b.cfg.HostID, JobID: job,
		Mode: b.cfg.Mode, Chown: b.cfg.Chown, UID: b.cfg.UID, GID: b.cfg.GID,
	})
	if err != nil {
		b.log.Error("create region", zap.String("job", job), zap.String("region", path), zap.Error(err))
		return err
	}
	b.metrics.RegionsCreated.Inc()
	b.log.Info("region created", zap.String("job", job), zap.String("region", path), zap.Uint64("size", p.TotalSize),
		zap.Uint32("slots", p.SlotCount), zap.Int("vms", len(vms)))
	info, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("created region %s: %w", path, err)
	}
	rg := b.adopt(job, path, info)
	b.regions[job] = rg
	return rg.err
}

// remove unmaps and deletes the region of a job that has no VM left on this host.
func (b *Broker) remove(rg *region) error {
	delete(b.regions, rg.job)
	err := rg.close()
	cur, serr := os.Lstat(rg.path)
	if serr == nil && os.SameFile(cur, rg.info) {
		serr = os.Remove(rg.path)
	}
	if serr != nil && !errors.Is(serr, os.ErrNotExist) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		b.log.Error("remove region", zap.String("job", rg.job), zap.String("region", rg.path), zap.Error(err))
		return fmt.Errorf("remove region %s: %w", rg.path, err)
	}
	b.metrics.RegionsRemoved.Inc()
	b.log.Info("region removed: no VM of its job runs here", zap.String("job", rg.job), zap.String("region", rg.path))
	return nil
}

// syncVMTable makes the region's VM table list exactly vms as present. Entries are written
// only where they differ, so a table that is already right is left byte-identical. The table
// lives in memory the job's VMs can write: entries that do not decode are cleared.
func (b *Broker) syncVMTable(rg *region, vms []hypervisor.VM) error {
	r := rg.r
	want := map[hypervisor.UUID]bool{}
	for _, vm := range vms {
		want[vm.UUID] = true
	}
	have := map[hypervisor.UUID]bool{}
	var free []uint32
	var errs []error
	for i := range r.Layout().VMCount {
		e, err := r.VMAt(i)
		u := hypervisor.UUID(e.UUID)
		switch {
		case err != nil:
			b.log.Warn("clearing corrupt VM table entry", zap.String("job", rg.job), zap.String("region", rg.path), zap.Uint32("index", i), zap.Error(err))
			errs = append(errs, r.SetVM(i, [16]byte{}, ivshmem.VMEmpty))
			free = append(free, i)
		case e.State == ivshmem.VMEmpty:
			free = append(free, i)
		case !want[u] || have[u]:
			errs = append(errs, r.SetVM(i, e.UUID, ivshmem.VMEmpty))
			free = append(free, i)
		default:
			have[u] = true
		}
	}
	for _, vm := range vms {
		if have[vm.UUID] {
			continue
		}
		if len(free) == 0 {
			errs = append(errs, fmt.Errorf("VM table of %s full (%d entries): VM %s not registered", rg.path, r.Layout().VMCount, vm.Name))
			continue
		}
		errs = append(errs, r.SetVM(free[0], vm.UUID, ivshmem.VMPresent))
		free = free[1:]
		have[vm.UUID] = true
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("VM table of job %s: %w", rg.job, err)
	}
	return nil
}

// registered reports whether vm has an entry in the region's VM table.
func registered(rg *region, vm hypervisor.VM) bool {
	_, ok := rg.r.FindVM(vm.UUID)
	return ok
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
