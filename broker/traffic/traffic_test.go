package traffic_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"ivshim.dev/ivshim/broker/traffic"
)

// ip runs ip(8) and fails the test on error.
func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// vmPair makes two emulated VMs, each a network namespace whose eth0 is joined by a veth pair
// to a bridge, and returns the root-side interface names and the VMs' MACs and addresses.
func vmPair(t *testing.T) (hostIfs [2]string, macs [2]net.HardwareAddr, addrs [2]string, netns [2]string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and BPF")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip(8) not installed (Debian package iproute2)")
	}
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	br := "ivtb" + id
	ip(t, "link", "add", br, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	ip(t, "link", "set", br, "up")
	for i := range 2 {
		netns[i] = "ivtn" + id + string(rune('a'+i))
		hostIfs[i] = "ivtv" + id + string(rune('a'+i))
		macs[i] = net.HardwareAddr{0x02, 0x1e, b[0], b[1], b[2], byte(i + 1)}
		addrs[i] = "10.79." + string(rune('0'+b[0]%10)) + "." + string(rune('1'+i))
		ip(t, "netns", "add", netns[i])
		ns := netns[i]
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		ip(t, "link", "add", hostIfs[i], "type", "veth", "peer", "name", "eth0", "netns", netns[i])
		ip(t, "link", "set", hostIfs[i], "master", br, "up")
		ip(t, "-n", netns[i], "link", "set", "eth0", "address", macs[i].String(), "up")
		ip(t, "-n", netns[i], "addr", "add", addrs[i]+"/24", "dev", "eth0")
	}
	return
}

// sendUDP sends n datagrams of size bytes from inside network namespace netns to addr:9 (a
// port nobody listens on).
func sendUDP(t *testing.T, netns, addr string, n, size int) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	ns, err := os.Open("/var/run/netns/" + netns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("enter netns %s: %v", netns, err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(fmt.Sprintf("cannot return to the test's network namespace: %v", err))
		}
	}()
	// Unconnected, so that the receiver's port-unreachable answers do not fail later sends.
	conn, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to := &net.UDPAddr{IP: net.ParseIP(addr), Port: 9}
	buf := make([]byte, size)
	for range n {
		if _, err := conn.WriteTo(buf, to); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
}

// flowOf finds the flow from interface ifc to mac, zero if none.
func flowOf(t *testing.T, c *traffic.Counter, ifc string, mac net.HardwareAddr) traffic.Flow {
	t.Helper()
	i, err := net.InterfaceByName(ifc)
	if err != nil {
		t.Fatal(err)
	}
	flows, err := c.Flows()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Ifindex == i.Index && bytes.Equal(f.DstMAC, mac) {
			return f
		}
	}
	return traffic.Flow{}
}

// TestCountsVMToVMTraffic: frames one emulated VM sends another are counted under the sender's
// host-side interface and the receiver's MAC; an interface no longer kept is no longer counted.
func TestCountsVMToVMTraffic(t *testing.T) {
	hostIfs, macs, addrs, netns := vmPair(t)
	c, err := traffic.Open()
	if err != nil {
		t.Skipf("eBPF counting unavailable on this kernel: %v", err)
	}
	defer c.Close()
	for _, n := range hostIfs {
		i1, err := c.Watch(n)
		if err != nil {
			t.Fatal(err)
		}
		i2, err := c.Watch(n)
		if err != nil || i2 != i1 {
			t.Fatalf("second watch: %d, %v; first %d", i2, err, i1)
		}
		if ifc, _ := net.InterfaceByName(n); ifc.Index != i1 {
			t.Errorf("Watch(%s) = %d, want its index %d", n, i1, ifc.Index)
		}
	}
	if _, err := c.Watch("ivshim-no-such-if"); err == nil {
		t.Error("watching a missing interface succeeded")
	}
	// One datagram resolves b's address (b's ARP reply and port-unreachable answer go b -> a),
	// then 20 datagrams of 1000 bytes make 20 more frames of 1042 bytes (Ethernet, IPv4 and
	// UDP headers) a -> b.
	sendUDP(t, netns[0], addrs[1], 1, 1000)
	time.Sleep(100 * time.Millisecond)
	ab0 := flowOf(t, c, hostIfs[0], macs[1])
	sendUDP(t, netns[0], addrs[1], 20, 1000)
	ab, ba := flowOf(t, c, hostIfs[0], macs[1]), flowOf(t, c, hostIfs[1], macs[0])
	t.Logf("a->b %d frames %d bytes, b->a %d frames %d bytes", ab.Packets, ab.Bytes, ba.Packets, ba.Bytes)
	if frames, bytes := ab.Packets-ab0.Packets, ab.Bytes-ab0.Bytes; frames < 20 || bytes < 20*1042 {
		t.Errorf("a->b: %d frames, %d bytes for 20 datagrams; want at least 20 frames and 20*1042 bytes", frames, bytes)
	}
	if ba.Packets < 1 {
		t.Errorf("b->a: no frame counted (b's ARP reply)")
	}
	a, _ := net.InterfaceByName(hostIfs[0])
	if err := c.Keep(map[int]bool{a.Index: true}); err != nil {
		t.Fatal(err)
	}
	if gone := flowOf(t, c, hostIfs[1], macs[0]); gone.Packets != 0 {
		t.Errorf("b->a flow kept after Keep dropped b: %d frames", gone.Packets)
	}
	sendUDP(t, netns[1], addrs[0], 5, 100)
	if now := flowOf(t, c, hostIfs[1], macs[0]); now.Packets != 0 {
		t.Errorf("b->a counted after Keep dropped b: %d frames", now.Packets)
	}
	sendUDP(t, netns[0], addrs[1], 5, 100)
	if now := flowOf(t, c, hostIfs[0], macs[1]); now.Packets < ab.Packets+5 {
		t.Errorf("a->b: %d frames after 5 more, was %d", now.Packets, ab.Packets)
	}
}
