package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// validPrefix is the form of every cluster prefix; Clean refuses anything else so that a typo
// cannot remove another program's namespaces or files.
var validPrefix = regexp.MustCompile(`^iv[0-9a-f]{5}$`)

// cleanTimeout bounds the ip commands of one Clean.
const cleanTimeout = 30 * time.Second

// Clean kills the processes of the cluster with the given prefix (its jobs, its brokers and
// everything in its VMs) and removes its network namespaces, links, /dev/shm files and
// directories and temporary directory. It is what Teardown does after stopping the brokers, for
// use when the cluster's process is gone. Nothing present is not an error.
func Clean(prefix string) error {
	if !validPrefix.MatchString(prefix) {
		return fmt.Errorf("clean %q: not a cluster prefix (iv and five hex digits)", prefix)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanTimeout)
	defer cancel()
	var errs []error
	if _, err := killMarked(prefix+"/", true); err != nil {
		errs = append(errs, err)
	}
	// Links go first: deleting a veth end deletes its peer at once, while the veths inside a
	// deleted namespace disappear asynchronously.
	links, err := linksWithPrefix(ctx, prefix)
	errs = append(errs, err)
	for _, l := range links {
		_, err := ip(ctx, "link", "delete", l)
		errs = append(errs, err)
	}
	namespaces, err := netnsWithPrefix(ctx, prefix)
	errs = append(errs, err)
	for _, ns := range namespaces {
		if err := killNetns(ctx, ns); err != nil {
			errs = append(errs, err)
			continue
		}
		_, err := ip(ctx, "netns", "delete", ns)
		errs = append(errs, err)
	}
	files, err := filesWithPrefix(prefix)
	errs = append(errs, err)
	for _, f := range files {
		errs = append(errs, os.RemoveAll(f))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean cluster %s: %w", prefix, err)
	}
	return nil
}

// Leftovers lists what of the cluster with the given prefix still exists: network namespaces,
// links, /dev/shm files and directories (regions, brokers' region directories), temporary
// directories (with the brokers' state, sockets and logs) and marked processes (jobs and
// brokers). After Teardown or Clean it is empty.
func Leftovers(prefix string) ([]string, error) {
	if !validPrefix.MatchString(prefix) {
		return nil, fmt.Errorf("leftovers of %q: not a cluster prefix (iv and five hex digits)", prefix)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanTimeout)
	defer cancel()
	var left []string
	namespaces, err := netnsWithPrefix(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("leftovers of %s: %w", prefix, err)
	}
	for _, ns := range namespaces {
		left = append(left, "netns "+ns)
	}
	links, err := linksWithPrefix(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("leftovers of %s: %w", prefix, err)
	}
	for _, l := range links {
		left = append(left, "link "+l)
	}
	files, err := filesWithPrefix(prefix)
	if err != nil {
		return nil, fmt.Errorf("leftovers of %s: %w", prefix, err)
	}
	for _, f := range files {
		left = append(left, "file "+f)
	}
	pids, err := markedPIDs(prefix+"/", true)
	if err != nil {
		return nil, fmt.Errorf("leftovers of %s: %w", prefix, err)
	}
	for _, pid := range pids {
		comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
		left = append(left, fmt.Sprintf("process %d (%s)", pid, strings.TrimSpace(string(comm))))
	}
	return left, nil
}

// netnsWithPrefix lists the named network namespaces of the cluster.
func netnsWithPrefix(ctx context.Context, prefix string) ([]string, error) {
	out, err := ip(ctx, "netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// linksWithPrefix lists the cluster's links in the root namespace.
func linksWithPrefix(ctx context.Context, prefix string) ([]string, error) {
	out, err := ip(ctx, "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		// "7: iv1a2b3-h0v0@if2: <BROADCAST,..."
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, prefix+"-") {
			names = append(names, name)
		}
	}
	return names, nil
}

// filesWithPrefix lists the cluster's /dev/shm files and temporary directories.
func filesWithPrefix(prefix string) ([]string, error) {
	var files []string
	for _, dir := range []string{"/dev/shm", os.TempDir()} {
		m, err := filepath.Glob(filepath.Join(dir, prefix+"-*"))
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", dir, err)
		}
		files = append(files, m...)
	}
	return files, nil
}

// SignalContext is the context of a command that creates clusters: cancelled by SIGINT, SIGTERM
// or SIGHUP, so the command goes on to tear its clusters down. SIGPIPE is ignored: without that a
// write to a closed standard output (a pipe into head, a closed terminal) would end the process
// before Teardown, leaving its brokers and namespaces behind; now such writes just fail.
func SignalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	signal.Ignore(syscall.SIGPIPE)
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
}
