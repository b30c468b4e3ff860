package hypervisor_test

import (
	"testing"

	"ivshim.dev/ivshim/broker/hypervisor"
)

func TestUUIDRoundTrip(t *testing.T) {
	const s = "6976736d-0000-4000-8000-00000000000a"
	u, err := hypervisor.ParseUUID(s)
	if err != nil || u.String() != s {
		t.Errorf("ParseUUID(%q) = %s, %v", s, u, err)
	}
	for _, bad := range []string{"", "6976736d00004000800000000000000a", "6976736d-0000-4000-8000-00000000000g", "6976736d+0000-4000-8000-00000000000a", "6976736d-0000-4000-8000-00000000000a0"} {
		if _, err := hypervisor.ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) accepted", bad)
		}
	}
}

func TestJobOfDevice(t *testing.T) {
	if job, ok := hypervisor.JobOfDevice(hypervisor.RegionName("jobA")); !ok || job != "jobA" {
		t.Errorf("JobOfDevice(RegionName(jobA)) = %q, %v", job, ok)
	}
	for _, name := range []string{"ivshim-", "ivshim-../x", "ivshim-.hidden", "other-jobA", "ivshim-a b"} {
		if job, ok := hypervisor.JobOfDevice(name); ok {
			t.Errorf("JobOfDevice(%q) = %q, accepted", name, job)
		}
	}
}

func TestNotifyCoalescesAndCloses(t *testing.T) {
	n := hypervisor.NewNotify()
	n.Signal()
	n.Signal()
	<-n.C()
	select {
	case <-n.C():
		t.Fatal("two signals were not coalesced")
	default:
	}
	n.Close()
	n.Close()
	n.Signal()
	if _, ok := <-n.C(); ok {
		t.Fatal("signal delivered after Close")
	}
}
