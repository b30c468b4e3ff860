package libvirt_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	lv "libvirt.org/go/libvirt"

	"ivshim.dev/ivshim/broker"
	"ivshim.dev/ivshim/broker/brokertest"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/libvirt"
	"ivshim.dev/ivshim/ivshmem"
)

// fakeDevices stands in for hot-plug, which the test driver lacks. A domain's devices start as
// its live XML has them; they are keyed by UUID and domain id, so a domain that is destroyed and
// started again has lost its hot-plugged devices, as with QEMU.
type fakeDevices struct {
	t       *testing.T
	mu      sync.Mutex
	plugged map[string]map[string]string    // boot key -> device name -> device XML
	names   map[string]string               // boot key -> domain name
	pci     map[string][]hypervisor.PCIAddr // boot key -> passed-through host devices
}

func newFakeDevices(t *testing.T) *fakeDevices {
	return &fakeDevices{t: t, plugged: map[string]map[string]string{}, names: map[string]string{}, pci: map[string][]hypervisor.PCIAddr{}}
}

// hostdev parses a <hostdev> element the broker hands libvirt: a managed PCI passthrough.
func hostdev(x string) (hypervisor.PCIAddr, error) {
	var d struct {
		XMLName xml.Name `xml:"hostdev"`
		Mode    string   `xml:"mode,attr"`
		Type    string   `xml:"type,attr"`
		Managed string   `xml:"managed,attr"`
	}
	if err := xml.Unmarshal([]byte(x), &d); err != nil || d.Mode != "subsystem" || d.Type != "pci" || d.Managed != "yes" {
		return hypervisor.PCIAddr{}, fmt.Errorf("hostdev XML %q: want a managed pci subsystem device (%v)", x, err)
	}
	a, err := libvirt.ParseHostdevs("<domain><devices>" + x + "</devices></domain>")
	if err != nil || len(a) != 1 {
		return hypervisor.PCIAddr{}, fmt.Errorf("hostdev XML %q: no address (%v)", x, err)
	}
	return a[0], nil
}

// hostdevOp attaches (or detaches) the hostdev element x, reporting whether x was one.
func (f *fakeDevices) hostdevOp(dom *lv.Domain, x string, attach bool) (bool, error) {
	if !strings.HasPrefix(x, "<hostdev") {
		return false, nil
	}
	a, err := hostdev(x)
	if err != nil {
		f.t.Error(err)
		return true, err
	}
	key, _, err := bootKey(dom)
	if err != nil {
		return true, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.Index(f.pci[key], a)
	switch {
	case attach && i >= 0:
		return true, fmt.Errorf("hostdev %s already passed through", a)
	case attach:
		f.pci[key] = append(f.pci[key], a)
	case i < 0:
		return true, fmt.Errorf("hostdev %s not passed through", a)
	default:
		f.pci[key] = slices.Delete(f.pci[key], i, i+1)
	}
	return true, nil
}

func bootKey(dom *lv.Domain) (string, string, error) {
	u, err := dom.GetUUIDString()
	if err != nil {
		return "", "", err
	}
	id, err := dom.GetID()
	if err != nil {
		return "", "", err
	}
	name, err := dom.GetName()
	return fmt.Sprintf("%s/%d", u, id), name, err
}

// devices returns the boot's device map, seeded from its live XML on first sight.
func (f *fakeDevices) devices(dom *lv.Domain) (map[string]string, error) {
	key, name, err := bootKey(dom)
	if err != nil {
		return nil, err
	}
	if d, ok := f.plugged[key]; ok {
		return d, nil
	}
	x, err := dom.GetXMLDesc(0)
	if err != nil {
		return nil, err
	}
	shmems, err := libvirt.ParseShmems(x)
	if err != nil {
		return nil, err
	}
	d := map[string]string{}
	for _, s := range shmems {
		d[s.Name] = s.XML
	}
	f.plugged[key], f.names[key] = d, name
	return d, nil
}

// List gives the devices this fake plugged and passed through (the test driver's XML does not
// change with them).
func (f *fakeDevices) List(dom *lv.Domain, _ string) (libvirt.Listed, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.devices(dom)
	if err != nil {
		return libvirt.Listed{}, err
	}
	var l libvirt.Listed
	for _, n := range slices.Sorted(mapKeys(d)) {
		l.Shmems = append(l.Shmems, libvirt.Shmem{Name: n, XML: d[n]})
	}
	key, _, err := bootKey(dom)
	if err != nil {
		return libvirt.Listed{}, err
	}
	l.PCI = slices.Clone(f.pci[key])
	return l, nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// shmemDevice is what libvirt requires of a device element we hand it.
type shmemDevice struct {
	XMLName xml.Name `xml:"shmem"`
	Name    string   `xml:"name,attr"`
	Model   struct {
		Type string `xml:"type,attr"`
	} `xml:"model"`
	Size *struct {
		Unit  string `xml:"unit,attr"`
		Value uint64 `xml:",chardata"`
	} `xml:"size"`
}

func parseDevice(x string) (shmemDevice, error) {
	var d shmemDevice
	if err := xml.Unmarshal([]byte(x), &d); err != nil {
		return d, fmt.Errorf("device XML %q: %w", x, err)
	}
	if d.Model.Type != "ivshmem-plain" || d.Size == nil || d.Size.Unit != "M" {
		return d, fmt.Errorf("device XML %q: want an ivshmem-plain model and a size in M", x)
	}
	return d, nil
}

func (f *fakeDevices) Attach(dom *lv.Domain, x string) error {
	if ok, err := f.hostdevOp(dom, x, true); ok {
		return err
	}
	d, err := parseDevice(x)
	if err != nil {
		f.t.Error(err)
		return err
	}
	if d.Size.Value != ivshmem.MinRegionSize>>20 {
		f.t.Errorf("attach %s: size %d M, want the region's", d.Name, d.Size.Value)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	devs, err := f.devices(dom)
	if err != nil {
		return err
	}
	if _, dup := devs[d.Name]; dup {
		return fmt.Errorf("shmem %s already plugged", d.Name)
	}
	devs[d.Name] = x
	return nil
}

func (f *fakeDevices) Detach(dom *lv.Domain, x string) error {
	if ok, err := f.hostdevOp(dom, x, false); ok {
		return err
	}
	d, err := parseDevice(x)
	if err != nil {
		f.t.Error(err)
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	devs, err := f.devices(dom)
	if err != nil {
		return err
	}
	if _, ok := devs[d.Name]; !ok {
		return fmt.Errorf("shmem %s not plugged", d.Name)
	}
	delete(devs, d.Name)
	return nil
}

// pluggedInto returns the ivshim devices of the running boot of the named domain.
func (f *fakeDevices) pluggedInto(conn *lv.Connect, name string) []string {
	dom, err := conn.LookupDomainByName(name)
	if err != nil {
		f.t.Fatal(err)
	}
	defer dom.Free()
	l, err := f.List(dom, "")
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, s := range l.Shmems {
		out = append(out, s.Name)
	}
	return out
}

type fixture struct {
	t     *testing.T
	sysfs string // the host's sysfs as the broker reads it for SR-IOV VFs
	dev   *fakeDevices
	hv    *libvirt.Hypervisor
	b     *broker.Broker
	dir   string
	logs  *observer.ObservedLogs
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	node, err := filepath.Abs("testdata/node.xml")
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))
	f := &fixture{t: t, dev: newFakeDevices(t), dir: t.TempDir(), logs: logs, sysfs: t.TempDir()}
	f.hv, err = libvirt.Open("test://"+node, f.dev, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.hv.Close(); err != nil {
			t.Error(err)
		}
	})
	host, err := ivshmem.NewHostID()
	if err != nil {
		t.Fatal(err)
	}
	f.b, err = broker.New(broker.Config{RegionDir: f.dir, RegionSize: ivshmem.MinRegionSize, HostID: host, Mode: 0o660, Resync: time.Hour, Sysfs: f.sysfs,
		VFPFs: []hypervisor.PCIAddr{{Bus: 0x3b}}}, f.hv, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.b.Close(); err != nil {
			t.Error(err)
		}
	})
	return f
}

func (f *fixture) plugged(name string) []string { return f.dev.pluggedInto(f.hv.Conn(), name) }

func (f *fixture) wantPlugged(name string, want ...string) {
	f.t.Helper()
	if got := f.plugged(name); !slices.Equal(got, want) {
		f.t.Errorf("domain %s has %v plugged, want %v", name, got, want)
	}
}

// eventually polls cond until it holds or the deadline passes.
func (f *fixture) eventually(ctx context.Context, what string, cond func() bool) {
	f.t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			f.t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *fixture) region(job string) string { return filepath.Join(f.dir, hypervisor.RegionName(job)) }

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func TestReconcileAgainstTestDriver(t *testing.T) {
	f := newFixture(t)
	err := f.b.Reconcile()
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	f.wantPlugged("a0", "ivshim-jobA")
	f.wantPlugged("a1", "ivshim-jobA")
	// b0 booted with jobA's region in its definition: it loses it and gets its own.
	f.wantPlugged("b0", "ivshim-jobB")
	f.wantPlugged("b1", "ivshim-jobB")
	f.wantPlugged("untagged")
	for _, evil := range []string{"evil-path", "evil-long", "evil-child", "evil-quote"} {
		f.wantPlugged(evil)
		if n := f.logs.FilterMessage("ivshim metadata of a VM rejected").FilterField(zap.String("vm", evil)).Len(); n != 1 {
			t.Errorf("%d log lines rejecting domain %s, want 1", n, evil)
		}
	}
	for _, job := range []string{"jobA", "jobB"} {
		info, err := os.Stat(f.region(job))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm()&0o007 != 0 {
			t.Errorf("region of %s is accessible to others: %v", job, info.Mode().Perm())
		}
	}
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 { // two regions and the lock
		t.Errorf("region directory has %d entries, want 3", len(entries))
	}
	s := f.b.Snapshot()
	if s.Status.VMs != 9 || s.Status.Jobs != 2 || s.Status.Regions != 2 {
		t.Errorf("status %+v: want 9 running VMs, 2 jobs, 2 regions", s.Status)
	}
	problems := map[string]string{}
	for _, vm := range s.VMs {
		if vm.Problem != "" {
			problems[vm.Name] = vm.Problem
		}
	}
	if len(problems) != 4 || !strings.Contains(problems["evil-path"], "bad job id") ||
		!strings.Contains(problems["evil-long"], "length 300") || !strings.Contains(problems["evil-child"], "inside <job>") {
		t.Errorf("problems = %v", problems)
	}
}

func TestLifecycleAndMetadataEvents(t *testing.T) {
	f := newFixture(t)
	ctx := brokertest.Start(t, f.b, 30*time.Second)
	conn := f.hv.Conn()
	dom := func(name string) *lv.Domain {
		d, err := conn.LookupDomainByName(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Free() })
		return d
	}
	has := func(name string, want ...string) func() bool {
		return func() bool { return slices.Equal(f.plugged(name), want) }
	}
	f.eventually(ctx, "the first pass plugged a0", has("a0", "ivshim-jobA"))

	// A VM of jobA boots.
	if err := dom("a2-off").Create(); err != nil {
		t.Fatal(err)
	}
	f.eventually(ctx, "a2-off got jobA's region after booting", has("a2-off", "ivshim-jobA"))

	// b1 is re-tagged to jobA.
	setJob := func(name, elem string) {
		if err := dom(name).SetMetadata(lv.DOMAIN_METADATA_ELEMENT, elem, "ivshim", libvirt.Namespace, lv.DOMAIN_AFFECT_LIVE); err != nil {
			t.Fatal(err)
		}
	}
	setJob("b1", `<job id="jobA"/>`)
	f.eventually(ctx, "b1 moved to jobA", has("b1", "ivshim-jobA"))

	// b0 gets a hostile tag: it loses its region, and jobB, with no VM left, loses its region.
	setJob("b0", `<job id="jobB/../../jobA"/>`)
	f.eventually(ctx, "b0 lost its region", has("b0"))
	f.eventually(ctx, "jobB's region removed", func() bool { return !exists(f.region("jobB")) })
	f.wantPlugged("b1", "ivshim-jobA")

	// Every VM of jobA stops: its region goes.
	for _, name := range []string{"a0", "a1", "a2-off", "b1"} {
		if err := dom(name).Destroy(); err != nil {
			t.Fatal(err)
		}
	}
	f.eventually(ctx, "jobA's region removed", func() bool { return !exists(f.region("jobA")) })

	// a0 boots again: a new region, plugged into the new boot.
	if err := dom("a0").Create(); err != nil {
		t.Fatal(err)
	}
	f.eventually(ctx, "a0 got a region after rebooting", has("a0", "ivshim-jobA"))
	if !exists(f.region("jobA")) {
		t.Error("no region for jobA after a0 rebooted")
	}
}

func TestHostIDFallsBackToMachineID(t *testing.T) {
	f := newFixture(t)
	want, err := hypervisor.MachineID()
	if err != nil {
		t.Skipf("this machine has no usable /etc/machine-id: %v", err)
	}
	got, err := f.hv.HostID()
	if err != nil || got != want {
		t.Errorf("HostID = %s, %v; want the machine id %s (the test driver reports no host UUID)", got, err, want)
	}
}

func TestParseJob(t *testing.T) {
	good := map[string]string{
		`<job id="jobA"/>`: "jobA",
		`<ivshim:job xmlns:ivshim="https://ivshim.dev/xmlns/1" id="j-1.x_y"/>`: "j-1.x_y",
		"<job id='a'>\n</job>": "a",
	}
	for in, want := range good {
		if got, err := libvirt.ParseJob(in); err != nil || got != want {
			t.Errorf("ParseJob(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := []string{
		``,
		`<job/>`,
		`<job id=""/>`,
		`<job id="../x"/>`,
		`<job id="a b"/>`,
		`<job id=".hidden"/>`,
		`<job id="-rf"/>`,
		`<job id="` + strings.Repeat("a", 64) + `"/>`,
		`<job id="a&#10;b"/>`,
		`<job id="a&lt;b"/>`,
		`<job id="&xxe;"/>`,
		`<!DOCTYPE job [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><job id="&xxe;"/>`,
		`<job id="a" id="b"/>`,
		`<job id="a" owner="root"/>`,
		`<job id="a"><job id="b"/></job>`,
		`<job id="a">text</job>`,
		`<job id="a"/><job id="b"/>`,
		`<other id="a"/>`,
		`<job id="a"><!-- c --></job>`,
		`<?xml version="1.0"?><job id="a"/>`,
		`<job id="a">`,
		`<job id="` + strings.Repeat("a", 2000) + `"/>`,
		"<job id=\"a\xffb\"/>",
	}
	for _, in := range bad {
		if got, err := libvirt.ParseJob(in); err == nil {
			t.Errorf("ParseJob(%q) = %q, accepted", in, got)
		}
	}
}

func TestShmemXMLRoundTrip(t *testing.T) {
	r := hypervisor.Region{Name: "ivshim-jobA", Path: "/dev/shm/ivshim-jobA", Size: 64 << 20}
	x := libvirt.ShmemXML(r)
	want := `<shmem name='ivshim-jobA'><model type='ivshmem-plain'/><size unit='M'>64</size></shmem>`
	if x != want {
		t.Errorf("ShmemXML = %s, want %s", x, want)
	}
	got, err := libvirt.ParseShmems("<domain><devices>" + x + "<shmem name='not-ours'/><shmem name='ivshim-../x'/></devices></domain>")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "ivshim-jobA" {
		t.Fatalf("ParseShmems = %+v, want ivshim-jobA only", got)
	}
	d, err := parseDevice(got[0].XML)
	if err != nil || d.Size.Value != 64 {
		t.Errorf("re-serialized device %q: %+v, %v", got[0].XML, d, err)
	}
}

func TestParseVCPUs(t *testing.T) {
	for x, want := range map[string]int{
		`<domain><vcpu placement='static'>8</vcpu></domain>`:             8,
		`<domain><vcpu placement='static' current='2'>8</vcpu></domain>`: 2,
		`<domain><vcpu> 4 </vcpu></domain>`:                              4,
		`<domain></domain>`:                                              0,
		`<domain><vcpu>0</vcpu></domain>`:                                0,
		`<domain><vcpu>-3</vcpu></domain>`:                               0,
		`<domain><vcpu>100000000000000000000</vcpu></domain>`:            0,
		`<domain><vcpu>4096</vcpu></domain>`:                             0,
		`<domain><vcpu current='x'>8</vcpu></domain>`:                    0,
		`not xml`: 0,
	} {
		if got := libvirt.ParseVCPUs(x); got != want {
			t.Errorf("ParseVCPUs(%s) = %d, want %d", x, got, want)
		}
	}
}

func TestParseNICs(t *testing.T) {
	x := `<domain><devices>
<interface type='network'><mac address='52:54:00:12:34:56'/><target dev='vnet3'/></interface>
<interface type='network'><mac address='52:54:00:12:34:57'/></interface>
<interface type='bridge'><mac address='01:00:5e:00:00:01'/><target dev='vnet4'/></interface>
<interface type='bridge'><mac address='nonsense'/><target dev='vnet5'/></interface>
<interface type='bridge'><mac address='52:54:00:12:34:58'/><target dev='../../etc'/></interface>
</devices></domain>`
	got, err := libvirt.ParseNICs(x)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].HostIface != "vnet3" || got[0].MAC.String() != "52:54:00:12:34:56" {
		t.Errorf("ParseNICs = %v, want vnet3 52:54:00:12:34:56 only", got)
	}
	if _, err := libvirt.ParseNICs("<domain"); err == nil {
		t.Error("ParseNICs accepted broken XML")
	}
}

func FuzzParseJob(f *testing.F) {
	f.Add(`<job id="jobA"/>`)
	f.Add(`<job id="a"><x/></job>`)
	f.Fuzz(func(t *testing.T, s string) {
		job, err := libvirt.ParseJob(s)
		if err == nil && ivshmem.CheckJobID(job) != nil {
			t.Fatalf("ParseJob(%q) accepted invalid job %q", s, job)
		}
	})
}
