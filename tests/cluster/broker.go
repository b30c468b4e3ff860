package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/daemon"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/netns"
)

// Bounds on waiting for a broker. It reacts to registry changes through inotify within
// milliseconds; the bounds only keep a broken one from hanging the caller.
const (
	brokerStartTimeout = 30 * time.Second // until its API answers
	brokerStopTimeout  = 10 * time.Second // from SIGTERM to exit
	deviceTimeout      = 30 * time.Second // until it has (un)plugged a VM's device
	unplugTimeout      = 10 * time.Second // until it has removed its regions at teardown
	pollInterval       = 20 * time.Millisecond
)

// logTailBytes is how much of a broker's log an error quotes.
const logTailBytes = 4096

// Broker is the ivshim-broker instance of one emulated host (Config.Broker): a child process
// serving the host's netns registry, its own region directory and API socket. Its process
// carries the cluster's job marker, so Teardown and Clean find it like any job process.
type Broker struct {
	host      *Host
	bin       string
	conf      string // configuration file
	socket    string
	regionDir string
	logFile   string
	reg       netns.Registry
	vcpus     int // what each registered VM says it has

	mu   sync.Mutex
	proc *brokerProc // nil while not started or after Kill or Stop
}

// brokerProc is one run of a broker process.
type brokerProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // Wait's result; written before done is closed
}

// BuildBroker compiles ivshim-broker from this module's source into dir and returns its path,
// for Config.Broker in tests.
func BuildBroker(ctx context.Context, dir string) (string, error) {
	return BuildCommand(ctx, dir, "ivshim.dev/ivshim/broker/cmd/ivshim-broker")
}

// BuildCommand compiles the command package pkg of this module into dir and returns the
// program's path (dir and the package's last element). It needs the go command (PATH, else
// GOROOT/bin).
func BuildCommand(ctx context.Context, dir, pkg string) (string, error) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, path.Base(pkg))
	cmd := exec.CommandContext(ctx, goCmd, "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s with %s: %w: %s", path.Base(pkg), goCmd, err, b)
	}
	return out, nil
}

// newBroker lays out h's broker: its region directory /dev/shm/<prefix>-<host>, and in h.Dir its
// configuration, socket, log and the netns registry.
func (c *Cluster) newBroker(h *Host, bin string, regionSize uint64, vcpus int) (*Broker, error) {
	b := &Broker{
		vcpus:     vcpus,
		host:      h,
		bin:       bin,
		conf:      filepath.Join(h.Dir, "broker.conf"),
		socket:    filepath.Join(h.Dir, "broker.sock"),
		regionDir: c.RegionPath(h),
		logFile:   filepath.Join(h.Dir, "broker.log"),
		reg:       netns.Registry{Dir: h.Dir},
	}
	if err := os.Mkdir(b.regionDir, 0o700); err != nil {
		return nil, fmt.Errorf("broker of host %s: region directory: %w", h.Name, err)
	}
	text := daemon.EmulatedHost{NetnsDir: b.reg.Dir, RegionDir: b.regionDir, Socket: b.socket,
		HostID: h.ID, RegionSize: regionSize}.ConfigText()
	if err := os.WriteFile(b.conf, []byte(text), 0o600); err != nil {
		return nil, fmt.Errorf("broker of host %s: %w", h.Name, err)
	}
	if err := b.reg.Init(); err != nil {
		return nil, fmt.Errorf("broker of host %s: %w", h.Name, err)
	}
	return b, nil
}

// Socket is the path of the broker's API socket (api.NewClient, ivshimctl -socket).
func (b *Broker) Socket() string { return b.socket }

// RegionDir is the broker's region directory, /dev/shm/<prefix>-<host>.
func (b *Broker) RegionDir() string { return b.regionDir }

// Region is the path at which the broker keeps the region of job.
func (b *Broker) Region(job string) string {
	return filepath.Join(b.regionDir, hypervisor.RegionName(job))
}

// LogFile is the file that receives the broker's JSON log, across restarts.
func (b *Broker) LogFile() string { return b.logFile }

// Start runs the broker with its configuration and waits until its API answers. The process
// outlives ctx; Stop, Kill or the cluster's teardown end it. Starting a running broker is an
// error.
func (b *Broker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proc != nil && !b.proc.exited() {
		return fmt.Errorf("start broker of host %s: already running", b.host.Name)
	}
	log, err := os.OpenFile(b.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start broker of host %s: %w", b.host.Name, err)
	}
	defer log.Close()
	cmd := exec.Command(b.bin, "-config", b.conf)
	cmd.Env = append(rootEnv(), jobMarker+"="+b.host.cluster.Prefix+"/broker-"+b.host.Name)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group: a Ctrl-C meant for the cluster's command must not reach the broker
	// before Teardown has used it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start broker of host %s: %w", b.host.Name, err)
	}
	p := &brokerProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	b.proc = p
	fmt.Fprintf(b.host.cluster.log, "host %s: broker pid %d, socket %s, regions in %s\n", b.host.Name, cmd.Process.Pid, b.socket, b.regionDir)

	ctx, cancel := context.WithTimeout(ctx, brokerStartTimeout)
	defer cancel()
	client := api.NewClient(b.socket)
	for {
		if _, err := client.Status(ctx); err == nil {
			return nil
		}
		select {
		case <-p.done:
			b.proc = nil
			return fmt.Errorf("start broker of host %s: %v; log:\n%s", b.host.Name, p.err, b.logTail())
		case <-ctx.Done():
			cmd.Process.Kill()
			<-p.done
			b.proc = nil
			return fmt.Errorf("start broker of host %s: API %s not answering: %w; log:\n%s", b.host.Name, b.socket, context.Cause(ctx), b.logTail())
		case <-time.After(pollInterval):
		}
	}
}

// exited reports whether the process has ended.
func (p *brokerProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// take detaches the broker's process from b.
func (b *Broker) take() *brokerProc {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.proc
	b.proc = nil
	return p
}

// Kill ends the broker with SIGKILL, as a crash would, and reaps it. Its region files, their VM
// tables and the VMs' devices stay as they are.
func (b *Broker) Kill() error {
	p := b.take()
	if p == nil {
		return fmt.Errorf("kill broker of host %s: not running", b.host.Name)
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill broker of host %s: %w", b.host.Name, err)
	}
	<-p.done
	fmt.Fprintf(b.host.cluster.log, "host %s: broker killed\n", b.host.Name)
	return nil
}

// Stop ends the broker with SIGTERM and expects a clean exit; it SIGKILLs a broker that ignores
// SIGTERM. A broker that died on its own is reported with its log. Stopping a stopped broker
// does nothing.
func (b *Broker) Stop() error {
	p := b.take()
	if p == nil {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop broker of host %s: %w", b.host.Name, err)
	}
	select {
	case <-p.done:
	case <-time.After(brokerStopTimeout):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("stop broker of host %s: still running %v after SIGTERM; log:\n%s", b.host.Name, brokerStopTimeout, b.logTail())
	}
	if p.err != nil {
		return fmt.Errorf("broker of host %s: %w; log:\n%s", b.host.Name, p.err, b.logTail())
	}
	return nil
}

// running reports whether the broker's process is alive.
func (b *Broker) running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.proc != nil && !b.proc.exited()
}

// logTail returns the end of the broker's log.
func (b *Broker) logTail() string {
	f, err := os.Open(b.logFile)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > logTailBytes {
		f.Seek(fi.Size()-logTailBytes, io.SeekStart)
	}
	tail, err := io.ReadAll(f)
	if err != nil {
		return err.Error()
	}
	return string(tail)
}

// register boots vm in the broker's registry as a VM of job ("" for none).
func (b *Broker) register(vm *VM, job string) error {
	return b.reg.Register(netns.VM{Name: vm.Name, UUID: vm.UUID, Job: job, Netns: vm.Netns,
		NIC: hypervisor.NIC{HostIface: vm.Veth, MAC: vm.MAC}, VCPUs: b.vcpus})
}

// devicePath is where vm's device appears, the value of IVSHIM_REGION in vm.
func (b *Broker) devicePath(vm *VM) string { return b.reg.DevicePath(vm.Name) }

// waitDevice waits until the broker has plugged the region file want into vm, or unplugged
// every region when want is "".
func (b *Broker) waitDevice(ctx context.Context, vm *VM, want string) error {
	ctx, cancel := context.WithTimeout(ctx, deviceTimeout)
	defer cancel()
	for {
		got, err := b.reg.Device(vm.Name)
		if err != nil {
			return err
		}
		if got == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("VM %s: broker of host %s has plugged %q, want %q: %w; log:\n%s",
				vm.Name, b.host.Name, got, want, context.Cause(ctx), b.logTail())
		case <-time.After(pollInterval):
		}
	}
}

// regionFiles lists the region files in the broker's directory.
func (b *Broker) regionFiles() ([]string, error) {
	entries, err := os.ReadDir(b.regionDir)
	if err != nil {
		return nil, fmt.Errorf("regions of host %s: %w", b.host.Name, err)
	}
	var files []string
	for _, e := range entries {
		if _, ok := hypervisor.JobOfDevice(e.Name()); ok {
			files = append(files, filepath.Join(b.regionDir, e.Name()))
		}
	}
	return files, nil
}

// shutdown powers off the host's VMs and, if the broker runs, waits until it has removed its
// regions, then stops it. A broker that leaves a region behind is an error; the cluster's
// cleanup removes the region anyway.
func (b *Broker) shutdown() error {
	var errs []error
	for _, vm := range b.host.VMs {
		errs = append(errs, b.reg.Unregister(vm.Name))
	}
	if b.running() {
		errs = append(errs, b.waitNoRegions())
	}
	errs = append(errs, b.Stop())
	return errors.Join(errs...)
}

// waitNoRegions waits until the broker has removed every region file from its directory.
func (b *Broker) waitNoRegions() error {
	deadline := time.Now().Add(unplugTimeout)
	for {
		files, err := b.regionFiles()
		if err != nil || len(files) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("broker of host %s kept %q %v after its VMs stopped; log:\n%s", b.host.Name, files, unplugTimeout, b.logTail())
		}
		time.Sleep(pollInterval)
	}
}

// Migrate moves vm to host dest through its broker's migration coordinator (ivshimctl migrate),
// as a scheduler would, with deadline bounding the drain and the attach (0: the broker's
// default). On success the cluster places vm on dest: jobs started from then on find it
// there, with dest's region as its device. The coordinator's answer is returned in every case
// it gave one; a failed migration leaves vm where it was.
func (c *Cluster) Migrate(ctx context.Context, vm *VM, dest *Host, deadline time.Duration) (api.MigrateResult, error) {
	src := vm.Host
	if src.Broker == nil || dest.Broker == nil {
		return api.MigrateResult{}, fmt.Errorf("migrate VM %s: hosts %s and %s need brokers", vm.Name, src.Name, dest.Name)
	}
	res, err := api.NewClient(src.Broker.Socket()).Migrate(ctx, api.MigrateRequest{VM: vm.Name, Destination: dest.Dir,
		DeadlineMS: deadline.Milliseconds()})
	if err != nil {
		return res, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	src.VMs = slices.DeleteFunc(src.VMs, func(v *VM) bool { return v == vm })
	dest.VMs = append(dest.VMs, vm)
	vm.Host = dest
	if err := vm.plugDevice(dest.Broker); err != nil {
		return res, fmt.Errorf("migrate VM %s: %w", vm.Name, err)
	}
	if err := vm.linkRegion(dest.Broker); err != nil {
		return res, fmt.Errorf("migrate VM %s: %w", vm.Name, err)
	}
	return res, nil
}
