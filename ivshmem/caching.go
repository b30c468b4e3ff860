package ivshmem

import (
	"time"
	"unsafe"
)

// UncachedRatio is the ReadCost above which a mapping counts as uncached: a cached mapping
// reads at memory speed (a ratio near 1, a few on a busy machine), an uncached one with one
// bus transaction per load, tens to hundreds of times slower.
const UncachedRatio = 8

// readProbe is how much of the mapping ReadCost reads, per round.
const readProbe = 64 << 10

// readSink keeps the probe's loads from being optimised away.
var readSink uint64

// ReadCost says how many times longer reading the region's first 64 KiB takes than reading as
// much of this process's own memory, best of several rounds each. It tells whether the CPU
// caches the mapping: a guest reads its region through the ivshmem device's BAR2, whose memory
// type the guest's page attributes and the hypervisor decide (KVM honours the guest's PAT
// only when it is configured to; an uncached BAR makes every access a bus transaction).
// Reading changes nothing in the region.
func (r *Region) ReadCost() float64 {
	n := min(readProbe, len(r.mem)) / 8 * 8
	if n == 0 {
		return 1
	}
	region := unsafe.Slice((*uint64)(unsafe.Pointer(&r.mem[0])), n/8)
	private := make([]uint64, n/8)
	for i := range private { // fault the pages in, as the region's are after the first round
		private[i] = uint64(i)
	}
	return float64(bestRead(region)) / float64(max(bestRead(private), 1))
}

// bestRead is the shortest of several timed passes over words, the first pass not counted.
func bestRead(words []uint64) time.Duration {
	best := time.Duration(1<<63 - 1)
	for round := 0; round < 6; round++ {
		start := time.Now()
		var sum uint64
		for _, w := range words {
			sum += w
		}
		d := time.Since(start)
		readSink += sum
		if round > 0 && d < best {
			best = d
		}
	}
	return best
}
