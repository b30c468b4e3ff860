package api

import (
	"context"
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
	Problem string   `json:"problem,omitempty"` // why its ivshim metadata was rejected
	Plugged []string `json:"plugged"`
	// PCI are the host devices passed through to it, VFs its VF record (models VENDOR:DEVICE).
	PCI []string `json:"pci,omitempty"`
	VFs []string `json:"vfs,omitempty"`
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
	VM string `json:"vm"`
	// Destination names the other host in the hypervisor's terms: a libvirt URI, or the netns
	// registry directory of another emulated host.
	Destination string `json:"destination"`
	// DeadlineMS bounds the drain of the VM's ranks and the wait for the destination's region,
	// in milliseconds; 0 means the broker's migrate_deadline.
	DeadlineMS int64 `json:"deadline_ms,omitempty"`
}

// MaxDeadlineMS bounds MigrateRequest.DeadlineMS (an hour).
const MaxDeadlineMS = 3600 * 1000

// MigrateResult is the answer to a MigrateRequest the broker started, migrated or not.
type MigrateResult struct {
	VM          string `json:"vm"`
	Job         string `json:"job,omitempty"`
	Destination string `json:"destination"`
	// Ranks is how many ranks of the VM held a slot in the region when the drain began.
	Ranks int `json:"ranks"`
	// VFs are the SR-IOV VFs unplugged here ("ADDRESS (VENDOR:DEVICE)"); the destination
	// passed through as many of the same models before the attach phase ended.
	VFs []string `json:"vfs,omitempty"`
	// VFsMissing says which of them the destination had not passed through when the attach
	// phase ended (its broker goes on trying); "" when none.
	VFsMissing string `json:"vfs_missing,omitempty"`
	Migrated   bool   `json:"migrated"`
	// Phases are the steps that ran, in order, with their durations.
	Phases  []Phase `json:"phases"`
	Seconds float64 `json:"seconds"`
	// FailedStep is the phase that failed, Error why; RolledBack says whether the rollback
	// restored the VM's place (its region here), Rollback what it did.
	FailedStep string `json:"failed_step,omitempty"`
	Error      string `json:"error,omitempty"`
	RolledBack bool   `json:"rolled_back,omitempty"`
	Rollback   string `json:"rollback,omitempty"`
}

// Phase is one step of a migration: drain, detach, migrate, attach.
type Phase struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

// Migrator is a Source that migrates VMs. Its errors wrap ErrNotImplemented, ErrBadDestination,
// ErrUnknownVM or ErrBusy when it refused the request untouched; any other error comes with the
// result of a migration that failed.
type Migrator interface {
	Migrate(ctx context.Context, req MigrateRequest) (MigrateResult, error)
}

// Errors of a refused migration request.
var (
	ErrBadDestination = errors.New("bad destination")
	ErrUnknownVM      = errors.New("unknown VM")
	ErrBusy           = errors.New("migration in progress")
)

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
