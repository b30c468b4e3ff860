package broker

import (
	"fmt"
	"sort"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/metrics"
	"ivshim.dev/ivshim/broker/traffic"
)

// TrafficCounter counts what VMs send over the network (broker/traffic, with eBPF).
type TrafficCounter interface {
	// Watch starts counting frames entering the host interface iface and returns its index.
	Watch(iface string) (int, error)
	// Keep stops counting on every interface not in ifindexes and forgets its flows.
	Keep(ifindexes map[int]bool) error
	// Flows returns every flow counted so far.
	Flows() ([]traffic.Flow, error)
}

// CountTraffic makes the broker count, with c, what every running VM sends over the network,
// and export it per VM pair in its metrics. Call it before Run.
func (b *Broker) CountTraffic(c TrafficCounter) {
	b.traffic = c
	b.metrics.Traffic = b.trafficPairs
}

// followTraffic (reconcile goroutine) watches the interfaces of the running VMs and drops the
// others. An interface that cannot be watched is logged once per reason; it does not fail the
// pass, whose job is the regions.
func (b *Broker) followTraffic(vms []hypervisor.VM) {
	if b.traffic == nil {
		return
	}
	byIndex, byMAC, keep := map[int]string{}, map[string]string{}, map[int]bool{}
	for _, vm := range vms {
		for _, n := range vm.NICs {
			byMAC[n.MAC.String()] = vm.Name
			i, err := b.traffic.Watch(n.HostIface)
			if err != nil {
				if b.trafficProblems.Note(n.HostIface, err.Error()) {
					b.log.Warn("cannot count a VM's traffic", zap.String("vm", vm.Name), zap.Error(err))
				}
				continue
			}
			byIndex[i], keep[i] = vm.Name, true
		}
	}
	b.trafficProblems.EndPass()
	if err := b.traffic.Keep(keep); err != nil {
		b.log.Warn("traffic accounting", zap.Error(err))
	}
	b.mu.Lock()
	b.vmOfIfindex, b.vmOfMAC = byIndex, byMAC
	b.mu.Unlock()
}

// trafficPairs sums the counted flows per (sending VM, receiving VM); frames to a MAC no
// running VM on this host has (another host, a broadcast, the host itself) count as sent to
// metrics.ElseWhere.
func (b *Broker) trafficPairs() ([]metrics.Pair, error) {
	flows, err := b.traffic.Flows()
	if err != nil {
		return nil, fmt.Errorf("VM traffic: %w", err)
	}
	b.mu.Lock()
	byIndex, byMAC := b.vmOfIfindex, b.vmOfMAC
	b.mu.Unlock()
	sums := map[[2]string]*metrics.Pair{}
	for _, f := range flows {
		src, ok := byIndex[f.Ifindex]
		if !ok {
			continue // its VM stopped since the last pass
		}
		dst, ok := byMAC[f.DstMAC.String()]
		if !ok {
			dst = metrics.Elsewhere
		}
		p := sums[[2]string{src, dst}]
		if p == nil {
			p = &metrics.Pair{Src: src, Dst: dst}
			sums[[2]string{src, dst}] = p
		}
		p.Frames += f.Packets
		p.Bytes += f.Bytes
	}
	out := make([]metrics.Pair, 0, len(sums))
	for _, p := range sums {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Src != out[j].Src {
			return out[i].Src < out[j].Src
		}
		return out[i].Dst < out[j].Dst
	})
	return out, nil
}
