package ivshmem

import (
	"testing"
)

func defaultParams(size uint64) Params {
	return Params{TotalSize: size, SlotCount: DefaultSlots, VMCount: DefaultVMs, ChunkSize: DefaultChunkSize, RingSize: DefaultRingSize}
}

// checkCapacity requires RingCapacity(m) to be the largest power of two up to the ring size
// whose m*m rings fit beside CollReserve collective areas.
func checkCapacity(t *testing.T, l Layout, m int) uint64 {
	t.Helper()
	c, err := l.RingCapacity(m)
	if err != nil {
		t.Fatalf("%d ranks in %d bytes: %v", m, l.TotalSize, err)
	}
	fits := func(c uint64) bool {
		need := uint64(m) * uint64(m) * l.chunksFor(RingHeaderSize+c)
		if m > 1 {
			need += CollReserve * l.chunksFor(CollAreaSize(m, CollSlotMax))
		}
		return need <= uint64(l.ChunkCount)
	}
	if !isPow2(c) || c < RingMinCapacity || c > uint64(l.RingSize) || !fits(c) {
		t.Fatalf("%d ranks in %d bytes: ring capacity %d does not fit or is not a power of two in [%d, %d]",
			m, l.TotalSize, c, RingMinCapacity, l.RingSize)
	}
	if c < uint64(l.RingSize) && fits(2*c) {
		t.Fatalf("%d ranks in %d bytes: ring capacity %d, but %d fits", m, l.TotalSize, c, 2*c)
	}
	return c
}

func TestRingCapacity(t *testing.T) {
	l, err := ComputeLayout(defaultParams(64 << 20))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []int{1, 2, 4, 8, 14, 16, 32, 64} {
		c := checkCapacity(t, l, m)
		t.Logf("64 MiB region, %d ranks: %d-byte rings", m, c)
		if m <= 8 && c != DefaultRingSize {
			t.Errorf("%d ranks get %d-byte rings in a 64 MiB region, want the full %d", m, c, DefaultRingSize)
		}
	}
	if _, err := l.RingCapacity(DefaultSlots + 1); err == nil {
		t.Errorf("a group larger than the slot table got rings")
	}
	if _, err := l.RingCapacity(0); err == nil {
		t.Errorf("an empty group got rings")
	}
	small, err := ComputeLayout(Params{TotalSize: MinRegionSize, SlotCount: 256, VMCount: 1, ChunkSize: DefaultChunkSize, RingSize: DefaultRingSize})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := small.RingCapacity(200); err == nil || c != 0 {
		t.Errorf("200 ranks in 1 MiB: capacity %d, error %v; want none and a reason", c, err)
	}
	// Too small for the collective reserve: the rings still get the largest size that fits.
	tiny, err := ComputeLayout(Params{TotalSize: MinRegionSize, SlotCount: 8, VMCount: 8, ChunkSize: DefaultChunkSize, RingSize: DefaultRingSize})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tiny.RingCapacity(2)
	if err != nil || c != 128<<10 || 4*tiny.chunksFor(RingHeaderSize+c) > uint64(tiny.ChunkCount) {
		t.Errorf("2 ranks in 1 MiB: %d-byte rings (%v), want 128 KiB ones without the collective reserve", c, err)
	}
}

// TestSizeFor pins the region sizes the broker asks for, and the README's bound: 128 ranks on a
// host fit a region of at most 256 MiB.
func TestSizeFor(t *testing.T) {
	for _, tc := range []struct {
		ranks    int
		limit    uint64
		wantFull bool
		maxSize  uint64
	}{
		{1, DefaultRegionCap, true, 64 << 20},
		{8, DefaultRegionCap, true, 64 << 20},
		{16, DefaultRegionCap, true, 128 << 20},
		{64, DefaultRegionCap, false, 256 << 20},
		{128, DefaultRegionCap, false, 256 << 20},
		{256, 1 << 30, false, 1 << 30},
		{16, 64 << 20, false, 64 << 20},
	} {
		p, capacity, err := SizeFor(tc.ranks, defaultParams(64<<20), tc.limit)
		full := capacity == DefaultRingSize
		if err != nil {
			t.Errorf("%d ranks, cap %d: %v", tc.ranks, tc.limit, err)
			continue
		}
		l, err := ComputeLayout(p)
		if err != nil {
			t.Fatalf("%d ranks: %+v: %v", tc.ranks, p, err)
		}
		c := checkCapacity(t, l, tc.ranks)
		t.Logf("%d ranks, cap %d MiB: %d MiB region, %d slots, %d-byte rings", tc.ranks, tc.limit>>20, p.TotalSize>>20, p.SlotCount, c)
		if full != tc.wantFull || p.TotalSize > tc.maxSize || int(p.SlotCount) < tc.ranks || !isPow2(p.TotalSize) {
			t.Errorf("%d ranks, cap %d: %+v full=%v; want full=%v, size <= %d, >= %d slots", tc.ranks, tc.limit, p, full, tc.wantFull, tc.maxSize, tc.ranks)
		}
		if capacity != c {
			t.Errorf("%d ranks: SizeFor says %d-byte rings, RingCapacity %d", tc.ranks, capacity, c)
		}
	}
	if _, _, err := SizeFor(256, defaultParams(64<<20), DefaultRegionCap); err == nil {
		t.Errorf("256 ranks fit the default 256 MiB cap: the README says they need a larger cap")
	}
	if _, _, err := SizeFor(MaxSlots+1, defaultParams(64<<20), 1<<40); err == nil {
		t.Errorf("more ranks than MaxSlots sized")
	}
}
