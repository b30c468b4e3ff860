// Package daemon is ivshim-broker without its main: the configuration file, the logger, and Run,
// which wires a hypervisor, the broker core and the API server together until its context
// ends.
//
// # Configuration file
//
// Lines are "key = value"; blank lines and lines starting with '#' are ignored; an empty value
// means the key's empty setting (not its default); an unknown or repeated key is an error. The
// keys, with their defaults:
//
//	hypervisor      = libvirt            libvirt | netns (the emulated cluster)
//	libvirt_uri     = qemu:///system     libvirt only
//	netns_dir       =                    netns only, required: the registry (see broker/netns)
//	region_dir      = /dev/shm           libvirt requires /dev/shm (QEMU's mem-path)
//	host_id         =                    UUID; empty: libvirt's host UUID, else /etc/machine-id
//	region_size     = 64M                power of two >= 1M; suffixes K, M, G (binary)
//	region_owner    = libvirt-qemu       user name or uid; empty: the broker's user
//	region_group    = kvm                group name or gid; empty: the broker's group
//	region_mode     = 0660               octal; must include 0600 and have no bits for others
//	socket          = /run/ivshim/broker.sock
//	metrics_listen  =                    host:port to also serve /metrics over TCP; empty: off
//	resync_interval = 30s                Go duration, >= 100ms
//	migrate_deadline = 10s               Go duration, 1ms..1h: bounds a migration's drain and
//	                                     its wait for the destination's region
//	log_level       = info               debug | info | warn | error
//
// For hypervisor = netns, region_owner and region_group default to empty.
package daemon
