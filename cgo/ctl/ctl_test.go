package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/ivshmem"
)

// TestCSharedSmoke builds libivshim-ctl.so as the Makefile does and drives it from C the way
// the front does (testdata/smoke.c), with a fake MPI of one rank and of two processes.
func TestCSharedSmoke(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not installed: cannot build the C smoke program")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	lib := filepath.Join(dir, "libivshim-ctl.so")
	smoke := filepath.Join(dir, "smoke")
	run(t, exec.CommandContext(ctx, "go", "build", "-buildmode=c-shared", "-o", lib, "."))
	run(t, exec.CommandContext(ctx, gcc, "-Wall", "-Wextra", "-Werror", "-I.", "-I../../ivshmem", "-o", smoke, "testdata/smoke.c", "-ldl", "-pthread"))

	h, err := ivshmem.NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	region := filepath.Join(dir, "region")
	if err := ivshmem.Create(region, ivshmem.Options{Size: 1 << 20, HostID: h, JobID: "smoke", Slots: 4, VMs: 2, RingSize: 8192}); err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(dir, "corrupt")
	b, err := os.ReadFile(region)
	if err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if err := os.WriteFile(corrupt, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sysfs := t.TempDir()

	for _, c := range []struct {
		name   string
		ranks  string
		env    []string
		stdout []string
		stderr []string
	}{
		{
			// A group of one: it keeps its region for a rank that moves to its host later.
			name:  "alone with a region",
			ranks: "1",
			env:   []string{"IVSHIM_REGION=" + region, "IVSHIM_VERBOSE=1"},
			stdout: []string{
				"rank=0 start=0 verbose=1 error=\n",
				"rank=0 self_slot=0 local_ranks=1 region_size=1048576\n",
				"rank=0 start_again=-1 error=ivshim_ctl_start called twice\n",
				"rank=0 alloc_ok=1 errlen=0 error=\n",
				"rank=0 free=0 errlen=0\n",
				"rank=0 finalize=0\nrank=0 finalize_again=0\n",
			},
			stderr: []string{
				"ivshim: init ranks=1 groups=1 shm_groups=1 shm_ranks=1\n",
				"ivshim: path rank=0 host=" + h.String()[:8] + " group=0 slot=0 path=shm vm=-\n",
				"ivshim: rdma devices: none\n",
				"ivshim: stats rank=0 shm_msgs=2 shm_bytes=4 net_msgs=1 net_bytes=3 coll_shm=5 coll_net=6 gates=7 region_bytes=12288\n",
			},
		},
		{
			name:   "no region",
			ranks:  "1",
			env:    []string{"IVSHIM_VERBOSE=1"},
			stdout: []string{"rank=0 start=1 verbose=1 error=no ivshim region: no IVSHIM_REGION and no usable ivshmem device (0 found)\n"},
			stderr: []string{"ivshim: path rank=0 host=- group=- slot=- path=net vm=-\n"},
		},
		{
			name:  "corrupt region",
			ranks: "1",
			env:   []string{"IVSHIM_REGION=" + corrupt},
			stdout: []string{
				"rank=0 start=-1 verbose=0 error=rank 0 of 1 failed: IVSHIM_REGION: open region " + corrupt + ": invalid ivshim region: magic ",
				"rank=0 peer=0 path=0\n",
				"rank=0 alloc_ok=0 errlen=31 error=ivshim_ctl_alloc: control plane\n",
				"rank=0 finalize=0\n",
			},
		},
		{
			name:  "two ranks share a region",
			ranks: "2",
			env:   []string{"IVSHIM_REGION=" + region},
			stdout: []string{
				"rank=0 start=0 verbose=0 error=\n", "rank=1 start=0 verbose=0 error=\n",
				"rank=0 peer=1 path=1 slot=", "rank=1 peer=0 path=1 slot=", " tx=ok rx=ok\n",
				"rank=0 stranger_ring=0 errlen=31\n", "rank=1 stranger_ring=0 errlen=31\n",
				"rank=0 self_slot=", "rank=1 self_slot=", " local_ranks=2 region_size=1048576\n",
				"rank=0 alloc_ok=1 errlen=0", "rank=1 free=0 errlen=0\n",
				"rank=0 finalize=0\n", "rank=1 finalize=0\n",
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.CommandContext(ctx, smoke, lib, c.ranks)
			cmd.Env = append(cleanEnv(), append(c.env, "IVSHIM_SYSFS="+sysfs)...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("smoke: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
			}
			for _, want := range c.stdout {
				if !strings.Contains(string(out), want) {
					t.Errorf("stdout lacks %q:\n%s", want, out)
				}
			}
			// Each rank of a region checks its ring to every rank of its group, itself included.
			if checks := strings.Count(string(out), "tx="); checks > 0 &&
				(strings.Count(string(out), "tx=ok rx=ok") != checks || checks != map[string]int{"1": 1, "2": 4}[c.ranks]) {
				t.Errorf("some ring check failed or is missing:\n%s", out)
			}
			for _, want := range c.stderr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
				}
			}
		})
	}
	checkIdle(t, region)
}

// checkIdle asserts the job left the region as it found it: no session, the heap free.
func checkIdle(t *testing.T, path string) {
	t.Helper()
	r, err := ivshmem.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if s := r.Session(); s != 0 {
		t.Errorf("session %#x left in the region", s)
	}
	l := r.Layout()
	if _, err := r.Alloc(1, 0, ivshmem.AllocCollective, uint64(l.ChunkCount)*uint64(l.ChunkSize)); err != nil {
		t.Errorf("heap not free after the job: %v", err)
	}
}

func run(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
}

// cleanEnv is this process's environment without IVSHIM_* settings, which would change what
// the smoke program finds.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IVSHIM_") {
			out = append(out, kv)
		}
	}
	return out
}
