package daemon_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/broker/daemon"
	"ivshim.dev/ivshim/ivshmem"
)

func TestExampleConfigParses(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "dist", "broker.conf.example"))
	if err != nil {
		t.Fatal(err)
	}
	// The example names libvirt-qemu:kvm, which exist only where libvirt is installed.
	text := strings.NewReplacer("region_owner = libvirt-qemu", "region_owner = 64055", "region_group = kvm", "region_group = 993").Replace(string(b))
	if text == string(b) {
		t.Fatal("the example no longer names libvirt-qemu:kvm; update this test")
	}
	c, err := daemon.Parse(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if c.Hypervisor != "libvirt" || c.RegionDir != "/dev/shm" || c.RegionSize != 64<<20 || c.RegionMode != 0o660 || !c.Chown {
		t.Errorf("example config = %+v", c)
	}
}

func TestNetnsConfig(t *testing.T) {
	c, err := daemon.Parse(strings.NewReader(`
# an emulated host
hypervisor = netns
netns_dir = /tmp/iv12345-h0/netns
region_dir = /dev/shm/iv12345-h0
host_id = 01234567-89ab-cdef-0123-456789abcdef
region_size = 1M
region_mode = 0600
socket = /tmp/iv12345-h0/broker.sock
resync_interval = 2s
log_level = debug
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Chown || c.UID != -1 || c.GID != -1 {
		t.Errorf("netns config chowns by default: %+v", c)
	}
	if c.RegionSize != 1<<20 || c.ResyncInterval != 2*time.Second || c.HostID.String() != "01234567-89ab-cdef-0123-456789abcdef" {
		t.Errorf("config = %+v", c)
	}
	if bc := c.BrokerConfig(c.HostID); bc.RegionDir != c.RegionDir || bc.Mode != 0o600 {
		t.Errorf("broker config = %+v", bc)
	}
	if !c.CountTraffic {
		t.Error("traffic accounting is not on by default")
	}
	if c, err := daemon.Parse(strings.NewReader("region_owner = 0\nregion_group = 0\ntraffic_accounting = off\n")); err != nil || c.CountTraffic {
		t.Errorf("traffic_accounting = off: %+v, %v", c.CountTraffic, err)
	}
}

func TestNumericOwner(t *testing.T) {
	c, err := daemon.Parse(strings.NewReader("region_owner = 64055\nregion_group = 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Chown || c.UID != 64055 || c.GID != 0 {
		t.Errorf("config = %+v", c)
	}
}

func TestBadConfigs(t *testing.T) {
	base := "region_owner = 0\nregion_group = 0\n"
	for want, text := range map[string]string{
		"unknown key":             "colour = blue",
		"set twice":               "socket = /a\nsocket = /b",
		"want key = value":        "just words",
		"want libvirt or netns":   "hypervisor = xen",
		"must be /dev/shm":        "region_dir = /tmp",
		"netns_dir":               "hypervisor = netns",
		"absolute path":           "socket = relative.sock",
		"region_mode":             "region_mode = 0664",
		"region_mode ":            "region_mode = 0060",
		"region_mode  ":           "region_mode = rw",
		"power of two":            "region_size = 3M",
		"region_size":             "region_size = 12Q",
		"at least":                "region_size = 4K",
		"resync_interval":         "resync_interval = 1ms",
		"log_level":               "log_level = loud",
		"host_id":                 "host_id = nope",
		"region_owner":            "region_owner = no-such-user-ivshim",
		"region_size   ":          "region_size = 99999999999999999999G",
		"host_id ":                "host_id = 00000000-0000-0000-0000-000000000000",
		"region_group":            "region_group = no-such-group-ivshim",
		"longer than":             strings.Repeat("# comment\n", 10000),
		"region_mode    ":         "region_mode = 01660",
		"want libvirt or netns  ": "hypervisor = ",
		"traffic_accounting":      "traffic_accounting = maybe",
		"vf_pfs":                  "vf_pfs = 0000:3b:00.0, 3b:00.0",
		"absolute path ":          "sysfs = sys",
	} {
		_, err := daemon.Parse(strings.NewReader(base + text))
		if err == nil || !strings.Contains(err.Error(), strings.TrimSpace(want)) {
			t.Errorf("config %.60q: error %v, want one mentioning %q", text, err, strings.TrimSpace(want))
		}
	}
}

func TestVFPFs(t *testing.T) {
	c, err := daemon.Parse(strings.NewReader("region_owner = 0\nregion_group = 0\nvf_pfs = 0000:3b:00.0, 0000:d8:00.1\nsysfs = /host/sys\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := c.BrokerConfig(c.HostID)
	if len(b.VFPFs) != 2 || b.VFPFs[0].String() != "0000:3b:00.0" || b.VFPFs[1].String() != "0000:d8:00.1" || b.Sysfs != "/host/sys" {
		t.Errorf("vf_pfs, sysfs = %v, %q", b.VFPFs, b.Sysfs)
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := daemon.Load(filepath.Join(t.TempDir(), "none.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestEmulatedHostConfig(t *testing.T) {
	id, err := ivshmem.NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	h := daemon.EmulatedHost{NetnsDir: "/tmp/x/netns", RegionDir: "/dev/shm/x-h0", Socket: "/tmp/x/h0.sock", HostID: id, RegionSize: 4 << 20}
	c, err := daemon.Parse(strings.NewReader(h.ConfigText()))
	if err != nil {
		t.Fatalf("%v\n%s", err, h.ConfigText())
	}
	if c.Hypervisor != "netns" || c.NetnsDir != h.NetnsDir || c.RegionDir != h.RegionDir || c.Socket != h.Socket ||
		c.HostID != id || c.RegionSize != 4<<20 || c.Chown || c.RegionMode != 0o600 {
		t.Errorf("parsed %+v from\n%s", c, h.ConfigText())
	}
}
