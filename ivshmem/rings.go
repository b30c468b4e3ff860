package ivshmem

import (
	"fmt"
)

// Ring is a validated pair ring: where it is and how big, taken from private memory after
// the checks in PairRing.
type Ring struct {
	Off      uint64 // region offset of struct ivshim_ring
	Capacity uint64 // data bytes, power of two
}

// CreateRing allocates and initialises the ring carrying messages from slot sender to slot
// receiver (the caller), with capacity data bytes (0 = the region's ring size), and publishes
// it in pair[sender][receiver] (RELEASE). Receivers own their inbound rings. The data plane
// makes its rings with CreateRingFit, which picks the capacity; this one takes it as given.
// A pair word that is not 0 (a ring, or a PairNet answer the sender may be acting on) is never
// replaced.
func (r *Region) CreateRing(session uint64, sender, receiver uint32, capacity uint64) (Ring, error) {
	if err := r.checkSlot(sender); err != nil {
		return Ring{}, err
	}
	if capacity == 0 {
		capacity = uint64(r.layout.RingSize)
	}
	if !isPow2(capacity) || capacity < RingMinCapacity {
		return Ring{}, fmt.Errorf("create ring %d->%d: capacity %d not a power of two >= %d", sender, receiver, capacity, RingMinCapacity)
	}
	if w := r.pairAt(sender, receiver).Load(); w != 0 {
		return Ring{}, fmt.Errorf("create ring %d->%d: the pair word already holds %#x", sender, receiver, w)
	}
	off, err := r.Alloc(session, receiver, AllocRing, RingHeaderSize+capacity)
	if err != nil {
		return Ring{}, fmt.Errorf("create ring %d->%d: %w", sender, receiver, err)
	}
	return r.publishRing(off, session, sender, receiver, capacity), nil
}

// publishRing writes the header of a ring just allocated (zeroed) at off and publishes it in
// the pair word.
func (r *Region) publishRing(off, session uint64, sender, receiver uint32, capacity uint64) Ring {
	g := r.ringAt(off)
	g.Capacity = capacity
	g.Session = session
	g.SenderSlot = sender
	g.ReceiverSlot = receiver
	a32(&g.State).Store(RingOpen)
	r.pairAt(sender, receiver).Store(off)
	return Ring{Off: off, Capacity: capacity}
}

// CreateRingFit is CreateRing for a ring made on first use by a group of m ranks, whose rings
// get capacity fair when every pair of the group has one (Layout.RingCapacity(m)). Sparse
// traffic should not pay for pairs that never talk, so the capacity is chosen under the
// allocator lock: the region's ring size, halved as often as needed for the heap to keep room,
// beside the collective areas' reserve, for a ring of capacity fair for every pair of the group
// that has none yet; fair when even that leaves too little. A heap with less room than the
// sizing promised (collective areas beyond the reserve) gets smaller rings, down to
// RingMinCapacity, and then ErrNoSpace.
func (r *Region) CreateRingFit(session uint64, sender, receiver uint32, m int, fair uint64) (Ring, error) {
	if err := r.checkSlot(sender); err != nil {
		return Ring{}, err
	}
	if err := r.checkSlot(receiver); err != nil {
		return Ring{}, err
	}
	l := r.layout
	if !isPow2(fair) || fair < RingMinCapacity || fair > uint64(l.RingSize) || m < 1 {
		return Ring{}, fmt.Errorf("create ring %d->%d: fair capacity %d for %d ranks", sender, receiver, fair, m)
	}
	if w := r.pairAt(sender, receiver).Load(); w != 0 {
		return Ring{}, fmt.Errorf("create ring %d->%d: the pair word already holds %#x", sender, receiver, w)
	}
	if err := r.lock(receiver); err != nil {
		return Ring{}, err
	}
	free, made := uint64(0), uint64(0)
	for c := uint32(0); c < l.ChunkCount; c++ {
		switch e := r.chunkAt(c); {
		case e.Owner == 0:
			free++
		case e.Owner == session && e.Length > 0 && AllocKind(e.Kind) == AllocRing:
			made++
		}
	}
	keep := l.collReserve(m)
	if keep >= uint64(l.ChunkCount) {
		keep = 0
	}
	var others uint64 // rings of the group still to come besides this one
	if pairs := uint64(m) * uint64(m); pairs > made+1 {
		others = pairs - made - 1
	}
	capacity := fair
	for c := uint64(l.RingSize); c > fair; c /= 2 {
		if l.chunksFor(RingHeaderSize+c)+others*l.chunksFor(RingHeaderSize+fair)+keep <= free {
			capacity = c
			break
		}
	}
	var off uint64
	var err error
	for ; capacity >= RingMinCapacity; capacity /= 2 {
		if off, err = r.allocLocked(session, receiver, AllocRing, l.chunksFor(RingHeaderSize+capacity)); err == nil {
			break
		}
	}
	r.unlock()
	if err != nil {
		return Ring{}, fmt.Errorf("create ring %d->%d: %w", sender, receiver, err)
	}
	return r.publishRing(off, session, sender, receiver, capacity), nil
}

// ResetPair empties the pair word from sender to receiver (the caller) that an earlier occupant
// of slot sender left behind, so that a ring can be made for the rank holding that slot now: a
// PairNet answer is cleared, a ring of session owned by receiver is unpublished and freed. Only
// the receiver calls it, and only when nobody reads or writes that ring any more (its sender
// released the slot; the receiver read it to the end): a rank that joined the region at run
// time (shim rejoin) gets its rings this way. A word naming anything else is left alone and
// reported (ErrBadRef): the region is not as this format leaves it.
func (r *Region) ResetPair(session uint64, sender, receiver uint32) error {
	if err := r.checkSlot(sender); err != nil {
		return err
	}
	if err := r.checkSlot(receiver); err != nil {
		return err
	}
	w := r.pairAt(sender, receiver)
	off := w.Load()
	switch {
	case off == 0:
		return nil
	case off == PairNet:
		w.CompareAndSwap(PairNet, 0)
		return nil
	}
	if err := r.lock(receiver); err != nil {
		return err
	}
	defer r.unlock()
	first, n, kind, err := r.allocation(session, off)
	if err == nil && kind != AllocRing {
		err = fmt.Errorf("%w: allocation kind %d", ErrBadRef, kind)
	}
	if err == nil && uint32(r.chunkAt(first).Slot) != receiver {
		err = fmt.Errorf("%w: allocation of slot %d", ErrBadRef, r.chunkAt(first).Slot)
	}
	if err == nil { // an allocation of the heap: its header lies in the region
		if g := r.ringAt(off); g.SenderSlot != sender || g.ReceiverSlot != receiver || g.Session != session {
			err = fmt.Errorf("%w: ring header names %d->%d of session %#x", ErrBadRef, g.SenderSlot, g.ReceiverSlot, g.Session)
		}
	}
	if err != nil {
		return fmt.Errorf("reset pair %d->%d at %#x: %w", sender, receiver, off, err)
	}
	if !w.CompareAndSwap(off, 0) {
		return fmt.Errorf("reset pair %d->%d: %w: the word changed under the receiver", sender, receiver, ErrBadRef)
	}
	r.clearChunks(first, n)
	return nil
}

// PairRing returns the ring from sender to receiver (ACQUIRE), validated against session:
// the offset must start a ring allocation of the session, the ring header must name the same
// pair and its capacity must fit the allocation. ok is false when none is published (the
// word is 0 or PairNet).
func (r *Region) PairRing(session uint64, sender, receiver uint32) (ring Ring, ok bool, err error) {
	if err := r.checkSlot(sender); err != nil {
		return Ring{}, false, err
	}
	if err := r.checkSlot(receiver); err != nil {
		return Ring{}, false, err
	}
	off := r.pairAt(sender, receiver).Load()
	if off == 0 || off == PairNet {
		return Ring{}, false, nil
	}
	_, n, kind, err := r.allocation(session, off)
	if err != nil {
		return Ring{}, false, fmt.Errorf("ring %d->%d: %w", sender, receiver, err)
	}
	g := r.ringAt(off)
	capacity := g.Capacity
	size := uint64(n) * uint64(r.layout.ChunkSize)
	switch {
	case kind != AllocRing:
		err = fmt.Errorf("allocation kind %d", kind)
	case g.SenderSlot != sender || g.ReceiverSlot != receiver || g.Session != session:
		err = fmt.Errorf("header names %d->%d of session %#x", g.SenderSlot, g.ReceiverSlot, g.Session)
	case !isPow2(capacity) || capacity < RingMinCapacity || capacity > size-RingHeaderSize:
		err = fmt.Errorf("capacity %d in a %d-byte allocation", capacity, size)
	}
	if err != nil {
		return Ring{}, false, fmt.Errorf("%w: ring %d->%d at %#x: %v", ErrBadRef, sender, receiver, off, err)
	}
	return Ring{Off: off, Capacity: capacity}, true, nil
}

// CheckNoRings verifies that no pair word from senders to receiver holds anything: a rank that
// has just claimed its slot in a session has made no ring yet, so a word that is not 0 there is
// left over from nothing this format writes (a region corrupted or written by someone else).
func (r *Region) CheckNoRings(senders []uint32, receiver uint32) error {
	if err := r.checkSlot(receiver); err != nil {
		return err
	}
	for _, s := range senders {
		if err := r.checkSlot(s); err != nil {
			return err
		}
		if v := r.pairAt(s, receiver).Load(); v != 0 {
			return fmt.Errorf("%w: pair word %d->%d holds %#x before any ring was made", ErrBadRef, s, receiver, v)
		}
	}
	return nil
}
