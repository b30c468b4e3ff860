package ivshmem

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
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
	noenv := func(string) string { return "" }
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
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, make([]byte, 1<<20), 0o600)
	root := fakeSysfs(t, map[string][3]string{"0000:00:05.0": {"0x1af4", "0x1110", bad}})
	_, err = Discover(func(string) string { return "" }, root, "")
	if err == nil || errors.Is(err, ErrNoRegion) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("corrupt device: %v, want a hard ErrInvalid", err)
	}
}

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
