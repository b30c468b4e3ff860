package ivshmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	mmap "github.com/edsrzf/mmap-go"
	"golang.org/x/sys/unix"
)

// Region is one mapped region. It is safe for concurrent use by goroutines of one process to
// the extent that the format's ownership rules are kept (each slot written by its owner only).
type Region struct {
	mem    mmap.MMap // the whole mapping; len may exceed layout.TotalSize for a PCI BAR
	layout Layout    // private, validated copy (never re-read from mem)
	host   HostID
	job    string
	source string // file the region was mapped from, for messages
}

// Options describe a region to create. Zero fields take the Default* values.
type Options struct {
	Size      uint64 // total bytes; a power of two >= MinRegionSize (a PCI BAR must be)
	HostID    HostID
	JobID     string
	Slots     uint32
	VMs       uint32
	ChunkSize uint32
	RingSize  uint32
	Mode      os.FileMode // permission bits of the file; 0 means 0600
	UID, GID  int         // owner to chown to; both -1 (or both 0 with Chown false) leave it
	Chown     bool        // apply UID/GID
}

func (o Options) params() Params {
	p := Params{TotalSize: o.Size, SlotCount: o.Slots, VMCount: o.VMs, ChunkSize: o.ChunkSize, RingSize: o.RingSize}
	if p.SlotCount == 0 {
		p.SlotCount = DefaultSlots
	}
	if p.VMCount == 0 {
		p.VMCount = DefaultVMs
	}
	if p.ChunkSize == 0 {
		p.ChunkSize = DefaultChunkSize
	}
	if p.RingSize == 0 {
		p.RingSize = DefaultRingSize
	}
	return p
}

// Create makes a new region file at path: it writes a complete header into a hidden temporary
// file in the same directory, allocated to full size up front (so a full /dev/shm fails here
// with ENOSPC rather than with SIGBUS in a rank later), and renames it into place without
// replacing anything. It fails with an error wrapping os.ErrExist if path exists: a live
// region is never truncated or replaced under its users.
func Create(path string, o Options) error {
	if !isPow2(o.Size) {
		return fmt.Errorf("create region %s: size %d is not a power of two", path, o.Size)
	}
	if o.HostID.IsZero() {
		return fmt.Errorf("create region %s: zero host id", path)
	}
	if err := CheckJobID(o.JobID); err != nil {
		return fmt.Errorf("create region %s: %w", path, err)
	}
	l, err := ComputeLayout(o.params())
	if err != nil {
		return fmt.Errorf("create region %s: %w", path, err)
	}
	mode := o.Mode.Perm()
	if mode == 0 {
		mode = 0o600
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create region %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(o.Size)); err != nil {
		return fmt.Errorf("create region %s: allocate %d bytes: %w", path, o.Size, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("create region %s: %w", path, err)
	}
	if o.Chown {
		if err := f.Chown(o.UID, o.GID); err != nil {
			return fmt.Errorf("create region %s: %w", path, err)
		}
	}
	m, err := mmap.Map(f, mmap.RDWR, 0)
	if err != nil {
		return fmt.Errorf("create region %s: map: %w", path, err)
	}
	r := &Region{mem: m, layout: l}
	r.writeHeader(o.HostID, o.JobID)
	if err := m.Unmap(); err != nil {
		return fmt.Errorf("create region %s: unmap: %w", path, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			err = os.ErrExist
		}
		return fmt.Errorf("create region %s: publish: %w", path, err)
	}
	ok = true
	return nil
}

// writeHeader fills the immutable header lines of a region nobody else has mapped yet. The rest
// of the file is zero from fallocate, which is the initial state of every table.
func (r *Region) writeHeader(host HostID, job string) {
	h := r.hdr()
	l := r.layout
	h.Magic = Magic
	h.Version = Version
	h.HeaderSize = HeaderSize
	h.TotalSize = l.TotalSize
	h.HostID = host
	h.SlotCount = l.SlotCount
	h.VMCount = l.VMCount
	h.ChunkSize = l.ChunkSize
	h.ChunkCount = l.ChunkCount
	h.RingSize = l.RingSize
	copy(h.JobID[:], job)
	h.VMTableOff = l.VMTableOff
	h.SlotTableOff = l.SlotTableOff
	h.PairTableOff = l.PairTableOff
	h.ChunkTableOff = l.ChunkTableOff
	h.HeapOff = l.HeapOff
	h.Generation = 1
}

// ErrNotIvshim is wrapped when a file or PCI BAR does not start with the ivshim magic: it is
// not an ivshim region at all (an unrelated ivshmem device, a wrong file), as opposed to an
// ivshim region that fails validation. Such an error also wraps ErrInvalid.
var ErrNotIvshim = errors.New("not an ivshim region")

// notIvshimError reads like Validate's magic error, and is both ErrInvalid and ErrNotIvshim.
type notIvshimError struct {
	size  int64
	magic uint64
}

func (e notIvshimError) Error() string {
	if e.size < 8 {
		return fmt.Sprintf("%v: %d bytes, no room for the magic", ErrInvalid, e.size)
	}
	return fmt.Sprintf("%v: magic %#x, want %#x", ErrInvalid, e.magic, Magic)
}

func (e notIvshimError) Is(target error) bool { return target == ErrInvalid || target == ErrNotIvshim }

// Open maps the region in the file at path (a host /dev/shm file or a PCI resource2 file) and
// validates it. A file that does not start with the magic gives an error wrapping
// ErrNotIvshim; one that does but fails validation gives one wrapping ErrInvalid only. Errors
// from opening or mapping the file (a permission error for a root-only resource2) are
// wrapped as they are.
func Open(path string) (*Region, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open region: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open region %s: %w", path, err)
	}
	if st.Size() < 8 {
		return nil, fmt.Errorf("open region %s: %w", path, notIvshimError{size: st.Size()})
	}
	m, err := mmap.Map(f, mmap.RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open region %s: map: %w", path, err)
	}
	// The magic is checked apart from Validate so that a foreign device is told from a
	// damaged region: only the second is a reason to stop the job.
	if got := binary.LittleEndian.Uint64(m[:8]); got != Magic {
		m.Unmap()
		return nil, fmt.Errorf("open region %s: %w", path, notIvshimError{size: st.Size(), magic: got})
	}
	l, host, job, err := Validate(m, uint64(len(m)))
	if err != nil {
		m.Unmap()
		return nil, fmt.Errorf("open region %s: %w", path, err)
	}
	return &Region{mem: m, layout: l, host: host, job: job, source: path}, nil
}

// Close unmaps the region. The Region must not be used afterwards.
func (r *Region) Close() error {
	if r.mem == nil {
		return nil
	}
	err := r.mem.Unmap()
	r.mem = nil
	if err != nil {
		return fmt.Errorf("unmap region %s: %w", r.source, err)
	}
	return nil
}

// Layout returns the validated geometry.
func (r *Region) Layout() Layout { return r.layout }

// HostID returns the host the region lives on.
func (r *Region) HostID() HostID { return r.host }

// JobID returns the job the region belongs to.
func (r *Region) JobID() string { return r.job }

// Source is the file the region was mapped from.
func (r *Region) Source() string { return r.source }

// Generation loads the broker's generation counter (ACQUIRE).
func (r *Region) Generation() uint64 { return a64(&r.hdr().Generation).Load() }

// BumpGeneration increments the generation counter (RELEASE) and returns the new value. Only
// the broker calls it, after changing the VM table.
func (r *Region) BumpGeneration() uint64 { return a64(&r.hdr().Generation).Add(1) }
