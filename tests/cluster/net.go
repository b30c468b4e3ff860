package cluster

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ip runs the ip tool with args and returns its standard output.
func ip(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// freeSubnet picks a random 10.77.x.0/24 that no address of the root namespace is in, so that
// concurrent clusters get different routes.
func freeSubnet(ctx context.Context) (netip.Prefix, error) {
	out, err := ip(ctx, "-4", "-o", "addr", "show")
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("pick subnet: %w", err)
	}
	used := map[byte]bool{}
	for _, f := range strings.Fields(out) {
		p, err := netip.ParsePrefix(f)
		if err != nil || !p.Addr().Is4() {
			continue
		}
		a := p.Addr().As4()
		if a[0] == 10 && a[1] == 77 {
			used[a[2]] = true
		}
	}
	start := rand.IntN(254)
	for i := 0; i < 254; i++ {
		x := byte(1 + (start+i)%254)
		if !used[x] {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, x, 0}), 24), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("pick subnet: every 10.77.x.0/24 is in use")
}

// createNetwork makes the bridge and, per VM, the network namespace and veth pair.
func (c *Cluster) createNetwork(ctx context.Context) error {
	bits := c.Subnet.Bits()
	steps := [][]string{
		{"link", "add", c.Bridge, "type", "bridge"},
		{"addr", "add", netip.PrefixFrom(c.BridgeAddr, bits).String(), "dev", c.Bridge},
		{"link", "set", c.Bridge, "up"},
	}
	for _, vm := range c.VMs() {
		steps = append(steps,
			[]string{"netns", "add", vm.Netns},
			[]string{"link", "add", vm.Veth, "type", "veth", "peer", "name", "eth0", "address", vm.MAC.String(), "netns", vm.Netns},
			[]string{"link", "set", vm.Veth, "master", c.Bridge, "up"},
			[]string{"-n", vm.Netns, "addr", "add", netip.PrefixFrom(vm.Addr, bits).String(), "dev", "eth0"},
			[]string{"-n", vm.Netns, "link", "set", "eth0", "up"},
			[]string{"-n", vm.Netns, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if _, err := ip(ctx, s...); err != nil {
			return fmt.Errorf("create network: %w", err)
		}
	}
	if err := c.staticNeighbours(ctx); err != nil {
		return fmt.Errorf("create network: %w", err)
	}
	fmt.Fprintf(c.log, "network: bridge %s %s, %d VMs\n", c.Bridge, c.BridgeAddr, len(c.VMs()))
	return nil
}

// staticNeighbours gives every VM a permanent neighbour entry for every other VM and the
// bridge. With dozens of VMs on two busy CPUs, ARP resolution at the libraries' connection
// set-up can miss its retries: UCX's connect then fails with "No route to host" (seen with 64
// MPICH ranks in 32 VMs). Real hosts resolve their neighbours long before a job starts. With
// the entries that error is gone, but MPICH 4.0.2/UCX 1.13 at 64 ranks on 2 CPUs with the shim
// preloaded still fails MPI_Init in some starts ("initial_address_exchange: Destination is
// unreachable", no connect error before it; none of 6 starts without the shim did): not
// understood yet.
func (c *Cluster) staticNeighbours(ctx context.Context) error {
	mac, err := os.ReadFile(filepath.Join("/sys/class/net", c.Bridge, "address"))
	if err != nil {
		return fmt.Errorf("bridge %s address: %w", c.Bridge, err)
	}
	vms := c.VMs()
	for _, vm := range vms {
		var batch strings.Builder
		fmt.Fprintf(&batch, "neigh replace %s lladdr %s dev eth0 nud permanent\n", c.BridgeAddr, strings.TrimSpace(string(mac)))
		for _, peer := range vms {
			if peer != vm {
				fmt.Fprintf(&batch, "neigh replace %s lladdr %s dev eth0 nud permanent\n", peer.Addr, peer.MAC)
			}
		}
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "ip", "-n", vm.Netns, "-batch", "-")
		cmd.Stdin, cmd.Stderr = strings.NewReader(batch.String()), &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("neighbours of VM %s: %w: %s", vm.Name, err, strings.TrimSpace(stderr.String()))
		}
	}
	return nil
}
