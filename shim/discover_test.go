package shim

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"ivshim.dev/ivshim/ivshmem"
)

// guestSysfs is a guest's sysfs with one ivshmem device, 0000:00:05.0, whose BAR2 holds
// content; it returns the sysfs root and the device's resource2.
func guestSysfs(t *testing.T, content []byte) (root, res string) {
	t.Helper()
	root = t.TempDir()
	dir := filepath.Join(root, "bus", "pci", "devices", "0000:00:05.0")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	res = filepath.Join(dir, "resource2")
	for name, b := range map[string][]byte{"vendor": []byte("0x1af4\n"), "device": []byte("0x1110\n"), "resource2": content} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root, res
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startJobOpen is startJob with Options.OpenRegion set on every rank.
func startJobOpen(t *testing.T, open func(string) (*ivshmem.Region, error), envs ...map[string]string) *job {
	t.Helper()
	j := &job{t: t, world: newFakeWorld(len(envs)), ranks: make([]outcome, len(envs))}
	empty := t.TempDir()
	var wg sync.WaitGroup
	for i, env := range envs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			getenv := func(k string) string {
				if v, ok := env[k]; ok {
					return v
				}
				if k == "IVSHIM_SYSFS" {
					return empty
				}
				return ""
			}
			buf := &syncBuffer{}
			a, err := Start(fakeRank{j.world, i}, Options{Getenv: getenv, Stderr: buf, RDMA: fakeRDMA{}, PID: 1000 + i, OpenRegion: open})
			j.ranks[i] = outcome{a: a, err: err, stderr: buf}
		}()
	}
	waitOrFail(t, &wg, "start")
	t.Cleanup(j.finalize)
	return j
}

// checkWarned asserts that rank w passes everything through, the others sharing path, and
// that w printed exactly one line, the pass-through warning with each of wants, and the
// others nothing.
func checkWarned(t *testing.T, j *job, path string, w int, wants ...string) {
	t.Helper()
	var shm []int
	for v := range j.ranks {
		if v != w {
			shm = append(shm, v)
			if out := j.ranks[v].stderr.String(); out != "" {
				t.Errorf("rank %d printed %q, want nothing", v, out)
			}
		}
	}
	checkSHMGroup(t, j, path, shm...)
	tw := j.table(w)
	if tw.Mode != ModePassThrough {
		t.Fatalf("rank %d: mode %v, want pass-through", w, tw.Mode)
	}
	out := j.ranks[w].stderr.String()
	prefix := fmt.Sprintf("ivshim: rank %d: pass-through: ", w)
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, prefix) || !strings.HasSuffix(out, "\n") {
		t.Fatalf("rank %d printed %q, want one line %q...", w, out, prefix)
	}
	for _, want := range wants {
		if !strings.Contains(out, want) || !strings.Contains(tw.Reason, want) {
			t.Errorf("rank %d: warning %q or reason %q lacks %q", w, out, tw.Reason, want)
		}
	}
}

// A VM with an unrelated ivshmem device (no ivshim magic in its BAR): that rank passes
// through and says why once; the job goes on.
func TestForeignDevicePassesThroughWithOneWarning(t *testing.T) {
	path := newRegion(t, nil)
	for _, fill := range []byte{0, 0x5a} {
		sysfs, _ := guestSysfs(t, bytes.Repeat([]byte{fill}, 1<<20))
		j := startJob(t, env("IVSHIM_REGION", path), env("IVSHIM_SYSFS", sysfs), env("IVSHIM_REGION", path))
		checkWarned(t, j, path, 1, "0000:00:05.0 holds no ivshim region", "ivshmem device present but unusable")
		j.finalize()
		checkIdle(t, path)
	}
}

// A rank that may not map resource2 (root-only in a guest's sysfs). The tests run as root, so
// the permission error is injected through Options.OpenRegion; ivshmem's
// TestDiscoverPermissionDeniedForReal gets a real one from the kernel.
func TestUnmappableDevicePassesThroughWithOneWarning(t *testing.T) {
	path := newRegion(t, nil)
	sysfs, res := guestSysfs(t, readFile(t, path)) // a valid region: only the permission is missing
	for _, e := range []syscall.Errno{syscall.EACCES, syscall.EPERM} {
		denied := func(p string) (*ivshmem.Region, error) {
			if p == res {
				return nil, fmt.Errorf("open region: %w", &fs.PathError{Op: "open", Path: p, Err: e})
			}
			return ivshmem.Open(p)
		}
		j := startJobOpen(t, denied, env("IVSHIM_REGION", path), env("IVSHIM_REGION", path), env("IVSHIM_SYSFS", sysfs))
		checkWarned(t, j, path, 2, "0000:00:05.0: open region: open "+res+": "+e.Error(), "udev rule")
		j.finalize()
		checkIdle(t, path)
	}
}

// With IVSHIM_VERBOSE the front prints every pass-through rank's reason itself; the control
// plane then adds no warning of its own, so the reason still appears once.
func TestVerboseLeavesThePassThroughLineToTheFront(t *testing.T) {
	path := newRegion(t, nil)
	sysfs, _ := guestSysfs(t, make([]byte, 1<<20))
	j := startJob(t, env("IVSHIM_REGION", path, "IVSHIM_VERBOSE", "1"), env("IVSHIM_SYSFS", sysfs, "IVSHIM_VERBOSE", "1"))
	if out := j.ranks[1].stderr.String(); strings.Contains(out, "pass-through") {
		t.Errorf("verbose rank 1 printed %q; the front prints its pass-through line", out)
	}
	if tb := j.table(1); tb.Mode != ModePassThrough || !strings.Contains(tb.Reason, "0000:00:05.0 holds no ivshim region") {
		t.Errorf("rank 1: mode %v reason %q", tb.Mode, tb.Reason)
	}
}

// A rank without any ivshmem device passes through silently, as before.
func TestNoDeviceNoWarning(t *testing.T) {
	path := newRegion(t, nil)
	j := startJob(t, env("IVSHIM_REGION", path), env(), env("IVSHIM_REGION", path))
	if out := j.ranks[1].stderr.String(); out != "" {
		t.Errorf("rank 1 without a device printed %q", out)
	}
}

// An ivshim region (the magic is there) that fails validation is never used and never
// passed over: the job stops, naming the rank and the device.
func TestCorruptDeviceFailsEveryRank(t *testing.T) {
	path := newRegion(t, nil)
	b := readFile(t, path)
	b[8] = 99 // format version
	sysfs, _ := guestSysfs(t, b)
	j := startJob(t, env("IVSHIM_REGION", path), env("IVSHIM_REGION", path), env("IVSHIM_SYSFS", sysfs))
	checkFatal(t, j, "rank 2 of 3 failed: ivshmem device 0000:00:05.0 holds a corrupt ivshim region", "format version 99")
	checkIdle(t, path)
}

// An IVSHIM_REGION the rank may not open is the user's explicit choice gone wrong: fatal.
func TestUnreadableExplicitRegionFailsEveryRank(t *testing.T) {
	path := newRegion(t, nil)
	denied := func(p string) (*ivshmem.Region, error) {
		return nil, fmt.Errorf("open region: %w", &fs.PathError{Op: "open", Path: p, Err: syscall.EACCES})
	}
	j := startJobOpen(t, denied, env("IVSHIM_REGION", path), env("IVSHIM_REGION", path))
	checkFatal(t, j, "rank 0 of 2 failed: IVSHIM_REGION: open region: open "+path+": permission denied", "also failed: rank 1")
}
