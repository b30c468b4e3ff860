// Package libvirtreal tests the broker against a real libvirtd and a real QEMU guest: a tiny
// guest defined with an ivshim job tag gets its job's region hot-plugged, and the guest sees
// PCI 1af4:1110 with the broker's region header behind BAR2. The test then untags the running
// guest (the region is unplugged and removed), tags it again (a new region is plugged) and
// destroys it (the region is removed).
//
// # What it runs
//
//   - A private libvirtd: its own mount namespace, with directories of the test bound over
//     /etc/libvirt, /run, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, so it
//     shares no configuration, socket, state or log with a libvirtd of the machine, cannot see
//     the system D-Bus (no firewalld or machined calls), runs QEMU without cgroups, logs
//     through files instead of virtlogd and has a host UUID of its own. QEMU still runs as
//     Debian's libvirt-qemu user with the DAC security driver, as in production. Its /dev/kvm
//     is a node with udev's ownership (root:kvm 0660), see kvmNode. Nothing of it outlives
//     the test: the guest is destroyed and undefined, the daemon stopped, any QEMU it left
//     killed, and the namespace ends with its last process.
//   - The ivshim-broker binary built from this module, with the default region owner, group
//     and mode, region_size 4M and a resync interval of an hour, so every step it takes is
//     driven by libvirt events.
//   - A guest under TCG (domain type 'qemu', 1 vCPU, 256 MiB, no disk, no network): a Debian
//     kernel from /boot, uncompressed to an ELF vmlinux when it is xz-compressed (QEMU boots
//     that through PVH, skipping seconds of decompression under TCG; the lz4 cloud kernel
//     boots as fast as it is), with an initramfs holding only guestinit, which reports ivshmem
//     devices on the serial console, a file the test reads. TCG is used on every machine: the
//     test needs hot-plug, not speed, and the /dev/kvm of some machines cannot boot stock
//     kernels.
//
// # Requirements
//
// Root, and the Debian packages libvirt-daemon-system (libvirtd, the libvirt-qemu user),
// qemu-system-x86 and a kernel, linux-image-amd64 or linux-image-cloud-amd64 (with any
// initramfs tool, e.g. tiny-initramfs), plus xz-utils, which Debian always has. The test
// skips, saying why, when any of them is missing, when the private libvirtd does not start,
// when QEMU cannot start a TCG guest, or when another ivshim-broker already manages /dev/shm.
package libvirtreal
