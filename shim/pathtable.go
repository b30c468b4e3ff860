package shim

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"ivshim.dev/ivshim/ivshmem"
)

// Path is how a peer is reached: enum ivshim_path of ivshim_ctl.h.
type Path uint32

// Paths.
const (
	PathNet Path = 0 // the MPI library's own path (PMPI)
	PathSHM Path = 1 // pair rings in the region, also used for self
)

func (p Path) String() string {
	if p == PathSHM {
		return "shm"
	}
	return "net"
}

// Mode is a rank's outcome of Start; its value is ivshim_ctl_start's return code.
type Mode int

// Modes.
const (
	ModeSHM         Mode = 0 // shared memory enabled for this rank's group
	ModePassThrough Mode = 1 // every peer on NET; PathTable.Reason says why
)

func (m Mode) String() string {
	if m == ModeSHM {
		return "shm"
	}
	return "net"
}

// Peer is how this rank reaches one world rank (struct ivshim_ctl_peer).
type Peer struct {
	Path Path
	Slot uint32 // the peer's slot (SHM); the pair's rings are made on first use
}

// RankInfo is what start taught every rank about one world rank.
type RankInfo struct {
	Region bool           // the rank mapped a region
	Host   ivshmem.HostID // its region's host (Region only)
	Group  int            // index into PathTable.Groups, -1 without a region
	Slot   int            // its slot in the region while its group shares it, else -1
	VM     uint32         // its VM's entry in the region's VM table, or ivshmem.NoVM
}

// Group is the ranks whose regions have the same host id and job: they can share memory.
type Group struct {
	Host    ivshmem.HostID
	Ranks   []int  // world ranks, ascending; Ranks[0] is the leader
	Session uint64 // the leader's session proposal: the region session if the group shares it
	// Generation is the region's generation counter as the leader read it at start; the
	// watcher reports later changes.
	Generation uint64
	Path       Path   // SHM when the group shares the region
	Reason     string // why the group is on NET
}

// PathTable is the result of Start on one rank. Every rank computes the same Ranks and Groups;
// Peers, Mode and the fields after them are this rank's own view.
type PathTable struct {
	Rank, Size int
	Ranks      []RankInfo // by world rank
	Groups     []Group    // in the order of their leaders
	Peers      []Peer     // by world rank
	Mode       Mode
	Reason     string // why this rank is in pass-through
	Group      int    // this rank's group, -1 without a region
	SelfSlot   uint32 // (SHM)
	LocalRanks int    // ranks sharing this rank's region, self included (SHM)
	Source     string // file the region was mapped from ("" without a region)
	VMIndex    uint32 // this VM's entry in the region's VM table, or ivshmem.NoVM
}

// Report is the verbose start report, from this rank's view (rank 0 prints it). Every line
// starts with "ivshim: " and a keyword, with key=value fields, for grep:
//
//	ivshim: init ranks=4 groups=2 shm_groups=1 shm_ranks=2
//	ivshim: group=0 host=1a2b3c4d-0000-4000-8000-000000000001 leader=0 ranks=0-1 generation=3 path=shm session=0x5f3a...
//	ivshim: group=1 host=... leader=2 ranks=2-3 generation=1 path=net reason="claim session failed on rank 2: ..."
//	ivshim: path rank=0 host=1a2b3c4d group=0 slot=0 path=shm vm=0
//	ivshim: path rank=4 host=- group=- slot=- path=net vm=-
func (t *PathTable) Report() string {
	var b strings.Builder
	shmGroups, shmRanks := 0, 0
	for _, g := range t.Groups {
		if g.Path == PathSHM {
			shmGroups++
			shmRanks += len(g.Ranks)
		}
	}
	fmt.Fprintf(&b, "ivshim: init ranks=%d groups=%d shm_groups=%d shm_ranks=%d\n", t.Size, len(t.Groups), shmGroups, shmRanks)
	for i, g := range t.Groups {
		fmt.Fprintf(&b, "ivshim: group=%d host=%s leader=%d ranks=%s generation=%d path=%s",
			i, g.Host, g.Ranks[0], rankRanges(g.Ranks), g.Generation, g.Path)
		if g.Path == PathSHM {
			fmt.Fprintf(&b, " session=%#x\n", g.Session)
		} else {
			fmt.Fprintf(&b, " reason=%q\n", g.Reason)
		}
	}
	for w, ri := range t.Ranks {
		host, group, slot := "-", "-", "-"
		if ri.Region {
			host = hex.EncodeToString(ri.Host[:4])
			group = strconv.Itoa(ri.Group)
		}
		if ri.Slot >= 0 {
			slot = strconv.Itoa(ri.Slot)
		}
		fmt.Fprintf(&b, "ivshim: path rank=%d host=%s group=%s slot=%s path=%s vm=%s\n",
			w, host, group, slot, t.Peers[w].Path, vmText(ri.VM))
	}
	return b.String()
}

// SelfLine is the verbose=2 line each rank prints about itself:
//
//	ivshim: self rank=1 mode=shm group=0 slot=1 local_ranks=2 vm=0 region=/dev/shm/ivshim-j-h1
//	ivshim: self rank=4 mode=net reason="no ivshim region: ..."
func (t *PathTable) SelfLine() string {
	if t.Mode != ModeSHM {
		return fmt.Sprintf("ivshim: self rank=%d mode=%s reason=%q\n", t.Rank, t.Mode, t.Reason)
	}
	return fmt.Sprintf("ivshim: self rank=%d mode=%s group=%d slot=%d local_ranks=%d vm=%s region=%s\n",
		t.Rank, t.Mode, t.Group, t.SelfSlot, t.LocalRanks, vmText(t.VMIndex), t.Source)
}

func vmText(vm uint32) string {
	if vm == ivshmem.NoVM {
		return "-"
	}
	return strconv.FormatUint(uint64(vm), 10)
}

// rankRanges writes ascending ranks compactly: 0-3,8,10-11.
func rankRanges(ranks []int) string {
	var parts []string
	for i := 0; i < len(ranks); {
		j := i
		for j+1 < len(ranks) && ranks[j+1] == ranks[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, strconv.Itoa(ranks[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", ranks[i], ranks[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
