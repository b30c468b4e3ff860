package preload

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/ivshmem"
	"ivshim.dev/ivshim/tests/testenv"
)

// abi is one MPI family: its compiler, launcher and shim library.
type abi struct {
	name, mpicc, lib string
	launch           func(np int, env []string, prog string) []string
}

var abis = []abi{
	{"openmpi", "mpicc.openmpi", "libivshim-openmpi.so", func(np int, env []string, prog string) []string {
		args := []string{"mpirun.openmpi", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
			"--mca", "mpi_yield_when_idle", "1", "-np", fmt.Sprint(np)}
		for _, e := range env {
			args = append(args, "-x", e)
		}
		return append(args, prog)
	}},
	{"mpich", "mpicc.mpich", "libivshim-mpich.so", func(np int, env []string, prog string) []string {
		args := []string{"mpiexec.mpich", "-n", fmt.Sprint(np)}
		for _, e := range env {
			k, v, _ := strings.Cut(e, "=")
			args = append(args, "-genv", k, v)
		}
		return append(args, prog)
	}},
}

func shimLib(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(testenv.ModuleRoot(t), "build", "lib", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is not built: run make first (%v)", p, err)
	}
	return p
}

func buildProbe(t *testing.T, a abi) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "probe_runtime-"+a.name)
	src := filepath.Join(testenv.ModuleRoot(t), "tests", "mpi", "probe_runtime.c")
	if b, err := exec.Command(a.mpicc, "-O2", "-Wall", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", a.mpicc, err, b)
	}
	return out
}

// run starts argv with extra environment, bounded by a timeout, and returns its output.
func run(t *testing.T, env []string, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
	cmd.Env = append(cmd.Env, env...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), err
}

func procField(t *testing.T, pid int, file, prefix string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimSpace(strings.TrimPrefix(l, prefix))
		}
	}
	return ""
}

// A plain process with the shim preloaded keeps one thread and never maps the control plane.
func TestPreloadIntoNonMPIProcess(t *testing.T) {
	for _, a := range abis {
		lib := shimLib(t, a.lib)
		cmd := exec.Command("sleep", "10")
		cmd.Env = append(os.Environ(), "LD_PRELOAD="+lib, "IVSHIM_REGION=/dev/shm/does-not-matter")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		threads := procField(t, cmd.Process.Pid, "status", "Threads:")
		cmd.Process.Kill()
		cmd.Wait()
		if !strings.Contains(string(maps), a.lib) {
			t.Fatalf("%s: the shim was not preloaded at all", a.name)
		}
		if strings.Contains(string(maps), "libivshim-ctl.so") || threads != "1" {
			t.Fatalf("%s: sleep with the shim preloaded has the control plane mapped (%v) or %s threads",
				a.name, strings.Contains(string(maps), "libivshim-ctl.so"), threads)
		}
		out, err := run(t, []string{"LD_PRELOAD=" + lib}, "sh", "-c", "echo shell-ok")
		if err != nil || strings.TrimSpace(out) != "shell-ok" {
			t.Fatalf("%s: shell with the shim preloaded: %v %q", a.name, err, out)
		}
	}
}

var probeLine = regexp.MustCompile(`rank=(\d+) ctl_before_init=(-?\d) ctl_after_init=(-?\d) ctl_in_launcher=(-?\d)`)

// The launcher (mpirun / hydra_pmi_proxy) inherits LD_PRELOAD from the environment; it must
// not load Go. Ranks load it inside MPI_Init only when a region exists.
func TestGoRuntimeOnlyInRanksWithRegion(t *testing.T) {
	h, err := ivshmem.NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	region := fmt.Sprintf("/dev/shm/ivshim-preload-test-%d", os.Getpid())
	if err := ivshmem.Create(region, ivshmem.Options{Size: 16 << 20, HostID: h, JobID: "preload"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(region) })
	for _, a := range abis {
		lib := shimLib(t, a.lib)
		prog := buildProbe(t, a)
		for _, withRegion := range []bool{false, true} {
			env := []string{"LD_PRELOAD=" + lib}
			rankEnv := []string{}
			if withRegion {
				rankEnv = append(rankEnv, "IVSHIM_REGION="+region)
			}
			out, err := run(t, env, a.launch(2, rankEnv, prog)...)
			if err != nil {
				t.Fatalf("%s region=%v: %v\n%s", a.name, withRegion, err, out)
			}
			lines := probeLine.FindAllStringSubmatch(out, -1)
			if len(lines) != 2 {
				t.Fatalf("%s region=%v: want 2 probe lines:\n%s", a.name, withRegion, out)
			}
			want := "0"
			if withRegion {
				want = "1"
			}
			for _, l := range lines {
				if l[2] != "0" || l[3] != want || l[4] != "0" {
					t.Errorf("%s region=%v rank %s: before=%s after=%s launcher=%s, want 0 %s 0",
						a.name, withRegion, l[1], l[2], l[3], l[4], want)
				}
			}
		}
	}
}

// Preloading the library of the other ABI family stops the program with a message naming the
// right library, before anything can crash.
func TestWrongABIFailsClearly(t *testing.T) {
	for i, a := range abis {
		other := abis[1-i]
		prog := buildProbe(t, a)
		out, err := run(t, []string{"LD_PRELOAD=" + shimLib(t, other.lib)}, prog)
		if err == nil {
			t.Fatalf("%s program with %s preloaded succeeded:\n%s", a.name, other.lib, out)
		}
		if !strings.Contains(out, other.lib+" is built for the") || !strings.Contains(out, "preload the shim library of its MPI family") {
			t.Fatalf("%s program with %s preloaded: unclear failure:\n%s", a.name, other.lib, out)
		}
	}
}
