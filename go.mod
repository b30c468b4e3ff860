module ivshim.dev/ivshim

go 1.25.0

require (
	github.com/Mellanox/rdmamap v1.1.0
	github.com/cilium/ebpf v0.22.0
	github.com/edsrzf/mmap-go v1.2.0
	go.uber.org/zap v1.27.0
	golang.org/x/sys v0.43.0
	libvirt.org/go/libvirt v1.9000.0
)

require (
	github.com/vishvananda/netlink v1.1.0 // indirect
	github.com/vishvananda/netns v0.0.0-20191106174202-0a2b9b5464df // indirect
	go.uber.org/multierr v1.10.0 // indirect
)
