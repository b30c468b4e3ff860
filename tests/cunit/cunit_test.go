package cunit

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// soakSeconds is how long each build's two-thread soak runs; with compiling, the three builds
// take about 10 s on two cores.
const soakSeconds = "2"

// build is one way of compiling the C tests: extra gcc flags and the runtime options that make a
// sanitizer stop at its first report.
type build struct {
	name  string
	flags []string
	env   []string
	pkg   string // Debian package of the sanitizer runtime, for the skip message
}

var builds = []build{
	{name: "O2"},
	{
		name:  "asan-ubsan",
		flags: []string{"-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"},
		env:   []string{"ASAN_OPTIONS=halt_on_error=1:detect_leaks=1", "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"},
		pkg:   "libasan8, libubsan1",
	},
	{
		name:  "tsan",
		flags: []string{"-fsanitize=thread"},
		env:   []string{"TSAN_OPTIONS=halt_on_error=1"},
		pkg:   "libtsan2",
	},
}

// cflags are common to every build; the include paths are those of the front library's
// Makefile rule, relative to this directory.
var cflags = []string{"-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-pthread",
	"-I../../ivshmem", "-I../../cgo/front"}

// run executes name with a deadline and returns its combined output.
func run(t *testing.T, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return string(out), err
}

// requireRuntime skips the test when gcc cannot build and run a trivial program with b's
// flags: the sanitizer runtime is missing or this kernel does not support it.
func requireRuntime(t *testing.T, b build, dir string) {
	t.Helper()
	if len(b.flags) == 0 {
		return
	}
	src := filepath.Join(dir, "probe.c")
	if err := os.WriteFile(src, []byte("int main(void) { return 0; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(dir, "probe")
	if out, err := run(t, time.Minute, nil, "gcc", append(b.flags, "-o", probe, src)...); err != nil {
		t.Skipf("gcc cannot link %s (Debian package %s): %v\n%s", strings.Join(b.flags, " "), b.pkg, err, out)
	}
	if out, err := run(t, time.Minute, b.env, probe); err != nil {
		t.Skipf("%s runtime does not run on this machine: %v\n%s", b.name, err, out)
	}
}

// TestRing compiles ring_test.c each way in builds and runs it: wrap-around, a full ring,
// forged stamps, corrupt headers, random sizes and a two-thread soak.
func TestRing(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed (Debian package gcc)")
	}
	for _, b := range builds {
		t.Run(b.name, func(t *testing.T) {
			dir := t.TempDir()
			requireRuntime(t, b, dir)
			bin := filepath.Join(dir, "ring_test")
			args := append(append(append([]string{}, cflags...), b.flags...), "-o", bin, "ring_test.c")
			if out, err := run(t, time.Minute, nil, "gcc", args...); err != nil {
				t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			out, err := run(t, time.Minute, b.env, bin, soakSeconds)
			if err != nil {
				t.Fatalf("ring_test (%s build): %v\n%s", b.name, err, out)
			}
			t.Logf("ring_test (%s build):\n%s", b.name, out)
		})
	}
}
