// Package libvirt is the broker's hypervisor on a real host: libvirt domains (QEMU/KVM, by
// default at qemu:///system).
//
// # Job tag
//
// A domain belongs to an ivshim job when its <metadata> holds, in the namespace Namespace,
//
//	<ivshim:job xmlns:ivshim="https://ivshim.dev/xmlns/1" id="JOB"/>
//
// read from the live definition. JOB must pass ivshmem.CheckJobID. Anything else — another
// element, extra attributes, child content, more than maxMetadata bytes, a bad id — rejects the
// tag: the domain is reported with the reason and gets no region. Set it with
//
//	virsh metadata DOMAIN https://ivshim.dev/xmlns/1 --key ivshim --set '<job id="JOB"/>' --live --config
//
// # Hot-plug
//
// A region is plugged as
//
//	<shmem name='ivshim-JOB'><model type='ivshmem-plain'/><size unit='M'>SIZE</size></shmem>
//
// for which libvirt gives QEMU mem-path=/dev/shm/ivshim-JOB: the region directory must be
// /dev/shm. Devices are plugged and unplugged with the LIVE flag only, never CONFIG: a region
// lives exactly as long as VMs of its job run, so a persistent <shmem> would make the next boot
// of the domain open (or have QEMU create) a region file the broker has not made or has already
// removed. After a reboot the broker plugs the region again.
//
// Hot-plug goes through the Devices interface: libvirt's test driver (test:///path/node.xml),
// which the unit tests use for domains, metadata and lifecycle events, does not implement
// AttachDeviceFlags, so the tests substitute a fake for Live.
//
// # Migration
//
// Hypervisor implements hypervisor.Migrator (migrate.go): a destination is the libvirt URI of
// the other host's daemon; the VM moves by a managed live migration once its ivshim devices are
// gone from the live definition.
//
// # Events
//
// Open starts libvirt's default event loop once per process (EventRegisterDefaultImpl must
// precede every connection, so Open calls it before connecting) and subscribes to lifecycle,
// metadata-change and device-removed events of all domains: a live detach finishes when the
// guest releases the device, possibly after Detach has returned, and the event brings the
// broker back to remove the region then. When the connection closes (libvirtd restarted),
// Changes is closed and the broker exits for its supervisor to restart it.
package libvirt
