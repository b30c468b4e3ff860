// Package traffic counts the network traffic of VMs on a host with eBPF: a TCX ingress program
// on each VM's host-side interface (the tap of a libvirt guest, the root end of an emulated
// VM's veth) sees every frame the VM sends, and counts frames and bytes per (interface,
// destination MAC) in a per-CPU LRU hash map. The broker maps interfaces and MACs back to VMs,
// so an operator sees which VM pairs still talk over the network: with the shim, co-located
// ranks should not.
//
// The program is assembled here (no clang on the hosts): it reads the destination MAC with a
// bounds check against data_end, never writes the packet and always passes it on (TCX_NEXT).
package traffic

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// MaxFlows bounds the map: the least recently updated (interface, destination) pairs are
// evicted beyond it.
const MaxFlows = 16384

// Offsets in struct __sk_buff (uapi/linux/bpf.h).
const (
	skbLen     = 0
	skbIfindex = 40
	skbData    = 76
	skbDataEnd = 80
)

// tcxNext lets the frame continue to the next program or the stack.
const tcxNext = -1

// key is the map key: the interface the frame entered on and its destination MAC.
type key struct {
	Ifindex uint32
	DstMAC  [6]byte
	_       [2]byte
}

// value is the per-CPU map value.
type value struct {
	Packets uint64
	Bytes   uint64
}

// Flow is what one VM interface sent to one destination MAC since the counter started.
type Flow struct {
	Ifindex int
	DstMAC  net.HardwareAddr
	Packets uint64
	Bytes   uint64
}

// Counter owns the program, its map and the attachments.
type Counter struct {
	mu    sync.Mutex
	prog  *ebpf.Program
	flows *ebpf.Map
	links map[int]link.Link // by ifindex
}

// Open loads the program and its map. It fails on a kernel without BPF, TCX (Linux 6.6) or
// the privileges to load programs (CAP_BPF, CAP_NET_ADMIN).
func Open() (*Counter, error) {
	flows, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ivshim_flows",
		Type:       ebpf.LRUCPUHash,
		KeySize:    12,
		ValueSize:  16,
		MaxEntries: MaxFlows,
	})
	if err != nil {
		return nil, fmt.Errorf("traffic: create flow map: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "ivshim_count",
		Type:         ebpf.SchedCLS,
		AttachType:   ebpf.AttachTCXIngress,
		License:      "GPL",
		Instructions: program(flows.FD()),
	})
	if err != nil {
		flows.Close()
		return nil, fmt.Errorf("traffic: load counting program: %w", err)
	}
	return &Counter{prog: prog, flows: flows, links: map[int]link.Link{}}, nil
}

// program counts the frame in ctx (R1) under (ifindex, destination MAC).
func program(mapFD int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 6),
		asm.JGT.Reg(asm.R4, asm.R3, "out"), // shorter than a MAC: not counted
		// key at fp-16: ifindex, destination MAC, two zero bytes
		asm.LoadMem(asm.R5, asm.R6, skbIfindex, asm.Word),
		asm.StoreMem(asm.RFP, -16, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R2, 0, asm.Word),
		asm.StoreMem(asm.RFP, -12, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R2, 4, asm.Half),
		asm.StoreMem(asm.RFP, -8, asm.R5, asm.Half),
		asm.StoreImm(asm.RFP, -6, 0, asm.Half),
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "new"),
		// per-CPU value: plain adds
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.LoadMem(asm.R1, asm.R0, 8, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R2),
		asm.StoreMem(asm.R0, 8, asm.R1, asm.DWord),
		asm.Ja.Label("out"),
		// first frame of this flow on this CPU: value at fp-32
		asm.Mov.Imm(asm.R1, 1).WithSymbol("new"),
		asm.StoreMem(asm.RFP, -32, asm.R1, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.StoreMem(asm.RFP, -24, asm.R2, asm.DWord),
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -32),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("out"),
		asm.Return(),
	}
}

// Watch starts counting what the interface called name receives from its VM and returns the
// interface's index, under which its flows are counted. Watching an interface twice is a no-op.
func (c *Counter) Watch(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("traffic: watch %s: %w", name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.links[ifc.Index]; ok {
		return ifc.Index, nil
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: c.prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return 0, fmt.Errorf("traffic: attach to %s: %w", name, err)
	}
	c.links[ifc.Index] = l
	return ifc.Index, nil
}

// Keep detaches from every watched interface whose index is not in ifindexes (its VM is gone;
// an interface that vanished took its attachment with it) and forgets the flows of every
// interface not kept, so that a new interface reusing an index starts from zero.
func (c *Counter) Keep(ifindexes map[int]bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for i, l := range c.links {
		if !ifindexes[i] {
			errs = append(errs, l.Close())
			delete(c.links, i)
		}
	}
	var stale []key
	errs = append(errs, c.each(func(k key, _ []value) {
		if !ifindexes[int(k.Ifindex)] {
			stale = append(stale, k)
		}
	}))
	for _, k := range stale {
		if err := c.flows.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("traffic: forget interfaces: %w", err)
	}
	return nil
}

// each calls fn with every entry of the flow map: its key and its per-CPU values.
func (c *Counter) each(fn func(key, []value)) error {
	var (
		k    key
		vals []value
	)
	it := c.flows.Iterate()
	for it.Next(&k, &vals) {
		fn(k, vals)
	}
	return it.Err()
}

// Flows returns every counted flow, summed over CPUs, ordered by interface and MAC.
func (c *Counter) Flows() ([]Flow, error) {
	var out []Flow
	err := c.each(func(k key, vals []value) {
		f := Flow{Ifindex: int(k.Ifindex), DstMAC: net.HardwareAddr(append([]byte(nil), k.DstMAC[:]...))}
		for _, v := range vals {
			f.Packets += v.Packets
			f.Bytes += v.Bytes
		}
		out = append(out, f)
	})
	if err != nil {
		return nil, fmt.Errorf("traffic: read flows: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Ifindex != out[j].Ifindex {
			return out[i].Ifindex < out[j].Ifindex
		}
		return out[i].DstMAC.String() < out[j].DstMAC.String()
	})
	return out, nil
}

// Close detaches everything and unloads the program and map.
func (c *Counter) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for i, l := range c.links {
		errs = append(errs, l.Close())
		delete(c.links, i)
	}
	errs = append(errs, c.prog.Close(), c.flows.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("traffic: close: %w", err)
	}
	return nil
}
