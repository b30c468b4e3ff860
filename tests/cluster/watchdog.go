package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
)

// A cluster outlives a process that dies without its Teardown (SIGKILL, a test binary's
// -timeout panic, a timeout that kills the command but not its whole process tree): its brokers, VM processes, namespaces
// and files would stay until someone runs `ivshim-cluster clean PREFIX`. So Create starts a
// watchdog, this same program run again with watchdogEnv set to the cluster's prefix, in its own
// process group (a Ctrl-C or a group kill meant for the creator leaves it). Its standard input
// is a pipe whose only writer is the creator: Teardown writes one byte, and the watchdog exits;
// end of file without that byte means the creator is gone, and the watchdog runs Clean. A kill
// of the creator's whole tree or cgroup takes the watchdog along: `ivshim-cluster clean` is left.
// (Pdeathsig would not do: it kills only the child it is set on, once the creating thread, not
// the process, exits, and jobs' ranks run in sessions of their own.)
const watchdogEnv = "IVSHIM_CLUSTER_WATCHDOG"

// init turns a process started as a watchdog into one before anything else runs: every program
// that creates clusters (ivshim-cluster, ivshim-bench, the test binaries) links this package.
func init() {
	prefix, ok := os.LookupEnv(watchdogEnv)
	if !ok {
		return
	}
	os.Unsetenv(watchdogEnv)
	os.Exit(watchdog(prefix, os.Stdin, os.Stderr))
}

// watchdog waits on in until the creator of cluster prefix writes a byte (it tore the cluster
// down) or is gone (end of file, or a read error), then cleans up in the latter case.
func watchdog(prefix string, in io.Reader, log io.Writer) int {
	signal.Ignore(syscall.SIGPIPE, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGTTOU)
	var b [1]byte
	if n, _ := in.Read(b[:]); n == 1 {
		return 0
	}
	if err := Clean(prefix); err != nil {
		fmt.Fprintf(log, "ivshim-cluster watchdog: its creator is gone without tearing cluster %s down: %v\n", prefix, err)
		return 1
	}
	fmt.Fprintf(log, "ivshim-cluster watchdog: its creator is gone without tearing cluster %s down; cleaned it\n", prefix)
	return 0
}

// startWatchdog starts the watchdog of cluster prefix and returns the pipe end that keeps it
// waiting; Teardown writes to it once the cluster is gone.
func startWatchdog(prefix string) (*os.File, error) {
	if !validPrefix.MatchString(prefix) {
		return nil, fmt.Errorf("watchdog of %q: not a cluster prefix", prefix)
	}
	r, w, err := os.Pipe() // close-on-exec: no other child inherits the write end
	if err != nil {
		return nil, fmt.Errorf("watchdog of cluster %s: %w", prefix, err)
	}
	defer r.Close()
	// This process's image, even if its file was replaced or removed since; the arguments only
	// name it in ps.
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{os.Args[0], "watchdog", prefix}
	cmd.Env = append(rootEnv(), watchdogEnv+"="+prefix)
	cmd.Stdin, cmd.Stderr = r, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("watchdog of cluster %s: %w", prefix, err)
	}
	go cmd.Wait() // reaps it whenever it ends
	return w, nil
}

// stopWatchdog tells the watchdog the cluster is gone. A watchdog that is gone already (EPIPE)
// has nothing left to do.
func stopWatchdog(w *os.File) error {
	if w == nil {
		return nil
	}
	_, err := w.Write([]byte{1})
	if errors.Is(err, syscall.EPIPE) {
		err = nil
	}
	return errors.Join(err, w.Close())
}

// keepUntilExit holds the pipes of clusters whose Teardown failed: their watchdogs must not see
// end of file (and clean up under a live process) when the garbage collector closes a dropped
// cluster's pipe, only when this process ends.
var keepUntilExit struct {
	sync.Mutex
	pipes []*os.File
}

// parkWatchdog keeps w open until this process ends.
func parkWatchdog(w *os.File) {
	if w == nil {
		return
	}
	keepUntilExit.Lock()
	keepUntilExit.pipes = append(keepUntilExit.pipes, w)
	keepUntilExit.Unlock()
}
