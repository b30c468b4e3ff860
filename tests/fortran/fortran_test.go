package fortran

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/tests/cluster"
	"ivshim.dev/ivshim/tests/testenv"
)

const (
	// jobTimeout bounds one run of the program (a few seconds normally).
	jobTimeout = 90 * time.Second
	// finalizeGrace is how long a job may take to end after its report: MPICH 4.0 with UCX over
	// TCP may hang in MPI_Finalize, with or without the shim (tests/conformance).
	finalizeGrace = 20 * time.Second
	// stdIndices is the report's indices line as the MPI standard has it.
	stdIndices = "indices: waitany 1 2 undefined, waitsome/testsome from 1 1"
)

// binding is one way for a Fortran program to call MPI.
type binding struct {
	name  string   // the report's suffix: f_pingpong_<name>
	flags []string // compiler flags selecting it in f_pingpong.F90
}

var bindings = []binding{
	// gfortran >= 10 rejects calls to one external procedure with different buffer types unless told.
	{"mpifh", []string{"-DUSE_MPIFH", "-fallow-argument-mismatch"}},
	{"mpi", []string{"-DUSE_MPI"}},
	{"f08", nil},
}

// shimBinds says whether the shim defines b's entry points for m itself. Otherwise the library's
// own Fortran wrappers call the shim's C functions (MPICH's mpif.h and use mpi bindings).
func shimBinds(m cluster.MPI, b binding) bool { return m == cluster.OpenMPI || b.name == "f08" }

// knownIndices lists what MPICH 4.0's own Fortran bindings report instead of stdIndices: mpi_f08
// returns 0-based indices from Waitany, Waitsome and Testsome (pmodels/mpich#6270, fixed in
// 4.1), mpif.h and use mpi add 1 to MPI_UNDEFINED from Waitany (pmodels/mpich#6402, fixed in
// 4.1.1).
var knownIndices = map[string]string{
	"mpich/f08":   "indices: waitany 0 1 undefined, waitsome/testsome from 0 0",
	"mpich/mpifh": "indices: waitany 1 2 -32765, waitsome/testsome from 1 1",
	"mpich/mpi":   "indices: waitany 1 2 -32765, waitsome/testsome from 1 1",
}

var summaryLine = regexp.MustCompile(`^f_pingpong_(\w+): (\d+) ranks, (\d+) checks, (\d+) failures$`)

// TestPingPong runs f_pingpong in every binding of both MPIs on two co-located VMs, without and
// with the shim.
func TestPingPong(t *testing.T) {
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	src := filepath.Join(root, "tests", "mpi", "f_pingpong.F90")
	ctx, cancel := testenv.Context(t)
	defer cancel()
	for _, m := range cluster.MPIs {
		t.Run(m.String(), func(t *testing.T) {
			lib := testenv.ShimLibrary(t, root, m)
			bins := map[string]string{}
			for _, b := range bindings {
				bins[b.name] = build(ctx, t, m, b, src)
			}
			c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 1, VMsPerHost: 2, Regions: true})
			for _, b := range bindings {
				t.Run(b.name, func(t *testing.T) {
					job := cluster.Job{MPI: m, VMs: c.VMs(), Program: bins[b.name], Timeout: jobTimeout}
					compare(ctx, t, job, lib, b)
				})
			}
		})
	}
}

// compare runs job without and with the shim library lib and checks both reports and the
// shim's statistics.
func compare(ctx context.Context, t *testing.T, job cluster.Job, lib string, b binding) {
	plain, ok := run(ctx, t, "without the shim", job)
	if !ok {
		return
	}
	job.Env = map[string]string{"LD_PRELOAD": lib, "IVSHIM_VERBOSE": "1"}
	shim, ok := run(ctx, t, "with the shim", job)
	if !ok {
		return
	}
	want, got := report(plain.Stdout), report(shim.Stdout)
	t.Logf("%s %s: %s; %s without the shim, %s with it", job.MPI, b.name, want[0],
		plain.Elapsed.Round(time.Millisecond), shim.Elapsed.Round(time.Millisecond))
	if len(want) != 3 || len(got) != 3 || want[0] != got[0] || want[2] != got[2] {
		t.Errorf("the report with the shim differs from the report without it:\nwithout:\n\t%s\nwith:\n\t%s",
			strings.Join(want, "\n\t"), strings.Join(got, "\n\t"))
		return
	}
	checkIndices(t, job.MPI, b, want[1], got[1])
	coll, nlib, gated, sent, err := traffic(got[2])
	if err != nil || len(sent) != len(job.VMs) {
		t.Errorf("report line %q: %v", got[2], err)
		return
	}
	stats, err := shim.ShimStats()
	if err != nil || len(stats) != len(job.VMs) {
		t.Errorf("with the shim: statistics of %d ranks (%v), want %d:\n%s", len(stats), err, len(job.VMs), shim.Stderr)
		return
	}
	for i, s := range stats {
		t.Logf("%s %s rank %d: shm_msgs=%d shm_bytes=%d net_msgs=%d net_bytes=%d coll_shm=%d coll_net=%d gates=%d",
			job.MPI, b.name, s.Rank, s.SHMMsgs, s.SHMBytes, s.NetMsgs, s.NetBytes, s.CollSHM, s.CollNet, s.Gates)
		// Both ranks share a host: every message the rank sent and every collective the shim
		// runs went through the region, none around the shim; the collectives only the library
		// runs went through the shim to the library, and every blocking collective call with
		// a gate passed it.
		if s.Rank != i || s.SHMMsgs != sent[i] || s.SHMBytes == 0 || s.CollSHM != coll || s.NetMsgs != 0 || s.CollNet != nlib ||
			s.Gates != gated {
			t.Errorf("rank %d: want %d messages and %d collectives through the region, %d collectives through the library, "+
				"%d gated calls and no messages, got %+v", i, sent[i], coll, nlib, gated, s)
		}
	}
}

// traffic parses the report's line "traffic: collectives <n>, library collectives <l>, gated
// calls <g>, messages sent by rank <m0> <m1> ...".
func traffic(line string) (coll, lib, gated uint64, sent []uint64, err error) {
	head, counts, ok := strings.Cut(line, ", messages sent by rank")
	if _, err = fmt.Sscanf(head, "traffic: collectives %d, library collectives %d, gated calls %d", &coll, &lib, &gated); err != nil || !ok {
		return 0, 0, 0, nil, fmt.Errorf("not a traffic line (%v)", err)
	}
	for _, f := range strings.Fields(counts) {
		var n uint64
		if _, err := fmt.Sscan(f, &n); err != nil {
			return 0, 0, 0, nil, err
		}
		sent = append(sent, n)
	}
	return coll, lib, gated, sent, nil
}

// checkIndices checks the report's indices line without (plain) and with the shim.
func checkIndices(t *testing.T, m cluster.MPI, b binding, plain, shim string) {
	t.Helper()
	known := knownIndices[m.String()+"/"+b.name]
	switch plain {
	case stdIndices:
	case known:
		t.Logf("%s's own %s binding reports %q, a known library bug", m, b.name, plain)
	default:
		t.Errorf("without the shim: %q, want %q", plain, stdIndices)
	}
	want := plain
	if shimBinds(m, b) {
		want = stdIndices
	}
	if shim != want {
		t.Errorf("with the shim: %q, want %q", shim, want)
	}
}

// run launches job, whose report must be a clean one of all its ranks, and says whether it was.
// A job still running finalizeGrace after its report is killed; that is accepted for MPICH if
// the report is complete and, with the shim, every rank printed its statistics (the shim's part
// of MPI_Finalize is done).
func run(ctx context.Context, t *testing.T, what string, job cluster.Job) (*cluster.Result, bool) {
	t.Helper()
	job.Finished = func(stdout, _ string) bool { return summaryLine.MatchString(report(stdout)[0]) }
	job.FinishGrace = finalizeGrace
	res, err := cluster.Run(ctx, job)
	if errors.Is(err, cluster.ErrFinishGrace) {
		stats, serr := res.ShimStats()
		_, shim := job.Env["LD_PRELOAD"]
		if job.MPI != cluster.MPICH || (shim && (serr != nil || len(stats) != len(job.VMs))) {
			t.Errorf("%s: hung after its report%s", what, testenv.Details(res, 4096))
			return res, false
		}
		t.Logf("%s: MPICH hung in MPI_Finalize after the report (known MPICH+UCX problem); killed", what)
		err = nil
	}
	if err != nil {
		t.Errorf("%s: %v%s", what, err, testenv.Details(res, 4096))
		return res, false
	}
	s := summaryLine.FindStringSubmatch(report(res.Stdout)[0])
	if s == nil || s[2] != fmt.Sprint(len(job.VMs)) || s[4] != "0" {
		t.Errorf("%s: not a clean report of %d ranks%s", what, len(job.VMs), testenv.Details(res, 4096))
		return res, false
	}
	return res, true
}

// report returns the program's lines of standard output (not the shim's "ivshim:" ones), at
// least one.
func report(stdout string) []string {
	lines := []string{}
	for _, l := range strings.Split(stdout, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "ivshim:") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		lines = append(lines, "")
	}
	return lines
}

// compiler is m's Fortran wrapper.
func compiler(m cluster.MPI) string { return "mpifort." + m.String() }

// build compiles src for m in binding b into a test directory.
func build(ctx context.Context, t *testing.T, m cluster.MPI, b binding, src string) string {
	t.Helper()
	if _, err := exec.LookPath("gfortran"); err != nil {
		t.Skip("gfortran not installed (Debian package gfortran)")
	}
	out := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(src), ".F90")+"_"+b.name+"-"+m.String())
	args := append([]string{"-O2", "-Wall"}, b.flags...)
	if m == cluster.MPICH {
		// MPI-4's communicator creation from groups: MPICH 4.0 has it, Open MPI 4.1 has not.
		args = append(args, "-DMPI4_GROUPS")
	}
	if m == cluster.MPICH && b.name == "f08" {
		// MPICH's mpi_f08 has MPI-4's windows with an INTEGER(MPI_ADDRESS_KIND) displacement
		// unit (Open MPI 4.1's has not); the shim must gate those too.
		args = append(args, "-DLARGE_WINDOWS")
	}
	cmd := exec.CommandContext(ctx, compiler(m), append(args, "-o", out, src)...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s with %s %v: %v\n%s", src, compiler(m), b.flags, err, msg)
	}
	return out
}

// TestSpawn runs f_spawn (MPI_Comm_spawn and MPI_Comm_spawn_multiple with command lines the
// children check) in every binding on Open MPI, on two co-located VMs, without and with the
// shim: the same report, and the two calls through the gate on each parent. The shim's Fortran
// entry points gate and then run the library's own routine with the arguments untouched, so
// this checks that argv arrays, their hidden lengths and MPI_ERRCODES_IGNORE arrive as the
// library's binding expects them. Open MPI only: MPICH 4.0.2's hydra cannot spawn through the
// cluster's ssh stand-in, also without the shim (tests/conformance).
func TestSpawn(t *testing.T) {
	testenv.RequireCluster(t)
	root := testenv.ModuleRoot(t)
	src := filepath.Join(root, "tests", "mpi", "f_spawn.F90")
	ctx, cancel := testenv.Context(t)
	defer cancel()
	m := cluster.OpenMPI
	lib := testenv.ShimLibrary(t, root, m)
	c := testenv.NewCluster(ctx, t, cluster.Config{Hosts: 1, VMsPerHost: 2, Regions: true})
	for _, b := range bindings {
		t.Run(b.name, func(t *testing.T) {
			bin := build(ctx, t, m, b, src)
			want := fmt.Sprintf("f_spawn_%s: 2 parents, 2 + 2 children, ok, gated calls 2", b.name)
			for _, env := range []map[string]string{nil, {"LD_PRELOAD": lib, "IVSHIM_VERBOSE": "1"}} {
				res, err := cluster.Run(ctx, cluster.Job{MPI: m, VMs: c.VMs(), Program: bin, Env: env, Timeout: jobTimeout})
				if err != nil {
					t.Errorf("shim %v: %v%s", env != nil, err, testenv.Details(res, 4096))
					continue
				}
				if got := report(res.Stdout); len(got) != 1 || got[0] != want {
					t.Errorf("shim %v: report %q, want %q%s", env != nil, got, want, testenv.Details(res, 4096))
					continue
				}
				if env != nil {
					testenv.CheckParentGates(t, res, 2, 2)
				}
			}
		})
	}
}

// ---- static check of the exported names ----

// fortranLibs names, per MPI, the library holding its Fortran bindings that call PMPI_* directly.
var fortranLibs = map[cluster.MPI]string{cluster.OpenMPI: "libmpi_mpifh.so", cluster.MPICH: "libmpichfort.so"}

// f08Libs names, per MPI, a second library whose own entry points the shim may define: Open MPI
// keeps the mpi_f08 form of a few routines there (ompi_buffer_detach_f08).
var f08Libs = map[cluster.MPI]string{cluster.OpenMPI: "libmpi_usempif08.so"}

// handleConversion matches the C-only handle conversions the shim interposes (MPI_Request_c2f,
// MPI_Message_f2c, ...): they have no Fortran binding.
var handleConversion = regexp.MustCompile(`^MPI_[A-Z][a-z]*_(c2f|f2c)$`)

// cInterposer matches the shim's C interposers (MPI_Send, MPI_Comm_split, ...) among the names
// fortranName rejects.
var cInterposer = regexp.MustCompile(`^MPI_[A-Z][a-z0-9]*(_[a-z0-9]+)*$`)

// TestExports checks the shim libraries' Fortran entry points against the MPI libraries' own.
//
// Open MPI: for every C interposer MPI_Xxx, every name libmpi_mpifh.so gives ompi_xxx_f (all
// manglings, the ompi_xxx_f that mpi_f08 calls, the Fortran pmpi_ names) but PMPI_* must be
// defined by the shim. MPICH: for every C interposer whose mpi_f08 binding has no choice buffer
// (mpi_xxx_f08_, which calls PMPI_Xxx), the shim must define mpi_xxx_f08_ and pmpir_xxx_f08_.
// Both: every Fortran name the shim defines is one the library defines (none invented), and no
// name starts with PMPI_ (the shim's own PMPI_ calls must reach the library).
func TestExports(t *testing.T) {
	root := testenv.ModuleRoot(t)
	for _, m := range cluster.MPIs {
		t.Run(m.String(), func(t *testing.T) {
			shim := testenv.ShimLibrary(t, root, m)
			flib := findLibrary(t, m, fortranLibs[m])
			shimSyms, libSyms := defined(t, shim), defined(t, flib)
			otherSyms := map[string]uint64{}
			if name, ok := f08Libs[m]; ok {
				otherSyms = defined(t, findLibrary(t, m, name))
			}
			byAddr := map[uint64][]string{}
			for name, addr := range libSyms {
				byAddr[addr] = append(byAddr[addr], name)
			}
			var want []string
			for name := range shimSyms {
				if strings.HasPrefix(name, "PMPI_") {
					t.Errorf("%s defines %s", m.ShimLibrary(), name)
				}
				if fortranName(name) {
					_, ok := libSyms[name]
					if _, other := otherSyms[name]; !ok && !other {
						t.Errorf("%s defines %s, which %s does not", m.ShimLibrary(), name, filepath.Base(flib))
					}
					continue
				}
				if !cInterposer.MatchString(name) || handleConversion.MatchString(name) {
					continue
				}
				x := strings.ToLower(strings.TrimPrefix(name, "MPI_"))
				if m == cluster.OpenMPI {
					addr, ok := libSyms["ompi_"+x+"_f"]
					if !ok {
						t.Errorf("%s has no ompi_%s_f for %s", filepath.Base(flib), x, name)
						continue
					}
					for _, n := range byAddr[addr] {
						if !strings.HasPrefix(n, "PMPI_") {
							want = append(want, n)
						}
					}
				} else if _, ok := libSyms["mpi_"+x+"_f08_"]; ok {
					want = append(want, "mpi_"+x+"_f08_", "pmpir_"+x+"_f08_")
				}
			}
			sort.Strings(want)
			missing := []string{}
			for _, n := range want {
				if _, ok := shimSyms[n]; !ok {
					missing = append(missing, n)
				}
			}
			if len(missing) > 0 {
				t.Errorf("%s lacks %d Fortran entry points: %s", m.ShimLibrary(), len(missing), strings.Join(missing, " "))
			}
			t.Logf("%s: %d Fortran names of %s checked", m.ShimLibrary(), len(want), filepath.Base(flib))
		})
	}
}

// fortranName says whether name is a Fortran binding's: mpi_send_, pmpi_send, ompi_send_f,
// MPI_SEND, MPI_Send_f08, mpi_wait_f08_, pmpir_wait_f08_ ...
func fortranName(name string) bool {
	for _, p := range []string{"mpi_", "pmpi_", "pmpir_", "ompi_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return strings.HasPrefix(name, "MPI_") &&
		(name == strings.ToUpper(name) || strings.HasSuffix(name, "_f") || strings.HasSuffix(name, "_f08"))
}

// findLibrary returns the path of the MPI library file name as m's Fortran wrapper links it,
// skipping the test if there is none.
func findLibrary(t *testing.T, m cluster.MPI, name string) string {
	t.Helper()
	out, err := exec.Command(compiler(m), "-print-file-name="+name).Output()
	p := strings.TrimSpace(string(out))
	if err != nil || !filepath.IsAbs(p) {
		t.Skipf("%s -print-file-name=%s: %v %q (Fortran support of %s not installed)", compiler(m), name, err, p, m)
	}
	return p
}

// defined returns the dynamic symbols a shared library defines, with their addresses.
func defined(t *testing.T, path string) map[string]uint64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]uint64{}
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF && (elf.ST_TYPE(s.Info) == elf.STT_FUNC || elf.ST_TYPE(s.Info) == elf.STT_OBJECT) {
			out[s.Name] = s.Value
		}
	}
	return out
}
