package shim

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"ivshim.dev/ivshim/ivshmem"
)

// jobTimeout bounds every collective phase of a test job: a protocol bug that makes ranks
// diverge shows up as a hang, which must fail the test rather than stall it.
const jobTimeout = 20 * time.Second

// fakeWorld is an in-process MPI_COMM_WORLD: n goroutines meet in each collective. A round in
// which ranks call different collectives, or allgather different sizes, fails on every rank.
type fakeWorld struct {
	n    int
	mu   sync.Mutex
	cond *sync.Cond
	// current round
	arrived int
	kind    string
	size    int
	bufs    [][]byte
	diverge error
	// last completed round
	gen    int
	out    []byte
	outErr error
	rounds int
}

func newFakeWorld(n int) *fakeWorld {
	w := &fakeWorld{n: n}
	w.cond = sync.NewCond(&w.mu)
	return w
}

func (w *fakeWorld) collective(rank int, kind string, send []byte) ([]byte, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.arrived == 0 {
		w.kind, w.size, w.bufs, w.diverge = kind, len(send), make([][]byte, w.n), nil
	}
	if kind != w.kind || len(send) != w.size {
		w.diverge = fmt.Errorf("ranks diverged: rank %d called %s(%d bytes), others %s(%d bytes)", rank, kind, len(send), w.kind, w.size)
	}
	w.bufs[rank] = bytes.Clone(send)
	w.arrived++
	if w.arrived == w.n {
		w.out, w.outErr = bytes.Join(w.bufs, nil), w.diverge
		w.arrived = 0
		w.gen++
		w.rounds++
		w.cond.Broadcast()
	} else {
		for gen := w.gen; w.gen == gen; {
			w.cond.Wait()
		}
	}
	return bytes.Clone(w.out), w.outErr
}

func (w *fakeWorld) collectives() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rounds
}

type fakeRank struct {
	w    *fakeWorld
	rank int
}

func (r fakeRank) Rank() int { return r.rank }
func (r fakeRank) Size() int { return r.w.n }
func (r fakeRank) Allgather(send []byte) ([]byte, error) {
	return r.w.collective(r.rank, "allgather", send)
}
func (r fakeRank) Barrier() error {
	_, err := r.w.collective(r.rank, "barrier", nil)
	return err
}

type fakeRDMA []RDMADevice

func (f fakeRDMA) RDMADevices() ([]RDMADevice, error) { return f, nil }

// syncBuffer is a rank's stderr; the watcher goroutine may log to it while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type outcome struct {
	a      *Attachment
	err    error
	stderr *syncBuffer
}

// job is a test MPI job: one environment per rank, run through Start in goroutines.
type job struct {
	t     *testing.T
	world *fakeWorld
	ranks []outcome
}

// startJob runs Start on len(envs) ranks. Every rank's environment gets IVSHIM_SYSFS set to
// an empty directory unless it sets one, so that a rank without IVSHIM_REGION has no region
// and no VM id, whatever the test machine has.
func startJob(t *testing.T, envs ...map[string]string) *job {
	t.Helper()
	j := &job{t: t, world: newFakeWorld(len(envs)), ranks: make([]outcome, len(envs))}
	sysfs := t.TempDir()
	var wg sync.WaitGroup
	for i, env := range envs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			getenv := func(k string) string {
				if v, ok := env[k]; ok {
					return v
				}
				if k == "IVSHIM_SYSFS" {
					return sysfs
				}
				return ""
			}
			buf := &syncBuffer{}
			a, err := Start(fakeRank{j.world, i}, Options{Getenv: getenv, Stderr: buf, RDMA: fakeRDMA{}, PID: 1000 + i})
			j.ranks[i] = outcome{a: a, err: err, stderr: buf}
		}()
	}
	waitOrFail(t, &wg, "start")
	t.Cleanup(j.finalize)
	return j
}

func waitOrFail(t *testing.T, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(jobTimeout):
		t.Fatalf("%s did not finish within %v: the ranks diverged", what, jobTimeout)
	}
}

// finalize finalizes every rank that started, concurrently, as the front does after its
// barrier. It is idempotent, like Attachment.Finalize.
func (j *job) finalize() {
	var wg sync.WaitGroup
	for i, o := range j.ranks {
		if o.a == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.a.Finalize(Stats{Messages: [2]uint64{uint64(i), 7}}); err != nil {
				j.t.Errorf("rank %d: finalize: %v", i, err)
			}
		}()
	}
	waitOrFail(j.t, &wg, "finalize")
}

// table is rank w's path table; the rank must have started.
func (j *job) table(w int) *PathTable {
	j.t.Helper()
	if j.ranks[w].err != nil {
		j.t.Fatalf("rank %d: start: %v", w, j.ranks[w].err)
	}
	return &j.ranks[w].a.Table
}

const testJob = "job-7"

// newRegion creates a region file for a new host and returns its path.
func newRegion(t *testing.T, mutate func(*ivshmem.Options)) string {
	t.Helper()
	h, err := ivshmem.NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	o := ivshmem.Options{Size: 4 << 20, HostID: h, JobID: testJob, Slots: 8, VMs: 4, RingSize: 64 << 10}
	if mutate != nil {
		mutate(&o)
	}
	path := filepath.Join(t.TempDir(), "region")
	if err := ivshmem.Create(path, o); err != nil {
		t.Fatal(err)
	}
	return path
}

func openRegion(t *testing.T, path string) *ivshmem.Region {
	t.Helper()
	r, err := ivshmem.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// checkIdle asserts a region is as a finished job must leave it: no session, every slot
// free, every chunk of the heap free.
func checkIdle(t *testing.T, path string) {
	t.Helper()
	r := openRegion(t, path)
	if s := r.Session(); s != 0 {
		t.Errorf("%s: session %#x still set", path, s)
	}
	checkSlotsFree(t, r, 0)
	checkHeapFree(t, r)
}

// checkSlotsFree asserts that every slot but those of session keep is free.
func checkSlotsFree(t *testing.T, r *ivshmem.Region, keep uint64) {
	t.Helper()
	for i := uint32(0); i < r.Layout().SlotCount; i++ {
		si, err := r.Slot(i)
		if err != nil {
			t.Fatal(err)
		}
		if si.State != ivshmem.SlotFree && (keep == 0 || si.Session != keep) {
			t.Errorf("%s: slot %d left %v by rank %d of session %#x", r.Source(), i, si.State, si.WorldRank, si.Session)
		}
	}
}

// checkHeapFree asserts no chunk is allocated, by allocating the whole heap.
func checkHeapFree(t *testing.T, r *ivshmem.Region) {
	t.Helper()
	const probe = 0x9e0be
	l := r.Layout()
	off, err := r.Alloc(probe, 0, ivshmem.AllocCollective, uint64(l.ChunkCount)*uint64(l.ChunkSize))
	if err != nil {
		t.Errorf("%s: heap not entirely free: %v", r.Source(), err)
		return
	}
	if err := r.Free(probe, 0, off); err != nil {
		t.Fatal(err)
	}
}

func env(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
