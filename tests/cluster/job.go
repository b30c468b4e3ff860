package cluster

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// MPI names an MPI library and its launcher.
type MPI int

// The MPI libraries the cluster launches.
const (
	// OpenMPI is Open MPI 4.1 (mpirun.openmpi, ob1 with vader and tcp).
	OpenMPI MPI = iota + 1
	// MPICH is MPICH 4.0 ch4:ucx (mpiexec.mpich, hydra).
	MPICH
)

// MPIs lists every supported library, for tests and benchmarks that cover all of them.
var MPIs = []MPI{OpenMPI, MPICH}

// String returns "openmpi" or "mpich", the suffix of the Debian tool names and of built programs.
func (m MPI) String() string {
	switch m {
	case OpenMPI:
		return "openmpi"
	case MPICH:
		return "mpich"
	}
	return "mpi(" + strconv.Itoa(int(m)) + ")"
}

// Transport restricts which transports the MPI library may use between ranks.
type Transport int

const (
	// Default leaves the library's choice: shared memory within one OS, TCP between VMs.
	Default Transport = iota
	// TCP forces the network path even between ranks in one OS (Open MPI btl tcp,self; MPICH
	// MPIR_CVAR_NOLOCAL=1 and UCX_TLS=tcp,self).
	TCP
	// SharedMemory allows only shared memory and self (Open MPI btl self,vader; MPICH
	// UCX_TLS=sm,self). Across VMs a job must then fail: the negative control proving that
	// ranks in different VMs cannot reach each other's shared memory.
	SharedMemory
)

// ErrTimeout is wrapped by Run's error when the job's last attempt ran out of time.
var ErrTimeout = errors.New("MPI job timed out")

// MPICHFinishGrace is the FinishGrace for an MPICH job once Finished says its output is
// complete (with the shim: every rank's statistics too, so the shim's part of MPI_Finalize is
// done). MPICH 4.0.2 + UCX over TCP hangs in its own MPI_Finalize in about half the runs,
// nearly always with the shim (EMULATION.md); a clean exit of a few ranks takes well under a
// second, and a job killed after this is accepted either way, so waiting longer only costs time.
const MPICHFinishGrace = time.Second

// ErrFinishGrace wraps ErrTimeout for an attempt killed FinishGrace after Finished said its ranks
// had done their work: a hang in MPI_Finalize (MPICH + UCX over TCP has one, EMULATION.md).
var ErrFinishGrace = fmt.Errorf("%w: still running after its ranks finished their work", ErrTimeout)

// DefaultTimeout bounds a job attempt when Job.Timeout is zero.
const DefaultTimeout = 2 * time.Minute

// Job is one MPI launch.
type Job struct {
	// MPI selects the library and launcher.
	MPI MPI
	// VMs receive the ranks, RanksPerVM each (default 1), in rank order; all must belong to one
	// cluster. Without VMs the job is native: Ranks ranks in the root namespace, one OS.
	VMs        []*VM
	RanksPerVM int
	// PerVM, when set, gives VM i PerVM[i] ranks instead of RanksPerVM (uneven layouts).
	PerVM []int
	Ranks int
	// Transport restricts the library's transports.
	Transport Transport
	// Program and Args are the rank executable and its arguments; Program must be reachable at
	// the same path in the VMs (they share the file system).
	Program string
	Args    []string
	// Env is set in every rank (Open MPI -x, MPICH -genv), e.g. LD_PRELOAD.
	Env map[string]string
	// Timeout bounds each attempt (default DefaultTimeout); on expiry the attempt's whole
	// process tree is killed.
	Timeout time.Duration
	// RetryOnTimeout runs the job once more when the first attempt times out, for MPICH+UCX over
	// TCP, which sometimes hangs in MPI_Finalize. Result.Timeouts reports it.
	RetryOnTimeout bool
	// Stdout and Stderr, when set, also receive the output of every attempt as it comes.
	Stdout, Stderr io.Writer
	// Finished, when set, is asked after each write to an attempt's standard output or error
	// whether the ranks are done with their work (every rank printed its result, and with the
	// shim its statistics); from then on the attempt has FinishGrace (default 20 s) to end, or
	// it is killed and counts as timed out (ErrTimeout): MPICH + UCX over TCP sometimes hangs
	// in MPI_Finalize after the work.
	Finished    func(stdout, stderr string) bool
	FinishGrace time.Duration
	// Placement, when set, runs the ranks there instead of in VMs of a cluster (real guests
	// the caller set up); VMs must then be empty.
	Placement *Placement
	// Signals, when set, are sent to the launcher while an attempt runs (Open MPI's mpirun
	// passes SIGUSR1 and SIGUSR2 on to every rank).
	Signals <-chan os.Signal
}

// Result is what Run saw of a job's last attempt.
type Result struct {
	// Argv is the launcher command line.
	Argv []string
	// Stdout and Stderr are the output of the last attempt.
	Stdout, Stderr string
	// Attempts counts the attempts made; Timeouts how many of them timed out.
	Attempts, Timeouts int
	// Elapsed is the duration of the last attempt.
	Elapsed time.Duration
	// Stragglers counts processes of the last attempt still alive after the launcher exited
	// (killed by Run).
	Stragglers int
}

// Run launches job and waits for it. The returned Result is non-nil whenever the launcher was
// started, also with an error: a failed job's output is often what the caller wants to check.
// The error wraps ErrTimeout when the last attempt timed out, and *exec.ExitError when the
// launcher failed.
func Run(ctx context.Context, job Job) (*Result, error) {
	argv, err := job.Argv()
	if err != nil {
		return nil, err
	}
	var c *Cluster
	if len(job.VMs) > 0 {
		c = job.VMs[0].Host.cluster
	}
	if job.Timeout == 0 {
		job.Timeout = DefaultTimeout
	}
	attempts := 1
	if job.RetryOnTimeout {
		attempts = 2
	}
	res := &Result{}
	for res.Attempts < attempts {
		res.Attempts++
		err = job.attempt(ctx, c, argv, res)
		if !errors.Is(err, ErrTimeout) {
			break
		}
		res.Timeouts++
	}
	return res, err
}

// Argv returns the launcher command line of the job. Run adds only a marker variable to the
// environment; the command line may be run by hand while the cluster is up.
func (job Job) Argv() ([]string, error) {
	c, err := job.cluster()
	if err != nil {
		return nil, err
	}
	p := job.Placement // set: ranks in real guests (c is nil)
	if c != nil {
		p = &Placement{Agent: c.Agent, Subnet: c.Subnet, Local: c.BridgeAddr, Hosts: job.hostList(), Size: job.size()}
	}
	return job.LauncherArgv(p), nil
}

// Placement is where a job's ranks run, for the launcher's command line: Agent starts the
// launcher's daemons on the hosts (an ssh stand-in), the library's traffic stays in Subnet,
// where this machine is Local; Hosts are address:slots, Size ranks in all; WorkDir is the
// ranks' working directory ("": the launcher's default).
type Placement struct {
	Agent   string
	Subnet  netip.Prefix
	Local   netip.Addr
	Hosts   string
	Size    int
	WorkDir string
}

// LauncherArgv is the mpirun (Open MPI) or mpiexec (MPICH) command line that runs job on p, or
// natively in this OS (job.Ranks ranks) when p is nil. Only MPI, Transport, Program, Args, Env
// and, natively, Ranks are used.
func (job *Job) LauncherArgv(p *Placement) []string {
	if job.MPI == OpenMPI {
		return job.openMPIArgv(p)
	}
	return job.mpichArgv(p)
}

// cluster checks the job, sets defaults and returns the cluster of its VMs, nil for a native
// job.
func (job *Job) cluster() (*Cluster, error) {
	if job.MPI != OpenMPI && job.MPI != MPICH {
		return nil, fmt.Errorf("run job: unknown MPI %v", job.MPI)
	}
	if job.Program == "" {
		return nil, fmt.Errorf("run %s job: no program", job.MPI)
	}
	if job.Placement != nil {
		if len(job.VMs) != 0 || job.Placement.Size < 1 {
			return nil, fmt.Errorf("run %s job %s: placed on %d ranks and given %d VMs", job.MPI, job.Program, job.Placement.Size, len(job.VMs))
		}
		return nil, nil
	}
	if len(job.VMs) == 0 {
		if job.Ranks < 1 {
			return nil, fmt.Errorf("run native %s job %s: %d ranks", job.MPI, job.Program, job.Ranks)
		}
		return nil, nil
	}
	if job.Ranks != 0 {
		return nil, fmt.Errorf("run %s job %s: Ranks is for native jobs; use RanksPerVM", job.MPI, job.Program)
	}
	if job.RanksPerVM == 0 {
		job.RanksPerVM = 1
	}
	if job.PerVM != nil && len(job.PerVM) != len(job.VMs) {
		return nil, fmt.Errorf("run %s job %s: PerVM has %d entries for %d VMs", job.MPI, job.Program, len(job.PerVM), len(job.VMs))
	}
	for _, n := range job.PerVM {
		if n < 1 {
			return nil, fmt.Errorf("run %s job %s: PerVM %v: every VM needs a rank", job.MPI, job.Program, job.PerVM)
		}
	}
	c := job.VMs[0].Host.cluster
	for _, vm := range job.VMs {
		if vm.Host.cluster != c {
			return nil, fmt.Errorf("run %s job %s: VMs %s and %s are in different clusters", job.MPI, job.Program, job.VMs[0].Name, vm.Name)
		}
	}
	return c, nil
}

// attempt runs the job's command line argv once, filling res.
func (job *Job) attempt(ctx context.Context, c *Cluster, argv []string, res *Result) error {
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("job id: %w", err)
	}
	owner, log := "native", io.Discard
	if c != nil {
		owner, log = c.Prefix, c.log
	}
	marker := owner + "/" + hex.EncodeToString(id[:])
	res.Argv = argv
	fmt.Fprintf(log, "job %s: %s\n", marker, strings.Join(argv, " "))

	actx, cancel := context.WithTimeout(ctx, job.Timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(actx, argv[0], argv[1:]...)
	cmd.Env = append(rootEnv(), jobMarker+"="+marker)
	cmd.Stdout, cmd.Stderr = teeTo(&stdout, job.Stdout), teeTo(&stderr, job.Stderr)
	var graceOver atomic.Bool
	if job.Finished != nil {
		grace := cmp.Or(job.FinishGrace, 20*time.Second)
		fw := &finishWatch{done: job.Finished, then: func() {
			time.AfterFunc(grace, func() { graceOver.Store(true); cancel() })
		}}
		cmd.Stdout = io.MultiWriter(cmd.Stdout, fw.stream(0))
		cmd.Stderr = io.MultiWriter(cmd.Stderr, fw.stream(1))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if _, kerr := killMarked(marker, false); kerr != nil {
			err = errors.Join(err, kerr)
		}
		return err
	}
	// Ranks in other sessions may hold the output pipes after a kill.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		running := make(chan struct{})
		go func() {
			for {
				select {
				case s := <-job.Signals: // never, if nil
					cmd.Process.Signal(s)
				case <-running:
					return
				}
			}
		}()
		err = cmd.Wait()
		close(running)
	}
	res.Elapsed = time.Since(start)
	n, kerr := killMarked(marker, false)
	res.Stragglers = n
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	if kerr != nil {
		return fmt.Errorf("job %s: %w", marker, kerr)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s job %s (%s): %w", job.MPI, job.Program, marker, context.Cause(ctx))
	}
	if err != nil && graceOver.Load() {
		return fmt.Errorf("%s job %s (%s): %w (grace %v)", job.MPI, job.Program, marker, ErrFinishGrace,
			cmp.Or(job.FinishGrace, 20*time.Second))
	}
	if err != nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%s job %s (%s): %w after %v", job.MPI, job.Program, marker, ErrTimeout, job.Timeout)
	}
	if err != nil {
		return fmt.Errorf("%s job %s (%s): %w", job.MPI, job.Program, marker, err)
	}
	return nil
}

// finishWatch calls then once done says yes to the output written so far.
type finishWatch struct {
	mu   sync.Mutex
	out  [2]strings.Builder // standard output, standard error
	done func(stdout, stderr string) bool
	then func()
	seen bool
}

// stream is the writer of standard output (0) or standard error (1).
func (w *finishWatch) stream(i int) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.out[i].Write(p)
		if !w.seen && w.done(w.out[0].String(), w.out[1].String()) {
			w.seen = true
			w.then()
		}
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// teeTo returns buf, or a writer to buf and extra.
func teeTo(buf *bytes.Buffer, extra io.Writer) io.Writer {
	if extra == nil {
		return buf
	}
	return &tee{buf: buf, extra: extra}
}

// tee keeps all of a job's output in buf and passes it on to extra until extra fails: a closed
// terminal or a pipe into head must neither stop the job nor lose what the result reports.
type tee struct {
	buf   *bytes.Buffer
	extra io.Writer
}

func (t *tee) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if t.extra != nil {
		if _, err := t.extra.Write(p); err != nil {
			t.extra = nil
		}
	}
	return len(p), nil
}

// hostList is "addr:ranks,..." for the job's VMs, a syntax both launchers accept. Addresses rather
// than names, so the root namespace needs no /etc/hosts entries.
func (job *Job) hostList() string {
	hosts := make([]string, len(job.VMs))
	for i, vm := range job.VMs {
		hosts[i] = fmt.Sprintf("%s:%d", vm.Addr, job.ranksOn(i))
	}
	return strings.Join(hosts, ",")
}

// ranksOn is the number of ranks on the job's VM i.
func (job *Job) ranksOn(i int) int {
	if job.PerVM != nil {
		return job.PerVM[i]
	}
	return job.RanksPerVM
}

// size is the number of ranks of a job in VMs.
func (job *Job) size() int {
	n := 0
	for i := range job.VMs {
		n += job.ranksOn(i)
	}
	return n
}

// envKeys returns the keys of job.Env in order, so command lines are reproducible.
func (job *Job) envKeys() []string {
	keys := make([]string, 0, len(job.Env))
	for k := range job.Env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// openMPIArgv is the mpirun command line.
func (job *Job) openMPIArgv(p *Placement) []string {
	argv := []string{"mpirun.openmpi", "--allow-run-as-root", "--oversubscribe"}
	// Each VM's daemon would bind its first rank to core 0, and ranks beyond the cores must yield
	// to each other; a native job that fits keeps Open MPI's defaults, the baseline to beat.
	if p != nil || job.Ranks > runtime.NumCPU() {
		argv = append(argv, "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1")
	}
	switch job.Transport {
	case TCP:
		argv = append(argv, "--mca", "btl", "tcp,self")
	case SharedMemory:
		argv = append(argv, "--mca", "btl", "self,vader")
	}
	for _, k := range job.envKeys() {
		argv = append(argv, "-x", k+"="+job.Env[k])
	}
	if p == nil {
		if job.Transport == TCP {
			argv = append(argv, "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo")
		}
		argv = append(argv, "-np", strconv.Itoa(job.Ranks))
	} else {
		subnet := p.Subnet.String()
		// One-sided communication: the components for RDMA hardware (osc/rdma, osc/ucx) fail to
		// create a window between emulated VMs, where only TCP connects them (MPI_ERR_WIN);
		// osc/pt2pt carries it over the btl, as it would over any network without RDMA.
		argv = append(argv, "--mca", "plm_rsh_agent", p.Agent, "--mca", "plm_rsh_no_tree_spawn", "1",
			"--mca", "oob_tcp_if_include", subnet, "--mca", "btl_tcp_if_include", subnet,
			"--mca", "osc", "^rdma,ucx", "--host", p.Hosts, "-np", strconv.Itoa(p.Size))
		if p.WorkDir != "" {
			argv = append(argv, "--wdir", p.WorkDir)
		}
	}
	return append(append(argv, job.Program), job.Args...)
}

// mpichArgv is the mpiexec command line.
func (job *Job) mpichArgv(p *Placement) []string {
	argv := []string{"mpiexec.mpich"}
	if p == nil {
		argv = append(argv, "-n", strconv.Itoa(job.Ranks))
	} else {
		argv = append(argv, "-launcher", "ssh", "-launcher-exec", p.Agent, "-localhost", p.Local.String(),
			"-hosts", p.Hosts, "-n", strconv.Itoa(p.Size))
		if p.WorkDir != "" {
			argv = append(argv, "-wdir", p.WorkDir)
		}
	}
	switch job.Transport {
	case TCP:
		argv = append(argv, "-genv", "MPIR_CVAR_NOLOCAL", "1", "-genv", "UCX_TLS", "tcp,self")
		if p == nil {
			argv = append(argv, "-genv", "UCX_NET_DEVICES", "lo")
		}
	case SharedMemory:
		argv = append(argv, "-genv", "UCX_TLS", "sm,self")
	}
	for _, k := range job.envKeys() {
		argv = append(argv, "-genv", k, job.Env[k])
	}
	return append(append(argv, job.Program), job.Args...)
}
