package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// jobMarker is the environment variable that tags every process of a job, "<owner>/<job>",
// where owner is the cluster prefix or "native". Open MPI and hydra put daemons and ranks in new
// sessions, so the process group alone does not reach them.
const jobMarker = "IVSHIM_CLUSTER_JOB"

// A kill sweep repeats until it finds nobody, pausing between rounds so SIGKILLed processes can
// die, and gives up after killRounds: processes forking faster than that are a bug to report.
const (
	killRounds = 50
	killPause  = 20 * time.Millisecond
)

// rootEnv is the environment for commands the cluster starts in the root namespace: this
// process's, less the job marker and IVSHIM_REGION and IVSHIM_VM_ID, which the agent sets per VM
// (hydra would otherwise forward the caller's values over them).
func rootEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, jobMarker+"=") || strings.HasPrefix(kv, "IVSHIM_REGION=") || strings.HasPrefix(kv, "IVSHIM_VM_ID=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// markedPIDs lists the processes (other than this one) whose initial environment has
// jobMarker=value, or a value starting with value when prefix is set.
func markedPIDs(value string, prefix bool) ([]int, error) {
	want := []byte(jobMarker + "=" + value)
	self := os.Getpid()
	pids, err := allPIDs()
	if err != nil {
		return nil, err
	}
	var marked []int
	for _, pid := range pids {
		if pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
		if err != nil {
			continue // exited, or a kernel thread
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, want) || prefix && bytes.HasPrefix(kv, want) {
				marked = append(marked, pid)
				break
			}
		}
	}
	return marked, nil
}

// killMarked SIGKILLs the processes markedPIDs finds until none is left and returns how many it
// killed.
func killMarked(value string, prefix bool) (int, error) {
	killed := map[int]bool{}
	for round := 0; round < killRounds; round++ {
		pids, err := markedPIDs(value, prefix)
		if err != nil {
			return len(killed), err
		}
		if len(pids) == 0 {
			return len(killed), nil
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed[pid] = true
			}
		}
		time.Sleep(killPause)
	}
	return len(killed), fmt.Errorf("kill processes marked %s=%s: still alive after %d rounds", jobMarker, value, killRounds)
}

// allPIDs lists the processes in /proc.
func allPIDs() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killNetns SIGKILLs every process in network namespace ns until none is left.
func killNetns(ctx context.Context, ns string) error {
	for round := 0; round < killRounds; round++ {
		out, err := ip(ctx, "netns", "pids", ns)
		if err != nil {
			return err
		}
		pids := strings.Fields(out)
		if len(pids) == 0 {
			return nil
		}
		for _, p := range pids {
			pid, err := strconv.Atoi(p)
			if err != nil {
				return fmt.Errorf("ip netns pids %s: bad pid %q", ns, p)
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("kill %d in netns %s: %w", pid, ns, err)
			}
		}
		time.Sleep(killPause)
	}
	return fmt.Errorf("kill processes in netns %s: still alive after %d rounds", ns, killRounds)
}
