package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/internal/logonce"
	"ivshim.dev/ivshim/broker/metrics"
	"ivshim.dev/ivshim/broker/sriov"
	"ivshim.dev/ivshim/ivshmem"
)

// DefaultResync is how often the broker reconciles without being told of a change.
const DefaultResync = 30 * time.Second

// lockName is the lock file in the region directory.
const lockName = ".ivshim-broker.lock"

// ErrHypervisorLost is returned by Run when the hypervisor stops reporting changes.
var ErrHypervisorLost = errors.New("hypervisor stopped reporting changes")

// ErrLocked is wrapped by New when another broker manages the region directory.
var ErrLocked = errors.New("region directory in use by another broker")

// Config is what a broker manages and how.
type Config struct {
	// RegionDir holds the region files (/dev/shm for libvirt, which gives QEMU
	// mem-path=/dev/shm/NAME).
	RegionDir string
	// RegionSize is the smallest size of new regions: a power of two, at least
	// ivshmem.MinRegionSize.
	RegionSize uint64
	// RegionCap is the most a region grows to for the vCPUs of its job's VMs on the host
	// (ivshmem.SizeFor); 0 means RegionSize (no growth).
	RegionCap uint64
	// HostID is written into every region created.
	HostID ivshmem.HostID
	// Mode is the permission of new region files; it must have no bits for others.
	Mode os.FileMode
	// Chown gives new region files the owner UID and group GID (QEMU's, for libvirt).
	Chown    bool
	UID, GID int
	// Resync is the period of reconcile passes without events; 0 means DefaultResync.
	Resync time.Duration
	// MigrateDeadline bounds a migration's drain, and its wait for the destination to plug the
	// region; 0 means DefaultMigrateDeadline.
	MigrateDeadline time.Duration
	// Sysfs is where the host's sysfs is mounted, read for its SR-IOV VFs (broker/vfs.go); ""
	// means /sys.
	Sysfs string
	// VFPFs are the PFs whose VFs may be given to VMs while a host driver holds them (other
	// VFs only when bound to vfio-pci or to no driver).
	VFPFs []hypervisor.PCIAddr
}

func (c Config) migrateDeadline() time.Duration {
	if c.MigrateDeadline == 0 {
		return DefaultMigrateDeadline
	}
	return c.MigrateDeadline
}

func (c Config) regionCap() uint64 {
	if c.RegionCap == 0 {
		return c.RegionSize
	}
	return c.RegionCap
}

func (c Config) check() error {
	switch {
	case c.RegionDir == "":
		return errors.New("no region directory")
	case c.RegionSize < ivshmem.MinRegionSize || c.RegionSize&(c.RegionSize-1) != 0:
		return fmt.Errorf("region size %d: want a power of two >= %d", c.RegionSize, ivshmem.MinRegionSize)
	case c.RegionCap != 0 && c.RegionCap < c.RegionSize:
		return fmt.Errorf("region cap %d below the region size %d", c.RegionCap, c.RegionSize)
	case c.HostID.IsZero():
		return errors.New("zero host id")
	case c.Mode&^os.ModePerm != 0 || c.Mode&0o007 != 0 || c.Mode&0o600 != 0o600:
		return fmt.Errorf("region mode %#o: want permission bits including 0600 and none for others", c.Mode)
	case c.Resync < 0:
		return fmt.Errorf("resync interval %v is negative", c.Resync)
	case c.MigrateDeadline < 0:
		return fmt.Errorf("migrate deadline %v is negative", c.MigrateDeadline)
	}
	return nil
}

// Broker manages the regions of one host. See the package documentation.
type Broker struct {
	cfg     Config
	hv      hypervisor.Hypervisor
	log     *zap.Logger
	lock    *os.File
	started time.Time
	metrics metrics.Broker

	// own serialises reconcile passes with the migration coordinator's steps on regions: it
	// guards regions, problems, vfShort and scanned.
	own      sync.Mutex
	regions  map[string]*region           // by job
	problems logonce.Set[hypervisor.UUID] // bad job tags logged, by VM
	vfShort  logonce.Set[string]          // "UUID model": a VF record no free VF could serve, logged (vfs.go)
	scanned  bool                         // the region directory was scanned once

	// Traffic accounting (CountTraffic); trafficProblems is owned by the reconcile goroutine.
	traffic         TrafficCounter
	trafficProblems logonce.Set[string] // by host interface: why it cannot be watched

	mu          sync.Mutex                  // guards snap, vmOfIfindex, vmOfMAC, migrating, vfProblems and vfHeld
	vfProblems  logonce.Set[string]         // unreadable VFs logged (vfs.go)
	vfHeld      map[hypervisor.PCIAddr]bool // VFs a migration unplugged, kept for its VM until it ends
	migrating   map[hypervisor.UUID]bool    // VMs in a migration (migrate.go)
	snap        api.Snapshot
	vmOfIfindex map[int]string    // running VMs by the index of their host interfaces
	vmOfMAC     map[string]string // running VMs by MAC
}

// New checks cfg and takes the region directory's lock. The broker uses hv until Close; the
// caller closes hv afterwards.
func New(cfg Config, hv hypervisor.Hypervisor, log *zap.Logger) (*Broker, error) {
	if cfg.Resync == 0 {
		cfg.Resync = DefaultResync
	}
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("broker config: %w", err)
	}
	lock, err := lockDir(cfg.RegionDir)
	if err != nil {
		return nil, err
	}
	b := &Broker{
		cfg:     cfg,
		hv:      hv,
		log:     log.With(zap.String("host", cfg.HostID.String())),
		lock:    lock,
		started: time.Now(),
		regions: map[string]*region{},
	}
	b.snap.Status = b.status()
	if b.passthrough() != nil {
		if pci := filepath.Join(cmp.Or(cfg.Sysfs, sriov.DefaultSysfs), "bus", "pci"); !isDir(pci) {
			b.log.Warn("no PCI bus in sysfs: migrations will not move SR-IOV VFs, nor will VMs get VFs of their VF records", zap.String("path", pci))
		}
	}
	return b, nil
}

func isDir(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.IsDir()
}

// lockDir takes an exclusive, non-blocking flock on the directory's lock file. The kernel drops
// it when the process dies, so a killed broker never blocks its successor.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock region directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// Close unmaps every region and releases the directory lock. Region files stay.
func (b *Broker) Close() error {
	var errs []error
	for _, rg := range b.regions {
		errs = append(errs, rg.close())
	}
	errs = append(errs, b.lock.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close broker: %w", err)
	}
	return nil
}

// Run reconciles now, then on every change the hypervisor reports and every Resync, until ctx
// ends (nil) or the hypervisor is lost (ErrHypervisorLost).
func (b *Broker) Run(ctx context.Context) error {
	b.log.Info("broker started", zap.String("hypervisor", b.hv.Kind()), zap.String("dir", b.cfg.RegionDir))
	b.pass()
	t := time.NewTicker(b.cfg.Resync)
	defer t.Stop()
	changes := b.hv.Changes()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-changes:
			if !ok {
				return ErrHypervisorLost
			}
		case <-t.C:
		}
		b.pass()
	}
}

// pass runs one logged reconcile.
func (b *Broker) pass() {
	if err := b.Reconcile(); err != nil {
		b.log.Warn("reconcile incomplete; the next pass retries", zap.Error(err))
	}
}

// Reconcile runs one pass: it lists the VMs and the region files and converges them on the
// desired state. Every step that fails is reported in the joined error and left for the next
// pass; when the VMs cannot be listed nothing is changed at all.
func (b *Broker) Reconcile() error {
	b.own.Lock()
	start := time.Now()
	err := b.reconcile()
	b.own.Unlock()
	b.metrics.ReconcileTime.Since(start)
	if err != nil {
		b.metrics.ReconcileErrors.Inc()
	} else {
		b.metrics.Reconciles.Inc()
	}
	b.mu.Lock()
	b.snap.Status.LastReconcile = start
	b.snap.Status.LastError = ""
	if err != nil {
		b.snap.Status.LastError = err.Error()
	}
	b.mu.Unlock()
	return err
}

// Snapshot returns the state published by the last reconcile pass.
func (b *Broker) Snapshot() api.Snapshot {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.snap
}

// WriteMetrics writes the broker's metrics in the Prometheus text format.
func (b *Broker) WriteMetrics(w io.Writer) error { return b.metrics.WriteText(w) }

var _ api.Source = (*Broker)(nil)

func (b *Broker) status() api.Status {
	return api.Status{
		Hypervisor: b.hv.Kind(),
		HostID:     b.cfg.HostID.String(),
		RegionDir:  b.cfg.RegionDir,
		RegionSize: b.cfg.RegionSize,
		RegionCap:  b.cfg.regionCap(),
		Started:    b.started,
	}
}
