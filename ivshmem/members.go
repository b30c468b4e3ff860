package ivshmem

import (
	"errors"
	"fmt"
	"runtime"
	"time"
)

// Errors callers test for.
var (
	ErrSessionBusy = errors.New("region in use by another MPI job instance")
	ErrNoSlot      = errors.New("no free slot in region")
	ErrNoSpace     = errors.New("region heap exhausted")
	ErrLockTimeout = errors.New("region allocator lock not released")
	ErrBadRef      = errors.New("corrupt reference in region")
)

// lockWait bounds how long the allocator lock is waited for: a holder that died inside its
// critical section must fail the job with a message, not hang it.
const lockWait = 2 * time.Second

// Session returns the MPI job instance currently using the region (0 = none).
func (r *Region) Session() uint64 { return a64(&r.hdr().Session).Load() }

// ClaimSession makes id the region's session if there is none. Claiming the session already in
// place succeeds, so every local leader of one job can call it.
func (r *Region) ClaimSession(id uint64) error {
	s := a64(&r.hdr().Session)
	if s.CompareAndSwap(0, id) || s.Load() == id {
		return nil
	}
	return fmt.Errorf("%w: session %#x", ErrSessionBusy, s.Load())
}

// TakeOverSession replaces a dead session old with id, wiping the slots, rings and allocations
// old left behind. The caller decides old is dead (see SessionStale).
func (r *Region) TakeOverSession(old, id uint64) error {
	if !a64(&r.hdr().Session).CompareAndSwap(old, id) {
		return fmt.Errorf("%w: session changed while taking over %#x", ErrSessionBusy, old)
	}
	for i := uint32(0); i < r.layout.SlotCount; i++ {
		if s := r.slotAt(i); s.Session == old {
			a32(&s.State).Store(uint32(SlotFree))
		}
		for j := uint32(0); j < r.layout.SlotCount; j++ {
			r.pairAt(i, j).Store(0)
		}
	}
	a64(&r.hdr().SessionMembers).Store(0)
	a64(&r.hdr().HeapLock).Store(0)
	for i := uint32(0); i < r.layout.ChunkCount; i++ {
		*r.chunkAt(i) = chunk{}
	}
	return nil
}

// SessionStale reports whether no slot of session id shows a heartbeat during wait: its ranks
// are gone (crashed or killed) without detaching.
func (r *Region) SessionStale(id uint64, wait time.Duration) bool {
	before := r.heartbeats(id)
	time.Sleep(wait)
	after := r.heartbeats(id)
	for i, hb := range after {
		if b, ok := before[i]; !ok || b != hb {
			return false
		}
	}
	return true
}

func (r *Region) heartbeats(id uint64) map[uint32]uint64 {
	out := map[uint32]uint64{}
	for i := uint32(0); i < r.layout.SlotCount; i++ {
		s := r.slotAt(i)
		if SlotState(a32(&s.State).Load()) != SlotFree && s.Session == id {
			out[i] = a64(&s.Heartbeat).Load()
		}
	}
	return out
}

// SlotIdentity is what a rank publishes about itself in its slot.
type SlotIdentity struct {
	Session   uint64
	VMIndex   uint32
	WorldRank uint32
	WorldSize uint32
	PID       uint32
}

// SlotInfo is a snapshot of one slot. Its fields come from shared memory: callers treat
// VMIndex and WorldRank as untrusted and check them against their own bounds.
type SlotInfo struct {
	SlotIdentity
	State     SlotState
	Heartbeat uint64
}

// ClaimSlot takes a free slot for the calling rank, publishes its identity and marks it ACTIVE.
// It joins the rank to the session's member count.
func (r *Region) ClaimSlot(id SlotIdentity) (uint32, error) {
	for i := uint32(0); i < r.layout.SlotCount; i++ {
		s := r.slotAt(i)
		if !a32(&s.State).CompareAndSwap(uint32(SlotFree), uint32(SlotClaimed)) {
			continue
		}
		for k := range s.RingWanted { // a previous owner's askers are not this owner's
			a64(&s.RingWanted[k]).Store(0)
		}
		s.VMIndex = id.VMIndex
		s.Session = id.Session
		s.WorldRank = id.WorldRank
		s.WorldSize = id.WorldSize
		s.PID = id.PID
		a64(&r.hdr().SessionMembers).Add(1)
		a32(&s.State).Store(uint32(SlotActive))
		return i, nil
	}
	return 0, fmt.Errorf("%w: all %d taken", ErrNoSlot, r.layout.SlotCount)
}

func (r *Region) checkSlot(i uint32) error {
	if i >= r.layout.SlotCount {
		return fmt.Errorf("%w: slot %d of %d", ErrBadRef, i, r.layout.SlotCount)
	}
	return nil
}

// Slot returns a snapshot of slot i, identity read after the state (ACQUIRE).
func (r *Region) Slot(i uint32) (SlotInfo, error) {
	if err := r.checkSlot(i); err != nil {
		return SlotInfo{}, err
	}
	s := r.slotAt(i)
	st := SlotState(a32(&s.State).Load())
	if st > SlotLeaving {
		return SlotInfo{}, fmt.Errorf("%w: slot %d state %d", ErrBadRef, i, st)
	}
	return SlotInfo{
		State:     st,
		Heartbeat: a64(&s.Heartbeat).Load(),
		SlotIdentity: SlotIdentity{Session: s.Session, VMIndex: s.VMIndex, WorldRank: s.WorldRank,
			WorldSize: s.WorldSize, PID: s.PID},
	}, nil
}

// SetSlotState moves the caller's own slot to st (RELEASE).
func (r *Region) SetSlotState(i uint32, st SlotState) error {
	if err := r.checkSlot(i); err != nil {
		return err
	}
	a32(&r.slotAt(i).State).Store(uint32(st))
	return nil
}

// Beat advances the caller's own heartbeat.
func (r *Region) Beat(i uint32) {
	if i < r.layout.SlotCount {
		a64(&r.slotAt(i).Heartbeat).Add(1)
	}
}

// ReleaseSlot detaches the caller from slot i: its inbound rings are unpublished and freed,
// the slot becomes FREE, and the last member out ends the session, freeing what the session
// still holds (collective areas of ranks that released their slots while the job ran: their
// co-located members could still read them then) and clearing the pair table. It returns
// whether the session ended. PairNet words stay until then: a sender that asked for a ring and
// has not read the answer yet must still find it after the receiver left.
func (r *Region) ReleaseSlot(i uint32) (bool, error) {
	if err := r.checkSlot(i); err != nil {
		return false, err
	}
	s := r.slotAt(i)
	session := s.Session
	var errs []error
	for sender := uint32(0); sender < r.layout.SlotCount; sender++ {
		w := r.pairAt(sender, i)
		if off := w.Load(); off != 0 && off != PairNet && w.CompareAndSwap(off, 0) {
			errs = append(errs, r.Free(session, i, off))
		}
	}
	a32(&s.State).Store(uint32(SlotFree))
	last := a64(&r.hdr().SessionMembers).Add(^uint64(0)) == 0
	if last {
		if err := r.lock(i); err != nil {
			errs = append(errs, err)
		} else {
			for c := uint32(0); c < r.layout.ChunkCount; c++ {
				if r.chunkAt(c).Owner == session {
					*r.chunkAt(c) = chunk{}
				}
			}
			for s := uint32(0); s < r.layout.SlotCount; s++ {
				for d := uint32(0); d < r.layout.SlotCount; d++ {
					r.pairAt(s, d).CompareAndSwap(PairNet, 0)
				}
			}
			r.unlock()
		}
		a64(&r.hdr().Session).CompareAndSwap(session, 0)
	}
	return last, errors.Join(errs...)
}

// lock takes the allocator lock for slot i, spinning briefly and then yielding. It gives up
// only when one holder keeps the lock for lockWait (a rank that died holding it): waiting
// behind many live holders, as a large group setting up its rings on few CPUs does, restarts
// the clock at every change of holder.
func (r *Region) lock(i uint32) error {
	l := a64(&r.hdr().HeapLock)
	deadline, holder := time.Now().Add(lockWait), uint64(0)
	for n := 0; ; n++ {
		if l.CompareAndSwap(0, uint64(i)+1) {
			return nil
		}
		if n < 64 {
			runtime.Gosched()
			continue
		}
		if h := l.Load(); h != holder {
			deadline, holder = time.Now().Add(lockWait), h
		} else if time.Now().After(deadline) {
			return fmt.Errorf("%w: held by slot %d for over %v", ErrLockTimeout, h-1, lockWait)
		}
		time.Sleep(20 * time.Microsecond)
	}
}

func (r *Region) unlock() { a64(&r.hdr().HeapLock).Store(0) }

// Alloc reserves size bytes of heap for slot i of session, first fit in whole chunks, and
// returns the allocation's region offset. The memory is zeroed.
func (r *Region) Alloc(session uint64, i uint32, kind AllocKind, size uint64) (uint64, error) {
	if err := r.checkSlot(i); err != nil {
		return 0, err
	}
	need := r.layout.chunksFor(size)
	if size == 0 || need > uint64(r.layout.ChunkCount) {
		return 0, fmt.Errorf("%w: %d bytes requested, heap is %d", ErrNoSpace, size, uint64(r.layout.ChunkCount)*uint64(r.layout.ChunkSize))
	}
	if err := r.lock(i); err != nil {
		return 0, err
	}
	defer r.unlock()
	return r.allocLocked(session, i, kind, need)
}

// allocLocked is one first-fit allocation of need chunks; it returns its offset. The caller
// holds the lock.
func (r *Region) allocLocked(session uint64, i uint32, kind AllocKind, need uint64) (uint64, error) {
	run := uint64(0)
	for c := uint32(0); c < r.layout.ChunkCount; c++ {
		if r.chunkAt(c).Owner != 0 {
			run = 0
			continue
		}
		run++
		if run < need {
			continue
		}
		first := c + 1 - uint32(need)
		for k := first; k <= c; k++ {
			*r.chunkAt(k) = chunk{Owner: session, Slot: uint16(i), Kind: uint16(kind)}
		}
		r.chunkAt(first).Length = uint32(need)
		off := r.layout.HeapOff + uint64(first)*uint64(r.layout.ChunkSize)
		clear(r.mem[off : off+need*uint64(r.layout.ChunkSize)])
		return off, nil
	}
	return 0, fmt.Errorf("%w: no %d free contiguous chunks", ErrNoSpace, need)
}

// allocation validates that off starts an allocation of session and returns its first chunk
// index, length in chunks and kind. off comes from shared memory: every property is checked.
// The caller holds the lock or accepts a racy answer.
func (r *Region) allocation(session, off uint64) (first, length uint32, kind AllocKind, err error) {
	l := r.layout
	cs := uint64(l.ChunkSize)
	if off < l.HeapOff || off >= l.HeapEnd() || (off-l.HeapOff)%cs != 0 {
		return 0, 0, 0, fmt.Errorf("%w: offset %#x is not a chunk of the heap [%#x, %#x)", ErrBadRef, off, l.HeapOff, l.HeapEnd())
	}
	first = uint32((off - l.HeapOff) / cs)
	c := *r.chunkAt(first)
	if c.Owner != session || c.Length == 0 || uint64(first)+uint64(c.Length) > uint64(l.ChunkCount) {
		return 0, 0, 0, fmt.Errorf("%w: offset %#x is not an allocation of session %#x (owner %#x, length %d)", ErrBadRef, off, session, c.Owner, c.Length)
	}
	return first, c.Length, AllocKind(c.Kind), nil
}

// Allocated returns the bytes of the collective area at off, an allocation of session (by any
// of its slots): the check a rank makes before it takes over an area another rank allocated.
// slot i is the caller.
func (r *Region) Allocated(session uint64, i uint32, off uint64) (uint64, error) {
	if err := r.checkSlot(i); err != nil {
		return 0, err
	}
	if err := r.lock(i); err != nil {
		return 0, err
	}
	defer r.unlock()
	_, n, kind, err := r.allocation(session, off)
	if err != nil {
		return 0, err
	}
	if kind != AllocCollective {
		return 0, fmt.Errorf("%w: offset %#x is an allocation of kind %d, not a collective area", ErrBadRef, off, kind)
	}
	return uint64(n) * uint64(r.layout.ChunkSize), nil
}

// Free returns the allocation at off, made in session, to the heap; slot i is the caller.
func (r *Region) Free(session uint64, i uint32, off uint64) error {
	if err := r.checkSlot(i); err != nil {
		return err
	}
	if err := r.lock(i); err != nil {
		return err
	}
	defer r.unlock()
	first, n, _, err := r.allocation(session, off)
	if err != nil {
		return fmt.Errorf("free: %w", err)
	}
	r.clearChunks(first, n)
	return nil
}

// Held returns the bytes of the heap that slot i holds for session: its inbound rings and the
// collective areas it allocated. A statistic: the answer is exact under the allocator lock,
// which it takes, but can be stale as soon as it returns.
func (r *Region) Held(session uint64, i uint32) (uint64, error) {
	if err := r.checkSlot(i); err != nil {
		return 0, err
	}
	if err := r.lock(i); err != nil {
		return 0, err
	}
	defer r.unlock()
	var n uint64
	for c := range r.layout.ChunkCount {
		if e := r.chunkAt(c); e.Owner == session && e.Owner != 0 && uint32(e.Slot) == i {
			n++
		}
	}
	return n * uint64(r.layout.ChunkSize), nil
}

// clearChunks returns chunks [first, first+n) to the heap. The caller holds the lock.
func (r *Region) clearChunks(first, n uint32) {
	for k := first; k < first+n; k++ {
		*r.chunkAt(k) = chunk{}
	}
}
