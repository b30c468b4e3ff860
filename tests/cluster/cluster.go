package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

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
	// Regions makes Create create one region per host with ivshmem.Create. Leave it false when
	// something else (a broker) creates regions; it then announces them with SetRegion.
	Regions bool
	// RegionSize is the size of each created region: a power of two, at least 1 MiB
	// (default DefaultRegionSize).
	RegionSize uint64
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
	// Hosts are the emulated hosts, in order h0, h1, ...
	Hosts []*Host

	log io.Writer

	mu   sync.Mutex // guards torn and every Host's region
	torn bool
}

// Host is an emulated hypervisor node.
type Host struct {
	// Name is "h0", "h1", ...
	Name string
	// ID is the host id written into the host's region.
	ID ivshmem.HostID
	// Dir is a state directory for whatever manages the host (a broker instance).
	Dir string
	// VMs are the host's VMs, in order.
	VMs []*VM

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
	// Addr is the VM's address on eth0.
	Addr netip.Addr
	// BootID is the boot id the VM's processes read from /proc/sys/kernel/random/boot_id.
	BootID string

	dir string // holds boot_id and, while the host has a region, a file "region" with its path
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
	dir, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		return nil, fmt.Errorf("create cluster %s: %w", prefix, err)
	}
	c := &Cluster{
		Prefix:     prefix,
		Dir:        dir,
		Bridge:     prefix + "-br",
		Subnet:     subnet,
		BridgeAddr: subnet.Addr().Next(),
		Agent:      filepath.Join(dir, "agent"),
		log:        log,
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
	if cfg.Regions {
		for _, h := range c.Hosts {
			if err := c.createRegion(h, cfg.RegionSize); err != nil {
				return err
			}
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
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return nil, fmt.Errorf("boot id for VM %s: %w", name, err)
	}
	u[6] = u[6]&0x0f | 0x40 // version 4, as the kernel's own boot_id
	u[8] = u[8]&0x3f | 0x80
	x := hex.EncodeToString(u[:])
	vm.BootID = x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
	if err := os.MkdirAll(vm.dir, 0o700); err != nil {
		return nil, fmt.Errorf("VM %s: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(vm.dir, "boot_id"), []byte(vm.BootID+"\n"), 0o444); err != nil {
		return nil, fmt.Errorf("VM %s boot id: %w", name, err)
	}
	// The VM's /dev/shm, a directory in the machine's (tmpfs, and named so that Clean removes it
	// with whatever killed jobs left in it); mode as /dev/shm's own.
	shm := filepath.Join("/dev/shm", c.Prefix+"-"+name)
	if err := os.Mkdir(shm, 0o700); err != nil {
		return nil, fmt.Errorf("VM %s /dev/shm: %w", name, err)
	}
	if err := os.Chmod(shm, 0o777|os.ModeSticky); err != nil {
		return nil, fmt.Errorf("VM %s /dev/shm: %w", name, err)
	}
	return vm, nil
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

// RegionPath is where Create puts host h's region when Config.Regions is set.
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
// a file it did not create.
func (c *Cluster) SetRegion(h *Host, path string) error {
	if h.cluster != c {
		return fmt.Errorf("set region %q: host %s is not in cluster %s", path, h.Name, c.Prefix)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, vm := range h.VMs {
		f := filepath.Join(vm.dir, "region")
		var err error
		if path == "" {
			err = os.Remove(f)
			if errors.Is(err, os.ErrNotExist) {
				err = nil
			}
		} else {
			err = writeFileAtomic(f, []byte(path))
		}
		if err != nil {
			return fmt.Errorf("set region of VM %s: %w", vm.Name, err)
		}
	}
	h.region = path
	return nil
}

// Region returns the path of the host's region, "" if it has none.
func (h *Host) Region() string {
	h.cluster.mu.Lock()
	defer h.cluster.mu.Unlock()
	return h.region
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

// Teardown kills every process of the cluster's jobs and VMs and removes everything named with
// the cluster's prefix: network namespaces, links, /dev/shm files (regions, including ones a
// broker made under that prefix) and the temporary directory. It is idempotent: once it has
// succeeded, later calls return nil; after an error, a later call tries again.
func (c *Cluster) Teardown() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.torn {
		return nil
	}
	fmt.Fprintf(c.log, "cluster %s: teardown\n", c.Prefix)
	if err := Clean(c.Prefix); err != nil {
		return err
	}
	c.torn = true
	return nil
}
