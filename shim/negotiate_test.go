package shim

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"ivshim.dev/ivshim/ivshmem"
)

// checkSHMGroup asserts that ranks form one shared-memory group on the region at path: each
// reaches each (self included) over SHM through rings that the region itself validates, the
// two directions of a pair match, and every other rank is on NET.
func checkSHMGroup(t *testing.T, j *job, path string, ranks ...int) {
	t.Helper()
	r := openRegion(t, path)
	in := map[int]bool{}
	for _, w := range ranks {
		in[w] = true
	}
	for _, a := range ranks {
		ta := j.table(a)
		if ta.Mode != ModeSHM || ta.LocalRanks != len(ranks) || ta.Source != path {
			t.Fatalf("rank %d: mode %v local_ranks %d source %s, want shm %d %s (reason %q)",
				a, ta.Mode, ta.LocalRanks, ta.Source, len(ranks), path, ta.Reason)
		}
		session := ta.Groups[ta.Group].Session
		if r.Session() != session {
			t.Fatalf("region session %#x, group's %#x", r.Session(), session)
		}
		for b, p := range ta.Peers {
			if !in[b] {
				if p != (Peer{}) {
					t.Errorf("rank %d reaches rank %d of another host or none as %+v, want NET", a, b, p)
				}
				continue
			}
			tb := j.table(b)
			if p.Path != PathSHM || p.Slot != tb.SelfSlot {
				t.Errorf("rank %d -> %d: %+v, want SHM to slot %d", a, b, p, tb.SelfSlot)
			}
			// Rings are made on first use: none yet; the receiver makes it when asked.
			if _, ok, err := r.PairRing(session, ta.SelfSlot, tb.SelfSlot); ok || err != nil {
				t.Errorf("rank %d -> %d: a ring before first use (%v, %v)", a, b, ok, err)
			}
			off, err := j.ranks[b].a.CreateRing(ta.SelfSlot, false)
			if err != nil {
				t.Fatalf("rank %d makes its ring from rank %d: %v", b, a, err)
			}
			fair, _ := r.Layout().RingCapacity(len(ranks))
			tx, ok, err := r.PairRing(session, ta.SelfSlot, tb.SelfSlot)
			if err != nil || !ok || tx.Off != off || tx.Capacity < fair || tx.Capacity > uint64(r.Layout().RingSize) {
				t.Errorf("rank %d -> %d: ring at %#x, region has %+v %v %v, want capacity %d to %d", a, b, off, tx, ok, err, fair, r.Layout().RingSize)
			}
		}
		// A slot outside the group is refused: its bit in ring_wanted comes from shared memory.
		members := map[uint32]bool{}
		for _, b := range ranks {
			members[j.table(b).SelfSlot] = true
		}
		stranger := uint32(0)
		for members[stranger] {
			stranger++
		}
		if _, err := j.ranks[a].a.CreateRing(stranger, false); err == nil {
			t.Errorf("rank %d made a ring from slot %d, outside its group", a, stranger)
		}
	}
}

func TestTwoHostsTwoRanksEach(t *testing.T) {
	hostA, hostB := newRegion(t, nil), newRegion(t, nil)
	regionEnv := func(path string) map[string]string {
		return env("IVSHIM_REGION", path, "IVSHIM_VERBOSE", "1")
	}
	// Interleaved, as a round-robin mapping places ranks.
	j := startJob(t, regionEnv(hostA), regionEnv(hostB), regionEnv(hostA), regionEnv(hostB))
	checkSHMGroup(t, j, hostA, 0, 2)
	checkSHMGroup(t, j, hostB, 1, 3)
	for w := 1; w < 4; w++ {
		if !reflect.DeepEqual(j.table(w).Groups, j.table(0).Groups) || !reflect.DeepEqual(j.table(w).Ranks, j.table(0).Ranks) {
			t.Fatalf("rank %d sees other groups than rank 0:\n%+v\n%+v", w, j.table(w).Groups, j.table(0).Groups)
		}
	}
	if self := j.table(2).Peers[2]; self.Path != PathSHM || self.Slot != j.table(2).SelfSlot {
		t.Errorf("self %+v", self)
	}

	// Heartbeats advance while the job runs.
	ra := openRegion(t, hostA)
	hb := func() uint64 {
		si, err := ra.Slot(j.table(0).SelfSlot)
		if err != nil {
			t.Fatal(err)
		}
		return si.Heartbeat
	}
	before := hb()
	time.Sleep(3 * beatInterval)
	if after := hb(); after < before+2 {
		t.Errorf("heartbeat %d -> %d in %v", before, after, 3*beatInterval)
	}

	// Verbose: rank 0 alone prints the table, in the documented format.
	out := j.ranks[0].stderr.String()
	hostOf := func(path string) string {
		h := openRegion(t, path).HostID()
		return hex.EncodeToString(h[:4])
	}
	for _, want := range []string{
		"ivshim: init ranks=4 groups=2 shm_groups=2 shm_ranks=4\n",
		fmt.Sprintf("ivshim: path rank=0 host=%s group=0 slot=%d path=shm vm=-\n", hostOf(hostA), j.table(0).SelfSlot),
		fmt.Sprintf("ivshim: path rank=1 host=%s group=1 slot=%d path=net vm=-\n", hostOf(hostB), j.table(1).SelfSlot),
		fmt.Sprintf("ivshim: path rank=2 host=%s group=0 slot=%d path=shm vm=-\n", hostOf(hostA), j.table(2).SelfSlot),
		"ivshim: group=1 host=" + openRegion(t, hostB).HostID().String() + " leader=1 ranks=1,3 generation=1 path=shm session=",
		"ivshim: rdma devices: none\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rank 0's report lacks %q:\n%s", want, out)
		}
	}
	if out := j.ranks[3].stderr.String(); out != "" {
		t.Errorf("rank 3 printed at verbose 1:\n%s", out)
	}

	// Collective areas, then finalize: the stats line, and both regions idle again.
	a := j.ranks[1].a
	off, err := a.Alloc(10000)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Free(off + 4096); err == nil {
		t.Error("freeing an offset Alloc did not return succeeded")
	}
	if _, err := a.Alloc(5000); err != nil { // left for Finalize to free
		t.Fatal(err)
	}
	if err := a.Free(off); err != nil {
		t.Fatal(err)
	}
	// What rank 3 holds when it finalizes: its two inbound rings (rank 1 holds the area left
	// allocated).
	a3 := j.ranks[3].a
	held, err := a3.m.region.Held(a3.m.session, a3.m.slot)
	if err != nil || held == 0 {
		t.Fatalf("rank 3 holds %d bytes: %v", held, err)
	}
	j.finalize()
	want := fmt.Sprintf("ivshim: stats rank=3 shm_msgs=7 shm_bytes=0 net_msgs=3 net_bytes=0 coll_shm=0 coll_net=0 gates=0 region_bytes=%d\n", held)
	if got := j.ranks[3].stderr.String(); got != want {
		t.Errorf("rank 3 stats line %q, want %q", got, want)
	}
	if _, err := a.Alloc(1); !errors.Is(err, ErrPassThrough) {
		t.Errorf("alloc after finalize: %v", err)
	}
	checkIdle(t, hostA)
	checkIdle(t, hostB)
}

func TestRanksWithoutRegion(t *testing.T) {
	t.Run("some", func(t *testing.T) {
		path := newRegion(t, nil)
		j := startJob(t, env("IVSHIM_REGION", path), env(), env("IVSHIM_REGION", path))
		checkSHMGroup(t, j, path, 0, 2)
		t1 := j.table(1)
		if t1.Mode != ModePassThrough || !strings.Contains(t1.Reason, "no ivshim region") {
			t.Errorf("rank 1: mode %v reason %q", t1.Mode, t1.Reason)
		}
		if t1.Ranks[1].Group != -1 || t1.Ranks[0].Group != 0 {
			t.Errorf("rank infos %+v", t1.Ranks)
		}
		j.finalize()
		checkIdle(t, path)
	})
	t.Run("none", func(t *testing.T) {
		j := startJob(t, env(), env(), env())
		for w := range 3 {
			if tb := j.table(w); tb.Mode != ModePassThrough || len(tb.Groups) != 0 {
				t.Errorf("rank %d: %+v", w, tb)
			}
		}
		if n := j.world.collectives(); n != 1 {
			t.Errorf("a job without regions took %d collectives, want the hello only", n)
		}
	})
}

// A rank alone on its host keeps its region, a group of one: a rank of the job that moves
// there later must find a session of the job in it to join.
func TestRankAloneOnItsHost(t *testing.T) {
	shared, lonely := newRegion(t, nil), newRegion(t, nil)
	j := startJob(t, env("IVSHIM_REGION", shared), env("IVSHIM_REGION", lonely), env("IVSHIM_REGION", shared))
	checkSHMGroup(t, j, shared, 0, 2)
	checkSHMGroup(t, j, lonely, 1)
	if j.ranks[1].a.Region() == nil {
		t.Fatal("lonely rank gave its region up")
	}
	session := j.table(1).Groups[j.table(1).Group].Session
	for w := range 3 {
		if re := j.ranks[w].a.re; re == nil || !re.sessions[session] {
			t.Errorf("rank %d would not join the lonely rank's region (session %#x): %+v", w, session, re)
		}
	}
	j.finalize()
	checkIdle(t, shared)
	checkIdle(t, lonely)
}

// foreignJob stands for another instance of the job that holds a region: a session with one
// slot and one ring; beating keeps it alive.
func foreignJob(t *testing.T, path string, beating bool) uint64 {
	t.Helper()
	r := openRegion(t, path)
	const session = 0xf0e1
	if err := r.ClaimSession(session); err != nil {
		t.Fatal(err)
	}
	slot, err := r.ClaimSlot(ivshmem.SlotIdentity{Session: session, VMIndex: ivshmem.NoVM, WorldRank: 0, WorldSize: 1, PID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateRing(session, slot, slot, 0); err != nil {
		t.Fatal(err)
	}
	if beating {
		stop, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
					r.Beat(slot)
				}
			}
		}()
		t.Cleanup(func() { close(stop); <-done })
	}
	return session
}

func TestBusyLiveSession(t *testing.T) {
	busy, free := newRegion(t, nil), newRegion(t, nil)
	foreign := foreignJob(t, busy, true)
	e := func(p string) map[string]string { return env("IVSHIM_REGION", p, "IVSHIM_VERBOSE", "1") }
	j := startJob(t, e(busy), e(busy), e(free), e(free))
	checkSHMGroup(t, j, free, 2, 3)
	for _, w := range []int{0, 1} {
		tb := j.table(w)
		if tb.Mode != ModePassThrough || !strings.Contains(tb.Reason, "is alive") {
			t.Errorf("rank %d: mode %v reason %q", w, tb.Mode, tb.Reason)
		}
	}
	if out := j.ranks[0].stderr.String(); !strings.Contains(out, "leader=0 ranks=0-1 generation=1 path=net reason=\"claim session failed on rank 0: claim region") {
		t.Errorf("report does not say why group 0 is on NET:\n%s", out)
	}
	j.finalize()
	r := openRegion(t, busy)
	if r.Session() != foreign {
		t.Errorf("busy region session %#x, want the foreign %#x", r.Session(), foreign)
	}
	checkSlotsFree(t, r, foreign)
	checkIdle(t, free)
}

func TestStaleSessionTakenOver(t *testing.T) {
	path := newRegion(t, nil)
	foreignJob(t, path, false)
	j := startJob(t, env("IVSHIM_REGION", path), env("IVSHIM_REGION", path))
	checkSHMGroup(t, j, path, 0, 1)
	checkSlotsFree(t, openRegion(t, path), j.table(0).Groups[0].Session)
	j.finalize()
	checkIdle(t, path)
}

func TestSlotExhaustion(t *testing.T) {
	path := newRegion(t, func(o *ivshmem.Options) { o.Slots = 2 })
	e := env("IVSHIM_REGION", path)
	j := startJob(t, e, e, e)
	for w := range 3 {
		tb := j.table(w)
		if tb.Mode != ModePassThrough || !strings.Contains(tb.Reason, "no free slot") {
			t.Errorf("rank %d: mode %v reason %q", w, tb.Mode, tb.Reason)
		}
		for b, p := range tb.Peers {
			if p != (Peer{}) {
				t.Errorf("rank %d -> %d: %+v after fallback", w, b, p)
			}
		}
	}
	checkIdle(t, path)
}

// Two files claiming the same host: the members cannot share memory, and must notice.
func TestSameHostIDDifferentFiles(t *testing.T) {
	var host ivshmem.HostID
	pathA := newRegion(t, func(o *ivshmem.Options) { host = o.HostID })
	pathB := newRegion(t, func(o *ivshmem.Options) { o.HostID = host })
	j := startJob(t, env("IVSHIM_REGION", pathA), env("IVSHIM_REGION", pathB))
	for w := range 2 {
		if tb := j.table(w); tb.Mode != ModePassThrough || !strings.Contains(tb.Reason, "not the same region") {
			t.Errorf("rank %d: mode %v reason %q", w, tb.Mode, tb.Reason)
		}
	}
	checkIdle(t, pathA)
	checkIdle(t, pathB)
}

// checkFatal asserts every rank failed with the same message, naming the culprit.
func checkFatal(t *testing.T, j *job, culprit string, wants ...string) {
	t.Helper()
	first := j.ranks[0].err
	for w, o := range j.ranks {
		if o.err == nil {
			t.Fatalf("rank %d started (mode %v), want fatal", w, o.a.Table.Mode)
		}
		if o.err.Error() != first.Error() {
			t.Errorf("rank %d: %v\nrank 0: %v", w, o.err, first)
		}
	}
	for _, want := range append(wants, culprit) {
		if !strings.Contains(first.Error(), want) {
			t.Errorf("error %q lacks %q", first, want)
		}
	}
}

func TestCorruptRegionFailsEveryRank(t *testing.T) {
	t.Run("header", func(t *testing.T) {
		good, bad := newRegion(t, nil), newRegion(t, nil)
		writeAt(t, bad, 0, []byte{0x42})
		j := startJob(t, env("IVSHIM_REGION", good), env("IVSHIM_REGION", bad), env("IVSHIM_REGION", good))
		checkFatal(t, j, "rank 1 of 3 failed: IVSHIM_REGION: open region "+bad, "invalid ivshim region: magic")
		checkIdle(t, good)
	})
	t.Run("pair table", func(t *testing.T) {
		// A garbage ring offset where rank 0's self ring goes: found while sizing the rings,
		// after the session and slots are taken, so all of it must be undone.
		path := newRegion(t, nil)
		var off [8]byte
		binary.LittleEndian.PutUint64(off[:], 0xdead00)
		writeAt(t, path, int64(openRegion(t, path).Layout().PairTableOff), off[:])
		j := startJob(t, env("IVSHIM_REGION", path), env("IVSHIM_REGION", path))
		// Which rank gets slot 0 is a race; either way both ranks name it.
		checkFatal(t, j, " of 2 failed: region "+path, "pair word 0->0 holds 0xdead00", "corrupt reference in region")
		checkIdle(t, path)
	})
}

func TestBadEnvironmentFailsEveryRank(t *testing.T) {
	path := newRegion(t, nil)
	j := startJob(t, env("IVSHIM_REGION", path), env("IVSHIM_REGION", path, "IVSHIM_VERBOSE", "7"))
	checkFatal(t, j, "rank 1 of 2 failed: configuration: IVSHIM_VERBOSE=\"7\"")
	checkIdle(t, path)

	j = startJob(t, env("IVSHIM_REGION", path, "IVSHIM_JOB", "other-job"), env("IVSHIM_REGION", path, "IVSHIM_JOB", "other-job"))
	checkFatal(t, j, "rank 0 of 2 failed: region "+path+" belongs to job \"job-7\", IVSHIM_JOB is \"other-job\"", "also failed: rank 1")
}

func TestVerboseSelfLinesAndLog(t *testing.T) {
	path := newRegion(t, nil)
	vm := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	r := openRegion(t, path)
	if err := r.SetVM(2, vm, ivshmem.VMPresent); err != nil {
		t.Fatal(err)
	}
	e := env("IVSHIM_REGION", path, "IVSHIM_VERBOSE", "2", "IVSHIM_LOG", "json:debug", "IVSHIM_VM_ID", ivshmem.HostID(vm).String())
	j := startJob(t, e, e, env("IVSHIM_VERBOSE", "2"))
	for w := range 2 {
		want := fmt.Sprintf("ivshim: self rank=%d mode=shm group=0 slot=%d local_ranks=2 vm=2 region=%s\n", w, j.table(w).SelfSlot, path)
		if out := j.ranks[w].stderr.String(); !strings.Contains(out, want) {
			t.Errorf("rank %d lacks %q:\n%s", w, want, out)
		}
	}
	if want := "ivshim: self rank=2 mode=net reason=\"no ivshim region"; !strings.Contains(j.ranks[2].stderr.String(), want) {
		t.Errorf("rank 2 lacks %q:\n%s", want, j.ranks[2].stderr.String())
	}
	out := j.ranks[1].stderr.String()
	if !strings.Contains(out, `"msg":"region found"`) || !strings.Contains(out, `"vm":2`) || !strings.Contains(out, `"rank":1`) {
		t.Errorf("rank 1's json log lacks region found with vm 2:\n%s", out)
	}
}

func TestWatcherLogsGenerationChanges(t *testing.T) {
	path := newRegion(t, nil)
	e := env("IVSHIM_REGION", path, "IVSHIM_LOG", "console")
	j := startJob(t, e, e)
	checkSHMGroup(t, j, path, 0, 1)
	if err := openRegion(t, path).SetVM(0, [16]byte{9}, ivshmem.VMPresent); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(j.ranks[1].stderr.String(), "region generation changed") {
		if time.Now().After(deadline) {
			t.Fatalf("no generation change logged:\n%s", j.ranks[1].stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAllocFreeConcurrent(t *testing.T) {
	path := newRegion(t, nil)
	e := env("IVSHIM_REGION", path)
	j := startJob(t, e, e)
	a := j.ranks[0].a
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				off, err := a.Alloc(uint64(1000 * (g + i%3 + 1)))
				if err != nil {
					t.Error(err)
					return
				}
				if err := a.Free(off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	waitOrFail(t, &wg, "alloc/free")
	if _, err := j.ranks[0].a.Alloc(1 << 30); !errors.Is(err, ivshmem.ErrNoSpace) {
		t.Errorf("huge alloc: %v", err)
	}
	j.finalize()
	checkIdle(t, path)
}

func TestPassThroughAttachment(t *testing.T) {
	j := startJob(t, env())
	a := j.ranks[0].a
	if _, err := a.Alloc(64); !errors.Is(err, ErrPassThrough) {
		t.Errorf("alloc: %v", err)
	}
	if err := a.Free(4096); !errors.Is(err, ErrPassThrough) {
		t.Errorf("free: %v", err)
	}
}
