package libvirtreal

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/hypervisor"
)

// migrateDeadline bounds the drain and the attach of each migration in this test: under TCG on
// a loaded machine the destination broker's hot-plug and the guest's reaction take seconds.
const migrateDeadline = 60 * time.Second

// host is one of the two libvirt hosts of TestLibvirtMigrate: a private libvirtd, its own
// /dev/shm (a directory of the real /dev/shm bound over /dev/shm in its mount namespace) and a
// broker running in that namespace.
type host struct {
	name, uuid string
	d          *libvirtd
	shm        string // what the host's /dev/shm is, seen from the test
	socket     string // its broker's API
	log        string
}

func newHost(ctx context.Context, t *testing.T, bin, dir, name string) *host {
	t.Helper()
	shm, err := os.MkdirTemp("/dev/shm", "ivshim-migtest-"+name+"-")
	if err != nil {
		t.Skipf("no /dev/shm to give the host %s its own: %v", name, err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	if err := os.Chmod(shm, 0o1777); err != nil {
		t.Fatal(err)
	}
	h := &host{name: name, uuid: hypervisor.UUID(randomBytes(t)).String(), shm: shm, log: filepath.Join(dir, name+"-broker.log")}
	h.d = startLibvirtd(ctx, t, bin, filepath.Join(dir, name+"-libvirt"), h.uuid, [2]string{shm, "/dev/shm"})
	return h
}

func (h *host) region(job string) string { return filepath.Join(h.shm, hypervisor.RegionName(job)) }

// startHostBrokers builds the broker and runs one for each of hosts once its libvirtd
// answers, in that daemon's namespace, with regions of size bytes.
func startHostBrokers(ctx context.Context, t *testing.T, dir string, size int, hosts ...*host) {
	t.Helper()
	bin := goBuild(ctx, t, filepath.Join(dir, "ivshim-broker"), "ivshim.dev/ivshim/broker/cmd/ivshim-broker")
	for _, h := range hosts {
		h.d.awaitReady(t)
		bdir := filepath.Join(dir, h.name+"-broker")
		if err := os.Mkdir(bdir, 0o700); err != nil {
			t.Fatal(err)
		}
		h.socket = startBroker(ctx, t, bin, bdir, h.log, h.d.URI(), size, h.d.nsenter()...)
	}
}

// TestLibvirtMigrate runs two libvirt hosts on this machine (private libvirtds with their own
// host UUIDs and /dev/shm, each with its broker) and a real guest of a job on the first. The
// first broker's coordinator migrates the guest live to the second host and back: each time
// the region is unplugged before QEMU migrates, the destination's broker plugs its own region
// of the job, the guest reads that region's header (the destination's host UUID) through the
// new device's BAR2, and the source removes its region once no VM of the job is left there.
func TestLibvirtMigrate(t *testing.T) {
	libvirtdBin := requireHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*testTimeout)
	defer cancel()
	start := time.Now()
	dir := testDir(t)
	a, b := newHost(ctx, t, libvirtdBin, dir, "a"), newHost(ctx, t, libvirtdBin, dir, "b")
	g := newGuest(ctx, t, dir, "migtest")
	g.appendTTY = true
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("guest console, brokers, QEMU and libvirtd logs:\n%s", tails(g.tty, a.log, b.log,
				filepath.Join(a.d.dir, "log", "qemu", g.name+".log"), filepath.Join(b.d.dir, "log", "qemu", g.name+".log"),
				a.d.out(), a.d.log(), b.d.out(), b.d.log()))
		}
	})
	buildInitramfs(ctx, t, dir, g.initrd)
	startHostBrokers(ctx, t, dir, regionSize, a, b)
	connA, err := lv.NewConnect(a.d.URI())
	if err != nil {
		t.Fatalf("connect to host a: %v", err)
	}
	t.Cleanup(func() { connA.Close() })
	connB, err := lv.NewConnect(b.d.URI())
	if err != nil {
		t.Fatalf("connect to host b: %v", err)
	}
	t.Cleanup(func() { connB.Close() })
	t.Logf("set up in %v: hosts a (%s) and b (%s)", time.Since(start).Round(time.Millisecond), a.uuid, b.uuid)

	domA := startGuest(t, connA, g)
	t.Cleanup(func() { // wherever the guest ended up
		if dom, err := connB.LookupDomainByUUIDString(g.uuid); err == nil {
			dom.Destroy()
			dom.Free()
		}
	})
	con := &console{path: g.tty}
	waitRegion(ctx, t, a.region(g.job), true)
	waitPlugged(ctx, t, domA, g, true)
	checkRegionFile(t, a.region(g.job), g, a.uuid)
	addr := waitGuestRegion(ctx, t, con, guestTimeout, g, a.uuid)
	t.Logf("guest on a sees a's region at PCI %s", addr)

	for i, hop := range []struct{ from, to *host }{{a, b}, {b, a}} {
		step := time.Now()
		res, err := api.NewClient(hop.from.socket).Migrate(ctx, api.MigrateRequest{VM: g.name, Destination: hop.to.d.URI(),
			DeadlineMS: migrateDeadline.Milliseconds()})
		if err != nil || !res.Migrated {
			t.Fatalf("migration %d, %s -> %s: %+v: %v", i, hop.from.name, hop.to.name, res, err)
		}
		t.Logf("migration %s -> %s: %+v in %v", hop.from.name, hop.to.name, res.Phases, time.Since(step).Round(time.Millisecond))
		con.wait(ctx, t, deviceTimeout, goneLine)
		addr := waitGuestRegion(ctx, t, con, migrateDeadline, g, hop.to.uuid)
		t.Logf("guest on %s sees %s's region at PCI %s, %v after the request", hop.to.name, hop.to.name, addr,
			time.Since(step).Round(time.Millisecond))
		checkRegionFile(t, hop.to.region(g.job), g, hop.to.uuid)
		waitRegion(ctx, t, hop.from.region(g.job), false)
		conn := map[*host]*lv.Connect{a: connA, b: connB}[hop.to]
		dom, err := conn.LookupDomainByUUIDString(g.uuid)
		if err != nil {
			t.Fatalf("guest not at %s after the migration: %v", hop.to.name, err)
		}
		if active, err := dom.IsActive(); err != nil || !active {
			t.Errorf("guest at %s: active %t, %v", hop.to.name, active, err)
		}
		dom.Free()
	}
	if err := domA.Destroy(); err != nil {
		t.Fatalf("destroy the guest: %v", err)
	}
	waitRegion(ctx, t, a.region(g.job), false)
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}
