// Package cluster emulates a small cluster of KVM hosts and their VMs on one Linux machine, so
// that MPI jobs believe their ranks run on different nodes and talk TCP between them, the way
// ranks in real VMs talk over the (SR-IOV) network. It is the harness behind ivshim's
// integration tests, demo and benchmarks.
//
// # Model
//
// A [Host] stands for one hypervisor node: a name ("h0"), a random [ivshmem.HostID], a state
// directory and, depending on [Config], a region of its own. A [VM] stands for one guest of a
// host: a network namespace joined by a veth pair to a bridge in the root namespace, with a
// private address in a 10.77.x.0/24 subnet the cluster picks for itself. Every command that
// enters a VM additionally gets a UTS namespace (the VM's hostname), an IPC namespace and a
// private mount namespace in which a VM-specific file is bind-mounted over
// /proc/sys/kernel/random/boot_id, the cluster's hosts file over /etc/hosts and the VM's own
// directory (/dev/shm/<prefix>-<vm>) over /dev/shm. Open MPI decides locality by node name and
// UCX (MPICH ch4:ucx) by boot_id and IPC namespace, so both treat ranks in different VMs as
// remote.
//
// # Regions
//
// With Config.Broker, each host runs the real ivshim-broker ([Broker], hypervisor netns) with
// its own region directory /dev/shm/<prefix>-<host>, configuration, socket and log in the
// host's directory. Every VM gets a random UUID and is registered with its host's broker as a
// VM of the cluster's job ([Cluster.Job]; [VM.SetJob] moves it to another job or none); the
// broker creates the job's region, lists the VM in the region's VM table and plugs the region in
// as a device, a symlink to the region file. In the VM, IVSHIM_REGION names that device and
// IVSHIM_VM_ID the VM's UUID. With Config.Regions instead, Create makes one bare region file per
// host, /dev/shm/<prefix>-<host>, and IVSHIM_REGION names it in every VM of the host
// ([Cluster.SetRegion] changes it). Either way IVSHIM_REGION is set only while the path exists,
// and the region file itself is bind-mounted into the VM's /dev/shm at its own path: VMs see
// exactly the region of their own job and host, as guests see their ivshmem device.
//
// mpirun and mpiexec stay in the root namespace and reach the VMs through a generated launcher
// agent, a shell script standing in for ssh ([Cluster.Agent]); the daemons they start call back
// to the bridge address. [Run] launches one MPI job (Open MPI 4.1 or MPICH 4.0 ch4:ucx) into VMs
// or natively in the root namespace, with the library's default transports, forced to TCP, or
// restricted to shared memory (a negative control that must fail across VMs); [Job.Argv] shows
// the command line, and [Build] compiles a C MPI program for either library.
//
// # Lifetime
//
// [Create] makes everything at once; on error it removes what it had made. Every name it
// creates (network namespaces, links, /dev/shm files and directories, the temporary directory
// holding the brokers' state and sockets) starts with the cluster's random prefix ("iv" and
// five hex digits), so concurrent clusters never collide and [Leftovers] can find anything a
// crashed run left behind. Brokers are child processes of the cluster's process; [Broker.Kill]
// and [Broker.Start] crash and restart one. [Cluster.Teardown] powers the VMs off, lets the
// brokers remove their regions and stops them, kills every process of the cluster's jobs and
// VMs, then deletes what the cluster created; it is idempotent and safe to call after a partial
// failure. [Clean] does the same without the brokers' part, given only a prefix, for runs whose
// process died. A process that dies without Teardown (SIGKILL, a test's timeout) does not need
// it: [Create] starts a watchdog, the same program in a process group of its own, that waits on
// a pipe from its creator and runs Clean once the creator is gone without Teardown.
//
// Every job has a timeout. Because Open MPI and MPICH start their daemons and ranks in new
// sessions, a job's processes are found by a marker variable in their environment
// (IVSHIM_CLUSTER_JOB) as well as by process group, and all of them are killed on expiry.
// Brokers carry the marker too (<prefix>/broker-<host>). A cluster needs root (network
// namespaces, mounts) and the ip and unshare tools.
package cluster
