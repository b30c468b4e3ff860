package model

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// verify runs spin's exhaustive safety search (assertions and invalid end states) on model
// with the cpp definitions defs, and returns pan's report and whether it found an error.
func verify(t *testing.T, model string, defs ...string) (report string, failed bool) {
	t.Helper()
	dir := t.TempDir()
	src, err := filepath.Abs(model)
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("spin", append(append([]string{"-a"}, defs...), src)...)
	run("gcc", "-O2", "-DSAFETY", "-o", "pan", "pan.c")
	// pan exits 0 even when it finds an error; its report says.
	report = run("./pan", "-m100000")
	if !strings.Contains(report, "errors: ") {
		t.Fatalf("pan's report has no error count:\n%s", report)
	}
	return report, !strings.Contains(report, "errors: 0")
}

func requireSpin(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"spin", "gcc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages spin, gcc)", tool)
		}
	}
}

// TestSwitchProtocol: messages cross a path switch (region to library and back, several
// times) exactly once and in order, without deadlock.
func TestSwitchProtocol(t *testing.T) {
	requireSpin(t)
	for _, defs := range [][]string{nil, {"-DN=8", "-DSWITCHES=5"}} {
		report, failed := verify(t, "switch.pml", defs...)
		if failed {
			t.Errorf("switch.pml %v: spin found an error:\n%s", defs, report)
		} else if !strings.Contains(report, "Full statespace search") {
			t.Errorf("switch.pml %v: not an exhaustive search:\n%s", defs, report)
		}
	}
}

// TestSwitchProtocolNegative: without parking the library's messages until the ring's MARK,
// or without JOIN's count, messages overtake each other, and spin must say so.
func TestSwitchProtocolNegative(t *testing.T) {
	requireSpin(t)
	for _, def := range []string{"-DNO_PARKING", "-DNO_COUNT"} {
		report, failed := verify(t, "switch.pml", def)
		if !failed || !strings.Contains(report, "assertion violated") {
			t.Errorf("switch.pml %s: spin found no violation:\n%s", def, report)
		}
	}
}
