package shim

import (
	"errors"
	"fmt"
	"io/fs"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/ivshmem"
)

// rejoinInfo is what a rank keeps to find a region after it released its own (its VM was
// migrated, or a migration rolled back), or when it found no device at Start (its VM was being
// migrated, or not plugged yet) while ranks of its job share memory elsewhere: how it looks
// for a region, and the sessions of the job's groups, by which it recognises a region its
// job's ranks share.
type rejoinInfo struct {
	o        Options
	cfg      Config
	sessions map[uint64]bool
	own      uint64 // the session of this rank's group at Start; 0 for a rank that had no region
}

// JoinsLater says whether this rank, without a region now, looks for one to join (Rejoin):
// after a Release, or when it found no device at Start while ranks of its job share memory.
func (a *Attachment) JoinsLater() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m == nil && a.re != nil && !a.done
}

// ErrNothingToJoin says why Rejoin found no region to join yet; the caller tries again later.
var ErrNothingToJoin = errors.New("no region to join")

// Joined is the region Rejoin joined.
type Joined struct {
	Region *ivshmem.Region
	Slot   uint32
}

// Rejoin maps the region of the host this rank's VM runs on now and claims a slot in it, after
// Release (the VM arrived on another host, or came back after a rolled-back migration), or
// once the device a rank lacked at Start is there (JoinsLater). It joins
// only a region whose session is one of this job's groups' (their ranks run there; one whose
// session ended gets this rank's own group's again), where this VM has an entry that is not
// flagged leaving (a VM whose region is still plugged while the broker drains it must not
// hold a slot again). The pairs with the ranks found there take the MPI library (no rings are
// made for them), and the rank's collectives can share the region's areas with them.
// ErrNothingToJoin (wrapped, with the reason) means not now: no region yet, another job's, or
// the VM still leaving.
func (a *Attachment) Rejoin() (Joined, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.done:
		return Joined{}, errors.New("rejoin: finalized")
	case a.m != nil:
		return Joined{}, errors.New("rejoin: the rank holds a region")
	case a.re == nil:
		return Joined{}, fmt.Errorf("rejoin: %w: the rank shared no memory at start and found no device it could join later", ErrNothingToJoin)
	}
	re := a.re
	r, err := discover(re.o, re.cfg)
	if errors.Is(err, ivshmem.ErrNoRegion) || errors.Is(err, fs.ErrNotExist) { // unplugged, not plugged yet
		return Joined{}, fmt.Errorf("%w: %v", ErrNothingToJoin, err)
	}
	if err != nil {
		return Joined{}, fmt.Errorf("rejoin: %w", err)
	}
	keep := false
	defer func() {
		if !keep {
			r.Close()
		}
	}()
	vm, err := vmPresent(r, re.cfg)
	if err != nil {
		return Joined{}, err
	}
	session := r.Session()
	if session == 0 && re.own == 0 { // a rank without a group of its own joins where ranks of its job are
		return Joined{}, fmt.Errorf("%w: no rank of this job holds region %s", ErrNothingToJoin, r.Source())
	}
	if session == 0 { // the job's ranks there all left: this rank's group's session takes it again
		if err := r.ClaimSession(re.own); err == nil {
			session = re.own
		} else {
			session = r.Session()
		}
	}
	if !re.sessions[session] {
		return Joined{}, fmt.Errorf("%w: region %s is used by another job instance (session %#x)", ErrNothingToJoin, r.Source(), session)
	}
	slot, err := r.ClaimSlot(ivshmem.SlotIdentity{Session: session, VMIndex: vm,
		WorldRank: uint32(a.Table.Rank), WorldSize: uint32(a.Table.Size), PID: uint32(re.o.PID)})
	if err != nil { // a full slot table: others hold the session
		return Joined{}, fmt.Errorf("%w: region %s: %v", ErrNothingToJoin, r.Source(), err)
	}
	m := &membership{region: r, log: a.log}
	m.join(session, slot, vm)
	// Checked again with the slot held: the broker's drain flags the VM, then looks for its
	// ranks' slots; this rank claims, then looks at the flag. So either the drain finds this
	// slot (and waits for its release) or this rank sees the flag and lets go (releasing the
	// slot ends a session nobody else holds).
	if again, err := vmPresent(r, re.cfg); err != nil || again != vm {
		if err == nil {
			err = fmt.Errorf("%w: region %s: this VM's entry moved while joining", ErrNothingToJoin, r.Source())
		}
		keep = true // closed by m
		m.close()
		return Joined{}, err
	}
	if s := r.Session(); s != session {
		keep = true
		m.close()
		return Joined{}, fmt.Errorf("%w: region %s changed session to %#x while joining", ErrNothingToJoin, r.Source(), s)
	}
	keep = true
	a.m = m
	a.areas = map[uint64]struct{}{}
	a.senders = map[uint32]bool{} // rejoined pairs take the library: nobody asks this rank for a ring
	a.Table.SelfSlot = slot
	a.Table.Source = r.Source()
	a.log.Info("rejoined a region", zap.String("source", r.Source()), zap.String("host", r.HostID().String()),
		zap.Uint32("slot", slot), zap.String("session", fmt.Sprintf("%#x", session)))
	return Joined{Region: r, Slot: slot}, nil
}

// vmPresent returns the index of the entry of cfg's VM in r, or why r is no region to join for
// it: it has no entry there, or one that is not present (flagged leaving).
func vmPresent(r *ivshmem.Region, cfg Config) (uint32, error) {
	vm, ok := r.FindVM(cfg.VMID)
	if !ok {
		return 0, fmt.Errorf("%w: region %s has no entry for this VM (%s)", ErrNothingToJoin, r.Source(), cfg.VMIDSource)
	}
	if v, err := r.VMAt(vm); err != nil || v.State != ivshmem.VMPresent {
		return 0, fmt.Errorf("%w: region %s: this VM is not present (flagged leaving)", ErrNothingToJoin, r.Source())
	}
	return vm, nil
}
