// Package hypervisor is the broker's view of the machine's hypervisor: which VMs run, which
// ivshim job each belongs to, and which ivshim regions are plugged into each. The broker core
// (package broker) works only through the Hypervisor interface, so the same reconcile logic
// manages libvirt domains (package broker/libvirt) and the emulated VMs of the test cluster
// (package broker/netns).
//
// A Hypervisor reports facts and carries out hot-plug; it decides nothing. It reports a running
// VM whose job tag is missing or invalid with an empty Job and the reason in Problem, so the
// broker can log it and make sure no region stays plugged into it.
//
// Lifetime: a Hypervisor is opened by its package's constructor and used by one broker until
// Close. Changes is closed when the hypervisor can no longer report changes (for libvirt: the
// connection to libvirtd is gone); the broker then stops, and its supervisor restarts it, which
// is safe because a broker rebuilds all of its state from the hypervisor and the region files.
package hypervisor
