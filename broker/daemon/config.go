package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"ivshim.dev/ivshim/broker"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/libvirt"
	"ivshim.dev/ivshim/ivshmem"
)

// DefaultConfigPath is where ivshim-broker looks for its configuration.
const DefaultConfigPath = "/etc/ivshim/broker.conf"

// maxConfig bounds the configuration file.
const maxConfig = 64 << 10

// Config is the parsed configuration file.
type Config struct {
	Hypervisor     string // "libvirt" or "netns"
	LibvirtURI     string
	NetnsDir       string
	RegionDir      string
	HostID         ivshmem.HostID // zero: ask the hypervisor
	RegionSize     uint64
	RegionCap      uint64
	RegionMode     os.FileMode
	Chown          bool
	UID, GID       int // -1: leave
	Socket         string
	MetricsListen  string
	ResyncInterval time.Duration
	// MigrateDeadline bounds a migration's drain and its wait for the destination's region.
	MigrateDeadline time.Duration
	LogLevel        zapcore.Level
	// CountTraffic attaches the eBPF counter to the VMs' interfaces (traffic_accounting).
	CountTraffic bool
	// Sysfs is where the broker reads the host's SR-IOV VFs (sysfs; tests point it elsewhere).
	Sysfs string
	// VFPFs lists the PFs whose host-bound VFs the broker may give to VMs (vf_pfs).
	VFPFs []hypervisor.PCIAddr
}

// BrokerConfig is the broker core's part of c, with host as the host id.
func (c Config) BrokerConfig(host ivshmem.HostID) broker.Config {
	return broker.Config{
		RegionDir: c.RegionDir, RegionSize: c.RegionSize, RegionCap: c.RegionCap, HostID: host, Mode: c.RegionMode,
		Chown: c.Chown, UID: c.UID, GID: c.GID, Resync: c.ResyncInterval, MigrateDeadline: c.MigrateDeadline,
		Sysfs: c.Sysfs, VFPFs: c.VFPFs,
	}
}

var defaults = map[string]string{
	"hypervisor":         "libvirt",
	"libvirt_uri":        libvirt.DefaultURI,
	"netns_dir":          "",
	"region_dir":         "/dev/shm",
	"host_id":            "",
	"region_size":        "64M",
	"region_cap":         "256M",
	"region_owner":       "libvirt-qemu",
	"region_group":       "kvm",
	"region_mode":        "0660",
	"socket":             "/run/ivshim/broker.sock",
	"metrics_listen":     "",
	"resync_interval":    "30s",
	"migrate_deadline":   "10s",
	"log_level":          "info",
	"traffic_accounting": "on",
	"sysfs":              "/sys",
	"vf_pfs":             "",
}

// Load reads and parses the configuration file at path.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	c, err := Parse(io.LimitReader(f, maxConfig+1))
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse parses a configuration file's text.
func Parse(r io.Reader) (Config, error) {
	set := map[string]string{}
	sc := bufio.NewScanner(r)
	n, size := 0, 0
	for sc.Scan() {
		n++
		size += len(sc.Bytes()) + 1
		if size > maxConfig {
			return Config{}, fmt.Errorf("longer than %d bytes", maxConfig)
		}
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !ok {
			return Config{}, fmt.Errorf("line %d: want key = value", n)
		}
		if _, known := defaults[key]; !known {
			return Config{}, fmt.Errorf("line %d: unknown key %q", n, key)
		}
		if _, dup := set[key]; dup {
			return Config{}, fmt.Errorf("line %d: %s set twice", n, key)
		}
		set[key] = value
	}
	if err := sc.Err(); err != nil {
		return Config{}, err
	}
	return build(set)
}

// build applies defaults to the keys that were set and checks every value.
func build(set map[string]string) (Config, error) {
	get := func(k string) string {
		if v, ok := set[k]; ok {
			return v
		}
		if set["hypervisor"] == "netns" && (k == "region_owner" || k == "region_group") {
			return ""
		}
		return defaults[k]
	}
	c := Config{
		Hypervisor: get("hypervisor"), LibvirtURI: get("libvirt_uri"), NetnsDir: get("netns_dir"),
		RegionDir: get("region_dir"), Socket: get("socket"), MetricsListen: get("metrics_listen"),
		Sysfs: get("sysfs"),
	}
	var errs []error
	bad := func(key string, err error) { errs = append(errs, fmt.Errorf("%s: %w", key, err)) }
	switch c.Hypervisor {
	case "libvirt":
		if c.RegionDir != "/dev/shm" {
			bad("region_dir", errors.New("must be /dev/shm with libvirt, which gives QEMU mem-path=/dev/shm/NAME"))
		}
	case "netns":
		if c.NetnsDir == "" {
			bad("netns_dir", errors.New("required with hypervisor = netns"))
		}
	default:
		bad("hypervisor", fmt.Errorf("%q: want libvirt or netns", c.Hypervisor))
	}
	for _, k := range []string{"region_dir", "socket", "sysfs"} {
		if v := get(k); !strings.HasPrefix(v, "/") {
			bad(k, fmt.Errorf("%q: want an absolute path", v))
		}
	}
	for _, f := range strings.FieldsFunc(get("vf_pfs"), func(r rune) bool { return r == ',' || r == ' ' }) {
		a, err := hypervisor.ParsePCIAddr(f)
		if err != nil {
			bad("vf_pfs", err)
			continue
		}
		c.VFPFs = append(c.VFPFs, a)
	}
	if v := get("host_id"); v != "" {
		id, err := ivshmem.ParseHostID(v)
		if err != nil {
			bad("host_id", err)
		}
		c.HostID = id
	}
	size, err := parseSize(get("region_size"))
	if err != nil {
		bad("region_size", err)
	}
	c.RegionSize = size
	if c.RegionCap, err = parseSize(get("region_cap")); err != nil {
		bad("region_cap", err)
	} else if c.RegionCap < c.RegionSize {
		bad("region_cap", fmt.Errorf("%d bytes: below region_size (%d)", c.RegionCap, c.RegionSize))
	}
	mode, err := strconv.ParseUint(get("region_mode"), 8, 32)
	if err != nil || mode&^0o777 != 0 || mode&0o007 != 0 || mode&0o600 != 0o600 {
		bad("region_mode", fmt.Errorf("%q: want octal permission bits including 0600 and none for others", get("region_mode")))
	}
	c.RegionMode = os.FileMode(mode)
	c.UID, err = lookupID(get("region_owner"), func(s string) (string, error) {
		u, err := user.Lookup(s)
		if err != nil {
			return "", err
		}
		return u.Uid, nil
	})
	if err != nil {
		bad("region_owner", err)
	}
	c.GID, err = lookupID(get("region_group"), func(s string) (string, error) {
		g, err := user.LookupGroup(s)
		if err != nil {
			return "", err
		}
		return g.Gid, nil
	})
	if err != nil {
		bad("region_group", err)
	}
	c.Chown = c.UID >= 0 || c.GID >= 0
	c.ResyncInterval, err = time.ParseDuration(get("resync_interval"))
	if err == nil && c.ResyncInterval < 100*time.Millisecond {
		err = fmt.Errorf("%v is below 100ms", c.ResyncInterval)
	}
	if err != nil {
		bad("resync_interval", err)
	}
	c.MigrateDeadline, err = time.ParseDuration(get("migrate_deadline"))
	if err == nil && (c.MigrateDeadline < time.Millisecond || c.MigrateDeadline > time.Hour) {
		err = fmt.Errorf("%v: want 1ms..1h", c.MigrateDeadline)
	}
	if err != nil {
		bad("migrate_deadline", err)
	}
	if c.LogLevel, err = zapcore.ParseLevel(get("log_level")); err != nil {
		bad("log_level", err)
	}
	switch v := get("traffic_accounting"); v {
	case "on", "off":
		c.CountTraffic = v == "on"
	default:
		bad("traffic_accounting", fmt.Errorf("%q: want on or off", v))
	}
	return c, errors.Join(errs...)
}

// parseSize parses a byte count with an optional binary K, M or G suffix into a power of two
// of at least ivshmem.MinRegionSize.
func parseSize(s string) (uint64, error) {
	shift := 0
	switch {
	case strings.HasSuffix(s, "K"):
		shift = 10
	case strings.HasSuffix(s, "M"):
		shift = 20
	case strings.HasSuffix(s, "G"):
		shift = 30
	}
	if shift > 0 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > 1<<40>>shift {
		return 0, fmt.Errorf("%q: want a number of bytes, optionally with K, M or G", s)
	}
	n <<= shift
	if n < ivshmem.MinRegionSize || n&(n-1) != 0 {
		return 0, fmt.Errorf("%d bytes: want a power of two of at least %d", n, ivshmem.MinRegionSize)
	}
	return n, nil
}

// lookupID resolves a user or group given by name or number; "" gives -1 (leave unchanged).
func lookupID(s string, byName func(string) (string, error)) (int, error) {
	if s == "" {
		return -1, nil
	}
	if _, err := strconv.ParseUint(s, 10, 31); err != nil {
		id, err := byName(s)
		if err != nil {
			return 0, err
		}
		s = id
	}
	n, err := strconv.ParseUint(s, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("id %q: %w", s, err)
	}
	return int(n), nil
}

// EmulatedHost describes the broker of one host of the emulated cluster (tests/cluster).
type EmulatedHost struct {
	NetnsDir   string         // the host's netns registry
	RegionDir  string         // a directory of its own, e.g. /dev/shm/PREFIX-h0
	Socket     string         // its API socket
	HostID     ivshmem.HostID // distinct per host
	RegionSize uint64         // 0: the default
	RegionCap  uint64         // 0: the default, or RegionSize if that is larger
}

// ConfigText is the configuration file of h's broker.
func (h EmulatedHost) ConfigText() string {
	size, limit := defaults["region_size"], defaults["region_cap"]
	if h.RegionSize != 0 {
		size = strconv.FormatUint(h.RegionSize, 10)
		if dc, _ := parseSize(limit); h.RegionSize > dc {
			limit = size
		}
	}
	if h.RegionCap != 0 {
		limit = strconv.FormatUint(h.RegionCap, 10)
	}
	return fmt.Sprintf("hypervisor = netns\nnetns_dir = %s\nregion_dir = %s\nhost_id = %s\nregion_size = %s\nregion_cap = %s\n"+
		"region_mode = 0600\nsocket = %s\nresync_interval = 1s\n", h.NetnsDir, h.RegionDir, h.HostID, size, limit, h.Socket)
}
