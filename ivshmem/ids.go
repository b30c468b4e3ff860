package ivshmem

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
)

// ErrBadJobID is wrapped when a job id is empty, too long or has characters outside
// [A-Za-z0-9._-]. Job ids end up in file names, libvirt XML and logs, so the set is narrow.
var ErrBadJobID = errors.New("bad job id")

// CheckJobID reports whether s is an acceptable job id: 1 to JobIDMax-1 bytes of
// [A-Za-z0-9._-], not starting with '.' or '-'.
func CheckJobID(s string) error {
	if len(s) == 0 || len(s) >= JobIDMax {
		return fmt.Errorf("%w: length %d not in 1..%d", ErrBadJobID, len(s), JobIDMax-1)
	}
	if s[0] == '.' || s[0] == '-' {
		return fmt.Errorf("%w: %q starts with %q", ErrBadJobID, s, s[0])
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%w: byte %#x at %d in %q", ErrBadJobID, c, i, s)
		}
	}
	return nil
}

// ParseJobIDField decodes the NUL-padded job_id header field: the id, then only NULs.
func ParseJobIDField(f []byte) (string, error) {
	n := bytes.IndexByte(f, 0)
	if n < 0 {
		return "", fmt.Errorf("%w: job id field not NUL-terminated", ErrBadJobID)
	}
	if bytes.IndexFunc(f[n:], func(r rune) bool { return r != 0 }) >= 0 {
		return "", fmt.Errorf("%w: bytes after the NUL terminator", ErrBadJobID)
	}
	s := string(f[:n])
	if err := CheckJobID(s); err != nil {
		return "", err
	}
	return s, nil
}

// HostID identifies a host (the hypervisor node a region lives on). Shims with equal host ids
// share a region.
type HostID [16]byte

// NewHostID returns a random host id.
func NewHostID() (HostID, error) {
	var h HostID
	if _, err := rand.Read(h[:]); err != nil {
		return HostID{}, fmt.Errorf("new host id: %w", err)
	}
	return h, nil
}

// ParseHostID parses the canonical UUID text form (8-4-4-4-12 hex digits), as found in
// /etc/machine-id-like files and libvirt's host UUID, or 32 plain hex digits.
func ParseHostID(s string) (HostID, error) {
	s = string(bytes.TrimSpace([]byte(s)))
	var clean []byte
	switch len(s) {
	case 36:
		for i, c := range []byte(s) {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if c != '-' {
					return HostID{}, fmt.Errorf("parse host id %q: want '-' at %d", s, i)
				}
				continue
			}
			clean = append(clean, c)
		}
	case 32:
		clean = []byte(s)
	default:
		return HostID{}, fmt.Errorf("parse host id %q: length %d, want 32 or 36", s, len(s))
	}
	var h HostID
	if _, err := hex.Decode(h[:], clean); err != nil {
		return HostID{}, fmt.Errorf("parse host id %q: %w", s, err)
	}
	if h.IsZero() {
		return HostID{}, fmt.Errorf("parse host id %q: all zero", s)
	}
	return h, nil
}

// IsZero reports whether h is unset.
func (h HostID) IsZero() bool { return h == HostID{} }

// String formats h as a UUID.
func (h HostID) String() string {
	x := hex.EncodeToString(h[:])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}
