package libvirtreal

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// xzMagic starts an xz stream; Debian compresses its x86 kernels with xz.
var xzMagic = []byte("\xfd7zXZ\x00")

// guestKernel returns the kernel to boot: the last /boot/vmlinuz-* in name order, uncompressed
// into dir as an ELF vmlinux when it is xz-compressed, else the bzImage itself; and its version
// (the modules' directory under /lib/modules). It skips the test when there is no kernel.
func guestKernel(ctx context.Context, t *testing.T, dir string) (path, version string) {
	t.Helper()
	images, err := filepath.Glob("/boot/vmlinuz-*")
	if err != nil || len(images) == 0 {
		t.Skip("no guest kernel /boot/vmlinuz-* (Debian package linux-image-amd64)")
	}
	sort.Strings(images)
	bzImage := images[len(images)-1]
	version = strings.TrimPrefix(filepath.Base(bzImage), "vmlinuz-")
	b, err := os.ReadFile(bzImage)
	if err != nil {
		t.Fatalf("guest kernel: %v", err)
	}
	off := bytes.Index(b, xzMagic)
	if off < 0 {
		t.Logf("%s has no xz payload: booting it as it is", bzImage)
		return bzImage, version
	}
	vmlinux := filepath.Join(dir, "vmlinux")
	out, err := os.Create(vmlinux)
	if err != nil {
		t.Fatalf("guest kernel: %v", err)
	}
	defer out.Close()
	var stderr bytes.Buffer
	// The payload is followed by the bzImage's trailer, which a single-stream decode ignores.
	cmd := exec.CommandContext(ctx, "xz", "--decompress", "--stdout", "--single-stream")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(b[off:]), out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("uncompress %s: %v: %s", bzImage, err, stderr.Bytes())
	}
	head := make([]byte, 4)
	if _, err := out.ReadAt(head, 0); err != nil || string(head) != "\x7fELF" {
		t.Fatalf("uncompress %s: the payload is not an ELF kernel (%q, %v)", bzImage, head, err)
	}
	return vmlinux, version
}

// cpioFile is one entry of a newc cpio archive.
type cpioFile struct {
	name         string
	mode         uint32 // file type and permission bits, as in stat(2)
	major, minor uint32 // of a device node
	data         []byte
}

// Types of cpio entries (stat(2) file type bits).
const (
	cpioDir  = 0o040000
	cpioChar = 0o020000
	cpioReg  = 0o100000
	cpioLink = 0o120000 // data: the target
)

// writeInitramfs writes files as an uncompressed newc cpio archive, the format the kernel
// unpacks into its initial root file system.
func writeInitramfs(path string, files []cpioFile) error {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	entry := func(ino int, f cpioFile) {
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, f.mode, 0, 0, 1, 0, len(f.data), 0, 0, f.major, f.minor, len(f.name)+1, 0)
		b.WriteString(f.name)
		b.WriteByte(0)
		pad()
		b.Write(f.data)
		pad()
	}
	for i, f := range files {
		entry(i+1, f)
	}
	entry(0, cpioFile{name: "TRAILER!!!"})
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return nil
}

// guest is the tiny VM the test boots.
type guest struct {
	name, uuid, job     string
	kernel, initrd, tty string // files on the host; tty receives the serial console
	appendTTY           bool   // QEMU appends to tty (a migrated guest's next QEMU keeps its lines)
	// Guests that run MPI ranks (mpi_test.go); zero values: the tiny guest.
	memMiB, vcpus int    // 256 MiB and 1 vCPU when zero
	cmdline       string // appended to the kernel command line
	bridge, mac   string // a virtio NIC on this host bridge, when bridge is set
}

// domainXML is the guest's libvirt definition, tagged with its job.
func (g guest) domainXML() string {
	esc := func(s string) string {
		var b strings.Builder
		xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	mem, vcpus, nic := g.memMiB, g.vcpus, ""
	if mem == 0 {
		mem = 256
	}
	if vcpus == 0 {
		vcpus = 1
	}
	if g.bridge != "" {
		nic = fmt.Sprintf("\n    <interface type='bridge'><source bridge='%s'/><mac address='%s'/><model type='virtio'/></interface>",
			esc(g.bridge), esc(g.mac))
	}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <metadata><ivshim:job xmlns:ivshim="https://ivshim.dev/xmlns/1" id="%s"/></metadata>
  <memory unit='MiB'>%d</memory>
  <vcpu>%d</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet panic=-1%s</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path='%s'%s/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>%s
  </devices>
</domain>
`, esc(g.name), esc(g.uuid), esc(g.job), mem, vcpus, esc(g.kernel), esc(g.initrd), esc(prefixSpace(g.cmdline)), esc(g.tty),
		appendAttr(g.appendTTY), nic)
}

func prefixSpace(s string) string {
	if s == "" {
		return ""
	}
	return " " + s
}

func appendAttr(on bool) string {
	if on {
		return ` append='on'`
	}
	return ""
}

// liveShmem is a <shmem> device of a live domain definition.
type liveShmem struct {
	Name  string `xml:"name,attr"`
	Model struct {
		Type string `xml:"type,attr"`
	} `xml:"model"`
	Size struct {
		Unit  string `xml:"unit,attr"`
		Value uint64 `xml:",chardata"`
	} `xml:"size"`
	Address struct {
		Type string `xml:"type,attr"`
	} `xml:"address"`
}

// parseShmems returns the <shmem> devices of a domain definition.
func parseShmems(domainXML string) ([]liveShmem, error) {
	var d struct {
		Shmems []liveShmem `xml:"devices>shmem"`
	}
	if err := xml.Unmarshal([]byte(domainXML), &d); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	return d.Shmems, nil
}
