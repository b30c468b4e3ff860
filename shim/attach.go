package shim

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/ivshmem"
)

// ErrPassThrough is returned by Alloc and Free on a rank that does not share memory (or no
// longer does, after Finalize).
var ErrPassThrough = errors.New("no shared memory on this rank")

// membership is a rank's hold on its region: the mapping, its slot once claimed, and the
// watcher that beats the slot.
type membership struct {
	region  *ivshmem.Region // nil: none, or closed
	session uint64          // the group's session, once the slot is claimed
	slot    uint32
	hasSlot bool
	watch   *watcher
	log     *zap.Logger
}

// join records the claimed slot and starts beating it.
func (m *membership) join(session uint64, slot, vm uint32) {
	m.session, m.slot, m.hasSlot = session, slot, true
	m.watch = startWatcher(m.region, slot, vm, m.log)
}

// leave stops the heartbeat, then releases the slot, which frees its inbound rings.
func (m *membership) leave() error {
	if m.watch != nil {
		m.watch.Stop()
		m.watch = nil
	}
	if !m.hasSlot {
		return nil
	}
	m.hasSlot = false
	last, err := m.region.ReleaseSlot(m.slot)
	m.log.Debug("released slot", zap.Uint32("slot", m.slot), zap.Bool("session_ended", last))
	if err != nil {
		return fmt.Errorf("release slot %d of %s: %w", m.slot, m.region.Source(), err)
	}
	return nil
}

// close leaves and unmaps the region. It does nothing once closed.
func (m *membership) close() error {
	if m.region == nil {
		return nil
	}
	err := m.leave()
	if cerr := m.region.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	m.region = nil
	return err
}

// Attachment is a rank's control-plane state from Start to Finalize. Its methods are safe for
// concurrent use.
type Attachment struct {
	Table PathTable // this rank's result of Start; read-only

	verbose int
	stall   int // IVSHIM_STALL_SECONDS in effect
	out     io.Writer
	log     *zap.Logger

	mu       sync.Mutex          // guards the fields below
	m        *membership         // nil in pass-through and after Finalize
	areas    map[uint64]struct{} // collective areas allocated and not yet freed
	senders  map[uint32]bool     // slots of the group's members: who may ask for a ring
	ringSize uint64              // the group's fair ring capacity (Layout.RingCapacity)
	shrunk   bool                // a ring got less than ringSize (logged once)
	done     bool                // Finalize ran
	re       *rejoinInfo         // how to find a region again after Release; nil without one at Start
}

// Region is the mapped region while this rank shares memory, else nil. It stays valid until
// Finalize.
func (a *Attachment) Region() *ivshmem.Region {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		return nil
	}
	return a.m.region
}

// Verbose is the IVSHIM_VERBOSE level in effect.
func (a *Attachment) Verbose() int { return a.verbose }

// StallSeconds is the IVSHIM_STALL_SECONDS in effect: after how long a wait of the data plane
// says what it waits for (0: never).
func (a *Attachment) StallSeconds() int { return a.stall }

// Alloc reserves a zeroed collective area of size bytes in the region for this rank and
// returns its region offset.
func (a *Attachment) Alloc(size uint64) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		return 0, fmt.Errorf("alloc %d bytes: %w", size, ErrPassThrough)
	}
	off, err := a.m.region.Alloc(a.m.session, a.m.slot, ivshmem.AllocCollective, size)
	if err != nil {
		return 0, fmt.Errorf("alloc %d bytes for a collective area: %w", size, err)
	}
	a.areas[off] = struct{}{}
	return off, nil
}

// CreateRing makes and publishes this rank's inbound ring from the member in slot sender, which
// asked for it (rings are made on first use, ivshim_region.h), and returns its region offset.
// Its capacity is ivshmem.Region.CreateRingFit's: the region's ring size while the heap keeps
// room for the group's fair share for every pair still without a ring, the fair share then,
// less only in a heap with less room than the sizing promised. An error means no ring: the
// pair takes the library.
//
// joined: the sender is a rank that shares the region since a rejoin (one side of the pair
// joined it at run time), whose point-to-point traffic with this rank moves from the library to
// a ring now (the front library's join switch). The slot must hold an active member of this
// rank's session and job, and the pair word, which an earlier occupant of that slot may have
// left, is emptied first (ivshmem.Region.ResetPair): the front asks only once it reads nothing
// of that occupant's any more.
func (a *Attachment) CreateRing(sender uint32, joined bool) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		return 0, fmt.Errorf("ring from slot %d: %w", sender, ErrPassThrough)
	}
	if joined {
		if err := a.joinedSender(sender); err != nil {
			return 0, err
		}
		if err := a.m.region.ResetPair(a.m.session, sender, a.m.slot); err != nil {
			return 0, fmt.Errorf("ring from slot %d: %w", sender, err)
		}
	} else if !a.senders[sender] {
		return 0, fmt.Errorf("ring from slot %d: not a slot of this rank's group", sender)
	}
	m, fair := len(a.senders), a.ringSize
	if joined { // the group is whoever holds a slot of the session now
		m = a.members()
		var err error
		if fair, err = a.m.region.Layout().RingCapacity(m); err != nil {
			return 0, fmt.Errorf("ring from slot %d: %w", sender, err)
		}
	}
	ring, err := a.m.region.CreateRingFit(a.m.session, sender, a.m.slot, m, fair)
	if err != nil {
		return 0, fmt.Errorf("ring from slot %d: %w", sender, err)
	}
	if ring.Capacity < fair && !a.shrunk {
		a.shrunk = true
		a.log.Warn("region heap low: a ring got less than the group's share", zap.Uint64("ring_bytes", ring.Capacity), zap.Uint64("group_ring_bytes", fair))
	}
	return ring.Off, nil
}

// members counts the slots that hold an active member of this rank's session.
func (a *Attachment) members() int {
	n := 0
	for i := range a.m.region.Layout().SlotCount {
		if si, err := a.m.region.Slot(i); err == nil && si.State == ivshmem.SlotActive && si.Session == a.m.session {
			n++
		}
	}
	return max(n, 2)
}

// joinedSender checks that slot sender holds an active member of this rank's session and job
// other than this rank.
func (a *Attachment) joinedSender(sender uint32) error {
	si, err := a.m.region.Slot(sender)
	if err != nil {
		return fmt.Errorf("ring from slot %d: %w", sender, err)
	}
	switch {
	case sender == a.m.slot:
		err = errors.New("the rank's own slot")
	case si.State != ivshmem.SlotActive:
		err = fmt.Errorf("slot state %d", si.State)
	case si.Session != a.m.session:
		err = fmt.Errorf("session %#x, not this rank's %#x", si.Session, a.m.session)
	case int(si.WorldSize) != a.Table.Size:
		err = fmt.Errorf("a job of %d ranks, not this one's %d", si.WorldSize, a.Table.Size)
	}
	if err != nil {
		return fmt.Errorf("ring from slot %d: not a member of this rank's job: %w", sender, err)
	}
	return nil
}

// Adopt makes the collective area at off this rank's to free: its allocating rank left the
// region while members still used it (Release). off comes from another rank: it must be a
// collective area of this rank's session. Returns the area's bytes.
func (a *Attachment) Adopt(off uint64) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		return 0, fmt.Errorf("adopt %#x: %w", off, ErrPassThrough)
	}
	if _, ok := a.areas[off]; ok {
		return 0, fmt.Errorf("adopt %#x: %w: the rank holds that area already", off, ivshmem.ErrBadRef)
	}
	n, err := a.m.region.Allocated(a.m.session, a.m.slot, off)
	if err != nil {
		return 0, fmt.Errorf("adopt collective area %#x: %w", off, err)
	}
	a.areas[off] = struct{}{}
	return n, nil
}

// Free returns a collective area that Alloc gave this rank.
func (a *Attachment) Free(off uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		return fmt.Errorf("free %#x: %w", off, ErrPassThrough)
	}
	if _, ok := a.areas[off]; !ok {
		return fmt.Errorf("free %#x: not a collective area of this rank", off)
	}
	if err := a.m.region.Free(a.m.session, a.m.slot, off); err != nil {
		return fmt.Errorf("free collective area %#x: %w", off, err)
	}
	delete(a.areas, off)
	return nil
}

// Release gives the region up while the job runs: the rank's VM is leaving the host and the
// data plane has moved every pair and collective of this rank to the library. The heartbeat
// stops, the slot is released (the broker's drain waits for exactly that) and the region is
// unmapped. Collective areas this rank allocated are not freed: co-located members may still
// read the last op it led; the front hands them to a rank that stays (Adopt), else they stay
// with the session until it ends. Alloc and Free fail from
// here on; Finalize only prints the stats line. Calls after the first do nothing.
func (a *Attachment) Release() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		return nil
	}
	if n := len(a.areas); n > 0 {
		a.log.Info("leaving collective areas to the rank that adopts them, or the session", zap.Int("areas", n))
		clear(a.areas)
	}
	err := a.m.close()
	a.m = nil
	a.log.Info("released the region (migration)")
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}

// Finalize prints this rank's stats line when verbose, frees the collective areas still
// allocated, releases the slot (the last rank out ends the session) and unmaps the region.
// The ranks must have stopped using the region. Calls after the first do nothing.
func (a *Attachment) Finalize(s Stats) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done {
		return nil
	}
	a.done = true
	if a.verbose >= 1 {
		if a.m != nil && a.m.hasSlot { // only the line shows it: no allocator lock otherwise
			if n, err := a.m.region.Held(a.m.session, a.m.slot); err == nil {
				s.RegionBytes = n
			}
		}
		io.WriteString(a.out, s.Line(a.Table.Rank))
	}
	a.log.Info("finalize", zap.Uint64("shm_msgs", s.Messages[PathSHM]), zap.Uint64("net_msgs", s.Messages[PathNet]))
	defer a.log.Sync()
	if a.m == nil {
		return nil
	}
	var errs []error
	if len(a.areas) > 0 {
		a.log.Warn("freeing collective areas left allocated", zap.Int("areas", len(a.areas)))
		for off := range a.areas {
			if err := a.m.region.Free(a.m.session, a.m.slot, off); err != nil {
				errs = append(errs, fmt.Errorf("free collective area %#x: %w", off, err))
			}
		}
		clear(a.areas)
	}
	errs = append(errs, a.m.close())
	a.m = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("finalize: %w", err)
	}
	return nil
}
