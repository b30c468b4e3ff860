package libvirtreal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"
)

// Bounds on the private libvirtd.
const (
	libvirtdStartTimeout = 90 * time.Second // until it answers, QEMU probed
	libvirtdStopTimeout  = 15 * time.Second // from SIGTERM to exit
)

// libvirtdMounts are the directories the private libvirtd gets from its state directory, by
// the name of the subdirectory that backs them. /run, not only /run/libvirt, so that the
// daemon finds no system D-Bus and needs no mount point created on the machine.
var libvirtdMounts = []struct{ sub, target string }{
	{"etc", "/etc/libvirt"},
	{"run", "/run"},
	{"lib", "/var/lib/libvirt"},
	{"cache", "/var/cache/libvirt"},
	{"log", "/var/log/libvirt"},
}

// kvmDevice is where libvirt looks for KVM.
const kvmDevice = "/dev/kvm"

// libvirtdConf is the private daemon's libvirtd.conf: its sockets are root's alone, so it needs
// no polkit.
const libvirtdConf = `unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "%s"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`

// qemuConf is the private daemon's qemu.conf. QEMU keeps Debian's user (libvirt-qemu) and the
// DAC driver; stdio goes to files instead of virtlogd, cgroups are left alone, and no MAC
// driver (AppArmor profiles) is used, so nothing outside the state directory changes. Owners
// are not remembered in extended attributes: the migration test's two daemons share the
// guest's files, and a remembered owner makes the destination refuse to relabel a file in use.
const qemuConf = `stdio_handler = "file"
cgroup_controllers = [ ]
security_driver = "none"
remember_owner = 0
`

// libvirtd is a private libvirtd process (see the package documentation).
type libvirtd struct {
	dir   string // state directory
	cmd   *exec.Cmd
	done  chan struct{} // closed when cmd has been reaped
	ready chan error    // receives the outcome of waitReady
}

// startLibvirtd runs bin (libvirtd) with its state in dir, registers its stop, and starts
// waiting for it in the background: call awaitReady before using it. It skips the test when
// the daemon cannot be started. extra are more bind mounts (source, target) of its namespace.
func startLibvirtd(ctx context.Context, t *testing.T, bin, dir, hostUUID string, extra ...[2]string) *libvirtd {
	t.Helper()
	d := &libvirtd{dir: dir, done: make(chan struct{}), ready: make(chan error, 1)}
	var mounts [][2]string // source, target
	for _, m := range libvirtdMounts {
		src := filepath.Join(dir, m.sub)
		// libvirt-qemu traverses these directories to reach the files of its domain.
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatalf("libvirtd state directory: %v", err)
		}
		mounts = append(mounts, [2]string{src, m.target})
	}
	if kvm, err := kvmNode(dir); err != nil {
		t.Fatal(err)
	} else if kvm != "" {
		mounts = append(mounts, [2]string{kvm, kvmDevice})
	}
	mounts = append(mounts, extra...)
	script := "set -e\n"
	args := []string{"libvirtd-private"}
	for _, m := range mounts {
		script += fmt.Sprintf("mount --bind \"${%d}\" \"${%d}\"\n", len(args), len(args)+1)
		args = append(args, m[0], m[1])
	}
	script += fmt.Sprintf("exec \"${%d}\" -f /etc/libvirt/libvirtd.conf\n", len(args))
	args = append(args, bin)
	for name, text := range map[string]string{"libvirtd.conf": fmt.Sprintf(libvirtdConf, hostUUID), "qemu.conf": qemuConf} {
		if err := os.WriteFile(filepath.Join(dir, "etc", name), []byte(text), 0o644); err != nil {
			t.Fatalf("libvirtd configuration: %v", err)
		}
	}
	out, err := os.Create(d.out())
	if err != nil {
		t.Fatalf("libvirtd output: %v", err)
	}
	defer out.Close()
	d.cmd = exec.Command("sh", append([]string{"-c", script}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = out, out
	// Go makes the new mount namespace's mounts private before running sh.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := d.cmd.Start(); err != nil {
		t.Skipf("cannot start libvirtd in a mount namespace of its own: %v", err)
	}
	go func() {
		d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if err := d.stop(); err != nil {
			t.Error(err)
		}
	})
	go func() { d.ready <- d.waitReady(ctx) }()
	return d
}

// awaitReady waits until the daemon answers, and skips the test if it does not.
func (d *libvirtd) awaitReady(t *testing.T) {
	t.Helper()
	if err := <-d.ready; err != nil {
		t.Skipf("libvirtd cannot run here: %v\n%s", err, tails(d.out(), d.log()))
	}
}

// kvmNode makes, in dir, a KVM device node as udev makes /dev/kvm on Debian (root:kvm, 0660),
// for the private daemon's /dev/kvm, and returns its path; "" when this machine has no
// /dev/kvm or no kvm group. Where /dev/kvm is root's alone, libvirt 9.0 sees that QEMU (run as
// libvirt-qemu) cannot use the KVM its capability probe found, discards its capability cache
// on every call that needs it and probes QEMU again, seconds each time. The guests still run
// under TCG (domain type 'qemu').
func kvmNode(dir string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(kvmDevice, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR {
		return "", nil
	}
	grp, err := user.LookupGroup("kvm")
	if err != nil {
		return "", nil
	}
	gid, err := strconv.Atoi(grp.Gid)
	if err != nil {
		return "", fmt.Errorf("kvm group id %q: %w", grp.Gid, err)
	}
	node := filepath.Join(dir, "kvm")
	if err := syscall.Mknod(node, syscall.S_IFCHR|0o660, int(st.Rdev)); err != nil {
		return "", fmt.Errorf("KVM device node for libvirtd: %w", err)
	}
	if err := os.Chown(node, 0, gid); err != nil {
		return "", fmt.Errorf("KVM device node for libvirtd: %w", err)
	}
	if err := os.Chmod(node, 0o660); err != nil { // mknod applied the umask
		return "", fmt.Errorf("KVM device node for libvirtd: %w", err)
	}
	return node, nil
}

// nsenter is the command prefix that runs a program in the daemon's mount namespace.
func (d *libvirtd) nsenter() []string {
	return []string{"nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", d.cmd.Process.Pid), "--"}
}

// URI is the private daemon's qemu:///system connection.
func (d *libvirtd) URI() string {
	return "qemu:///system?socket=" + filepath.Join(d.dir, "run", "libvirt", "libvirt-sock")
}

// waitReady waits until the daemon accepts a connection to its QEMU driver and has probed
// QEMU's capabilities, which it does once, on the first request that needs them (seconds
// under TCG).
func (d *libvirtd) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, libvirtdStartTimeout)
	defer cancel()
	for {
		conn, err := lv.NewConnect(d.URI())
		if err == nil {
			_, err = conn.GetCapabilities()
			conn.Close()
			if err != nil {
				return fmt.Errorf("libvirt capabilities: %w", err)
			}
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("libvirtd exited: %v", d.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("libvirtd not answering after %v: %w", libvirtdStartTimeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop ends the daemon, then any QEMU process of its domains that outlived it (libvirtd leaves
// running domains alone when it exits), which also ends its mount namespace.
func (d *libvirtd) stop() error {
	var errs []error
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(libvirtdStopTimeout):
		d.cmd.Process.Kill()
		<-d.done
		errs = append(errs, fmt.Errorf("libvirtd ignored SIGTERM for %v: killed", libvirtdStopTimeout))
	}
	pidFiles, _ := filepath.Glob(filepath.Join(d.dir, "run", "libvirt", "qemu", "*.pid"))
	for _, f := range pidFiles {
		if err := killQEMU(f); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killQEMU kills the QEMU process that libvirt recorded in pidFile (run/libvirt/qemu/NAME.pid)
// if it still runs that domain.
func killQEMU(pidFile string) error {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil // the domain stopped and libvirt removed the file
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("QEMU pid file %s: %w", pidFile, err)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	name := strings.TrimSuffix(filepath.Base(pidFile), ".pid")
	if err != nil || !bytes.Contains(cmdline, []byte("guest="+name+",")) {
		return nil // exited; the pid may be another process's by now
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill QEMU of domain %s left by libvirtd: %w", name, err)
	}
	return fmt.Errorf("QEMU of domain %s outlived libvirtd: killed", name)
}

// out is the file that receives the daemon's output.
func (d *libvirtd) out() string { return filepath.Join(d.dir, "libvirtd.out") }

// log is the daemon's log file.
func (d *libvirtd) log() string { return filepath.Join(d.dir, "log", "libvirtd.log") }

// tails returns the last 4 KiB of each file that exists, for skip and failure messages.
func tails(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		text, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			text = []byte(err.Error())
		}
		if len(text) > 4096 {
			text = text[len(text)-4096:]
		}
		fmt.Fprintf(&b, "--- %s:\n%s\n", p, text)
	}
	return b.String()
}
