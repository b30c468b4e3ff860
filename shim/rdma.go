package shim

import (
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/Mellanox/rdmamap"
)

// RDMADevice is one RDMA (InfiniBand, RoCE, rxe) device and the network interfaces bound to
// it: in production the SR-IOV VF that the MPI library's own path (NET) uses.
type RDMADevice struct {
	Name    string
	Netdevs []string
}

// RDMAInventory lists the RDMA devices this process can see. The verbose start report uses it
// to say what NET means on this machine.
type RDMAInventory interface {
	RDMADevices() ([]RDMADevice, error)
}

// SystemRDMA reads the devices from /sys with rdmamap.
func SystemRDMA() RDMAInventory { return sysRDMA{} }

type sysRDMA struct{}

// RDMADevices lists rdmamap's devices; rdmamap maps netdev to device only, so the netdevs of
// each device come from asking about every interface.
func (sysRDMA) RDMADevices() ([]RDMADevice, error) {
	names := rdmamap.GetRdmaDeviceList()
	if len(names) == 0 {
		return nil, nil
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	netdevs := map[string][]string{}
	for _, ifc := range ifaces {
		if dev, err := rdmamap.GetRdmaDeviceForNetdevice(ifc.Name); err == nil && dev != "" {
			netdevs[dev] = append(netdevs[dev], ifc.Name)
		}
	}
	sort.Strings(names)
	out := make([]RDMADevice, len(names))
	for i, n := range names {
		out[i] = RDMADevice{Name: n, Netdevs: netdevs[n]}
	}
	return out, nil
}

// formatRDMA is the verbose report line for inv:
//
//	ivshim: rdma devices: none
//	ivshim: rdma devices: mlx5_0 (netdev ib0), rxe0 (netdev none)
func formatRDMA(inv RDMAInventory) string {
	devs, err := inv.RDMADevices()
	if err != nil {
		return fmt.Sprintf("ivshim: rdma devices: unknown (%v)\n", err)
	}
	if len(devs) == 0 {
		return "ivshim: rdma devices: none\n"
	}
	parts := make([]string, len(devs))
	for i, d := range devs {
		nd := "none"
		if len(d.Netdevs) > 0 {
			nd = strings.Join(d.Netdevs, ",")
		}
		parts[i] = fmt.Sprintf("%s (netdev %s)", d.Name, nd)
	}
	return "ivshim: rdma devices: " + strings.Join(parts, ", ") + "\n"
}
