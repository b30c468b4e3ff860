package shim

import (
	"errors"
	"testing"

	"ivshim.dev/ivshim/ivshmem"
)

func TestReportFormat(t *testing.T) {
	h := ivshmem.HostID{0x1a, 0x2b, 0x3c, 0x4d}
	tb := PathTable{
		Rank: 0, Size: 4,
		Ranks: []RankInfo{
			{Region: true, Host: h, Group: 0, Slot: 1, VM: 0},
			{Region: true, Host: h, Group: 0, Slot: 0, VM: 1},
			{Group: -1, Slot: -1, VM: ivshmem.NoVM},
			{Region: true, Host: ivshmem.HostID{0xff}, Group: 1, Slot: -1, VM: ivshmem.NoVM},
		},
		Groups: []Group{
			{Host: h, Ranks: []int{0, 1}, Session: 0x5f, Generation: 3, Path: PathSHM},
			{Host: ivshmem.HostID{0xff}, Ranks: []int{3}, Generation: 1, Path: PathNet, Reason: "alone"},
		},
		Peers: []Peer{{Path: PathSHM}, {Path: PathSHM}, {}, {}},
	}
	want := `ivshim: init ranks=4 groups=2 shm_groups=1 shm_ranks=2
ivshim: group=0 host=1a2b3c4d-0000-0000-0000-000000000000 leader=0 ranks=0-1 generation=3 path=shm session=0x5f
ivshim: group=1 host=ff000000-0000-0000-0000-000000000000 leader=3 ranks=3 generation=1 path=net reason="alone"
ivshim: path rank=0 host=1a2b3c4d group=0 slot=1 path=shm vm=0
ivshim: path rank=1 host=1a2b3c4d group=0 slot=0 path=shm vm=1
ivshim: path rank=2 host=- group=- slot=- path=net vm=-
ivshim: path rank=3 host=ff000000 group=1 slot=- path=net vm=-
`
	if got := tb.Report(); got != want {
		t.Errorf("report:\n%s\nwant:\n%s", got, want)
	}
}

func TestRankRanges(t *testing.T) {
	for _, c := range []struct {
		in   []int
		want string
	}{
		{[]int{0}, "0"},
		{[]int{0, 1, 2, 3}, "0-3"},
		{[]int{0, 2, 3, 4, 8, 10, 11}, "0,2-4,8,10-11"},
	} {
		if got := rankRanges(c.in); got != c.want {
			t.Errorf("rankRanges(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

type failingRDMA struct{}

func (failingRDMA) RDMADevices() ([]RDMADevice, error) { return nil, errors.New("sysfs unreadable") }

func TestFormatRDMA(t *testing.T) {
	for _, c := range []struct {
		inv  RDMAInventory
		want string
	}{
		{fakeRDMA{}, "ivshim: rdma devices: none\n"},
		{fakeRDMA{{Name: "mlx5_0", Netdevs: []string{"ib0", "eth1"}}, {Name: "rxe0"}},
			"ivshim: rdma devices: mlx5_0 (netdev ib0,eth1), rxe0 (netdev none)\n"},
		{failingRDMA{}, "ivshim: rdma devices: unknown (sysfs unreadable)\n"},
	} {
		if got := formatRDMA(c.inv); got != c.want {
			t.Errorf("formatRDMA = %q, want %q", got, c.want)
		}
	}
}

// The real inventory on this machine: no RDMA device, no error (EMULATION.md). A machine with
// devices lists each with a name.
func TestSystemRDMA(t *testing.T) {
	devs, err := SystemRDMA().RDMADevices()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.Name == "" {
			t.Errorf("unnamed device %+v", d)
		}
	}
	t.Logf("%s", formatRDMA(SystemRDMA()))
}
