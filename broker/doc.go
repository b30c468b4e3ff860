// Package broker is the core of ivshim-broker, the host daemon that gives the VMs of each MPI
// job on this host one shared region.
//
// The broker reconciles desired state against actual state. Desired: every running VM that
// carries a valid ivshim job tag has the region of its job, a file named ivshim-JOB in the
// region directory, plugged in and an entry in that region's VM table; nothing else is plugged
// into any VM; a region exists exactly while a VM of its job runs on this host. Actual: what the
// hypervisor reports (running VMs, their tags, their plugged ivshim devices) and the files in
// the region directory. A pass (Reconcile) runs at start, on every hypervisor change event and
// periodically, and only ever converges: a failed step is logged and retried by the next pass.
//
// Isolation follows from the rule "a VM gets the region named after its own job tag, and any
// other ivshim device plugged into it is unplugged". Region files are created with a mode that
// never has bits for others.
//
// Restart safety: the broker keeps no state of its own. On start it takes an exclusive lock on
// the region directory (.ivshim-broker.lock, so two brokers never manage one directory), lists
// the files there and adopts every ivshim-JOB file it made: a region still used by a running VM
// of its job is kept as it is, mapping and contents untouched (it is never recreated, which
// would cut off the running job), and its VM table is corrected only where the hypervisor says
// it is wrong. A region with no running VM of its job is an orphan and is removed. Temporary
// files of a region creation that a killed broker left behind are removed.
//
// Files in the region directory:
//   - ivshim-JOB, regular, owned by the broker's user or the configured region owner: the
//     broker's. If it does not validate as a region of JOB on this host it is reported
//     unusable and not plugged anywhere; it is removed like any region once no VM of JOB runs.
//   - ivshim-JOB of another owner, or not a regular file: not the broker's (the region
//     directory, /dev/shm, is world-writable). It is reported, never opened, plugged or
//     removed, and JOB gets no region until an operator removes it.
//   - anything else: ignored.
//
// Traffic accounting (CountTraffic, optional): after each pass the broker points a
// TrafficCounter (broker/traffic, eBPF) at the host-side interfaces of the running VMs and
// exports what each VM sent over the network per receiving VM of this host. It only observes;
// an interface it cannot watch is logged and never fails a pass.
//
// Migration (Migrate, migrate.go): the coordinator moves one running VM to another host in
// phases. drain: the VM's entry in its job's region is flagged leaving, and the coordinator
// waits, up to a deadline, until no rank of that VM holds a slot in the region (a slot whose
// heartbeat stood still for two seconds counts as gone); the shim's ranks release their slots
// once their pairs with the VM's peers are on the library path. detach: the region is
// unplugged, then the VM's SR-IOV VFs, their models recorded in the VM's VF record first
// (vfs.go). migrate: the hypervisor (hypervisor.Migrator) moves the VM. attach: the
// destination's broker, reacting to its own hypervisor's events, plugs the job's region there
// and passes free VFs of the recorded models through; the coordinator waits for both up to the
// deadline (VFs still missing then are reported, not a failure). A failed phase rolls back: what VFs the destination gave are unplugged, a VM that
// left is moved back, its entry is flagged present again, its VFs (held for it meanwhile) are
// passed through again, and the reconcile pass plugs its region.
// Reconcile passes leave a migrating VM's devices to the coordinator; a second migration of the
// same VM is refused while one runs.
//
// Lifetime: New takes the directory lock; Run reconciles until its context ends or the
// hypervisor stops reporting changes (ErrHypervisorLost: the daemon exits and its supervisor
// restarts it); Close unmaps the regions and releases the lock, leaving the region files to the
// next broker. Snapshot, WriteMetrics and Migrate may be called from any goroutine; everything
// else from the goroutine that runs Run.
package broker
