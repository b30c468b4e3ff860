package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.uber.org/zap/zapcore"

	"ivshim.dev/ivshim/ivshmem"
)

// Config is the control plane's configuration, read from the environment once per process.
// IVSHIM_REGION is not part of it: ivshmem.Discovery reads it, so that the shim and the tools
// agree on what it means. EnvVars (envvars.go) lists every variable, the front's included.
type Config struct {
	Job     string // IVSHIM_JOB: pick the region of this job among several PCI devices ("" = any)
	Verbose int    // IVSHIM_VERBOSE: 0 quiet, 1 path table and stats, 2 also one line per rank
	// StallSeconds (IVSHIM_STALL_SECONDS): a wait of the data plane that lasts this long prints
	// what it waits for, and again at every doubling; 0: never. Unset: DefaultStallSeconds with
	// IVSHIM_VERBOSE, else 0.
	StallSeconds int
	Log          LogSpec
	// VMID identifies this VM in the region's VM table: IVSHIM_VM_ID, else the SMBIOS system
	// UUID (sysfs class/dmi/id/product_uuid) when readable, else zero (no VM entry).
	VMID       [16]byte
	VMIDSource string // where VMID came from, for messages
	Sysfs      string // IVSHIM_SYSFS: sysfs root for device discovery, "/sys" unless testing
}

// LogSpec is the parsed IVSHIM_LOG: "" or "off" (no logging), "json" or "console" (zap
// encoder, to stderr), optionally followed by ":debug", ":info", ":warn" or ":error".
type LogSpec struct {
	Format string // "" when off
	Level  zapcore.Level
}

// DefaultStallSeconds is IVSHIM_STALL_SECONDS when unset and IVSHIM_VERBOSE is on: longer than
// a rank's wait in any sound run of the tests (a migration under TCG pauses a guest for seconds).
// MaxStallSeconds is the largest value accepted (a day).
const (
	DefaultStallSeconds = 60
	MaxStallSeconds     = 86400
)

// LoadConfig reads and validates the IVSHIM_* variables through getenv. A bad value is an
// error naming the variable and what it accepts.
func LoadConfig(getenv func(string) string) (Config, error) {
	c := Config{Sysfs: "/sys"}
	var errs []error
	if job := getenv("IVSHIM_JOB"); job != "" {
		if err := ivshmem.CheckJobID(job); err != nil {
			errs = append(errs, fmt.Errorf("IVSHIM_JOB=%q: %w", job, err))
		}
		c.Job = job
	}
	switch v := getenv("IVSHIM_VERBOSE"); v {
	case "", "0":
	case "1", "2":
		c.Verbose = int(v[0] - '0')
	default:
		errs = append(errs, fmt.Errorf("IVSHIM_VERBOSE=%q: want 0, 1 or 2", v))
	}
	switch v := getenv("IVSHIM_STALL_SECONDS"); v {
	case "":
		if c.Verbose > 0 {
			c.StallSeconds = DefaultStallSeconds
		}
	default:
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxStallSeconds {
			errs = append(errs, fmt.Errorf("IVSHIM_STALL_SECONDS=%q: want whole seconds from 0 (never) to %d", v, MaxStallSeconds))
		}
		c.StallSeconds = min(max(n, 0), MaxStallSeconds)
	}
	log, err := parseLogSpec(getenv("IVSHIM_LOG"))
	if err != nil {
		errs = append(errs, err)
	}
	c.Log = log
	if s := getenv("IVSHIM_SYSFS"); s != "" {
		if err := checkDir(s); err != nil {
			errs = append(errs, fmt.Errorf("IVSHIM_SYSFS: %w", err))
		}
		c.Sysfs = s
	}
	if id := getenv("IVSHIM_VM_ID"); id != "" {
		u, err := ivshmem.ParseHostID(id)
		if err != nil {
			errs = append(errs, fmt.Errorf("IVSHIM_VM_ID: want the VM's UUID: %w", err))
		}
		c.VMID, c.VMIDSource = u, "IVSHIM_VM_ID"
	} else {
		c.VMID, c.VMIDSource = smbiosUUID(c.Sysfs)
	}
	return c, errors.Join(errs...)
}

func parseLogSpec(s string) (LogSpec, error) {
	format, level, hasLevel := strings.Cut(s, ":")
	var spec LogSpec
	switch format {
	case "", "off":
		if hasLevel {
			return LogSpec{}, fmt.Errorf("IVSHIM_LOG=%q: a level needs a format (json or console)", s)
		}
		return spec, nil
	case "json", "console":
		spec.Format = format
	default:
		return LogSpec{}, fmt.Errorf("IVSHIM_LOG=%q: want off, json or console, optionally :debug, :info, :warn or :error", s)
	}
	spec.Level = zapcore.InfoLevel
	if hasLevel {
		switch level {
		case "debug", "info", "warn", "error":
			spec.Level, _ = zapcore.ParseLevel(level) // cannot fail for these four
		default:
			return LogSpec{}, fmt.Errorf("IVSHIM_LOG=%q: level %q, want debug, info, warn or error", s, level)
		}
	}
	return spec, nil
}

func checkDir(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%q is not an absolute path", p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%q is not a directory", p)
	}
	return nil
}

// smbiosUUID returns the guest's SMBIOS system UUID, which QEMU sets to the libvirt domain
// UUID the broker writes into the VM table. The file is root-only on most systems: an
// unreadable or unparsable one means "no VM identity", not an error.
func smbiosUUID(sysfs string) ([16]byte, string) {
	p := filepath.Join(sysfs, "class", "dmi", "id", "product_uuid")
	b, err := os.ReadFile(p)
	if err != nil {
		return [16]byte{}, ""
	}
	u, err := ivshmem.ParseHostID(string(b))
	if err != nil {
		return [16]byte{}, ""
	}
	return u, p
}
