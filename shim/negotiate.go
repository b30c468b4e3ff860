package shim

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/ivshmem"
)

// Exchanger is the collective transport over MPI_COMM_WORLD that the C front provides with
// PMPI. Every rank calls the same methods in the same order.
type Exchanger interface {
	Rank() int
	Size() int
	// Allgather contributes send (the same length on every rank) and returns every rank's
	// contribution, concatenated in rank order.
	Allgather(send []byte) ([]byte, error)
	Barrier() error
}

// Options adapt Start to its process. Zero fields take the real process's.
type Options struct {
	Getenv     func(string) string // os.Getenv
	Stderr     io.Writer           // verbose report and logs; os.Stderr
	RDMA       RDMAInventory       // SystemRDMA()
	PID        int                 // os.Getpid()
	MPILibrary string              // the MPI library's version text, for the log
	// Passthrough, when set, keeps this rank off every region: it takes part in the collective
	// exchanges (so the others' match) as a rank without a region, for the reason given.
	Passthrough string
	// OpenRegion maps a region file during discovery; ivshmem.Open when nil. Tests use it to
	// simulate failures such as a root-only resource2.
	OpenRegion func(path string) (*ivshmem.Region, error)
}

// staleWait is how long a session found in the region must show no heartbeat before a new
// job instance takes the region over. Several heartbeat intervals: a live rank that is
// descheduled for a moment must not lose its region.
const staleWait = 300 * time.Millisecond

// Start negotiates, collectively over x, which peers this rank reaches through shared memory,
// and sets the region up for them:
//
//  1. every rank reads its configuration and discovers its region;
//  2. allgather of a hello record per rank (a rank that cannot go on says so here, and then
//     every rank exchanges the reasons and fails with the same message);
//  3. ranks whose regions have the same host id and job form a group; in each group of two
//     or more, the leader (lowest rank) claims the region session, taking over a stale one;
//  4. the members claim slots and check that the region has room for the group's rings, with
//     an allgather of outcomes after each step. The rings themselves are made on first use
//     (Attachment.CreateRing), so that region memory follows the pairs that talk.
//
// A failure in a group sends the whole group, and only it, to NET with the reason; a corrupt
// region anywhere fails every rank. Every rank performs the same sequence of exchanges
// whatever happens locally, because the decisions that shape it are taken from exchanged
// data only. Start returns an error only for the fatal outcome; otherwise the Attachment's
// Table says whether this rank shares memory (ModeSHM) or passes everything through.
func Start(x Exchanger, o Options) (*Attachment, error) {
	o.setDefaults()
	n := &negotiation{x: x, o: o, rank: x.Rank(), size: x.Size(), vmIndex: ivshmem.NoVM,
		m: &membership{log: zap.NewNop()}}
	if n.size < 1 || n.rank < 0 || n.rank >= n.size {
		return nil, fmt.Errorf("start: rank %d of %d", n.rank, n.size)
	}
	a, err := n.run()
	if err != nil {
		// Whatever the protocol did not already release (a transport error leaves no choice).
		n.m.close()
		n.m.log.Error("start failed", zap.Error(err))
		n.m.log.Sync()
		return nil, err
	}
	return a, nil
}

func (o *Options) setDefaults() {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.RDMA == nil {
		o.RDMA = SystemRDMA()
	}
	if o.PID == 0 {
		o.PID = os.Getpid()
	}
}

// group is a Group with the negotiation's state.
type group struct {
	Group
	slots []uint32 // by position in Ranks, once the slot step passed
	live  bool     // still on its way to SHM
	held  bool     // the leader holds the region session for the group
}

func (g *group) leader() int { return g.Ranks[0] }

type groupKey struct {
	host ivshmem.HostID
	job  uint64
}

// negotiation is one rank's run of Start.
type negotiation struct {
	x          Exchanger
	o          Options
	rank, size int
	cfg        Config
	m          *membership // this rank's region, slot and watcher; the Attachment's after Start
	vmIndex    uint32
	fatal      error  // why this rank cannot take part (reported to all in the hello phase)
	noRegion   string // why this rank has no region
	unplugged  error  // the region's device is not there now (IVSHIM_REGION names nothing)
	mayJoin    bool   // no device found now: the rank may join its VM's region later (Rejoin)
	groups     []*group
	byRank     []int        // group index of each world rank, -1 without a region
	vms        []uint32     // VM index of each world rank, from its hello
	peers      map[int]Peer // this rank's SHM peers, once the group's rings are sized
	ringSize   uint64       // capacity of the group's rings
}

func (n *negotiation) run() (*Attachment, error) {
	hellos, err := n.sayHello(n.prepare())
	if err != nil {
		return nil, err
	}
	n.plan(hellos)
	steps := []struct {
		name   string
		act    func(*group) status
		commit func(*group, []status)
	}{
		{"claim session", n.claimSession, func(g *group, _ []status) { g.held = true }},
		{"claim slots", n.claimSlot, func(g *group, all []status) {
			g.slots = make([]uint32, len(g.Ranks))
			for i, w := range g.Ranks {
				g.slots[i] = all[w].Value
			}
		}},
		{"size rings", n.sizeRings, nil},
	}
	for _, s := range steps {
		if err := n.step(s.name, s.act, s.commit); err != nil {
			return nil, err
		}
	}
	return n.finish(), nil
}

// prepare does the local part: configuration and discovery. It never fails: what goes wrong
// is recorded in n.fatal and reported to everyone through the hello.
func (n *negotiation) prepare() hello {
	fatal := func(err error) hello {
		n.fatal = err
		return hello{Flags: helloFatal, VMIndex: ivshmem.NoVM}
	}
	cfg, err := LoadConfig(n.o.Getenv)
	if err != nil {
		return fatal(fmt.Errorf("configuration: %w", err))
	}
	n.cfg = cfg
	n.m.log = newLogger(cfg.Log, n.o.Stderr, n.rank)
	n.m.log.Debug("start", zap.Int("size", n.size), zap.String("mpi", n.o.MPILibrary), zap.Int("pid", n.o.PID))
	if n.o.Passthrough != "" {
		n.noRegion = n.o.Passthrough
		n.m.log.Info("pass-through", zap.String("reason", n.o.Passthrough))
		return hello{VMIndex: ivshmem.NoVM}
	}
	proposal, err := newSessionID()
	if err != nil {
		return fatal(err)
	}
	r, err := discover(n.o, cfg)
	if errors.Is(err, ivshmem.ErrNoRegion) {
		n.noRegion = err.Error()
		if errors.Is(err, ivshmem.ErrDeviceUnusable) {
			n.warnPassThrough(err)
		} else {
			// No device now: none was ever plugged, or the VM is being migrated (unplugged
			// at the source, not yet at the destination). The rank may join one later.
			n.mayJoin = true
			if errors.Is(err, fs.ErrNotExist) {
				n.unplugged = err
			}
			n.m.log.Info("no region", zap.Error(err))
		}
		return hello{VMIndex: ivshmem.NoVM}
	}
	if err != nil {
		return fatal(err)
	}
	n.m.region = r
	if cfg.VMID != ([16]byte{}) {
		if i, ok := r.FindVM(cfg.VMID); ok {
			n.vmIndex = i
		} else {
			n.m.log.Warn("VM not in the region's VM table", zap.String("vm_id", ivshmem.HostID(cfg.VMID).String()), zap.String("from", cfg.VMIDSource))
		}
	}
	n.m.log.Info("region found", zap.String("source", r.Source()), zap.String("host", r.HostID().String()),
		zap.String("job", r.JobID()), zap.Uint64("generation", r.Generation()), zap.Uint32("vm", n.vmIndex))
	n.checkCached(r)
	return hello{
		Flags:      helloHasRegion,
		VMIndex:    n.vmIndex,
		Host:       r.HostID(),
		Generation: r.Generation(),
		JobHash:    jobHash(r.JobID()),
		Proposal:   proposal,
	}
}

// checkCached measures whether the CPU caches this rank's mapping of the region and says so
// when it does not: an uncached BAR (a hypervisor that does not honour the guest's page
// attributes for it) makes the shim's shared memory slower than the network, silently
// otherwise. With IVSHIM_VERBOSE=2 (a line per rank) the measured cost is printed whatever it is.
func (n *negotiation) checkCached(r *ivshmem.Region) {
	cost := r.ReadCost()
	n.m.log.Info("region read cost", zap.Float64("times_private_memory", cost))
	switch {
	case cost >= ivshmem.UncachedRatio:
		fmt.Fprintf(n.o.Stderr, "ivshim: rank %d: reading region %s takes %.0fx as long as reading memory: the mapping is not "+
			"cached (a guest's ivshmem BAR2 needs a write-back memory type: on KVM the host must honour the guest's page "+
			"attributes); shared memory will be slow\n", n.rank, r.Source(), cost)
	case n.cfg.Verbose > 1:
		fmt.Fprintf(n.o.Stderr, "ivshim: rank %d: region %s read cost %.2fx memory (cached)\n", n.rank, r.Source(), cost)
	}
}

// warnPassThrough tells the user, once, that this rank passes everything through although an
// ivshmem device is there (a device it may not map, an unrelated ivshmem device): a slowdown
// nobody asked for must not be silent. With IVSHIM_VERBOSE the front prints every pass-through
// rank's reason anyway ("ivshim: rank N pass-through: ..."), so the line is left to it then.
func (n *negotiation) warnPassThrough(err error) {
	n.m.log.Warn("pass-through: ivshmem device unusable", zap.Error(err))
	if n.cfg.Verbose == 0 {
		fmt.Fprintf(n.o.Stderr, "ivshim: rank %d: pass-through: %s\n", n.rank, oneLine(err.Error()))
	}
}

// warnGroupFallback tells the user, once per group (its leader prints), that co-located ranks
// use the library instead of shared memory and why: a group too large for its region must not
// just run slower. With IVSHIM_VERBOSE every rank prints its reason anyway.
func (n *negotiation) warnGroupFallback(g *group) {
	if n.rank == g.leader() && n.cfg.Verbose == 0 {
		fmt.Fprintf(n.o.Stderr, "ivshim: rank %d: the %d co-located ranks of its host use the MPI library, not shared memory: %s\n",
			n.rank, len(g.Ranks), oneLine(g.Reason))
	}
}

// oneLine keeps a message to one line.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

// discover maps this rank's region; with IVSHIM_JOB set, a region of another job is an error
// (ivshmem.Discovery only filters PCI devices by job, IVSHIM_REGION is taken as is).
func discover(o Options, cfg Config) (*ivshmem.Region, error) {
	r, err := ivshmem.Discovery{Getenv: o.Getenv, Sysfs: cfg.Sysfs, Job: cfg.Job, Open: o.OpenRegion}.Find()
	if err != nil {
		return nil, err
	}
	if cfg.Job != "" && r.JobID() != cfg.Job {
		r.Close()
		return nil, fmt.Errorf("region %s belongs to job %q, IVSHIM_JOB is %q", r.Source(), r.JobID(), cfg.Job)
	}
	return r, nil
}

func newSessionID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("session id: %w", err)
		}
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id, nil
		}
	}
}

func jobHash(job string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(job))
	return h.Sum64()
}

// sayHello is the first exchange. If any rank is fatal, a second exchange carries the reasons
// and every rank fails with the same message.
func (n *negotiation) sayHello(me hello) ([]hello, error) {
	raw, err := n.x.Allgather(me.encode())
	if err != nil {
		return nil, fmt.Errorf("exchange hello: %w", err)
	}
	recs, err := splitRecords(raw, helloSize, n.size)
	if err != nil {
		return nil, fmt.Errorf("exchange hello: %w", err)
	}
	hellos := make([]hello, n.size)
	var fatalRanks []int
	for w, b := range recs {
		if hellos[w], err = decodeHello(b); err != nil {
			return nil, fmt.Errorf("rank %d of %d: %w", w, n.size, err)
		}
		if hellos[w].fatal() {
			fatalRanks = append(fatalRanks, w)
		}
	}
	if len(fatalRanks) == 0 {
		return hellos, nil
	}
	var st status
	if n.fatal != nil {
		st = status{Flags: statusFatal, Reason: n.fatal.Error()}
	}
	all, err := n.exchangeStatus(st)
	if err != nil {
		return nil, err
	}
	if err := fatalOf(all); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("rank %d of %d failed without a reason", fatalRanks[0], n.size)
}

// exchangeStatus allgathers one status per rank.
func (n *negotiation) exchangeStatus(st status) ([]status, error) {
	raw, err := n.x.Allgather(st.encode())
	if err != nil {
		return nil, fmt.Errorf("exchange status: %w", err)
	}
	recs, err := splitRecords(raw, statusSize, n.size)
	if err != nil {
		return nil, fmt.Errorf("exchange status: %w", err)
	}
	all := make([]status, n.size)
	for w, b := range recs {
		if all[w], err = decodeStatus(b); err != nil {
			return nil, fmt.Errorf("rank %d of %d: %w", w, n.size, err)
		}
	}
	return all, nil
}

// fatalOf is the job's error when some ranks reported a fatal status: it names the first
// and counts the others. Every rank computes the same message from the same statuses.
func fatalOf(all []status) error {
	var ranks []string
	first := -1
	for w, st := range all {
		if st.fatal() {
			if first < 0 {
				first = w
			} else {
				ranks = append(ranks, fmt.Sprint(w))
			}
		}
	}
	if first < 0 {
		return nil
	}
	msg := fmt.Sprintf("rank %d of %d failed: %s", first, len(all), all[first].Reason)
	if len(ranks) > 0 {
		msg += fmt.Sprintf(" (also failed: rank %s)", strings.Join(ranks, ", "))
	}
	return errors.New(msg)
}

// failure is the status for a step that failed on this rank with err: the group falls back
// to NET, unless err shows a corrupt region, which fails the job.
func failure(err error) status {
	st := status{Flags: statusFailed, Reason: err.Error()}
	if errors.Is(err, ivshmem.ErrBadRef) || errors.Is(err, ivshmem.ErrInvalid) {
		st.Flags |= statusFatal
	}
	return st
}

// plan forms the groups from the hellos. Ranks are visited in order, so each group's ranks are
// ascending and its session is its leader's proposal. A rank alone with its region keeps it,
// a group of one: a VM of the job that migrates to its host later joins that region, and the
// pair of the two ranks then moves to rings (join.c), which a rank without a region could
// never do.
func (n *negotiation) plan(hellos []hello) {
	n.byRank = make([]int, n.size)
	n.vms = make([]uint32, n.size)
	index := map[groupKey]int{}
	for w, h := range hellos {
		n.byRank[w] = -1
		n.vms[w] = h.VMIndex
		if !h.hasRegion() {
			continue
		}
		k := groupKey{h.Host, h.JobHash}
		gi, ok := index[k]
		if !ok {
			gi = len(n.groups)
			index[k] = gi
			n.groups = append(n.groups, &group{Group: Group{Host: h.Host, Session: h.Proposal, Generation: h.Generation}})
		}
		n.groups[gi].Ranks = append(n.groups[gi].Ranks, w)
		n.byRank[w] = gi
	}
	for _, g := range n.groups {
		g.live = true
	}
}

func (n *negotiation) myGroup() *group {
	if n.byRank == nil || n.byRank[n.rank] < 0 {
		return nil
	}
	return n.groups[n.byRank[n.rank]]
}

// step runs one protocol step: act on the members of live groups, allgather the outcomes,
// commit the step in the groups where every member succeeded, tear down the others. A fatal
// outcome anywhere tears down every live group and fails the job. It does nothing when no
// group is live, a fact every rank agrees on.
func (n *negotiation) step(name string, act func(*group) status, commit func(*group, []status)) error {
	var active []*group
	for _, g := range n.groups {
		if g.live {
			active = append(active, g)
		}
	}
	if len(active) == 0 {
		return nil
	}
	var mine status
	if g := n.myGroup(); g != nil && g.live {
		mine = act(g)
	}
	all, err := n.exchangeStatus(mine)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	var failed []*group
	for _, g := range active {
		if w := firstFailed(g.Ranks, all); w >= 0 {
			g.Reason = fmt.Sprintf("%s failed on rank %d: %s", name, w, all[w].Reason)
			failed = append(failed, g)
		} else if commit != nil {
			commit(g, all)
		}
	}
	if err := fatalOf(all); err != nil {
		return errors.Join(err, n.teardown(active))
	}
	for _, g := range failed {
		n.m.log.Info("group falls back to NET", zap.Int("leader", g.leader()), zap.String("reason", g.Reason))
		n.warnGroupFallback(g)
	}
	return n.teardown(failed)
}

func firstFailed(ranks []int, all []status) int {
	for _, w := range ranks {
		if all[w].failed() {
			return w
		}
	}
	return -1
}

// teardown sends groups to NET: their members release their slots (and so their inbound
// rings); then, once everyone has (a barrier, only when some group held its session), each
// leader ends its group's session, which also wipes whatever a member failed to release.
// Members unmap. A local release error is only logged: the group is on NET either way, and
// failing this rank alone would break the rule that all ranks reach the same verdict. Only a
// failed barrier (MPI itself broken) is returned.
func (n *negotiation) teardown(gs []*group) error {
	var mine *group
	held := false
	for _, g := range gs {
		g.live = false
		held = held || g.held
		if g == n.myGroup() {
			mine = g
		}
	}
	if mine != nil {
		if err := n.m.leave(); err != nil {
			n.m.log.Warn("leaving the region after a fallback", zap.Error(err))
		}
	}
	if held {
		if err := n.x.Barrier(); err != nil {
			return fmt.Errorf("barrier after releasing slots: %w", err)
		}
	}
	if mine == nil {
		return nil
	}
	if mine.held && mine.leader() == n.rank {
		// Fails, as it should, when the last member out already ended the session (and another
		// job instance may have claimed the region since).
		if err := n.m.region.TakeOverSession(mine.Session, 0); err == nil {
			n.m.log.Debug("ended the group's session", zap.String("session", fmt.Sprintf("%#x", mine.Session)))
		}
	}
	if err := n.m.close(); err != nil {
		n.m.log.Warn("unmapping the region after a fallback", zap.Error(err))
	}
	return nil
}

// claimSession: the leader makes its proposal the region's session, taking over a session
// whose ranks are gone.
func (n *negotiation) claimSession(g *group) status {
	if g.leader() != n.rank {
		return status{}
	}
	r := n.m.region
	err := r.ClaimSession(g.Session)
	if errors.Is(err, ivshmem.ErrSessionBusy) {
		err = n.takeOverIfStale(g.Session)
	}
	if err != nil {
		return failure(fmt.Errorf("claim region %s: %w", r.Source(), err))
	}
	n.m.log.Info("claimed region session", zap.String("session", fmt.Sprintf("%#x", g.Session)))
	return status{}
}

func (n *negotiation) takeOverIfStale(id uint64) error {
	r := n.m.region
	old := r.Session()
	if old == 0 { // ended since
		return r.ClaimSession(id)
	}
	if !r.SessionStale(old, staleWait) {
		return fmt.Errorf("%w: session %#x is alive (heartbeats within %v)", ivshmem.ErrSessionBusy, old, staleWait)
	}
	if err := r.TakeOverSession(old, id); err != nil {
		return err
	}
	n.m.log.Warn("took over stale region session", zap.String("old", fmt.Sprintf("%#x", old)),
		zap.String("session", fmt.Sprintf("%#x", id)))
	return nil
}

// claimSlot: every member takes a slot in the group's session and starts beating it at once,
// so that no newcomer mistakes the session for a dead one while the rings are being set up.
func (n *negotiation) claimSlot(g *group) status {
	r := n.m.region
	if err := n.checkSession(g); err != nil {
		return failure(err)
	}
	slot, err := r.ClaimSlot(ivshmem.SlotIdentity{Session: g.Session, VMIndex: n.vmIndex,
		WorldRank: uint32(n.rank), WorldSize: uint32(n.size), PID: uint32(n.o.PID)})
	if err != nil {
		return failure(fmt.Errorf("claim slot in %s: %w", r.Source(), err))
	}
	n.m.join(g.Session, slot, n.vmIndex)
	if err := n.checkSession(g); err != nil { // lost during the claim; teardown releases the slot
		return failure(err)
	}
	n.m.log.Debug("claimed slot", zap.Uint32("slot", slot))
	return status{Value: slot}
}

// checkSession verifies that the region's session is still the group's. It is not when
// another job instance took the region over meanwhile, or when members of the group mapped
// different files that claim the same host.
func (n *negotiation) checkSession(g *group) error {
	r := n.m.region
	if s := r.Session(); s != g.Session {
		return fmt.Errorf("region %s: session is %#x, not the group's %#x (taken over by another job instance, or not the same region as the leader's)",
			r.Source(), s, g.Session)
	}
	return nil
}

// sizeRings: every member computes the capacity of the group's rings, the largest that lets
// every pair have one (Layout.RingCapacity: the same on every member, from the same layout);
// a region too small for rings of the least capacity sends the group to the library here,
// before any message depends on a ring.
func (n *negotiation) sizeRings(g *group) status {
	capacity, err := n.m.region.Layout().RingCapacity(len(g.Ranks))
	if err != nil {
		return failure(fmt.Errorf("region %s: %w", n.m.region.Source(), err))
	}
	if capacity < uint64(n.m.region.Layout().RingSize) {
		n.m.log.Info("rings smaller than the region's ring size for a group this large",
			zap.Int("ranks", len(g.Ranks)), zap.Uint64("ring_bytes", capacity), zap.Uint32("region_ring_bytes", n.m.region.Layout().RingSize))
	}
	if err := n.m.region.CheckNoRings(g.slots, n.m.slot); err != nil {
		return failure(fmt.Errorf("region %s: %w", n.m.region.Source(), err))
	}
	n.ringSize = capacity
	n.peers = make(map[int]Peer, len(g.Ranks))
	for i, w := range g.Ranks {
		n.peers[w] = Peer{Path: PathSHM, Slot: g.slots[i]}
	}
	return status{}
}

// liveSessions are the sessions of the groups that share memory: a region holding one of
// them is where ranks of this job instance run.
func (n *negotiation) liveSessions() map[uint64]bool {
	live := map[uint64]bool{}
	for _, g := range n.groups {
		if g.live {
			live[g.Session] = true
		}
	}
	return live
}

// finish builds the path table and the attachment, and prints the verbose report.
func (n *negotiation) finish() *Attachment {
	t := PathTable{
		Rank:    n.rank,
		Size:    n.size,
		Ranks:   make([]RankInfo, n.size),
		Peers:   make([]Peer, n.size),
		Mode:    ModePassThrough,
		Group:   n.byRank[n.rank],
		VMIndex: n.vmIndex,
	}
	for _, g := range n.groups {
		if g.live {
			g.Path = PathSHM
		}
		t.Groups = append(t.Groups, g.Group)
		for i, w := range g.Ranks {
			t.Ranks[w] = RankInfo{Region: true, Host: g.Host, Group: n.byRank[w], Slot: -1, VM: n.vms[w]}
			if g.live {
				t.Ranks[w].Slot = int(g.slots[i])
			}
		}
	}
	for w := range t.Ranks {
		if n.byRank[w] < 0 {
			t.Ranks[w] = RankInfo{Group: -1, Slot: -1, VM: ivshmem.NoVM}
		}
	}
	a := &Attachment{verbose: n.cfg.Verbose, stall: n.cfg.StallSeconds, out: n.o.Stderr, log: n.m.log}
	switch g := n.myGroup(); {
	case g == nil:
		t.Reason = n.noRegion
		if n.mayJoin && len(n.liveSessions()) > 0 {
			// Ranks of the job share memory elsewhere: once its VM's device is plugged, this
			// rank joins the region where they run (a region none of them holds stays unused).
			a.re = &rejoinInfo{o: n.o, cfg: n.cfg, sessions: n.liveSessions()}
			if n.unplugged != nil {
				fmt.Fprintf(n.o.Stderr, "ivshim: rank %d: no region at start: %s; its messages take the MPI library until it "+
					"joins its VM's region, once plugged\n", n.rank, oneLine(n.unplugged.Error()))
			}
		}
	case !g.live:
		t.Reason = g.Reason
	default:
		t.Mode = ModeSHM
		for w, p := range n.peers {
			t.Peers[w] = p
		}
		t.SelfSlot = n.m.slot
		t.LocalRanks = len(g.Ranks)
		t.Source = n.m.region.Source()
		a.m = n.m
		a.areas = map[uint64]struct{}{}
		a.ringSize = n.ringSize
		a.senders = make(map[uint32]bool, len(g.slots))
		for _, s := range g.slots {
			a.senders[s] = true
		}
		a.re = &rejoinInfo{o: n.o, cfg: n.cfg, own: g.Session, sessions: n.liveSessions()}
	}
	a.Table = t
	n.m.log.Info("start done", zap.Stringer("mode", t.Mode), zap.String("reason", t.Reason),
		zap.Int("local_ranks", t.LocalRanks), zap.Uint32("slot", t.SelfSlot))
	if n.cfg.Verbose >= 1 && n.rank == 0 {
		io.WriteString(n.o.Stderr, t.Report()+formatRDMA(n.o.RDMA))
	}
	if n.cfg.Verbose >= 2 {
		io.WriteString(n.o.Stderr, t.SelfLine())
	}
	return a
}
