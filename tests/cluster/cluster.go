package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/netns"
	"ivshim.dev/ivshim/ivshmem"
)

// DefaultRegionSize is the size of a host's region when Config.RegionSize is zero.
const DefaultRegionSize = 16 << 20

// maxVMs bounds Hosts × VMsPerHost: addresses .2 to .201 of the cluster's /24, and names that fit
// the 15-byte limit of interface names.
const maxVMs = 200

// Config describes the cluster to create.
type Config struct {
	// Hosts is the number of emulated hosts (default 2).
	Hosts int
	// VMsPerHost is the number of VMs on each host (default 2).
	VMsPerHost int
	// Regions makes Create create one bare region file per host with ivshmem.Create, which every
	// VM of the host gets. Leave it false when Broker is set, or when something else creates
	// regions and announces them with SetRegion.
	Regions bool
	// Broker is the path of an ivshim-broker binary (see BuildBroker). When set, every host runs
	// its own broker (hypervisor netns), every VM is registered with it as a VM of the cluster's
	// job, and Create returns once each broker has plugged the job's region into its VMs.
	// Exclusive with Regions.
	Broker string
	// RegionSize is the size of each region: a power of two, at least 1 MiB
	// (default DefaultRegionSize). With Broker, the smallest: the broker sizes regions for the
	// job's vCPUs on the host up to its default cap.
	RegionSize uint64
	// VCPUs is what every VM tells its broker it has (0: unknown, counted as 1): the ranks the
	// broker sizes the job's region for. Only with Broker.
	VCPUs int
	// Log receives one line per step and per launched command; nil discards them.
	Log io.Writer
}

// Cluster is a set of emulated hosts and VMs on this machine. Its fields are set by Create and
// must not be changed.
type Cluster struct {
	// Prefix starts every name the cluster creates: "iv" and five hex digits.
	Prefix string
	// Dir is the cluster's temporary directory (agent, hosts file, per-VM and per-host state).
	Dir string
	// Bridge is the bridge in the root namespace that every VM's veth is attached to.
	Bridge string
	// Subnet is the cluster's private /24; BridgeAddr is the root namespace's address in it.
	Subnet     netip.Prefix
	BridgeAddr netip.Addr
	// Agent is the path of the launcher agent: an ssh stand-in taking [ssh options] VM COMMAND...,
	// where VM is a VM's name or address.
	Agent string
	// Job is the job id of the cluster's regions, the prefix: bare regions carry it in their
	// header, and brokers see every VM as a VM of this job unless VM.SetJob says otherwise.
	Job string
	// Hosts are the emulated hosts, in order h0, h1, ...
	Hosts []*Host

	log io.Writer

	mu   sync.Mutex // guards torn, every Host's region and every VM's job
	torn bool
	// watchdog is the pipe to the process that cleans the cluster up if this one dies without
	// Teardown (watchdog.go).
	watchdog *os.File
}

// Host is an emulated hypervisor node.
type Host struct {
	// Name is "h0", "h1", ...
	Name string
	// ID is the host id written into the host's region.
	ID ivshmem.HostID
	// Dir is a state directory for whatever manages the host: with a broker, its netns
	// registry, configuration, socket and log.
	Dir string
	// VMs are the host's VMs, in order.
	VMs []*VM
	// Broker is the host's broker, nil unless Config.Broker is set.
	Broker *Broker

	cluster *Cluster
	region  string // guarded by cluster.mu
}

// VM is an emulated guest: a network namespace and a /dev/shm directory plus, for each command
// entering it, its own hostname, IPC namespace and boot_id.
type VM struct {
	// Name is the VM's hostname, "h<host>v<vm>", e.g. "h1v0".
	Name string
	// Host is the host the VM runs on.
	Host *Host
	// Netns is the VM's network namespace; Veth is the root-namespace end of its veth pair
	// (the same string, a different kind of object).
	Netns, Veth string
	// Addr is the VM's address on eth0, MAC its MAC: locally administered, 02:1e and the four
	// bytes of Addr.
	Addr netip.Addr
	MAC  net.HardwareAddr
	// BootID is the boot id the VM's processes read from /proc/sys/kernel/random/boot_id.
	BootID string
	// UUID identifies the VM to its host's broker (the libvirt domain UUID of a real VM); its
	// processes get it as IVSHIM_VM_ID, so the shim finds the VM's entry in the region's VM
	// table. Zero unless the host has a broker.
	UUID hypervisor.UUID

	// dir holds boot_id and, when the VM has a region, a file "region" with the path of its
	// region or device and a file "vm_id" with its UUID.
	dir string
	// shm is the VM's /dev/shm directory; linked the region file's link there made by the last
	// move (linkRegion).
	shm, linked string
	job         string // the job the VM is registered with; guarded by the cluster's mu
}

// Create builds a cluster as described by cfg. It needs root. On error everything made so far
// is removed.
func Create(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Hosts == 0 {
		cfg.Hosts = 2
	}
	if cfg.VMsPerHost == 0 {
		cfg.VMsPerHost = 2
	}
	if cfg.RegionSize == 0 {
		cfg.RegionSize = DefaultRegionSize
	}
	if cfg.Hosts < 0 || cfg.VMsPerHost < 0 || cfg.Hosts*cfg.VMsPerHost > maxVMs || cfg.Hosts > 99 || cfg.VMsPerHost > 99 {
		return nil, fmt.Errorf("create cluster: %d hosts × %d VMs: want 1..%d VMs, at most 99 per level", cfg.Hosts, cfg.VMsPerHost, maxVMs)
	}
	if cfg.Regions && cfg.Broker != "" {
		return nil, errors.New("create cluster: Regions and Broker are exclusive")
	}
	log := cfg.Log
	if log == nil {
		log = io.Discard
	}
	prefix, err := newPrefix()
	if err != nil {
		return nil, err
	}
	subnet, err := freeSubnet(ctx)
	if err != nil {
		return nil, err
	}
	watchdog, err := startWatchdog(prefix)
	if err != nil {
		return nil, fmt.Errorf("create cluster %s: %w", prefix, err)
	}
	dir, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		stopWatchdog(watchdog)
		return nil, fmt.Errorf("create cluster %s: %w", prefix, err)
	}
	c := &Cluster{
		Prefix:     prefix,
		Job:        prefix,
		Dir:        dir,
		Bridge:     prefix + "-br",
		Subnet:     subnet,
		BridgeAddr: subnet.Addr().Next(),
		Agent:      filepath.Join(dir, "agent"),
		log:        log,
		watchdog:   watchdog,
	}
	fmt.Fprintf(log, "cluster %s: %d hosts × %d VMs in %s, dir %s\n", prefix, cfg.Hosts, cfg.VMsPerHost, subnet, dir)
	if err := c.build(ctx, cfg); err != nil {
		if terr := c.Teardown(); terr != nil {
			err = errors.Join(err, terr)
		}
		return nil, fmt.Errorf("create cluster %s: %w", prefix, err)
	}
	return c, nil
}

// newPrefix returns "iv" and five random hex digits.
func newPrefix() (string, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random cluster prefix: %w", err)
	}
	return "iv" + hex.EncodeToString(b[:])[:5], nil
}

// build lays out hosts and VMs in memory and on disk, then creates the network, the regions
// and the agent.
func (c *Cluster) build(ctx context.Context, cfg Config) error {
	addr := c.BridgeAddr
	for h := 0; h < cfg.Hosts; h++ {
		host := &Host{Name: fmt.Sprintf("h%d", h), cluster: c}
		host.Dir = filepath.Join(c.Dir, "host", host.Name)
		id, err := ivshmem.NewHostID()
		if err != nil {
			return err
		}
		host.ID = id
		if err := os.MkdirAll(host.Dir, 0o700); err != nil {
			return fmt.Errorf("host %s: %w", host.Name, err)
		}
		for v := 0; v < cfg.VMsPerHost; v++ {
			addr = addr.Next()
			vm, err := c.newVM(host, fmt.Sprintf("%sv%d", host.Name, v), addr)
			if err != nil {
				return err
			}
			host.VMs = append(host.VMs, vm)
		}
		c.Hosts = append(c.Hosts, host)
	}
	if err := c.writeHostsFile(); err != nil {
		return err
	}
	if err := c.createNetwork(ctx); err != nil {
		return err
	}
	switch {
	case cfg.Regions:
		for _, h := range c.Hosts {
			if err := c.createRegion(h, cfg.RegionSize); err != nil {
				return err
			}
		}
	case cfg.Broker != "":
		if err := c.startBrokers(ctx, cfg.Broker, cfg.RegionSize, cfg.VCPUs); err != nil {
			return err
		}
	}
	return c.writeAgent()
}

// newVM makes the VM's state directory with its boot id.
func (c *Cluster) newVM(h *Host, name string, addr netip.Addr) (*VM, error) {
	vm := &VM{
		Name:  name,
		Host:  h,
		Netns: c.Prefix + "-" + name,
		Veth:  c.Prefix + "-" + name,
		Addr:  addr,
		dir:   filepath.Join(c.Dir, "vm", name),
	}
	a4 := addr.As4()
	vm.MAC = net.HardwareAddr{0x02, 0x1e, a4[0], a4[1], a4[2], a4[3]}
	bootID, err := newUUID()
	if err != nil {
		return nil, fmt.Errorf("boot id for VM %s: %w", name, err)
	}
	vm.BootID = bootID.String()
	if err := os.MkdirAll(vm.dir, 0o700); err != nil {
		return nil, fmt.Errorf("VM %s: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(vm.dir, "boot_id"), []byte(vm.BootID+"\n"), 0o444); err != nil {
		return nil, fmt.Errorf("VM %s boot id: %w", name, err)
	}
	// The VM's /dev/shm, a directory in the machine's (tmpfs, and named so that Clean removes it
	// with whatever killed jobs left in it); mode as /dev/shm's own.
	shm := filepath.Join("/dev/shm", c.Prefix+"-"+name)
	vm.shm = shm
	if err := os.Mkdir(shm, 0o700); err != nil {
		return nil, fmt.Errorf("VM %s /dev/shm: %w", name, err)
	}
	if err := os.Chmod(shm, 0o777|os.ModeSticky); err != nil {
		return nil, fmt.Errorf("VM %s /dev/shm: %w", name, err)
	}
	return vm, nil
}

// newUUID returns a random (version 4) UUID, the kind the kernel's boot_id and libvirt's domain
// UUIDs are.
func newUUID() (hypervisor.UUID, error) {
	var u hypervisor.UUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

// writeHostsFile writes the /etc/hosts that commands in VMs see: every VM's name, and "root" for
// the bridge address.
func (c *Cluster) writeHostsFile() error {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	fmt.Fprintf(&b, "%s\troot\n", c.BridgeAddr)
	for _, vm := range c.VMs() {
		fmt.Fprintf(&b, "%s\t%s\n", vm.Addr, vm.Name)
	}
	if err := os.WriteFile(c.hostsFile(), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write hosts file: %w", err)
	}
	return nil
}

func (c *Cluster) hostsFile() string { return filepath.Join(c.Dir, "hosts") }

// RegionPath is where Create puts host h's region when Config.Regions is set, and the region
// directory of h's broker when Config.Broker is.
func (c *Cluster) RegionPath(h *Host) string {
	return filepath.Join("/dev/shm", c.Prefix+"-"+h.Name)
}

// createRegion creates h's region with the project's region package and announces it to h's VMs.
func (c *Cluster) createRegion(h *Host, size uint64) error {
	path := c.RegionPath(h)
	err := ivshmem.Create(path, ivshmem.Options{Size: size, HostID: h.ID, JobID: c.Prefix})
	if err != nil {
		return fmt.Errorf("region of host %s: %w", h.Name, err)
	}
	fmt.Fprintf(c.log, "host %s: region %s (%d bytes, host id %s)\n", h.Name, path, size, h.ID)
	return c.SetRegion(h, path)
}

// SetRegion makes path the region of host h: from now on everything started in h's VMs gets
// IVSHIM_REGION=path. An empty path withdraws the region. The cluster does not take ownership of
// a file it did not create. A host served by a broker gets its regions from the broker only.
func (c *Cluster) SetRegion(h *Host, path string) error {
	if h.cluster != c {
		return fmt.Errorf("set region %q: host %s is not in cluster %s", path, h.Name, c.Prefix)
	}
	if h.Broker != nil {
		return fmt.Errorf("set region %q: host %s is served by a broker", path, h.Name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, vm := range h.VMs {
		if err := writeOrRemove(filepath.Join(vm.dir, "region"), path); err != nil {
			return fmt.Errorf("set region of VM %s: %w", vm.Name, err)
		}
	}
	h.region = path
	return nil
}

// Region returns the path of the host's region, "" if it has none. With a broker it is where
// the broker keeps the region of the cluster's job.
func (h *Host) Region() string {
	h.cluster.mu.Lock()
	defer h.cluster.mu.Unlock()
	return h.region
}

// startBrokers registers every VM with its host's broker as a VM of the cluster's job, starts a
// broker per host and waits until every VM has the job's region plugged in.
func (c *Cluster) startBrokers(ctx context.Context, bin string, regionSize uint64, vcpus int) error {
	for _, h := range c.Hosts {
		b, err := c.newBroker(h, bin, regionSize, vcpus)
		if err != nil {
			return err
		}
		h.Broker, h.region = b, b.Region(c.Job)
		// The job's VMs are up before the broker's first pass, as when a scheduler starts them
		// together: the broker sizes the region for all of them (it is sized once).
		for _, vm := range h.VMs {
			if err := c.bootVM(vm); err != nil {
				return err
			}
		}
		if err := b.Start(ctx); err != nil {
			return err
		}
	}
	for _, vm := range c.VMs() {
		if err := vm.Host.Broker.waitDevice(ctx, vm, vm.Host.region); err != nil {
			return err
		}
	}
	return nil
}

// bootVM gives vm a random UUID, points IVSHIM_REGION and IVSHIM_VM_ID in it at its device and
// UUID, and registers it with its host's broker as a VM of the cluster's job.
func (c *Cluster) bootVM(vm *VM) error {
	u, err := newUUID()
	if err != nil {
		return fmt.Errorf("UUID of VM %s: %w", vm.Name, err)
	}
	vm.UUID = u
	b := vm.Host.Broker
	if err := vm.plugDevice(b); err != nil {
		return fmt.Errorf("boot VM %s: %w", vm.Name, err)
	}
	if err := writeFileAtomic(filepath.Join(vm.dir, "vm_id"), []byte(u.String())); err != nil {
		return fmt.Errorf("boot VM %s: %w", vm.Name, err)
	}
	vm.job = c.Job
	return b.register(vm, c.Job)
}

// plugDevice points the VM's device at the one b's broker makes for it and IVSHIM_REGION at the
// device. The device is a symlink in the VM's own directory, repointed when the VM moves: the
// path stays the same wherever the VM runs, as a guest finds its ivshmem device through PCI
// wherever it runs, so processes that keep running through a move (their environment stays)
// find the destination's region.
func (vm *VM) plugDevice(b *Broker) error {
	link := filepath.Join(vm.dir, "ivshmem")
	if err := netns.ReplaceSymlink(b.devicePath(vm), link); err != nil {
		return fmt.Errorf("device of VM %s: %w", vm.Name, err)
	}
	return writeFileAtomic(filepath.Join(vm.dir, "region"), []byte(link))
}

// linkRegion makes the region the VM's device leads to reachable inside the VM by its own path,
// for processes that run through a move: they keep the /dev/shm their agent set up at the source
// (a guest sees the destination's device through PCI). The region file gets a hard link at its
// path in the VM's /dev/shm directory (one tmpfs: the same file), where the device path resolves
// inside the VM; the previous move's link goes, so the VM reaches one region this way.
func (vm *VM) linkRegion(b *Broker) error {
	file, err := filepath.EvalSymlinks(b.devicePath(vm))
	if err != nil {
		return fmt.Errorf("region of VM %s: %w", vm.Name, err)
	}
	rel, ok := strings.CutPrefix(file, "/dev/shm/")
	if !ok {
		return nil
	}
	dst := filepath.Join(vm.shm, rel)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("region of VM %s: %w", vm.Name, err)
	}
	tmp := dst + ".new"
	os.Remove(tmp)
	if err := os.Link(file, tmp); err != nil {
		return fmt.Errorf("region of VM %s: %w", vm.Name, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("region of VM %s: %w", vm.Name, err)
	}
	if vm.linked != "" && vm.linked != dst {
		os.Remove(vm.linked)
	}
	vm.linked = dst
	return nil
}

// Device is what IVSHIM_REGION is in a VM whose host has a broker: a path of the VM's own that
// leads to Region, wherever the VM runs.
// (A VM of a host without a broker gets its host's region itself.)
func (vm *VM) Device() string {
	if vm.Host.Broker == nil {
		return vm.Host.Region()
	}
	return filepath.Join(vm.dir, "ivshmem")
}

// Region returns the file the VM's region is reached by whenever that path exists: its ivshmem
// device (a symlink its broker makes to the region file) when its host has a broker, else its
// host's region ("" if none).
func (vm *VM) Region() string {
	if b := vm.Host.Broker; b != nil {
		return b.devicePath(vm)
	}
	return vm.Host.Region()
}

// Job returns the job the VM is registered with on its host's broker ("" for none, and without
// a broker).
func (vm *VM) Job() string {
	vm.Host.cluster.mu.Lock()
	defer vm.Host.cluster.mu.Unlock()
	return vm.job
}

// SetJob moves the VM to job ("" for no job), as retagging a libvirt domain does, and waits until
// its host's broker has plugged that job's region into it, or unplugged every region for "".
// Commands started in the VM from then on see only the new job's region, or none; running ones
// keep what they mapped. It needs a broker.
func (vm *VM) SetJob(ctx context.Context, job string) error {
	b := vm.Host.Broker
	if b == nil {
		return fmt.Errorf("set job of VM %s: host %s has no broker", vm.Name, vm.Host.Name)
	}
	c := vm.Host.cluster
	c.mu.Lock()
	err := b.register(vm, job)
	if err == nil {
		vm.job = job
	}
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("set job of VM %s: %w", vm.Name, err)
	}
	want := ""
	if job != "" {
		want = b.Region(job)
	}
	return b.waitDevice(ctx, vm, want)
}

// writeOrRemove replaces f by content, or removes it when content is "".
func writeOrRemove(f, content string) error {
	if content != "" {
		return writeFileAtomic(f, []byte(content))
	}
	if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// writeFileAtomic replaces f so that a concurrent launch reads the old or the new content.
func writeFileAtomic(f string, data []byte) error {
	tmp := f + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, f)
}

// VMs returns all VMs, host by host.
func (c *Cluster) VMs() []*VM {
	var vms []*VM
	for _, h := range c.Hosts {
		vms = append(vms, h.VMs...)
	}
	return vms
}

// VM returns the VM with the given name or address.
func (c *Cluster) VM(name string) (*VM, error) {
	for _, vm := range c.VMs() {
		if vm.Name == name || vm.Addr.String() == name {
			return vm, nil
		}
	}
	return nil, fmt.Errorf("cluster %s: no VM %q", c.Prefix, name)
}

// Teardown powers off the VMs of hosts with a broker, waits until each running broker has
// removed its regions and stops it with SIGTERM; then it kills every process of the cluster's
// jobs and VMs and removes everything named with the cluster's prefix: network namespaces,
// links, /dev/shm files and directories (regions, brokers' region directories) and the
// temporary directory (brokers' state and sockets). A broker that misbehaves is reported after
// all of that is done. It is idempotent: once it has succeeded, later calls return nil; after an
// error in the cleanup, a later call tries again, and so does the cluster's watchdog when this
// process ends.
func (c *Cluster) Teardown() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.torn {
		return nil
	}
	fmt.Fprintf(c.log, "cluster %s: teardown\n", c.Prefix)
	var errs []error
	for _, h := range c.Hosts {
		if h.Broker != nil {
			errs = append(errs, h.Broker.shutdown())
		}
	}
	if err := Clean(c.Prefix); err != nil {
		// The watchdog stays: it tries again when this process ends, also if the caller drops c.
		parkWatchdog(c.watchdog)
		return errors.Join(append(errs, err)...)
	}
	c.torn = true
	errs = append(errs, stopWatchdog(c.watchdog))
	return errors.Join(errs...)
}
