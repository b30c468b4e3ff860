// Package netns is the hypervisor of the emulated cluster (tests/cluster): the same broker that
// manages libvirt domains on a real host manages emulated VMs, so the demo, the tests and the
// benchmarks get their regions from the real broker.
//
// # Registry contract
//
// An emulated host has a state directory DIR shared by the cluster harness and the host's
// broker (config: hypervisor = netns, netns_dir = DIR):
//
//	DIR/vms/NAME.json        one file per running VM, written by the harness (Registry.Register):
//	                         {"name": NAME, "uuid": "8-4-4-4-12 hex", "job": JOB, "netns": NS}
//	                         NAME is 1-63 bytes of [A-Za-z0-9._-] not starting with '.' or '-';
//	                         JOB is an ivshim job id (ivshmem.CheckJobID) or "" for a VM of no job;
//	                         NS is the VM's network namespace (informational).
//	DIR/devices/NAME/ivshmem the VM's ivshmem device, written by the broker: a symlink to the
//	                         region file it plugged in, absent when nothing is plugged.
//
// A record's presence means the VM is running: registering is booting, unregistering is
// powering off (which also removes the VM's devices, as for a real VM). Records are written
// atomically (temporary file, then rename), and names starting with '.' are ignored, so the
// broker never reads half a record. Records that do not parse or validate are logged and
// ignored; a valid record with a bad job is a running VM with no job, and the broker makes sure
// nothing is plugged into it.
//
// Inside the VM the shim is pointed at Registry.DevicePath(NAME) through IVSHIM_REGION, so a VM
// sees exactly what its broker plugged into it, and nothing while nothing is plugged.
//
// The broker learns of changes to DIR/vms through inotify. A Hypervisor is used by one broker;
// Registry values may be used by any number of processes.
package netns
