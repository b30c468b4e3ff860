package ivshmem

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func testOptions(t *testing.T) Options {
	t.Helper()
	h, err := NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	return Options{Size: 4 << 20, HostID: h, JobID: "job-42", Slots: 8, VMs: 4, RingSize: 64 << 10}
}

func newRegion(t *testing.T) (*Region, string, Options) {
	t.Helper()
	return newRegionWith(t, nil)
}

// newRegionWith is newRegion with the options edit changes first.
func newRegionWith(t *testing.T, edit func(*Options)) (*Region, string, Options) {
	t.Helper()
	o := testOptions(t)
	if edit != nil {
		edit(&o)
	}
	path := filepath.Join(t.TempDir(), "region")
	if err := Create(path, o); err != nil {
		t.Fatal(err)
	}
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, path, o
}

func TestCreateOpenRoundTrip(t *testing.T) {
	r, path, o := newRegion(t)
	if r.HostID() != o.HostID || r.JobID() != o.JobID {
		t.Fatalf("host %v job %q, want %v %q", r.HostID(), r.JobID(), o.HostID, o.JobID)
	}
	l := r.Layout()
	if l.TotalSize != o.Size || l.SlotCount != 8 || l.VMCount != 4 || l.RingSize != 64<<10 {
		t.Fatalf("layout %+v", l)
	}
	if r.Generation() != 1 {
		t.Fatalf("fresh generation %d, want 1", r.Generation())
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != int64(o.Size) {
		t.Fatalf("mode %v size %d", st.Mode(), st.Size())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestCreateNeverReplaces(t *testing.T) {
	_, path, o := newRegion(t)
	if err := Create(path, o); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second Create: %v, want ErrExist", err)
	}
}

func TestCreateRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(t)
	bad := map[string]func(*Options){
		"size not pow2": func(o *Options) { o.Size = 3 << 20 },
		"too small":     func(o *Options) { o.Size = 64 << 10 },
		"zero host":     func(o *Options) { o.HostID = HostID{} },
		"job slash":     func(o *Options) { o.JobID = "a/b" },
		"ring too big":  func(o *Options) { o.RingSize = 8 << 20 },
		"chunk not pow": func(o *Options) { o.ChunkSize = 5000 },
	}
	for name, mutate := range bad {
		oo := o
		mutate(&oo)
		if err := Create(filepath.Join(dir, "r"), oo); err == nil {
			t.Errorf("%s: Create succeeded", name)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("failed Create left files: %v", entries)
	}
}

func TestValidateRejectsCorruption(t *testing.T) {
	_, path, _ := newRegion(t)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := Validate(good, uint64(len(good))); err != nil {
		t.Fatalf("good region: %v", err)
	}
	corrupt := map[string]func(b []byte){
		"magic":        func(b []byte) { b[0] ^= 1 },
		"version":      func(b []byte) { b[8] = byte(Version + 1) },
		"total size":   func(b []byte) { b[16+3] = 0x40 },
		"slot count":   func(b []byte) { b[40] = 0xff; b[41] = 0xff },
		"vm count":     func(b []byte) { b[44] = 0 },
		"chunk count":  func(b []byte) { b[52]++ },
		"heap offset":  func(b []byte) { b[160] += 64 },
		"zero host":    func(b []byte) { clear(b[24:40]) },
		"job unpadded": func(b []byte) { b[64+10] = 'x'; b[64+20] = 'y' },
		"job bad char": func(b []byte) { b[64] = '/' },
	}
	for name, f := range corrupt {
		b := append([]byte(nil), good...)
		f(b)
		if _, _, _, err := Validate(b, uint64(len(b))); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
	}
	if _, _, _, err := Validate(good, uint64(len(good))-1); !errors.Is(err, ErrInvalid) {
		t.Errorf("short mapping accepted: %v", err)
	}
}

func TestSlotsAllocatorAndRings(t *testing.T) {
	r, _, _ := newRegion(t)
	const session = 0xabc
	if err := r.ClaimSession(session); err != nil {
		t.Fatal(err)
	}
	if err := r.ClaimSession(session + 1); !errors.Is(err, ErrSessionBusy) {
		t.Fatalf("second session: %v", err)
	}
	var wg sync.WaitGroup
	got := make([]uint32, 8)
	errs := make([]error, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = r.ClaimSlot(SlotIdentity{Session: session, WorldRank: uint32(i), WorldSize: 8, VMIndex: NoVM})
		}()
	}
	wg.Wait()
	seen := map[uint32]bool{}
	for i, s := range got {
		if errs[i] != nil || seen[s] {
			t.Fatalf("claim %d: slot %d err %v (dup %v)", i, s, errs[i], seen[s])
		}
		seen[s] = true
	}
	if _, err := r.ClaimSlot(SlotIdentity{Session: session}); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("ninth slot: %v", err)
	}
	info, err := r.Slot(got[3])
	if err != nil || info.State != SlotActive || info.WorldRank != 3 {
		t.Fatalf("slot info %+v %v", info, err)
	}
	ring, err := r.CreateRing(session, got[0], got[1], 0)
	if err != nil {
		t.Fatal(err)
	}
	back, ok, err := r.PairRing(session, got[0], got[1])
	if err != nil || !ok || back != ring {
		t.Fatalf("PairRing = %+v %v %v, want %+v", back, ok, err, ring)
	}
	if _, ok, err := r.PairRing(session, got[1], got[0]); ok || err != nil {
		t.Fatalf("unpublished ring: ok %v err %v", ok, err)
	}
	// A hostile peer rewrites the pair entry: the reader must refuse it, not follow it.
	r.pairAt(got[0], got[1]).Store(ring.Off + 64)
	if _, _, err := r.PairRing(session, got[0], got[1]); !errors.Is(err, ErrBadRef) {
		t.Fatalf("misaligned ring accepted: %v", err)
	}
	r.pairAt(got[0], got[1]).Store(ring.Off)
	r.ringAt(ring.Off).Capacity = 1 << 40
	if _, _, err := r.PairRing(session, got[0], got[1]); !errors.Is(err, ErrBadRef) {
		t.Fatalf("oversized ring accepted: %v", err)
	}
	r.ringAt(ring.Off).Capacity = ring.Capacity
	// Fill the heap, then free: the allocator must give everything back.
	var offs []uint64
	for {
		off, err := r.Alloc(session, got[2], AllocCollective, 1<<20)
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	if len(offs) < 2 {
		t.Fatalf("only %d MiB allocations fit in a 4 MiB region", len(offs))
	}
	for _, off := range offs {
		if err := r.Free(session, got[2], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Free(session, got[2], offs[0]); !errors.Is(err, ErrBadRef) {
		t.Fatalf("double free: %v", err)
	}
	// A collective area its allocator never freed (a rank that released its slot during a
	// migration leaves its areas to the session): the session's end frees it.
	if _, err := r.Alloc(session, got[0], AllocCollective, 4096); err != nil {
		t.Fatal(err)
	}
	ended := false
	for _, s := range got {
		last, err := r.ReleaseSlot(s)
		if err != nil {
			t.Fatal(err)
		}
		ended = last
	}
	if !ended || r.Session() != 0 {
		t.Fatalf("session %#x after all members left (ended %v)", r.Session(), ended)
	}
	for c := uint32(0); c < r.Layout().ChunkCount; c++ {
		if r.chunkAt(c).Owner != 0 {
			t.Fatalf("chunk %d still owned after release", c)
		}
	}
}

func TestTakeOverStaleSession(t *testing.T) {
	r, _, _ := newRegion(t)
	if err := r.ClaimSession(7); err != nil {
		t.Fatal(err)
	}
	s, err := r.ClaimSlot(SlotIdentity{Session: 7})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateRing(7, s, s, 0); err != nil {
		t.Fatal(err)
	}
	if !r.SessionStale(7, 0) {
		t.Fatal("session without heartbeats not stale")
	}
	if err := r.TakeOverSession(7, 8); err != nil {
		t.Fatal(err)
	}
	if r.Session() != 8 {
		t.Fatalf("session %d", r.Session())
	}
	if info, _ := r.Slot(s); info.State != SlotFree {
		t.Fatalf("stale slot state %v", info.State)
	}
	if _, ok, _ := r.PairRing(8, s, s); ok {
		t.Fatal("stale ring still published")
	}
}

func TestVMTable(t *testing.T) {
	r, _, _ := newRegion(t)
	u := [16]byte{1, 2, 3}
	g := r.Generation()
	if err := r.SetVM(2, u, VMPresent); err != nil {
		t.Fatal(err)
	}
	if r.Generation() != g+1 {
		t.Fatalf("generation %d, want %d", r.Generation(), g+1)
	}
	if i, ok := r.FindVM(u); !ok || i != 2 {
		t.Fatalf("FindVM = %d %v", i, ok)
	}
	if err := r.SetVM(4, u, VMPresent); !errors.Is(err, ErrBadRef) {
		t.Fatalf("entry past the table: %v", err)
	}
}

// TestLockDeadHolder: the allocator lock is given up on only when one holder keeps it.
func TestLockDeadHolder(t *testing.T) {
	r, _, _ := newRegion(t)
	l := a64(&r.hdr().HeapLock)
	l.Store(6) // slot 5 died holding it
	start := time.Now()
	if err := r.lock(1); !errors.Is(err, ErrLockTimeout) || !strings.Contains(err.Error(), "slot 5") {
		t.Fatalf("lock held by a dead slot: %v", err)
	}
	if d := time.Since(start); d < lockWait {
		t.Fatalf("gave up after %v, before lockWait %v", d, lockWait)
	}
	// Live holders that hand the lock on keep a waiter waiting, however long it takes in all.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for h := uint64(2); ; h++ {
			select {
			case <-stop:
				l.Store(0)
				return
			case <-time.After(lockWait / 4):
				l.Store(h%8 + 2) // another live slot has it now
			}
		}
	}()
	time.AfterFunc(lockWait*3/2, func() { close(stop) })
	start = time.Now()
	if err := r.lock(1); err != nil {
		t.Fatalf("waiting behind live holders for %v: %v", time.Since(start), err)
	}
	<-done
	if d := time.Since(start); d < lockWait {
		t.Fatalf("got the lock after %v: the test did not make it wait past lockWait", d)
	}
	r.unlock()
}

// TestHeld: a slot holds exactly its inbound rings and the areas it allocated, nothing of
// another slot's or another session's, and nothing once released.
func TestHeld(t *testing.T) {
	r, _, _ := newRegion(t)
	if err := r.ClaimSession(7); err != nil {
		t.Fatal(err)
	}
	a, err := r.ClaimSlot(SlotIdentity{Session: 7, WorldRank: 0})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.ClaimSlot(SlotIdentity{Session: 7, WorldRank: 1})
	if err != nil {
		t.Fatal(err)
	}
	chunk := uint64(r.Layout().ChunkSize)
	ringBytes := r.Layout().chunksFor(RingHeaderSize+RingMinCapacity) * chunk
	for _, p := range [][2]uint32{{a, b}, {b, b}, {a, a}} {
		if _, err := r.CreateRing(7, p[0], p[1], RingMinCapacity); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Alloc(7, a, AllocCollective, 3*chunk); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Alloc(8, a, AllocCollective, chunk); err != nil { // another session's
		t.Fatal(err)
	}
	for _, tc := range []struct {
		slot uint32
		want uint64
	}{{a, ringBytes + 3*chunk}, {b, 2 * ringBytes}} {
		if got, err := r.Held(7, tc.slot); err != nil || got != tc.want {
			t.Errorf("Held(7, %d) = %d, %v; want %d", tc.slot, got, err, tc.want)
		}
	}
	if _, err := r.ReleaseSlot(b); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Held(7, b); err != nil || got != 0 {
		t.Errorf("Held after release = %d, %v; want 0", got, err)
	}
	if _, err := r.Held(7, r.Layout().SlotCount); err == nil {
		t.Error("Held of a slot past the table: no error")
	}
}

// TestCreateRingFit: rings made on first use get the region's ring size while the heap keeps
// room for the group's fair share for every pair still without one, so that every pair of the
// group gets at least the fair share whatever the order; a heap with less room than promised
// gives smaller rings, then none.
func TestCreateRingFit(t *testing.T) {
	const m = 8
	r, _, _ := newRegionWith(t, func(o *Options) { o.Size, o.Slots, o.RingSize = 8<<20, m, 256<<10 })
	l := r.Layout()
	fair, err := l.RingCapacity(m)
	if err != nil || fair >= uint64(l.RingSize) {
		t.Fatalf("fair capacity %d (%v): want less than the ring size %d for this test", fair, err, l.RingSize)
	}
	if err := r.ClaimSession(7); err != nil {
		t.Fatal(err)
	}
	var slots []uint32
	for k := 0; k < m; k++ {
		s, err := r.ClaimSlot(SlotIdentity{Session: 7, WorldRank: uint32(k)})
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, s)
	}
	type pair struct{ s, d uint32 }
	var pairs []pair
	for _, s := range slots {
		for _, d := range slots {
			pairs = append(pairs, pair{s, d})
		}
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(pairs), func(i, j int) { pairs[i], pairs[j] = pairs[j], pairs[i] })
	var big, last uint64
	for k, p := range pairs {
		ring, err := r.CreateRingFit(7, p.s, p.d, m, fair)
		if err != nil {
			t.Fatalf("ring %d of %d (%d->%d): %v", k, len(pairs), p.s, p.d, err)
		}
		if k == 0 && ring.Capacity != uint64(l.RingSize) {
			t.Errorf("the first ring got %d bytes, want the ring size %d", ring.Capacity, l.RingSize)
		}
		if ring.Capacity < fair || ring.Capacity > uint64(l.RingSize) || !isPow2(ring.Capacity) {
			t.Fatalf("ring %d->%d: capacity %d, want a power of two in [%d, %d]", p.s, p.d, ring.Capacity, fair, l.RingSize)
		}
		if back, ok, err := r.PairRing(7, p.s, p.d); err != nil || !ok || back != ring {
			t.Fatalf("ring %d->%d: published %+v %v %v, want %+v", p.s, p.d, back, ok, err, ring)
		}
		if ring.Capacity > fair {
			big++
		}
		last = ring.Capacity
	}
	t.Logf("%d ranks: %d of %d rings above the fair %d bytes; the last one %d", m, big, len(pairs), fair, last)
	if last != fair {
		t.Errorf("the last ring got %d bytes, want the fair share %d", last, fair)
	}
	if _, err := r.CreateRingFit(7, slots[0], slots[1], m, fair); err == nil {
		t.Error("a second ring for a pair that has one")
	}
	r.pairAt(slots[2], slots[3]).Store(0)
	r.pairAt(slots[2], slots[3]).Store(PairNet)
	if _, err := r.CreateRingFit(7, slots[2], slots[3], m, fair); err == nil {
		t.Error("a ring over a NET answer")
	}

	// Another party took all of the heap but one and a half fair rings.
	r2, _, _ := newRegion(t)
	l2 := r2.Layout()
	fair2, err := l2.RingCapacity(2)
	if err != nil {
		t.Fatal(err)
	}
	cs := uint64(l2.ChunkSize)
	one := (RingHeaderSize + fair2 + cs - 1) / cs * cs
	heap := uint64(l2.ChunkCount) * cs
	if _, err := r2.Alloc(99, 0, AllocCollective, heap-one-one/2); err != nil {
		t.Fatal(err)
	}
	if err := r2.ClaimSession(7); err != nil {
		t.Fatal(err)
	}
	a, _ := r2.ClaimSlot(SlotIdentity{Session: 7})
	b, _ := r2.ClaimSlot(SlotIdentity{Session: 7, WorldRank: 1})
	got := []uint64{}
	for _, p := range []pair{{a, b}, {b, a}, {a, a}, {b, b}} {
		ring, err := r2.CreateRingFit(7, p.s, p.d, 2, fair2)
		if err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("ring %d->%d: %v, want ErrNoSpace", p.s, p.d, err)
			}
			break
		}
		got = append(got, ring.Capacity)
	}
	if len(got) < 2 || got[0] != fair2 || got[1] >= fair2 || len(got) == 4 {
		t.Errorf("capacities %v in a heap for one and a half rings of %d: want %d, a smaller one, then ErrNoSpace", got, fair2, fair2)
	}
}

// A slot's next occupant gets a ring from a receiver that stayed: ResetPair empties what the
// earlier occupant's pair left (a ring of the receiver's, or a NET answer), and nothing else.
func TestResetPair(t *testing.T) {
	r, _, _ := newRegion(t)
	if err := r.ClaimSession(7); err != nil {
		t.Fatal(err)
	}
	a, _ := r.ClaimSlot(SlotIdentity{Session: 7})
	b, _ := r.ClaimSlot(SlotIdentity{Session: 7, WorldRank: 1})
	c, _ := r.ClaimSlot(SlotIdentity{Session: 7, WorldRank: 2})
	if err := r.ResetPair(7, a, b); err != nil {
		t.Fatalf("an empty word: %v", err)
	}
	old, err := r.CreateRing(7, a, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	held, _ := r.Held(7, b)
	if err := r.ResetPair(7, a, b); err != nil {
		t.Fatalf("the earlier occupant's ring: %v", err)
	}
	if w := r.pairAt(a, b).Load(); w != 0 {
		t.Fatalf("pair word %#x after the reset, want 0", w)
	}
	if after, _ := r.Held(7, b); after >= held {
		t.Errorf("the receiver holds %d bytes after the reset, %d before: the old ring was not freed", after, held)
	}
	ring, err := r.CreateRing(7, a, b, 0)
	if err != nil || ring.Off != old.Off {
		t.Fatalf("a new ring after the reset: %+v %v (the old one was at %#x)", ring, err, old.Off)
	}
	r.pairAt(a, c).Store(PairNet)
	if err := r.ResetPair(7, a, c); err != nil || r.pairAt(a, c).Load() != 0 {
		t.Fatalf("a NET answer: %v, word %#x", err, r.pairAt(a, c).Load())
	}
	// Words that are no ring of this receiver stay: another slot's ring, a collective area,
	// garbage, another session's.
	area, err := r.Alloc(7, c, AllocCollective, 4096)
	if err != nil {
		t.Fatal(err)
	}
	other, err := r.CreateRing(7, b, a, 0) // a ring of the receiver's, for another pair
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []uint64{ring.Off, area, other.Off, 12345, 1 << 62} {
		r.pairAt(c, a).Store(w)
		if err := r.ResetPair(7, c, a); !errors.Is(err, ErrBadRef) {
			t.Errorf("word %#x: %v, want ErrBadRef", w, err)
		}
		if got := r.pairAt(c, a).Load(); got != w {
			t.Errorf("word %#x became %#x", w, got)
		}
	}
	r.pairAt(c, a).Store(0)
	if err := r.ResetPair(8, a, b); !errors.Is(err, ErrBadRef) {
		t.Errorf("another session's ring: %v, want ErrBadRef", err)
	}
	if err := r.ResetPair(7, a, 1<<20); !errors.Is(err, ErrBadRef) {
		t.Errorf("a slot out of the table: %v", err)
	}
}
