package shim

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ivshim.dev/ivshim/ivshmem"
)

// TestRejoin follows a rank whose VM moves: after Release it finds nothing while its VM is
// still flagged leaving in its old region, while no region is plugged, or where its VM has no
// entry, nor in a region another job instance holds; it joins the region of its destination,
// where its job's ranks run, with a slot of its job's session there, and in a region whose
// session ended it takes the session again.
func TestRejoin(t *testing.T) {
	hostA, hostB := newRegion(t, nil), newRegion(t, nil)
	dir := t.TempDir()
	vm := func(i byte) ivshmem.HostID { return ivshmem.HostID{0: 0xee, 15: i} }
	present := func(path string, slot uint32, id ivshmem.HostID, st ivshmem.VMState) {
		t.Helper()
		if err := openRegion(t, path).SetVM(slot, id, st); err != nil {
			t.Fatal(err)
		}
	}
	// Ranks 0 and 1 in VMs 0 and 1 on host A, ranks 2 and 3 in VMs 2 and 3 on host B; each
	// rank's IVSHIM_REGION is a link of its VM's, as a device follows a guest.
	links := make([]string, 4)
	var envs []map[string]string
	for i := range 4 {
		region := hostA
		if i >= 2 {
			region = hostB
		}
		present(region, uint32(i%2), vm(byte(i)), ivshmem.VMPresent)
		links[i] = filepath.Join(dir, "vm"+string(rune('0'+i)))
		if err := os.Symlink(region, links[i]); err != nil {
			t.Fatal(err)
		}
		envs = append(envs, env("IVSHIM_REGION", links[i], "IVSHIM_VM_ID", vm(byte(i)).String()))
	}
	j := startJob(t, envs...)
	mover := j.ranks[1].a
	if _, err := mover.Rejoin(); err == nil || errors.Is(err, ErrNothingToJoin) {
		t.Fatalf("rejoin while holding the region: %v, want a refusal", err)
	}
	if err := mover.Release(); err != nil {
		t.Fatal(err)
	}
	nothing := func(why string) {
		t.Helper()
		if _, err := mover.Rejoin(); !errors.Is(err, ErrNothingToJoin) || !strings.Contains(err.Error(), why) {
			t.Fatalf("rejoin: %v, want nothing to join (%s)", err, why)
		}
	}
	present(hostA, 1, vm(1), ivshmem.VMLeaving)
	nothing("flagged leaving")
	os.Remove(links[1])
	nothing("no such file")
	if err := os.Symlink(hostB, links[1]); err != nil {
		t.Fatal(err)
	}
	nothing("no entry for this VM")
	other := newRegion(t, nil)
	if err := openRegion(t, other).ClaimSession(0x5eed); err != nil {
		t.Fatal(err)
	}
	present(other, 0, vm(1), ivshmem.VMPresent)
	os.Remove(links[1])
	os.Symlink(other, links[1])
	nothing("another job instance")

	// The destination: host B, where ranks 2 and 3 hold slots of their group's session.
	os.Remove(links[1])
	os.Symlink(hostB, links[1])
	present(hostB, 2, vm(1), ivshmem.VMPresent)
	got, err := mover.Rejoin()
	if err != nil {
		t.Fatalf("rejoin at the destination: %v", err)
	}
	rb := openRegion(t, hostB)
	si, err := rb.Slot(got.Slot)
	if err != nil {
		t.Fatal(err)
	}
	if si.State != ivshmem.SlotActive || si.WorldRank != 1 || si.Session != rb.Session() || si.VMIndex != 2 || si.Session == 0 {
		t.Errorf("slot %d after the rejoin: %+v, region session %#x", got.Slot, si, rb.Session())
	}
	if off, err := mover.Alloc(4096); err != nil {
		t.Errorf("alloc after the rejoin: %v", err)
	} else if err := mover.Free(off); err != nil {
		t.Errorf("free after the rejoin: %v", err)
	}
	if _, err := mover.Rejoin(); err == nil || errors.Is(err, ErrNothingToJoin) {
		t.Errorf("second rejoin: %v, want a refusal", err)
	}
	// The pairs the join made get their rings when the front's join switch asks (joined):
	// for members of the session only, and never as a group member's first-use ring.
	stay := j.ranks[2].a
	staySlot := stay.Table.SelfSlot
	if _, err := stay.CreateRing(got.Slot, false); err == nil {
		t.Error("a first-use ring from a rank that joined later")
	}
	for _, p := range []struct {
		a    *Attachment
		from uint32
	}{{stay, got.Slot}, {mover, staySlot}} {
		off, err := p.a.CreateRing(p.from, true)
		if ring, ok, perr := rb.PairRing(rb.Session(), p.from, p.a.Table.SelfSlot); err != nil || !ok || perr != nil || ring.Off != off {
			t.Errorf("joined ring %d->%d: %#x %v; published %+v %v %v", p.from, p.a.Table.SelfSlot, off, err, ring, ok, perr)
		}
	}
	free := uint32(0)
	for si, err := rb.Slot(free); err == nil && si.State != ivshmem.SlotFree; si, err = rb.Slot(free) {
		free++
	}
	for _, bad := range []uint32{free, mover.Table.SelfSlot} {
		if _, err := mover.CreateRing(bad, true); err == nil || !strings.Contains(err.Error(), "not a member") {
			t.Errorf("joined ring from slot %d (no member, or the rank itself): %v", bad, err)
		}
	}

	// Rank 0 leaves host A, the last of its job there: the session ends; it comes back and
	// takes its group's session again.
	first := j.ranks[0].a
	sessionA := first.re.own
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	if s := openRegion(t, hostA).Session(); s != 0 {
		t.Fatalf("host A's session %#x after its last rank left", s)
	}
	got, err = first.Rejoin()
	if err != nil {
		t.Fatalf("rejoin of an empty region: %v", err)
	}
	if s := openRegion(t, hostA).Session(); s != sessionA {
		t.Errorf("host A's session after the rejoin: %#x, want the group's %#x", s, sessionA)
	}
}

// TestAdopt: a rank takes over a collective area another rank of its session allocated (that
// rank left the region), frees it, and refuses offsets that are no collective area of its
// session.
func TestAdopt(t *testing.T) {
	region := newRegion(t, nil)
	e := env("IVSHIM_REGION", region)
	j := startJob(t, e, e)
	owner, heir := j.ranks[0].a, j.ranks[1].a
	off, err := owner.Alloc(8192)
	if err != nil {
		t.Fatal(err)
	}
	if err := owner.Release(); err != nil { // its VM left: the area stays with the session
		t.Fatal(err)
	}
	if n, err := heir.Adopt(off); err != nil || n < 8192 {
		t.Fatalf("adopt %#x: %d bytes, %v", off, n, err)
	}
	if _, err := heir.Adopt(off); !errors.Is(err, ivshmem.ErrBadRef) { // a second ADOPT of it
		t.Errorf("adopt of an area held already: %v, want a bad reference", err)
	}
	if err := heir.Free(off); err != nil {
		t.Errorf("free of the adopted area: %v", err)
	}
	if _, err := heir.Adopt(off); err == nil {
		t.Errorf("adopt of a freed area succeeded")
	}
	for _, bad := range []uint64{0, 1, off + 1, 1 << 40} {
		if _, err := heir.Adopt(bad); !errors.Is(err, ivshmem.ErrBadRef) {
			t.Errorf("adopt %#x: %v, want a bad reference", bad, err)
		}
	}
	if err := heir.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := heir.Adopt(off); !errors.Is(err, ErrPassThrough) {
		t.Errorf("adopt after release: %v, want pass-through", err)
	}
}

// TestJoinAfterStartWithoutDevice: a rank whose VM has no device at Start (its IVSHIM_REGION
// leads nowhere: the VM is being migrated) is not fatal to the job; it says so, takes part as a
// rank without a region, and joins its VM's region once the device is there, but only one
// where ranks of its job run. In a job where no rank shares memory it looks for nothing.
func TestJoinAfterStartWithoutDevice(t *testing.T) {
	hostA, empty := newRegion(t, nil), newRegion(t, nil)
	dir := t.TempDir()
	vm := func(i byte) ivshmem.HostID { return ivshmem.HostID{0: 0xee, 15: i} }
	for i := range 3 {
		if err := openRegion(t, hostA).SetVM(uint32(i), vm(byte(i)), ivshmem.VMPresent); err != nil {
			t.Fatal(err)
		}
	}
	if err := openRegion(t, empty).SetVM(0, vm(2), ivshmem.VMPresent); err != nil {
		t.Fatal(err)
	}
	late := filepath.Join(dir, "vm2") // a device link that leads nowhere yet
	if err := os.Symlink(filepath.Join(dir, "unplugged"), late); err != nil {
		t.Fatal(err)
	}
	j := startJob(t, env("IVSHIM_REGION", hostA, "IVSHIM_VM_ID", vm(0).String()),
		env("IVSHIM_REGION", hostA, "IVSHIM_VM_ID", vm(1).String()),
		env("IVSHIM_REGION", late, "IVSHIM_VM_ID", vm(2).String()))
	if tb := j.table(0); tb.Mode != ModeSHM || tb.LocalRanks != 2 {
		t.Fatalf("rank 0: %+v, want shared memory with rank 1", tb)
	}
	a := j.ranks[2].a
	if tb := j.table(2); tb.Mode != ModePassThrough || !a.JoinsLater() {
		t.Fatalf("rank 2 without a device: mode %v, joins later %v", tb.Mode, a.JoinsLater())
	}
	if out, want := j.ranks[2].stderr.String(), "ivshim: rank 2: no region at start: no ivshim region: IVSHIM_REGION "+late+
		" does not exist"; !strings.Contains(out, want) || !strings.Contains(out, "until it joins its VM's region") {
		t.Errorf("rank 2 printed %q, want %q", out, want)
	}
	nothing := func(why string) {
		t.Helper()
		if _, err := a.Rejoin(); !errors.Is(err, ErrNothingToJoin) || !strings.Contains(err.Error(), why) {
			t.Fatalf("join: %v, want nothing to join (%s)", err, why)
		}
	}
	nothing("does not exist")
	os.Remove(late)
	os.Symlink(empty, late)
	nothing("no rank of this job holds region")
	os.Remove(late)
	os.Symlink(hostA, late)
	got, err := a.Rejoin()
	if err != nil {
		t.Fatalf("join once the device is there: %v", err)
	}
	ra := openRegion(t, hostA)
	if si, err := ra.Slot(got.Slot); err != nil || si.State != ivshmem.SlotActive || si.WorldRank != 2 || si.Session != ra.Session() || si.VMIndex != 2 {
		t.Errorf("slot %d after the join: %+v %v, region session %#x", got.Slot, si, err, ra.Session())
	}
	if a.JoinsLater() {
		t.Error("joins later while holding a region")
	}
	if off, err := j.ranks[0].a.CreateRing(got.Slot, true); err != nil || off == 0 {
		t.Errorf("ring from the rank that joined: %#x %v", off, err)
	}

	// No rank of the job shares memory: nobody to join, nothing looked for.
	os.Remove(late)
	os.Symlink(filepath.Join(dir, "unplugged"), late)
	j2 := startJob(t, env("IVSHIM_REGION", late, "IVSHIM_VM_ID", vm(2).String()), env())
	for w := range 2 {
		if j2.ranks[w].a.JoinsLater() {
			t.Errorf("job without shared memory: rank %d looks for a region to join", w)
		}
	}
}
