// Command guestinit is /init of the guest that tests/libvirtreal boots. It mounts /proc and
// /sys, then reports on the serial console every ivshmem device (PCI 1af4:1110) that appears or
// disappears, and what the region behind it holds, read through the device's BAR2 the way the
// shim reads it:
//
//	GUEST-READY uuid=<SMBIOS UUID>
//	IVSHMEM-SEEN <pci address> resource2=<bytes>
//	IVSHMEM-REGION <pci address> job=<id> host=<id> size=<bytes> vm-registered=<bool>
//	IVSHMEM-ERROR <pci address> <why the region cannot be used>
//	IVSHMEM-GONE <pci address>
//
// A REGION line means ivshmem.Open accepted the header seen through the BAR (magic, version,
// layout); vm-registered says whether the broker's VM table lists this VM. A GUEST-FAILED line
// reports a set-up step that failed. guestinit never exits: the kernel panics when init does.
// With ivshim.ip= on the kernel command line it also runs MPI ranks (agent.go).
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/ivshmem"
)

// pollInterval is how often sysfs is scanned for ivshmem devices.
const pollInterval = 100 * time.Millisecond

func main() {
	if len(os.Args) == 3 && os.Args[1] == "agent" {
		runAgent(os.Args[2])
		return
	}
	for _, m := range []struct{ fs, dir string }{{"proc", "/proc"}, {"sysfs", "/sys"}} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			fmt.Printf("GUEST-FAILED mkdir %s: %v\n", m.dir, err)
		}
		if err := syscall.Mount(m.fs, m.dir, m.fs, 0, ""); err != nil {
			fmt.Printf("GUEST-FAILED mount %s: %v\n", m.dir, err)
		}
	}
	uuid, err := ownUUID()
	if err != nil {
		fmt.Printf("GUEST-FAILED %v\n", err)
	}
	fmt.Printf("GUEST-READY uuid=%s\n", uuid)
	agent := agentAddr()
	if agent != "" {
		agentSetup(agent, uuid.String())
	}
	seen := map[string]bool{}
	for {
		devs, err := ivshmem.FindPCI("/sys")
		if err != nil {
			fmt.Printf("GUEST-FAILED %v\n", err)
		}
		now := map[string]bool{}
		for _, d := range devs {
			now[d.Addr] = true
			if !seen[d.Addr] {
				if agent != "" {
					shareBAR(d.Resource2)
				}
				report(d, uuid)
			}
		}
		for addr := range seen {
			if !now[addr] {
				fmt.Printf("IVSHMEM-GONE %s\n", addr)
			}
		}
		seen = now
		time.Sleep(pollInterval)
	}
}

// ownUUID is this VM's SMBIOS system UUID, which libvirt sets to the domain's UUID.
func ownUUID() (hypervisor.UUID, error) {
	b, err := os.ReadFile("/sys/class/dmi/id/product_uuid")
	if err != nil {
		return hypervisor.UUID{}, fmt.Errorf("read own uuid: %w", err)
	}
	return hypervisor.ParseUUID(strings.TrimSpace(string(b)))
}

// report prints a device that appeared and the region behind it.
func report(d ivshmem.PCIDevice, uuid hypervisor.UUID) {
	size := int64(-1)
	if st, err := os.Stat(d.Resource2); err == nil {
		size = st.Size()
	}
	fmt.Printf("IVSHMEM-SEEN %s resource2=%d\n", d.Addr, size)
	r, err := ivshmem.Open(d.Resource2)
	if err != nil {
		fmt.Printf("IVSHMEM-ERROR %s %v\n", d.Addr, err)
		return
	}
	defer r.Close()
	_, registered := r.FindVM(uuid)
	fmt.Printf("IVSHMEM-REGION %s job=%s host=%s size=%d vm-registered=%t\n", d.Addr,
		r.JobID(), r.HostID(), r.Layout().TotalSize, registered)
}
