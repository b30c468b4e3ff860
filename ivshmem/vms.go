package ivshmem

import "fmt"

// VM is one entry of the broker-owned VM table.
type VM struct {
	UUID       [16]byte
	State      VMState
	Generation uint64
}

func (r *Region) checkVM(i uint32) error {
	if i >= r.layout.VMCount {
		return fmt.Errorf("%w: vm entry %d of %d", ErrBadRef, i, r.layout.VMCount)
	}
	return nil
}

// SetVM writes VM entry i and bumps the region generation so shims notice. Broker only.
func (r *Region) SetVM(i uint32, uuid [16]byte, st VMState) error {
	if err := r.checkVM(i); err != nil {
		return err
	}
	e := r.vmAt(i)
	e.UUID = uuid
	e.Generation = r.Generation() + 1
	a32(&e.State).Store(uint32(st))
	r.BumpGeneration()
	return nil
}

// VMAt returns entry i (state ACQUIRE, then the rest).
func (r *Region) VMAt(i uint32) (VM, error) {
	if err := r.checkVM(i); err != nil {
		return VM{}, err
	}
	e := r.vmAt(i)
	st := VMState(a32(&e.State).Load())
	if st > VMLeaving {
		return VM{}, fmt.Errorf("%w: vm entry %d state %d", ErrBadRef, i, st)
	}
	return VM{UUID: e.UUID, State: st, Generation: e.Generation}, nil
}

// FindVM returns the index of the non-empty entry for uuid.
func (r *Region) FindVM(uuid [16]byte) (uint32, bool) {
	for i := uint32(0); i < r.layout.VMCount; i++ {
		if v, err := r.VMAt(i); err == nil && v.State != VMEmpty && v.UUID == uuid {
			return i, true
		}
	}
	return 0, false
}
