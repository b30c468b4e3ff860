package ivshmem

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// fakeSysfs builds /bus/pci/devices with the given devices; a device's resource2 is a copy of
// the region file src when src is not empty.
func fakeSysfs(t *testing.T, devs map[string][3]string) string {
	t.Helper()
	root := t.TempDir()
	for addr, d := range devs {
		dir := filepath.Join(root, "bus", "pci", "devices", addr)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "vendor"), []byte(d[0]+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "device"), []byte(d[1]+"\n"), 0o644)
		if d[2] != "" {
			b, err := os.ReadFile(d[2])
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, "resource2"), b, 0o600)
		}
	}
	return root
}

func TestDiscoverPCI(t *testing.T) {
	_, src, o := newRegion(t)
	root := fakeSysfs(t, map[string][3]string{
		"0000:00:01.0": {"0x8086", "0x1237", ""},
		"0000:00:03.0": {"0x1af4", "0x1000", ""}, // virtio-net, same vendor
		"0000:00:05.0": {"0x1af4", "0x1110", src},
		"0000:00:06.0": {"0x1af4", "0x1110", ""}, // no BAR2
		"0000:00:07.0": {"garbage", "0x1110", src},
	})
	devs, err := FindPCI(root)
	if err != nil || len(devs) != 1 || devs[0].Addr != "0000:00:05.0" {
		t.Fatalf("FindPCI = %+v, %v", devs, err)
	}
	r, err := Discover(noenv, root, "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.JobID() != o.JobID || !strings.HasSuffix(r.Source(), "resource2") {
		t.Fatalf("discovered %s job %s", r.Source(), r.JobID())
	}
	if _, err := Discover(noenv, root, "other-job"); !errors.Is(err, ErrNoRegion) {
		t.Fatalf("other job: %v", err)
	}
	if _, err := Discover(noenv, t.TempDir(), ""); !errors.Is(err, ErrNoRegion) {
		t.Fatalf("empty sysfs: %v", err)
	}
}

func TestDiscoverPrefersEnvAndRejectsCorrupt(t *testing.T) {
	_, src, _ := newRegion(t)
	env := func(k string) string {
		if k == "IVSHIM_REGION" {
			return src
		}
		return ""
	}
	r, err := Discover(env, "/nonexistent", "")
	if err != nil || r.Source() != src {
		t.Fatalf("Discover via env: %v", err)
	}
	r.Close()
	// IVSHIM_REGION names nothing now (a dangling link: the device of a VM being migrated is
	// unplugged): no region, not an error of the file; one that is not a region stays an error.
	gone := filepath.Join(t.TempDir(), "device")
	if err := os.Symlink(filepath.Join(t.TempDir(), "unplugged"), gone); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path   string
		absent bool
	}{{gone, true}, {filepath.Join(t.TempDir(), "never"), true}, {corruptCopy(t, src), false}, {t.TempDir(), false}} {
		_, err = Discover(func(k string) string { return map[string]string{"IVSHIM_REGION": c.path}[k] }, "/nonexistent", "")
		if c.absent && (!errors.Is(err, ErrNoRegion) || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "IVSHIM_REGION "+c.path+" does not exist")) {
			t.Errorf("IVSHIM_REGION %s, absent: %v, want ErrNoRegion wrapping fs.ErrNotExist", c.path, err)
		}
		if !c.absent && (err == nil || errors.Is(err, ErrNoRegion)) {
			t.Errorf("IVSHIM_REGION %s, no region file: %v, want an error that is not ErrNoRegion", c.path, err)
		}
	}
	// The magic is right, the rest is not: an ivshim region that cannot be trusted.
	bad := corruptCopy(t, src)
	root := fakeSysfs(t, map[string][3]string{"0000:00:05.0": {"0x1af4", "0x1110", bad}})
	_, err = Discover(func(string) string { return "" }, root, "")
	if err == nil || errors.Is(err, ErrNoRegion) || !errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotIvshim) {
		t.Fatalf("corrupt device: %v, want a hard ErrInvalid", err)
	}
	for _, want := range []string{"ivshmem device 0000:00:05.0 holds a corrupt ivshim region", "format version 99"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("corrupt device: %q lacks %q", err, want)
		}
	}
}

// corruptCopy is a copy of the region file src with a format version this build does not read.
func corruptCopy(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	b[8] = 99 // version, after the 8-byte magic
	p := filepath.Join(t.TempDir(), "corrupt")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// foreignFile is what an unrelated ivshmem device's BAR may hold: zeros, or someone else's
// data.
func foreignFile(t *testing.T, fill byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "foreign")
	if err := os.WriteFile(p, bytes.Repeat([]byte{fill}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func noenv(string) string { return "" }

func TestOpenTellsForeignFromCorrupt(t *testing.T) {
	_, src, _ := newRegion(t)
	for _, c := range []struct {
		name    string
		path    string
		foreign bool
	}{
		{"zeros", foreignFile(t, 0), true},
		{"other data", foreignFile(t, 0xa5), true},
		{"too short for the magic", func() string {
			p := filepath.Join(t.TempDir(), "short")
			os.WriteFile(p, []byte("IVS"), 0o600)
			return p
		}(), true},
		{"bad version", corruptCopy(t, src), false},
	} {
		_, err := Open(c.path)
		if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotIvshim) != c.foreign {
			t.Errorf("%s: Open = %v; want ErrInvalid, ErrNotIvshim %v", c.name, err, c.foreign)
		}
	}
}

func TestDiscoverSkipsForeignDevice(t *testing.T) {
	_, src, o := newRegion(t)
	zeros, other := foreignFile(t, 0), foreignFile(t, 0xa5)

	// Only unrelated ivshmem devices: no region, pass-through, with the reason.
	root := fakeSysfs(t, map[string][3]string{
		"0000:00:04.0": {"0x1af4", "0x1110", zeros},
		"0000:00:05.0": {"0x1af4", "0x1110", other},
	})
	_, err := Discover(noenv, root, "")
	if !errors.Is(err, ErrNoRegion) || !errors.Is(err, ErrDeviceUnusable) {
		t.Fatalf("foreign devices only: %v, want ErrNoRegion and ErrDeviceUnusable", err)
	}
	for _, want := range []string{"0000:00:04.0 holds no ivshim region", "0000:00:05.0 holds no ivshim region", "magic 0x0,", "magic 0xa5a5a5a5a5a5a5a5"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("foreign devices only: %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("foreign devices only: %q spans lines", err)
	}

	// An unrelated device next to the job's: the job's is used, before and after it.
	for _, addr := range []string{"0000:00:03.0", "0000:00:09.0"} {
		root = fakeSysfs(t, map[string][3]string{
			addr:           {"0x1af4", "0x1110", zeros},
			"0000:00:05.0": {"0x1af4", "0x1110", src},
		})
		r, err := Discover(noenv, root, o.JobID)
		if err != nil {
			t.Fatalf("foreign at %s and good device: %v", addr, err)
		}
		if r.JobID() != o.JobID || !strings.Contains(r.Source(), "0000:00:05.0") {
			t.Errorf("foreign at %s: chose %s", addr, r.Source())
		}
		r.Close()
	}

	// An explicit IVSHIM_REGION that is not a region is an error, not a pass-through.
	_, err = Discover(func(k string) string {
		if k == "IVSHIM_REGION" {
			return zeros
		}
		return ""
	}, root, "")
	if err == nil || errors.Is(err, ErrNoRegion) || !strings.Contains(err.Error(), "IVSHIM_REGION: open region "+zeros) {
		t.Fatalf("IVSHIM_REGION naming a foreign file: %v, want a hard error", err)
	}
}

// deniedOpen is Open, except that the files in denied fail as a root-only resource2 does for a
// user: with EACCES from open(2), or with EPERM from mmap(2) (kernel lockdown). The tests run
// as root, where chmod 000 denies nothing, so the failure is injected here; what is tested is
// what Discover does with such an error, not how the kernel produces it.
func deniedOpen(denied map[string]syscall.Errno) func(string) (*Region, error) {
	return func(path string) (*Region, error) {
		switch e := denied[path]; e {
		case 0:
			return Open(path)
		case syscall.EACCES:
			return nil, fmt.Errorf("open region: %w", &fs.PathError{Op: "open", Path: path, Err: e})
		default:
			return nil, fmt.Errorf("open region %s: map: %w", path, e)
		}
	}
}

func TestDiscoverPermissionDenied(t *testing.T) {
	_, src, o := newRegion(t)
	_, other, _ := newRegion(t)
	root := fakeSysfs(t, map[string][3]string{
		"0000:00:05.0": {"0x1af4", "0x1110", src},
		"0000:00:06.0": {"0x1af4", "0x1110", other},
	})
	res := func(addr string) string { return filepath.Join(root, "bus", "pci", "devices", addr, "resource2") }

	for _, e := range []syscall.Errno{syscall.EACCES, syscall.EPERM} {
		// Every device denied: pass-through, naming the devices and the cure.
		d := Discovery{Getenv: noenv, Sysfs: root, Open: deniedOpen(map[string]syscall.Errno{res("0000:00:05.0"): e, res("0000:00:06.0"): e})}
		_, err := d.Find()
		if !errors.Is(err, ErrNoRegion) || !errors.Is(err, ErrDeviceUnusable) {
			t.Fatalf("%v on every device: %v, want ErrNoRegion and ErrDeviceUnusable", e, err)
		}
		for _, want := range []string{"0000:00:05.0: open region", "0000:00:06.0: open region", e.Error(), "udev rule"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%v on every device: %q lacks %q", e, err, want)
			}
		}

		// One denied, the other readable: the readable one is used.
		d.Open = deniedOpen(map[string]syscall.Errno{res("0000:00:06.0"): e})
		r, err := d.Find()
		if err != nil || r.Source() != res("0000:00:05.0") || r.JobID() != o.JobID {
			t.Fatalf("%v on one device: %v", e, err)
		}
		r.Close()
	}

	// A denied device does not hide a corrupt one: that stays fatal.
	bad := corruptCopy(t, src)
	root2 := fakeSysfs(t, map[string][3]string{
		"0000:00:05.0": {"0x1af4", "0x1110", bad},
		"0000:00:06.0": {"0x1af4", "0x1110", other},
	})
	d := Discovery{Getenv: noenv, Sysfs: root2, Open: deniedOpen(map[string]syscall.Errno{
		filepath.Join(root2, "bus", "pci", "devices", "0000:00:06.0", "resource2"): syscall.EACCES})}
	if _, err := d.Find(); err == nil || errors.Is(err, ErrNoRegion) || !strings.Contains(err.Error(), "0000:00:05.0 holds a corrupt ivshim region") {
		t.Fatalf("denied and corrupt: %v, want the corrupt device's error", err)
	}

	// IVSHIM_REGION is the user's order: a permission error there is fatal.
	d = Discovery{Getenv: func(k string) string {
		if k == "IVSHIM_REGION" {
			return src
		}
		return ""
	}, Sysfs: root, Open: deniedOpen(map[string]syscall.Errno{src: syscall.EACCES})}
	_, err := d.Find()
	if err == nil || errors.Is(err, ErrNoRegion) || !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "IVSHIM_REGION: open region: open "+src) {
		t.Fatalf("IVSHIM_REGION denied: %v, want a hard permission error naming the file", err)
	}
}

// TestDiscoverPermissionDeniedForReal checks the same with a real mode 0600 resource2 owned
// by another user, as in a guest's sysfs. Only a user without CAP_DAC_OVERRIDE is denied, so
// when the tests run as root this test runs itself again, as the user nobody, from a copy of
// the test binary in a directory that user can reach.
func TestDiscoverPermissionDeniedForReal(t *testing.T) {
	if root := os.Getenv(deniedSysfsVar); root != "" { // the child, as nobody
		_, err := Discover(noenv, root, "")
		if !errors.Is(err, ErrNoRegion) || !errors.Is(err, ErrDeviceUnusable) || !strings.Contains(err.Error(), "0000:00:05.0: open region: open "+root) || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("uid %d, mode 0600 resource2 owned by root: %v, want a pass-through", os.Getuid(), err)
		}
		return
	}
	_, src, _ := newRegion(t)
	dir, err := os.MkdirTemp("", "ivshim-denied-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "bus", "pci", "devices", "0000:00:05.0")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dev, "vendor"), []byte("0x1af4\n"), 0o644)
	os.WriteFile(filepath.Join(dev, "device"), []byte("0x1110\n"), 0o644)
	if err := os.WriteFile(filepath.Join(dev, "resource2"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() != 0 {
		if err := os.Chmod(filepath.Join(dev, "resource2"), 0); err != nil {
			t.Fatal(err)
		}
		_, err := Discover(noenv, dir, "")
		if !errors.Is(err, ErrNoRegion) || !errors.Is(err, ErrDeviceUnusable) || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("mode 000 resource2: %v, want a pass-through", err)
		}
		return
	}
	const nobody = 65534
	bin := filepath.Join(dir, "pci.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755) // MkdirTemp made it 0700
	cmd := exec.Command(bin, "-test.run=^TestDiscoverPermissionDeniedForReal$", "-test.v")
	cmd.Env = append(os.Environ(), deniedSysfsVar+"="+dir)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if ee := (*exec.ExitError)(nil); err != nil && !errors.As(err, &ee) {
		t.Skipf("cannot run the test as uid %d (%v): covered by TestDiscoverPermissionDenied's injected errors", nobody, err)
	}
	if err != nil {
		t.Fatalf("as uid %d: %v\n%s", nobody, err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestDiscoverPermissionDeniedForReal") {
		t.Fatalf("as uid %d, the test did not run:\n%s", nobody, out)
	}
}

// deniedSysfsVar hands the fake sysfs to the unprivileged run of
// TestDiscoverPermissionDeniedForReal.
const deniedSysfsVar = "PCI_TEST_DENIED_SYSFS"

func TestDiscoverAmbiguous(t *testing.T) {
	_, a, _ := newRegion(t)
	_, b, _ := newRegion(t)
	root := fakeSysfs(t, map[string][3]string{
		"0000:00:05.0": {"0x1af4", "0x1110", a},
		"0000:00:06.0": {"0x1af4", "0x1110", b},
	})
	if _, err := Discover(func(string) string { return "" }, root, ""); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Fatalf("two regions of one job: %v", err)
	}
}
