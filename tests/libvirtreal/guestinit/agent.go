package main

// Agent mode: a guest that runs MPI ranks. Enabled by ivshim.ip=ADDRESS/PREFIX (and
// ivshim.hostname=NAME) on the kernel command line; the initramfs then also holds the MPI libraries, the shim, busybox as /bin/sh,
// the kernel modules listed in /etc/ivshim/modules (in load order) and /etc/passwd and
// /etc/group with the ordinary user the ranks run as. guestinit then
//   - mounts devtmpfs on /dev and tmpfs on /dev/shm and /run;
//   - loads the modules (virtio-net), gives eth0 the address and brings lo and eth0 up;
//   - makes every ivshmem device's BAR2 (resource2) the ivshim group's, mode 0660, as the
//     project's udev rule does (broker/dist/99-ivshim-guest.rules), so ranks need no root;
//   - installs busybox's applets in /bin;
//   - serves commands (a child process; init reaps orphans): the launcher agent of mpirun and
//     mpiexec (an ssh stand-in, tests/libvirtreal/guestexec) connects and gets the command's
//     output and exit status back (tests/libvirtreal/agentwire); it also echoes UDP datagrams
//     (agentwire.EchoPort). The command runs as that user through /bin/sh -c, in its own
//     process group, which is killed when the connection drops.
// It prints GUEST-AGENT addr=ADDRESS once the agent listens.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"ivshim.dev/ivshim/tests/libvirtreal/agentwire"
)

const (
	agentUID  = 1000 // the user "mpi" of the initramfs's /etc/passwd
	agentGID  = 1000
	ivshimGID = 1001 // group "ivshim": may map ivshmem BARs
)

// cmdlineParam returns the value of NAME=VALUE on the kernel command line, "" when absent.
func cmdlineParam(name string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			return v
		}
	}
	return ""
}

// agentAddr returns ivshim.ip from the kernel command line, "" when absent.
func agentAddr() string { return cmdlineParam("ivshim.ip") }

// agentSetup prepares the guest for ranks; a failed step is reported and the others go on.
func agentSetup(cidr string, vmID string) {
	fail := func(format string, a ...any) { fmt.Printf("GUEST-FAILED "+format+"\n", a...) }
	if name := cmdlineParam("ivshim.hostname"); name != "" {
		if err := unix.Sethostname([]byte(name)); err != nil {
			fail("hostname: %v", err)
		}
	}
	// /tmp stays on the initramfs (a tmpfs already), which may hold the programs under /tmp.
	for _, m := range []struct{ fs, dir string }{{"devtmpfs", "/dev"}, {"tmpfs", "/dev/shm"}, {"tmpfs", "/run"}} {
		os.MkdirAll(m.dir, 0o755)
		if err := syscall.Mount(m.fs, m.dir, m.fs, 0, ""); err != nil {
			fail("mount %s: %v", m.dir, err)
		}
	}
	for _, d := range []string{"/tmp", "/dev/shm"} {
		os.Chmod(d, 0o1777)
	}
	os.MkdirAll("/home/mpi", 0o755)
	os.Chown("/home/mpi", agentUID, agentGID)
	if mods, err := os.ReadFile("/etc/ivshim/modules"); err == nil {
		for _, path := range strings.Fields(string(mods)) {
			if err := loadModule(path); err != nil {
				fail("load module %s: %v", path, err)
			}
		}
	}
	if sh, err := os.Readlink("/bin/sh"); err == nil { // busybox: its applets as commands
		if out, err := exec.Command(sh, "--install", "-s", "/bin").CombinedOutput(); err != nil {
			fail("busybox --install: %v: %s", err, out)
		}
	}
	if err := netUp(cidr); err != nil {
		fail("network: %v", err)
		return
	}
	// The agent runs as a child: init (this process) then only reaps, the agent's commands
	// included once orphaned (orted daemonizes), while the agent waits for its own.
	agent := exec.Command("/init", "agent", vmID)
	agent.Stdout, agent.Stderr = os.Stdout, os.Stderr
	if err := agent.Start(); err != nil {
		fail("agent: %v", err)
		return
	}
	go func() {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, 0, nil)
			if err == unix.ECHILD {
				time.Sleep(time.Second)
			} else if pid == agent.Process.Pid {
				fail("agent exited: %v", ws)
			}
		}
	}()
}

// runAgent is the agent process: it serves commands until the guest stops.
func runAgent(vmID string) {
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", agentwire.Port))
	if err != nil {
		fmt.Printf("GUEST-FAILED agent: %v\n", err)
		os.Exit(1)
	}
	go echoUDP()
	fmt.Printf("GUEST-AGENT addr=%s\n", agentAddr())
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Printf("GUEST-FAILED agent: %v\n", err)
			os.Exit(1)
		}
		go serve(c, vmID)
	}
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
		return err
	}
	return nil
}

// netUp brings lo up and gives eth0 the address cidr, waiting for the driver to create it.
func netUp(cidr string) error {
	ip, ipnet, err := net.ParseCIDR(cidr)
	if err != nil || ip.To4() == nil {
		return fmt.Errorf("ivshim.ip=%q: want an IPv4 ADDRESS/PREFIX", cidr)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	up := func(name string) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
	}
	if err := up("lo"); err != nil {
		return err
	}
	for i := 0; ; i++ {
		if _, err := net.InterfaceByName("eth0"); err == nil {
			break
		}
		if i == 300 {
			return fmt.Errorf("no eth0 after 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	set := func(req uint, addr net.IP) error {
		ifr, err := unix.NewIfreq("eth0")
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(addr.To4()); err != nil {
			return err
		}
		return unix.IoctlIfreq(fd, req, ifr)
	}
	if err := set(unix.SIOCSIFADDR, ip); err != nil {
		return fmt.Errorf("eth0 address: %w", err)
	}
	if err := set(unix.SIOCSIFNETMASK, net.IP(ipnet.Mask)); err != nil {
		return fmt.Errorf("eth0 netmask: %w", err)
	}
	return up("eth0")
}

// shareBAR gives the ivshim group access to an ivshmem device's BAR2.
func shareBAR(resource2 string) {
	if err := os.Chown(resource2, 0, ivshimGID); err != nil {
		fmt.Printf("GUEST-FAILED share %s: %v\n", resource2, err)
		return
	}
	if err := os.Chmod(resource2, 0o660); err != nil {
		fmt.Printf("GUEST-FAILED share %s: %v\n", resource2, err)
	}
}

// echoUDP answers every datagram to agentwire.EchoPort with the same bytes: the service the
// test pings while the guest migrates, to see how long the guest does not answer.
func echoUDP() {
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: agentwire.EchoPort})
	if err != nil {
		fmt.Printf("GUEST-FAILED echo: %v\n", err)
		return
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			continue
		}
		c.WriteToUDP(buf[:n], from)
	}
}

// serve runs one command for the launcher agent.
func serve(c net.Conn, vmID string) {
	defer c.Close()
	var req agentwire.Request
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil || json.Unmarshal(line, &req) != nil || req.Cmd == "" {
		return
	}
	var mu sync.Mutex
	send := func(stream byte, data []byte) error {
		mu.Lock()
		defer mu.Unlock()
		return agentwire.WriteFrame(c, stream, data)
	}
	cmd := exec.Command("/bin/sh", "-c", req.Cmd)
	cmd.Dir = "/home/mpi"
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/mpi", "USER=mpi", "LOGNAME=mpi", "SHELL=/bin/sh",
		"LANG=C", "IVSHIM_VM_ID=" + vmID}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true,
		Credential: &syscall.Credential{Uid: agentUID, Gid: agentGID, Groups: []uint32{ivshimGID}}}
	cmd.Stdout = frameWriter{agentwire.Stdout, send}
	cmd.Stderr = frameWriter{agentwire.Stderr, send}
	if err := cmd.Start(); err != nil {
		send(agentwire.Stderr, []byte(fmt.Sprintf("guest agent: %v\n", err)))
		send(agentwire.Exit, agentwire.ExitStatus(127))
		return
	}
	// The client never writes after its request: a read returns when the connection drops.
	go func() {
		var b [1]byte
		c.Read(b[:])
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}()
	err = cmd.Wait()
	status := 0
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			status = 128 + int(ws.Signal())
		} else {
			status = ee.ExitCode()
		}
	} else if err != nil {
		status = 127
	}
	send(agentwire.Exit, agentwire.ExitStatus(status))
}

type frameWriter struct {
	stream byte
	send   func(byte, []byte) error
}

func (w frameWriter) Write(p []byte) (int, error) {
	if err := w.send(w.stream, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
