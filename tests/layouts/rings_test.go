package layouts

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ivshim.dev/ivshim/ivshmem"
	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/testenv"
)

// ringAlloc is the heap bytes one ring of capacity c takes in a region of layout l.
func ringAlloc(l ivshmem.Layout, c uint64) uint64 {
	cs := uint64(l.ChunkSize)
	return (ivshmem.RingHeaderSize + c + cs - 1) / cs * cs
}

// TestRingsOnFirstUse: a pair's rings are made when it first talks, so region memory follows the
// pairs that talk; and a region whose heap runs out gives the pairs that come too late the
// library, without losing or reordering anything.
func TestRingsOnFirstUse(t *testing.T) {
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	ctx, progs, wrapper := prepare(t, root)

	t.Run("memory follows the pairs that talk", func(t *testing.T) {
		// 16 co-located ranks pass a token around a ring: 16 of the 256 pairs talk.
		const ranks = 16
		c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 1, VMsPerHost: ranks / 2, Regions: true, RegionSize: regionSize})
		r, capacity := openRegion(t, c.RegionPath(c.Hosts[0]), ranks)
		l := r.Layout()
		m := cluster.OpenMPI
		bin := filepath.Join(t.TempDir(), "hello_ring")
		if out, err := exec.CommandContext(ctx, m.Compiler(), "-O2", "-o", bin, filepath.Join(root, "tests", "mpi", "hello_ring.c")).CombinedOutput(); err != nil {
			t.Fatalf("build hello_ring: %v\n%s", err, out)
		}
		job := cluster.Job{MPI: m, VMs: c.VMs(), RanksPerVM: 2, Program: bin, Timeout: jobTimeout,
			Env: map[string]string{"LD_PRELOAD": filepath.Join(root, "build", "lib", m.ShimLibrary()), "IVSHIM_VERBOSE": "1"}}
		res, err := cluster.Run(ctx, job)
		if err != nil {
			t.Fatalf("hello_ring: %v%s", err, testenv.Details(res, stderrTail))
		}
		stats, err := res.ShimStats()
		if err != nil || len(stats) != ranks {
			t.Fatalf("statistics of %d ranks (%v), want %d%s", len(stats), err, ranks, testenv.Details(res, stderrTail))
		}
		var held uint64
		for _, s := range stats {
			held += s.RegionBytes
			if s.SHMMsgs == 0 || s.NetMsgs != 0 {
				t.Errorf("rank %d: %+v: want its ring message through the region", s.Rank, s)
			}
		}
		// Each rank's inbound ring from its predecessor, which gets the region's full ring size
		// (few pairs talk), and the collective area of the MPI_Allreduce; with rings for every
		// pair it would be ranks*ranks rings of the group's fair share.
		cs := uint64(l.ChunkSize)
		bound := ranks*ringAlloc(l, uint64(l.RingSize)) + (ivshmem.CollAreaSize(ranks, ivshmem.CollSlotMax)+cs-1)/cs*cs
		all := ranks * ranks * ringAlloc(l, capacity)
		t.Logf("%d ranks in a ring: %d KiB of region held (rings of up to %d bytes); rings of the fair %d bytes for every pair would take %d KiB",
			ranks, held>>10, l.RingSize, capacity, all>>10)
		if held > bound {
			t.Errorf("ranks hold %d bytes of region, want at most %d: rings made for pairs that never talked?", held, bound)
		}
	})

	t.Run("heap runs out", func(t *testing.T) {
		// Another party's allocation fills the heap but for two rings of the group's size:
		// the first two pairs that talk get them, later ones smaller rings or the library.
		for _, m := range cluster.MPIs {
			t.Run(m.String(), func(t *testing.T) {
				vms, perVM := 2, 2
				if m == cluster.MPICH {
					vms, perVM = 3, 1 // MPICH+UCX hangs in MPI_Finalize in a fair share of 4-rank runs
				}
				ranks := vms * perVM
				c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 1, VMsPerHost: vms, Regions: true, RegionSize: 4 << 20})
				path := c.RegionPath(c.Hosts[0])
				l := layout{mpi: m, vms: c.VMs()}
				for range l.vms {
					l.perVM = append(l.perVM, perVM)
				}
				for r := 0; r < ranks; r++ {
					l.disable = append(l.disable, false)
					l.thread = append(l.thread, "single")
				}
				var net, shm uint64
				var said bool
				for _, prog := range []string{"p2p_modes", "p2p_order", "p2p_probe", "p2p_wildcard"} {
					fillHeap(t, path, ranks, 2)
					job := cluster.Job{MPI: m, VMs: l.vms, PerVM: l.perVM, Program: wrapper, Args: []string{progs[m][prog]}, Timeout: jobTimeout,
						Env: l.env()}
					job.Env["LD_PRELOAD"] = filepath.Join(root, "build", "lib", m.ShimLibrary())
					job.Env["IVSHIM_VERBOSE"] = "1"
					res, ok := run(ctx, t, "with the shim, heap full", job, l, true)
					if !ok {
						continue
					}
					said = said || strings.Contains(res.Stderr, "its messages to this rank take the MPI library")
					stats, err := res.ShimStats()
					if err != nil {
						t.Errorf("%s: %v", prog, err)
						continue
					}
					for _, s := range stats {
						net += s.NetMsgs
						shm += s.SHMMsgs
					}
				}
				t.Logf("%d co-located ranks, heap for 2 rings: %d messages through rings, %d through the library", ranks, shm, net)
				if shm == 0 || net == 0 {
					t.Errorf("want messages through both rings and the library: %d and %d", shm, net)
				}
				if !said {
					t.Error("no rank said that a pair takes the library for want of room")
				}
			})
		}
	})
}

const fillSession = 0xf111

var filled = map[string]uint64{} // region path -> offset of fillHeap's allocation

// fillHeap allocates, for a session that is not the job's, all of the heap of the region at
// path but room for keep rings of the capacity a group of ranks gets; what it allocated before
// (a job that took over the stale session of a killed one freed it) first goes.
func fillHeap(t *testing.T, path string, ranks, keep int) {
	t.Helper()
	r, capacity := openRegion(t, path, ranks)
	l := r.Layout()
	if off, ok := filled[path]; ok {
		r.Free(fillSession, 0, off) // gone already if a job took the region over
	}
	heap := uint64(l.ChunkCount) * uint64(l.ChunkSize)
	fill := heap - uint64(keep)*ringAlloc(l, capacity)
	off, err := r.Alloc(fillSession, 0, ivshmem.AllocCollective, fill)
	if err != nil {
		t.Fatalf("fill %d of %d heap bytes: %v", fill, heap, err)
	}
	filled[path] = off
	t.Logf("region %s: %d of %d heap bytes taken, room for %d rings of %d bytes", path, fill, heap, keep, capacity)
}
