package api

import (
	"errors"
	"io"
	"time"
)

// Status is the broker's summary.
type Status struct {
	Hypervisor    string    `json:"hypervisor"`
	HostID        string    `json:"host_id"`
	RegionDir     string    `json:"region_dir"`
	RegionSize    uint64    `json:"region_size"`
	RegionCap     uint64    `json:"region_cap"`
	Started       time.Time `json:"started"`
	LastReconcile time.Time `json:"last_reconcile"`
	LastError     string    `json:"last_error,omitempty"`
	Jobs          int       `json:"jobs"`
	Regions       int       `json:"regions"`
	VMs           int       `json:"vms"`
}

// Job is an ivshim job with running VMs on this host.
type Job struct {
	ID     string   `json:"id"`
	Region string   `json:"region"`
	VMs    []string `json:"vms"`
}

// Region is a region file in the broker's region directory.
type Region struct {
	Job        string     `json:"job"`
	Path       string     `json:"path"`
	Size       uint64     `json:"size"`
	Inode      uint64     `json:"inode"`
	Generation uint64     `json:"generation"`
	Usable     bool       `json:"usable"`
	Error      string     `json:"error,omitempty"` // why the region is not usable
	VMs        []RegionVM `json:"vms"`
}

// RegionVM is a non-empty entry of a region's VM table.
type RegionVM struct {
	Index uint32 `json:"index"`
	UUID  string `json:"uuid"`
	State string `json:"state"`
}

// VM is a running VM.
type VM struct {
	Name    string   `json:"name"`
	UUID    string   `json:"uuid"`
	Job     string   `json:"job,omitempty"`
	Problem string   `json:"problem,omitempty"` // why its job tag was rejected
	Plugged []string `json:"plugged"`
}

// Snapshot is everything the read endpoints serve, taken at the end of a reconcile pass.
type Snapshot struct {
	Status  Status
	Jobs    []Job
	Regions []Region
	VMs     []VM
}

// MigrateRequest asks to migrate a VM to another host.
type MigrateRequest struct {
	VM          string `json:"vm"`
	Destination string `json:"destination"`
}

// errorBody is the JSON form of every error response.
type errorBody struct {
	Error string `json:"error"`
}

// ErrNotImplemented is wrapped by the client when the broker answers 501.
var ErrNotImplemented = errors.New("not implemented")

// Source is what the server serves.
type Source interface {
	Snapshot() Snapshot
	WriteMetrics(w io.Writer) error
}
