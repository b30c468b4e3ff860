package libvirt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"
	lv "libvirt.org/go/libvirt"

	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/ivshmem"
)

// Namespace is the XML namespace of ivshim's domain metadata: the job tag the operator sets.
const Namespace = "https://ivshim.dev/xmlns/1"

// VFNamespace is the XML namespace of the broker's VF record (hypervisor.VM.VFs) in a domain's
// metadata: <vfs><vf model="15b3:101c"/>...</vfs>. Brokers write it; it migrates with the
// domain's live definition.
const VFNamespace = "https://ivshim.dev/xmlns/vfs/1"

// DefaultURI is the connection used when none is configured.
const DefaultURI = "qemu:///system"

// maxMetadata bounds the bytes of an ivshim metadata element; a valid one is under 100.
const maxMetadata = 1024

// Shmem is an ivshim shmem device of a domain.
type Shmem struct {
	Name string
	XML  string // the device element, as DetachDeviceFlags needs it
}

// Devices plugs, unplugs and lists the ivshim shmem devices and the passed-through PCI devices
// of running domains.
type Devices interface {
	// List reads the ivshim devices and the passed-through PCI devices from the live definition
	// of dom, whose XML x the caller fetched (one fetch serves every reader of a pass).
	List(dom *lv.Domain, x string) (Listed, error)
	// Attach and Detach hot-plug the device element xml (a <shmem> or a <hostdev>), live only.
	Attach(dom *lv.Domain, xml string) error
	Detach(dom *lv.Domain, xml string) error
}

// Listed is what a live definition holds of the devices the broker manages.
type Listed struct {
	Shmems []Shmem              // ivshim devices (hypervisor.JobOfDevice accepts their name)
	PCI    []hypervisor.PCIAddr // host PCI devices passed through (<hostdev> of type pci)
}

// Live is Devices through libvirt itself.
type Live struct{}

// List parses x.
func (Live) List(_ *lv.Domain, x string) (Listed, error) {
	var l Listed
	var err error
	if l.Shmems, err = ParseShmems(x); err != nil {
		return l, err
	}
	l.PCI, err = ParseHostdevs(x)
	return l, err
}

// list fetches dom's live XML and lists its devices.
func (h *Hypervisor) list(dom *lv.Domain) (Listed, error) {
	x, err := dom.GetXMLDesc(0)
	if err != nil {
		return Listed{}, fmt.Errorf("domain XML: %w", err)
	}
	return h.dev.List(dom, x)
}

// Attach calls AttachDeviceFlags with the LIVE flag.
func (Live) Attach(dom *lv.Domain, xml string) error {
	return dom.AttachDeviceFlags(xml, lv.DOMAIN_DEVICE_MODIFY_LIVE)
}

// Detach calls DetachDeviceFlags with the LIVE flag.
func (Live) Detach(dom *lv.Domain, xml string) error {
	return dom.DetachDeviceFlags(xml, lv.DOMAIN_DEVICE_MODIFY_LIVE)
}

// ParseShmems returns the ivshim shmem devices of a domain XML document.
func ParseShmems(domainXML string) ([]Shmem, error) {
	var d struct {
		Shmems []struct {
			Name  string `xml:"name,attr"`
			Inner string `xml:",innerxml"`
		} `xml:"devices>shmem"`
	}
	if err := xml.Unmarshal([]byte(domainXML), &d); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	var out []Shmem
	for _, s := range d.Shmems {
		if _, ok := hypervisor.JobOfDevice(s.Name); ok {
			// The name passed JobOfDevice, so it needs no escaping.
			out = append(out, Shmem{Name: s.Name, XML: "<shmem name='" + s.Name + "'>" + s.Inner + "</shmem>"})
		}
	}
	return out, nil
}

// ParseVCPUs returns the virtual CPUs of a live domain XML document: the current count of
// <vcpu current="N">M</vcpu> (M when current is absent), 0 when missing or out of range
// (1..hypervisor.MaxVCPUs).
func ParseVCPUs(domainXML string) int {
	var d struct {
		VCPU struct {
			Current string `xml:"current,attr"`
			Max     string `xml:",chardata"`
		} `xml:"vcpu"`
	}
	if xml.Unmarshal([]byte(domainXML), &d) != nil {
		return 0
	}
	v := strings.TrimSpace(d.VCPU.Current)
	if v == "" {
		v = strings.TrimSpace(d.VCPU.Max)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > hypervisor.MaxVCPUs {
		return 0
	}
	return n
}

// ParseNICs returns the network interfaces of a live domain XML document whose host side is
// known (<target dev>) and whose MAC is a valid unicast address; others are left out.
func ParseNICs(domainXML string) ([]hypervisor.NIC, error) {
	var d struct {
		Interfaces []struct {
			MAC struct {
				Address string `xml:"address,attr"`
			} `xml:"mac"`
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
		} `xml:"devices>interface"`
	}
	if err := xml.Unmarshal([]byte(domainXML), &d); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	var out []hypervisor.NIC
	for _, ifc := range d.Interfaces {
		mac, err := net.ParseMAC(ifc.MAC.Address)
		if err != nil {
			continue
		}
		if n := (hypervisor.NIC{HostIface: ifc.Target.Dev, MAC: mac}); hypervisor.CheckNIC(n) == nil {
			out = append(out, n)
		}
	}
	return out, nil
}

// ParseHostdevs returns the host PCI devices of a domain XML document: the source addresses of
// its <hostdev mode="subsystem" type="pci"> elements. One whose address does not parse is left
// out.
func ParseHostdevs(domainXML string) ([]hypervisor.PCIAddr, error) {
	var d struct {
		Hostdevs []struct {
			Mode    string   `xml:"mode,attr"`
			Type    string   `xml:"type,attr"`
			Address pciAttrs `xml:"source>address"`
		} `xml:"devices>hostdev"`
	}
	if err := xml.Unmarshal([]byte(domainXML), &d); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	var out []hypervisor.PCIAddr
	for _, h := range d.Hostdevs {
		if h.Mode != "subsystem" || h.Type != "pci" {
			continue
		}
		if a, err := h.Address.addr(); err == nil {
			out = append(out, a)
		}
	}
	return out, nil
}

// pciAttrs is a libvirt <address> element of a PCI device: numbers in C syntax (libvirt writes
// 0x-prefixed hex).
type pciAttrs struct {
	Domain   string `xml:"domain,attr"`
	Bus      string `xml:"bus,attr"`
	Slot     string `xml:"slot,attr"`
	Function string `xml:"function,attr"`
}

func (p pciAttrs) addr() (hypervisor.PCIAddr, error) {
	var v [4]uint64
	for i, f := range []struct {
		s   string
		max uint64
	}{{p.Domain, 0xffff}, {p.Bus, 0xff}, {p.Slot, 0x1f}, {p.Function, 7}} {
		n, err := strconv.ParseUint(f.s, 0, 32)
		if err != nil || n > f.max {
			return hypervisor.PCIAddr{}, fmt.Errorf("PCI address %+v out of range", p)
		}
		v[i] = n
	}
	return hypervisor.PCIAddr{Domain: uint16(v[0]), Bus: uint8(v[1]), Slot: uint8(v[2]), Fn: uint8(v[3])}, nil
}

// HostdevXML is the device element that passes the host PCI device at a through; managed, so
// libvirt binds it to vfio-pci on attach and gives it back to its host driver on detach.
func HostdevXML(a hypervisor.PCIAddr) string {
	return fmt.Sprintf("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x%04x' bus='0x%02x' slot='0x%02x' function='0x%x'/></source></hostdev>",
		a.Domain, a.Bus, a.Slot, a.Fn)
}

// VFRecordXML is the metadata element that stores models as a VF record.
func VFRecordXML(models []hypervisor.DeviceModel) string {
	var b strings.Builder
	b.WriteString("<vfs>")
	for _, m := range models {
		fmt.Fprintf(&b, "<vf model='%s'/>", m)
	}
	b.WriteString("</vfs>")
	return b.String()
}

// ParseVFRecord reads the VF record from the metadata element libvirt returns for VFNamespace
// (`<vfs><vf model="VVVV:DDDD"/>...</vfs>`), rejecting everything else.
func ParseVFRecord(meta string) ([]hypervisor.DeviceModel, error) {
	if len(meta) > maxMetadata {
		return nil, fmt.Errorf("VF record is %d bytes, more than %d", len(meta), maxMetadata)
	}
	var r struct {
		XMLName xml.Name
		Attrs   []xml.Attr `xml:",any,attr"`
		VFs     []struct {
			Attrs []xml.Attr `xml:",any,attr"`
			Inner string     `xml:",innerxml"`
		} `xml:"vf"`
		Other []struct{ XMLName xml.Name } `xml:",any"`
		Text  string                       `xml:",chardata"`
	}
	dec := xml.NewDecoder(strings.NewReader(meta))
	dec.Strict = true
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("VF record: %w", err)
	}
	if r.XMLName.Local != "vfs" || len(r.Other) > 0 || strings.TrimSpace(r.Text) != "" || len(nonNS(r.Attrs)) > 0 {
		return nil, errors.New("VF record: want <vfs> holding only <vf model=\"VVVV:DDDD\"/> elements")
	}
	if len(r.VFs) > hypervisor.MaxVFs {
		return nil, fmt.Errorf("VF record: %d VFs, more than %d", len(r.VFs), hypervisor.MaxVFs)
	}
	var out []hypervisor.DeviceModel
	for _, v := range r.VFs {
		a := nonNS(v.Attrs)
		if len(a) != 1 || a[0].Name.Local != "model" || a[0].Name.Space != "" || strings.TrimSpace(v.Inner) != "" {
			return nil, errors.New("VF record: want <vf model=\"VVVV:DDDD\"/> elements")
		}
		m, err := hypervisor.ParseDeviceModel(a[0].Value)
		if err != nil {
			return nil, fmt.Errorf("VF record: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

// nonNS drops namespace declarations from attrs.
func nonNS(attrs []xml.Attr) []xml.Attr {
	var out []xml.Attr
	for _, a := range attrs {
		if a.Name.Space != "xmlns" && a.Name.Local != "xmlns" {
			out = append(out, a)
		}
	}
	return out
}

// ShmemXML is the device element that plugs region r.
func ShmemXML(r hypervisor.Region) string {
	return fmt.Sprintf("<shmem name='%s'><model type='ivshmem-plain'/><size unit='M'>%d</size></shmem>", r.Name, r.Size>>20)
}

// ParseJob extracts the job id from the ivshim metadata element libvirt returns (without its
// namespace prefix, e.g. `<job id="J"/>`), rejecting everything but exactly that shape.
func ParseJob(meta string) (string, error) {
	if len(meta) > maxMetadata {
		return "", fmt.Errorf("ivshim metadata is %d bytes, more than %d", len(meta), maxMetadata)
	}
	dec := xml.NewDecoder(strings.NewReader(meta))
	dec.Strict = true
	var job string
	depth, roots := 0, 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("ivshim metadata: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth > 0 {
				return "", fmt.Errorf("ivshim metadata: unexpected element <%s> inside <job>", t.Name.Local)
			}
			if roots++; roots > 1 || t.Name.Local != "job" {
				return "", fmt.Errorf("ivshim metadata: want one <job id=\"...\"/> element, got <%s>", t.Name.Local)
			}
			found := false
			for _, a := range t.Attr {
				if a.Name.Space == "xmlns" || a.Name.Local == "xmlns" {
					continue
				}
				if a.Name.Space != "" || a.Name.Local != "id" || found {
					return "", fmt.Errorf("ivshim metadata: unexpected attribute %q on <job>", a.Name.Local)
				}
				job, found = a.Value, true
			}
			if !found {
				return "", errors.New("ivshim metadata: <job> has no id attribute")
			}
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			if strings.TrimSpace(string(t)) != "" {
				return "", errors.New("ivshim metadata: unexpected text")
			}
		default:
			return "", fmt.Errorf("ivshim metadata: unexpected %T", tok)
		}
	}
	if roots == 0 {
		return "", errors.New("ivshim metadata: no <job> element")
	}
	if err := ivshmem.CheckJobID(job); err != nil {
		return "", fmt.Errorf("ivshim metadata: %w", err)
	}
	return job, nil
}

var startEvents sync.Once

// startEventLoop registers libvirt's default event implementation and runs it forever on a
// goroutine, once per process.
func startEventLoop() error {
	var err error
	startEvents.Do(func() {
		if err = lv.EventRegisterDefaultImpl(); err != nil {
			return
		}
		go func() {
			for {
				if lv.EventRunDefaultImpl() != nil {
					return
				}
			}
		}()
	})
	if err != nil {
		return fmt.Errorf("libvirt event loop: %w", err)
	}
	return nil
}

// Hypervisor is a libvirt connection seen as a hypervisor.Hypervisor.
type Hypervisor struct {
	conn      *lv.Connect
	uri       string
	dev       Devices
	log       *zap.Logger
	changes   *hypervisor.Notify
	callbacks []int

	mu    sync.Mutex
	peers map[string]*lv.Connect // destinations of migrations, by URI (migrate.go)
}

var _ hypervisor.Hypervisor = (*Hypervisor)(nil)

// Open connects to uri (DefaultURI if empty) and subscribes to domain events. dev is Live{}
// except in tests.
func Open(uri string, dev Devices, log *zap.Logger) (*Hypervisor, error) {
	if uri == "" {
		uri = DefaultURI
	}
	if err := startEventLoop(); err != nil {
		return nil, err
	}
	conn, err := lv.NewConnect(uri)
	if err != nil {
		return nil, fmt.Errorf("connect to libvirt %s: %w", uri, err)
	}
	h := &Hypervisor{conn: conn, uri: uri, dev: dev, log: log, changes: hypervisor.NewNotify()}
	if err := h.subscribe(); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func (h *Hypervisor) subscribe() error {
	// Callbacks run on the event loop goroutine: they only signal.
	id, err := h.conn.DomainEventLifecycleRegister(nil, func(_ *lv.Connect, _ *lv.Domain, _ *lv.DomainEventLifecycle) {
		h.changes.Signal()
	})
	if err != nil {
		return fmt.Errorf("libvirt %s: subscribe to lifecycle events: %w", h.uri, err)
	}
	h.callbacks = append(h.callbacks, id)
	id, err = h.conn.DomainEventMetadataChangeRegister(nil, func(_ *lv.Connect, _ *lv.Domain, e *lv.DomainEventMetadataChange) {
		if e.NSURI == Namespace || e.NSURI == VFNamespace {
			h.changes.Signal()
		}
	})
	if err != nil {
		return fmt.Errorf("libvirt %s: subscribe to metadata events: %w", h.uri, err)
	}
	h.callbacks = append(h.callbacks, id)
	// A live detach completes when the guest lets the device go, after Detach has returned;
	// the broker learns of it here rather than at the next resync.
	id, err = h.conn.DomainEventDeviceRemovedRegister(nil, func(_ *lv.Connect, _ *lv.Domain, _ *lv.DomainEventDeviceRemoved) {
		h.changes.Signal()
	})
	if err != nil {
		return fmt.Errorf("libvirt %s: subscribe to device removal events: %w", h.uri, err)
	}
	h.callbacks = append(h.callbacks, id)
	err = h.conn.RegisterCloseCallback(func(_ *lv.Connect, reason lv.ConnectCloseReason) {
		h.log.Error("libvirt connection closed", zap.String("uri", h.uri), zap.Int("reason", int(reason)))
		h.changes.Close()
	})
	if err != nil {
		return fmt.Errorf("libvirt %s: register close callback: %w", h.uri, err)
	}
	return nil
}

// Conn is the underlying connection (tests drive the test driver through it).
func (h *Hypervisor) Conn() *lv.Connect { return h.conn }

// Kind implements hypervisor.Hypervisor.
func (h *Hypervisor) Kind() string { return "libvirt" }

// Changes implements hypervisor.Hypervisor.
func (h *Hypervisor) Changes() <-chan struct{} { return h.changes.C() }

// HostID is the host UUID from libvirt's capabilities, or the machine id if libvirt reports
// none.
func (h *Hypervisor) HostID() (ivshmem.HostID, error) {
	caps, err := h.conn.GetCapabilities()
	if err != nil {
		return ivshmem.HostID{}, fmt.Errorf("libvirt capabilities: %w", err)
	}
	var c struct {
		UUID string `xml:"host>uuid"`
	}
	if err := xml.Unmarshal([]byte(caps), &c); err != nil {
		return ivshmem.HostID{}, fmt.Errorf("parse libvirt capabilities: %w", err)
	}
	if c.UUID == "" {
		return hypervisor.MachineID()
	}
	id, err := ivshmem.ParseHostID(c.UUID)
	if err != nil {
		return ivshmem.HostID{}, fmt.Errorf("libvirt host uuid: %w", err)
	}
	return id, nil
}

// Running lists the active domains.
func (h *Hypervisor) Running() ([]hypervisor.VM, error) {
	doms, err := h.conn.ListAllDomains(lv.CONNECT_LIST_DOMAINS_ACTIVE)
	if err != nil {
		return nil, fmt.Errorf("list libvirt domains: %w", err)
	}
	defer func() {
		for i := range doms {
			doms[i].Free()
		}
	}()
	vms := make([]hypervisor.VM, 0, len(doms))
	for i := range doms {
		vm, err := h.describe(&doms[i])
		if isGone(err) {
			continue // stopped since it was listed
		}
		if err != nil {
			return nil, err
		}
		vms = append(vms, vm)
	}
	return vms, nil
}

func isGone(err error) bool {
	var e lv.Error
	return errors.As(err, &e) && (e.Code == lv.ERR_NO_DOMAIN || e.Code == lv.ERR_OPERATION_INVALID)
}

func (h *Hypervisor) describe(dom *lv.Domain) (hypervisor.VM, error) {
	var vm hypervisor.VM
	name, err := dom.GetName()
	if err != nil {
		return vm, fmt.Errorf("domain name: %w", err)
	}
	u, err := dom.GetUUID()
	if err != nil {
		return vm, fmt.Errorf("domain %s: uuid: %w", name, err)
	}
	if len(u) != len(vm.UUID) {
		return vm, fmt.Errorf("domain %s: uuid of %d bytes", name, len(u))
	}
	vm.Name = name
	copy(vm.UUID[:], u)
	state, reason, err := dom.GetState()
	if err != nil {
		return vm, fmt.Errorf("domain %s: state: %w", name, err)
	}
	if state != lv.DOMAIN_RUNNING && state != lv.DOMAIN_BLOCKED {
		vm.NotRunning = fmt.Sprintf("libvirt state %d, reason %d (%d is paused, reason %d an incoming migration)",
			state, reason, lv.DOMAIN_PAUSED, lv.DOMAIN_PAUSED_MIGRATION)
	}
	meta, ok, err := liveMetadata(dom, Namespace)
	if err != nil {
		return vm, fmt.Errorf("domain %s: metadata: %w", name, err)
	}
	if ok {
		if vm.Job, err = ParseJob(meta); err != nil {
			vm.Problem = err.Error()
		}
	}
	if meta, ok, err = liveMetadata(dom, VFNamespace); err != nil {
		return vm, fmt.Errorf("domain %s: VF record: %w", name, err)
	}
	if ok {
		if vm.VFs, err = ParseVFRecord(meta); err != nil {
			vm.Problem = hypervisor.JoinProblems(vm.Problem, err.Error())
		}
	}
	x, err := dom.GetXMLDesc(0)
	if err != nil {
		return vm, fmt.Errorf("domain %s: XML: %w", name, err)
	}
	devs, err := h.dev.List(dom, x)
	if err != nil {
		return vm, fmt.Errorf("domain %s: %w", name, err)
	}
	for _, s := range devs.Shmems {
		vm.Plugged = append(vm.Plugged, s.Name)
	}
	vm.PCI = devs.PCI
	if vm.NICs, err = ParseNICs(x); err != nil {
		return vm, fmt.Errorf("domain %s: %w", name, err)
	}
	vm.VCPUs = ParseVCPUs(x)
	return vm, nil
}

// liveMetadata returns dom's metadata element in namespace ns from its live definition; ok is
// false when it has none.
func liveMetadata(dom *lv.Domain, ns string) (meta string, ok bool, err error) {
	meta, err = dom.GetMetadata(lv.DOMAIN_METADATA_ELEMENT, ns, lv.DOMAIN_AFFECT_LIVE)
	var lerr lv.Error
	if errors.As(err, &lerr) && lerr.Code == lv.ERR_NO_DOMAIN_METADATA {
		return "", false, nil
	}
	return meta, err == nil, err
}

func (h *Hypervisor) lookup(vm hypervisor.VM) (*lv.Domain, error) {
	dom, err := h.conn.LookupDomainByUUID(vm.UUID[:])
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w", vm.Name, err)
	}
	return dom, nil
}

// Attach hot-plugs r into vm.
func (h *Hypervisor) Attach(vm hypervisor.VM, r hypervisor.Region) error {
	if r.Size%(1<<20) != 0 {
		return fmt.Errorf("attach %s to domain %s: size %d is not whole MiB", r.Name, vm.Name, r.Size)
	}
	dom, err := h.lookup(vm)
	if err != nil {
		return err
	}
	defer dom.Free()
	if err := h.dev.Attach(dom, ShmemXML(r)); err != nil {
		return fmt.Errorf("attach %s to domain %s: %w", r.Name, vm.Name, err)
	}
	return nil
}

// Detach unplugs the device called name from vm, as the live definition has it.
func (h *Hypervisor) Detach(vm hypervisor.VM, name string) error {
	dom, err := h.lookup(vm)
	if err != nil {
		return err
	}
	defer dom.Free()
	devs, err := h.list(dom)
	if err != nil {
		return fmt.Errorf("detach %s from domain %s: %w", name, vm.Name, err)
	}
	for _, s := range devs.Shmems {
		if s.Name == name {
			if err := h.dev.Detach(dom, s.XML); err != nil {
				return fmt.Errorf("detach %s from domain %s: %w", name, vm.Name, err)
			}
		}
	}
	return nil
}

// Close unsubscribes and closes the connection.
func (h *Hypervisor) Close() error {
	var errs []error
	for _, id := range h.callbacks {
		errs = append(errs, h.conn.DomainEventDeregister(id))
	}
	errs = append(errs, h.conn.UnregisterCloseCallback())
	h.mu.Lock()
	for _, c := range h.peers {
		if _, err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	h.peers = nil
	h.mu.Unlock()
	if _, err := h.conn.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close libvirt %s: %w", h.uri, err)
	}
	return nil
}
