package model

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// verify runs spin's exhaustive safety search (assertions and invalid end states) on model
// with the cpp definitions defs, and returns pan's report and whether it found an error. The
// words "big" and "collapse" among defs are no definitions: they size the search (big,
// collapse).
func verify(t *testing.T, model string, defs ...string) (report string, failed bool) {
	t.Helper()
	return search(t, model, nil, defs...)
}

// verifyAssertions is verify without the search for invalid end states (deadlocks).
func verifyAssertions(t *testing.T, model string, defs ...string) (report string, failed bool) {
	t.Helper()
	return search(t, model, []string{"-E"}, defs...)
}

// rounds is how many rounds of the collective agreement TestCollSwitchSafety and
// TestCollSwitchNegative check: 2 by default; 3 costs 9 GiB and about 11 minutes more.
var rounds = flag.Int("rounds", 2, "rounds of the collective agreement to model-check (2 or 3)")

// leaves is how many leaves of the receiver's VM TestJoinSwitch checks: 1 by default; 2 (with
// ANEW and a sender that may block) costs 12.5 GiB and about 15 minutes more.
var leaves = flag.Int("leaves", 1, "leaves of the receiver's VM the join switch's model checks (1 or 2)")

func TestMain(m *testing.M) {
	flag.Parse()
	if *rounds != 2 && *rounds != 3 {
		fmt.Fprintf(os.Stderr, "-rounds=%d: the model checks 2 or 3 rounds\n", *rounds)
		os.Exit(2)
	}
	if *leaves != 1 && *leaves != 2 {
		fmt.Fprintf(os.Stderr, "-leaves=%d: the join switch's model checks 1 or 2 leaves\n", *leaves)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// big is what a search of more than 1e8 states needs: states stored compressed (COLLAPSE), a
// deeper stack and a larger hash table. The word "collapse" among defs asks for compressed
// states only, for searches of 1e7 states with large state vectors (about 1 GiB so).
var big = []string{"-DCOLLAPSE", "-DMEMLIM=16000"}
var collapse = []string{"-DCOLLAPSE", "-DMEMLIM=8000"}

func search(t *testing.T, model string, panArgs []string, defs ...string) (report string, failed bool) {
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
	var cc, spinDefs []string
	for _, d := range defs {
		if d == "big" {
			cc = big
			panArgs = append(panArgs, "-m400000", "-w28")
		} else if d == "collapse" {
			cc = collapse
		} else {
			spinDefs = append(spinDefs, d)
		}
	}
	run("spin", append(append([]string{"-a"}, spinDefs...), src)...)
	run("gcc", append(append([]string{"-O2", "-DSAFETY"}, cc...), "-o", "pan", "pan.c")...)
	// pan exits 0 even when it finds an error; its report says.
	report = run("./pan", append([]string{"-m100000"}, panArgs...)...)
	if !strings.Contains(report, "errors: ") {
		t.Fatalf("pan's report has no error count:\n%s", report)
	}
	return report, !strings.Contains(report, "errors: 0")
}

// requireProven runs verify on model with each set of definitions and requires an exhaustive
// search without errors.
func requireProven(t *testing.T, model string, defsList ...[]string) {
	t.Helper()
	for _, defs := range defsList {
		report, failed := verify(t, model, defs...)
		if failed {
			t.Errorf("%s %v: spin found an error:\n%s", model, defs, report)
		} else if !strings.Contains(report, "Full statespace search") {
			t.Errorf("%s %v: not an exhaustive search:\n%s", model, defs, report)
		}
	}
}

// Every test runs in parallel with the others: each search is one CPU-bound process, so the
// package takes about half as long on two CPUs.

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
	t.Parallel()
	requireSpin(t)
	requireProven(t, "switch.pml", nil, []string{"-DN=8", "-DSWITCHES=5"})
}

// TestSwitchProtocolNegative: without parking the library's messages until the ring's MARK,
// without JOIN's count, or matching library messages while a JOIN is in the ring, messages
// overtake each other, and spin must say so.
func TestSwitchProtocolNegative(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	for _, def := range []string{"-DNO_PARKING", "-DNO_COUNT", "-DNO_JOIN_CHECK"} {
		report, failed := verify(t, "switch.pml", def)
		if !failed || !strings.Contains(report, "assertion violated") {
			t.Errorf("switch.pml %s: spin found no violation:\n%s", def, report)
		}
	}
}

// TestSwitchProtocolRingCapacity: the ring capacity the model used first (2 records) cannot
// hold a JOIN, a DATA and a MARK at once, which hid the reordering NO_JOIN_CHECK shows. Pin it:
// at capacity 2 even the broken variant passes, at 3 (the default) it fails.
func TestSwitchProtocolRingCapacity(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	if report, failed := verify(t, "switch.pml", "-DNO_JOIN_CHECK", "-DRING_CAP=2"); failed {
		t.Errorf("switch.pml capacity 2: the reordering is no longer hidden, update this test:\n%s", report)
	}
}

// TestMigrateProtocol: a pair of ranks exchanging messages both ways (synchronous sends,
// probes, two communicators) across a migration of one rank's VM, rolled back or completed and
// followed by a return, is exhaustively free of loss, duplication, reordering and deadlock,
// and nobody writes into a ring its reader has released.
func TestMigrateProtocol(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	requireProven(t, "migrate.pml", []string{"-DN=2", "-DMOVES=1"})
}

// TestMigrateProtocolNegative: each rule of migrate.pml broken on its own must be caught,
// with two leave attempts (a JOIN from an older epoch needs two). pan stops at the first error.
func TestMigrateProtocolNegative(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	for _, def := range []string{"-DNO_PARKING", "-DNO_COUNT", "-DNO_JOIN_CHECK", "-DEARLY_RELEASE",
		"-DACK_BY_RING", "-DANY_JOIN"} {
		report, failed := verify(t, "migrate.pml", def, "-DN=2", "-DMOVES=2")
		if !failed || !(strings.Contains(report, "assertion violated") || strings.Contains(report, "invalid end state")) {
			t.Errorf("migrate.pml %s: spin found no error:\n%s", def, report)
		}
	}
}

// TestJoinSwitch: a direction of a pair made at run time moves from the library to a ring only
// when every library message was matched and no receive waits inside the library: tag-selective
// receives (some posted in the library before the pair was made) never see a message overtake
// an older one of their tag, none is lost or left waiting, whatever the interleaving of the
// DRAINQ/DRAINED/JOINOFF exchange (joinswitch.pml, cgo/front/join.c), also when the sender
// closes the ring again after switching (once or twice) and sends by the library, and when the
// receiver's VM leaves during the switch (its flag taken back or not), releases the
// region and joins it again, or its flag is taken back unseen and the sender makes the pair anew
// (ANEW): nothing is written into a ring after its reader released it, a released ring is
// empty, and the pair made anew switches again. In every configuration the sender may block in
// a library call after its last message until the receiver has everything (BLOCKING_S).
func TestJoinSwitch(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	// BLOCKING_S only adds behaviour (S may block in a library call after its last message),
	// so every configuration has it.
	configs := [][]string{nil, {"-DW=3", "-DMAXASK=4"}, {"-DPRE=2", "-DW=3"},
		{"-DCLOSES=1", "-DPRE=0", "-DW=3", "-DMAXASK=4"}, {"-DCLOSES=2", "-DPRE=0", "-DW=3", "-DMAXASK=4"},
		{"-DCLOSES=1", "-DPRE=2", "-DW=3"},
		{"-DLEAVES=1"}, {"-DLEAVES=1", "-DW=3", "-DMAXASK=4"}, {"-DLEAVES=1", "-DPRE=2", "-DW=3"}}
	if *leaves == 2 {
		configs = append(configs, []string{"-DLEAVES=2", "big"})
	} else {
		t.Log("two leaves not checked (-leaves=2: about 2.7e8 states, 12.5 GiB, about 15 minutes)")
	}
	for i := range configs {
		configs[i] = append([]string{"-DBLOCKING_S"}, configs[i]...)
	}
	requireProven(t, "joinswitch.pml", configs...)
}

// TestJoinSwitchNegative: without the receiver's check that none of its receives waits inside
// the library, without the sender's check that all it sent was matched, with receives posted
// into the library while the pair is being made, or with library messages matched while the
// receiver awaits the ring's first record (the sender may have written it and closed the ring
// again), spin must find a message stranded or overtaken. A receiver that releases the region
// while it awaits the ring's first record (NO_AWAIT_BUSY) or before it read the sender's MARK
// (NO_MARK_WAIT) must be caught with a ring written or left full behind its release; and the
// search must reach a switch after a leave and a join behind an earlier switch (REACH_REJOIN),
// and after a pair made anew by ANEW (REACH_ANEW: a rollback the receiver did not see). A
// receiver that parks every library message while it awaits the ring's first record must
// deadlock with a sender blocked in a library call (PARK_AWAIT_ALWAYS with BLOCKING_S), and the
// search must reach a library message matched while awaiting (REACH_UNPARK).
func TestJoinSwitchNegative(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	for _, defs := range [][]string{{"-DNO_OPEN_CHECK"}, {"-DNO_SENT_CHECK"}, {"-DNO_PROBE_MODE"},
		{"-DNO_PARK_AWAIT", "-DCLOSES=1", "-DPRE=0"}} {
		report, failed := verify(t, "joinswitch.pml", defs...)
		if !failed || !(strings.Contains(report, "assertion violated") || strings.Contains(report, "invalid end state")) {
			t.Errorf("joinswitch.pml %v: spin found no error:\n%s", defs, report)
		}
	}
	for _, c := range []struct{ def, want string }{
		{"-DNO_AWAIT_BUSY", "assertion violated  !(released)"},
		{"-DNO_MARK_WAIT", "assertion violated (q_len(ring)==0)"},
		{"-DREACH_ANEW", "assertion violated  !(ring_anew)"},
	} {
		if report, _ := verify(t, "joinswitch.pml", c.def, "-DLEAVES=1"); !strings.Contains(report, c.want) {
			t.Errorf("joinswitch.pml %s -DLEAVES=1: spin did not find %q:\n%s", c.def, c.want, report)
		}
	}
	if report, _ := verify(t, "joinswitch.pml", "-DREACH_REJOIN", "-DLEAVES=1"); !strings.Contains(report, "assertion violated  !(ring_left)") {
		t.Errorf("joinswitch.pml -DREACH_REJOIN -DLEAVES=1: the search never switches again after a leave and a join:\n%s", report)
	}
	// A receiver that parks every library message while it awaits the ring's first record
	// deadlocks with a sender blocked in a library call after its last message; and the search
	// does reach a library message matched while awaiting (the ring empty).
	if report, _ := verify(t, "joinswitch.pml", "-DBLOCKING_S", "-DPARK_AWAIT_ALWAYS"); !strings.Contains(report, "invalid end state") {
		t.Errorf("joinswitch.pml -DBLOCKING_S -DPARK_AWAIT_ALWAYS: spin found no deadlock:\n%s", report)
	}
	if report, _ := verify(t, "joinswitch.pml", "-DREACH_UNPARK"); !strings.Contains(report, "assertion violated") {
		t.Errorf("joinswitch.pml -DREACH_UNPARK: the search never matches a library message while awaiting:\n%s", report)
	}
}

// TestCollSwitchSafety: the collective switch's agreement never lets members run one
// collective on different plans, never decides behind a member, the leaving member never uses
// the area after its release, and every member finishes, whatever the interleaving
// (collswitch.pml, both programs), also over two rounds on one communicator (a second leave
// after the first re-plan: programs 3 and 4), and with -rounds=3 over three (the third leave
// the coordinator's own: programs 5 and 6). Safety also holds where a member blocks in a library call
// without answering (BLOCKING_Y), and deadlock freedom too once the shim gates that call with a
// nonblocking barrier it waits for by polling (GATED_Y, gate.c).
func TestCollSwitchSafety(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	requireProven(t, "collswitch.pml", nil, []string{"-DPROGRAM=2"},
		[]string{"-DBLOCKING_Y", "-DGATED_Y"}, []string{"-DPROGRAM=2", "-DBLOCKING_Y", "-DGATED_Y"},
		[]string{"-DROUNDS=2", "-DPROGRAM=3"}, []string{"-DROUNDS=2", "-DPROGRAM=4", "-DBLOCKING_Y", "-DGATED_Y"})
	if *rounds >= 3 {
		requireProven(t, "collswitch.pml", []string{"-DROUNDS=3", "-DPROGRAM=5", "big"},
			[]string{"-DROUNDS=3", "-DPROGRAM=6", "-DBLOCKING_Y", "-DGATED_Y", "big"})
	} else {
		t.Log("three rounds not checked (-rounds=3: about 2e8 states, 9 GiB, about 11 minutes)")
	}
	for _, defs := range [][]string{{"-DBLOCKING_Y"}, {"-DPROGRAM=2", "-DBLOCKING_Y"}} {
		if report, failed := verifyAssertions(t, "collswitch.pml", defs...); failed {
			t.Errorf("collswitch.pml %v: spin found an error:\n%s", defs, report)
		} else if !strings.Contains(report, "Full statespace search") {
			t.Errorf("collswitch.pml %v: not an exhaustive search:\n%s", defs, report)
		}
	}
}

// TestCollSwitchNegative: each rule of the agreement broken on its own must be caught, the
// rounds' too (NO_DEFER: a later round's messages handled as the member's own round's); and
// the two-round search must reach a collective on the second re-plan (REACH_LAST).
func TestCollSwitchNegative(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	broken := [][]string{{"-DNO_WAIT"}, {"-DOWN_LIMIT"}, {"-DEARLY_RELEASE"},
		{"-DROUNDS=2", "-DPROGRAM=3", "-DNO_DEFER"}, {"-DROUNDS=2", "-DPROGRAM=3", "-DREACH_LAST"},
		{"-DROUNDS=2", "-DPROGRAM=4", "-DBLOCKING_Y", "-DGATED_Y", "-DREACH_LAST"},
		{"-DROUNDS=3", "-DPROGRAM=5", "-DNO_DEFER"}}
	if *rounds >= 3 { /* the searches reach the third re-plan's plan (2 and 1.5 minutes) */
		broken = append(broken, []string{"-DROUNDS=3", "-DPROGRAM=5", "-DREACH_LAST", "big"},
			[]string{"-DROUNDS=3", "-DPROGRAM=6", "-DBLOCKING_Y", "-DGATED_Y", "-DREACH_LAST", "big"})
	}
	for _, defs := range broken {
		report, failed := verifyAssertions(t, "collswitch.pml", defs...)
		if !failed || !strings.Contains(report, "assertion violated") {
			t.Errorf("collswitch.pml %v: spin found no violation:\n%s", defs, report)
		}
	}
}

// TestCollSwitchKnownDeadlock is the negative control of the gate: a member blocked inside a
// library call the shim cannot run nonblocking (communicator creation, one-sided
// synchronisation, collective I/O) answers nothing, and without the gate (gate.c) a valid
// program then deadlocks the agreement. Calls the shim does not gate keep this limit (README).
func TestCollSwitchKnownDeadlock(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	report, failed := verify(t, "collswitch.pml", "-DBLOCKING_Y")
	if !failed || !strings.Contains(report, "invalid end state") {
		t.Errorf("collswitch.pml -DBLOCKING_Y: the known deadlock is no longer found:\n%s", report)
	}
}

// TestCollSwitchTwoComms: one leave starts agreements on two communicators at once, X and Z,
// whose coordinators sit on different hosts (collswitch.pml NC=2): each collective on one
// plan, no decision behind a member, no area use after the release, no deadlock (programs 7
// and 8, each about 1.5e7 states). Broken on their own and caught: a member that waits at one
// communicator's limit answering that communicator only (NO_CROSS: the deadlock the shim's
// waits avoid by polling every message), a member switching at its own limit, and a release
// once the first communicator's decision is known.
func TestCollSwitchTwoComms(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	requireProven(t, "collswitch.pml", []string{"-DNC=2", "-DPROGRAM=7", "collapse"},
		[]string{"-DNC=2", "-DPROGRAM=8", "-DBLOCKING_Y", "-DGATED_Y", "collapse"})
	report, failed := verify(t, "collswitch.pml", "-DNC=2", "-DPROGRAM=7", "-DNO_CROSS", "collapse")
	if !failed || !strings.Contains(report, "invalid end state") {
		t.Errorf("collswitch.pml NC=2 NO_CROSS: spin found no deadlock:\n%s", report)
	}
	for _, def := range []string{"-DOWN_LIMIT", "-DEARLY_RELEASE"} {
		report, failed := verifyAssertions(t, "collswitch.pml", "-DNC=2", "-DPROGRAM=7", def, "collapse")
		if !failed || !strings.Contains(report, "assertion violated") {
			t.Errorf("collswitch.pml NC=2 %s: spin found no violation:\n%s", def, report)
		}
	}
}

// TestFirstUseProtocol: a direction whose ring is made on first use delivers every message
// exactly once and in order, also when a migration closes it before, while or after its ring
// is asked for, and when the heap has no room for the ring (pairs.c).
func TestFirstUseProtocol(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	requireProven(t, "firstuse.pml", nil, []string{"-DN=6"})
}

// TestFirstUseProtocolNegative: closing at the flag before the answer reorders messages or
// strands the receiver on a ring it made unasked; a receiver that leaves without answering
// strands its sender.
func TestFirstUseProtocolNegative(t *testing.T) {
	t.Parallel()
	requireSpin(t)
	for _, def := range []string{"-DNO_DEFER", "-DNO_NET_AT_LEAVE"} {
		report, failed := verify(t, "firstuse.pml", def)
		if !failed || !(strings.Contains(report, "assertion violated") || strings.Contains(report, "invalid end state")) {
			t.Errorf("firstuse.pml %s: spin found no violation:\n%s", def, report)
		}
	}
}
