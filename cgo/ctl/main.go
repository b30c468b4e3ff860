// Command ctl is libivshim-ctl.so, the Go control plane of the ivshim preload library, built
// with
//
//	go build -buildmode=c-shared -o build/lib/libivshim-ctl.so ./cgo/ctl
//
// It exports the functions of ivshim_ctl.h, which is the contract with the C front; this
// file only converts between the C structs and package shim, which holds the logic. No panic
// crosses into C: every export recovers and reports an internal error instead, and faults on
// the mapped region inside an export become such errors too.
package main

/*
#include <stdlib.h>
#include "ivshim_ctl.h"

// Go cannot call C function pointers: the front's MPI callbacks go through these.
static inline int ivshim_call_allgather(const struct ivshim_ctl_mpi *m, const void *send, void *recv, uint64_t bytes) {
	return m->allgather(m->ctx, send, recv, bytes);
}
static inline int ivshim_call_barrier(const struct ivshim_ctl_mpi *m) {
	return m->barrier(m->ctx);
}

// Go cannot spell const; this lets ivshim_ctl_finalize's prototype match its typedef exactly.
typedef const struct ivshim_ctl_stats ivshim_const_stats;
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"unsafe"

	"ivshim.dev/ivshim/shim"
)

func main() {}

// state is the process's control plane. MPI is initialised at most once per process, so
// ivshim_ctl_start succeeds at most once.
var state struct {
	sync.Mutex
	started bool
	att     *shim.Attachment // from start until finalize
}

// errNotStarted is the error of alloc and free outside start .. finalize.
var errNotStarted = errors.New("control plane not started, or finalized")

//export ivshim_ctl_start
func ivshim_ctl_start(args *C.struct_ivshim_ctl_start_args) C.int {
	if args == nil {
		return -1
	}
	return resultCall("ivshim_ctl_start", &args.error[0], C.uint64_t(len(args.error)), func() (C.int, error) { return start(args) })
}

// resultCall is the body of an export that answers a result code with its reason in errbuf:
// fn's, or -1 for a panic.
func resultCall(op string, errbuf *C.char, errlen C.uint64_t, fn func() (C.int, error)) (rc C.int) {
	*errbuf = 0
	defer guard(debug.SetPanicOnFault(true), op, func(err error) {
		rc = -1
		copyError(errbuf, errlen, err)
	})
	r, err := fn()
	if err != nil {
		copyError(errbuf, errlen, err)
	}
	return r
}

func start(args *C.struct_ivshim_ctl_start_args) (C.int, error) {
	state.Lock()
	defer state.Unlock()
	rank, size := int(args.world_rank), int(args.world_size)
	switch {
	case state.started:
		return -1, errors.New("ivshim_ctl_start called twice")
	case args.abi != C.IVSHIM_CTL_ABI:
		return -1, fmt.Errorf("front speaks control ABI %d, libivshim-ctl.so speaks %d: mismatched builds", args.abi, C.IVSHIM_CTL_ABI)
	case size < 1 || rank < 0 || rank >= size:
		return -1, fmt.Errorf("world rank %d of %d", rank, size)
	case args.peers == nil || args.mpi.allgather == nil || args.mpi.barrier == nil:
		return -1, errors.New("start arguments lack peers or MPI callbacks")
	}
	state.started = true
	peers := unsafe.Slice(args.peers, size)
	clear(peers) // all NET, whatever the outcome
	// The control plane is idle after start: keep the Go runtime from competing with the
	// ranks for cores, unless the user asked for something else.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	x := &mpiExchanger{mpi: &args.mpi, rank: rank, size: size}
	o := shim.Options{MPILibrary: C.GoString(args.mpi_library)}
	if args.passthrough != nil {
		o.Passthrough = C.GoString(args.passthrough)
	}
	a, err := shim.Start(x, o)
	if err != nil {
		return -1, err
	}
	state.att = a
	t := &a.Table
	args.verbose = C.int32_t(a.Verbose())
	args.stall_seconds = C.int32_t(a.StallSeconds())
	for w, p := range t.Peers {
		peers[w] = C.struct_ivshim_ctl_peer{path: C.uint32_t(p.Path), slot: C.uint32_t(p.Slot)}
	}
	if t.Mode != shim.ModeSHM {
		if a.JoinsLater() {
			args.joins_later = 1
		}
		return C.int(t.Mode), errors.New(t.Reason)
	}
	r := a.Region()
	args.region_base = r.Base()
	args.region_size = C.uint64_t(r.Layout().TotalSize)
	args.self_slot = C.uint32_t(t.SelfSlot)
	args.local_ranks = C.uint32_t(t.LocalRanks)
	return C.int(t.Mode), nil
}

//export ivshim_ctl_alloc
func ivshim_ctl_alloc(size C.uint64_t, errbuf *C.char, errlen C.uint64_t) C.uint64_t {
	return offsetCall("ivshim_ctl_alloc", errbuf, errlen, func(a *shim.Attachment) (uint64, error) { return a.Alloc(uint64(size)) })
}

//export ivshim_ctl_adopt
func ivshim_ctl_adopt(off C.uint64_t, errbuf *C.char, errlen C.uint64_t) C.uint64_t {
	return offsetCall("ivshim_ctl_adopt", errbuf, errlen, func(a *shim.Attachment) (uint64, error) { return a.Adopt(uint64(off)) })
}

//export ivshim_ctl_ring
func ivshim_ctl_ring(sender C.uint32_t, joined C.int, errbuf *C.char, errlen C.uint64_t) C.uint64_t {
	return offsetCall("ivshim_ctl_ring", errbuf, errlen, func(a *shim.Attachment) (uint64, error) {
		return a.CreateRing(uint32(sender), joined != 0)
	})
}

// offsetCall is the body of an export that answers a region offset: fn's, or 0 with the reason
// in errbuf.
func offsetCall(op string, errbuf *C.char, errlen C.uint64_t, fn func(*shim.Attachment) (uint64, error)) (off C.uint64_t) {
	defer guard(debug.SetPanicOnFault(true), op, func(err error) {
		off = 0
		copyError(errbuf, errlen, err)
	})
	a := attachment()
	if a == nil {
		copyError(errbuf, errlen, fmt.Errorf("%s: %w", op, errNotStarted))
		return 0
	}
	o, err := fn(a)
	if err != nil {
		copyError(errbuf, errlen, err)
		return 0
	}
	return C.uint64_t(o)
}

//export ivshim_ctl_free
func ivshim_ctl_free(off C.uint64_t, errbuf *C.char, errlen C.uint64_t) (rc C.int) {
	defer guard(debug.SetPanicOnFault(true), "ivshim_ctl_free", func(err error) {
		rc = -1
		copyError(errbuf, errlen, err)
	})
	a := attachment()
	if a == nil {
		copyError(errbuf, errlen, fmt.Errorf("ivshim_ctl_free: %w", errNotStarted))
		return -1
	}
	if err := a.Free(uint64(off)); err != nil {
		copyError(errbuf, errlen, err)
		return -1
	}
	return 0
}

//export ivshim_ctl_finalize
func ivshim_ctl_finalize(stats *C.ivshim_const_stats, errbuf *C.char, errlen C.uint64_t) (rc C.int) {
	defer guard(debug.SetPanicOnFault(true), "ivshim_ctl_finalize", func(err error) {
		rc = -1
		copyError(errbuf, errlen, err)
	})
	state.Lock()
	a := state.att
	state.att = nil
	state.Unlock()
	if a == nil {
		return 0
	}
	var s shim.Stats
	if stats != nil {
		s = shim.Stats{
			Messages:       [2]uint64{uint64(stats.messages[0]), uint64(stats.messages[1])},
			Bytes:          [2]uint64{uint64(stats.bytes[0]), uint64(stats.bytes[1])},
			CollectivesSHM: uint64(stats.collectives_shm),
			CollectivesNet: uint64(stats.collectives_net),
			Gates:          uint64(stats.gates),
		}
	}
	if err := a.Finalize(s); err != nil {
		copyError(errbuf, errlen, err)
		return -1
	}
	return 0
}

//export ivshim_ctl_release
func ivshim_ctl_release(errbuf *C.char, errlen C.uint64_t) (rc C.int) {
	defer guard(debug.SetPanicOnFault(true), "ivshim_ctl_release", func(err error) {
		rc = -1
		copyError(errbuf, errlen, err)
	})
	a := attachment()
	if a == nil {
		copyError(errbuf, errlen, fmt.Errorf("ivshim_ctl_release: %w", errNotStarted))
		return -1
	}
	if err := a.Release(); err != nil {
		copyError(errbuf, errlen, err)
		return -1
	}
	return 0
}

//export ivshim_ctl_rejoin
func ivshim_ctl_rejoin(args *C.struct_ivshim_ctl_rejoin_args) C.int {
	if args == nil {
		return -1
	}
	return resultCall("ivshim_ctl_rejoin", &args.error[0], C.uint64_t(len(args.error)), func() (C.int, error) { return rejoin(args) })
}

// rejoin answers 0 (joined), 1 (nothing to join now) or -1, as ivshim_ctl.h says.
func rejoin(args *C.struct_ivshim_ctl_rejoin_args) (C.int, error) {
	a := attachment()
	if a == nil {
		return -1, fmt.Errorf("ivshim_ctl_rejoin: %w", errNotStarted)
	}
	j, err := a.Rejoin()
	if errors.Is(err, shim.ErrNothingToJoin) {
		return 1, err
	}
	if err != nil {
		return -1, err
	}
	args.region_base = j.Region.Base()
	args.region_size = C.uint64_t(j.Region.Layout().TotalSize)
	args.self_slot = C.uint32_t(j.Slot)
	return 0, nil
}

func attachment() *shim.Attachment {
	state.Lock()
	defer state.Unlock()
	return state.att
}

// guard is deferred first thing in every export, with the panic-on-fault setting it replaced:
// it turns a panic into fail's error and restores the setting. Nothing unwinds into C.
func guard(faultSetting bool, op string, fail func(error)) {
	debug.SetPanicOnFault(faultSetting)
	if p := recover(); p != nil {
		fail(fmt.Errorf("%s: internal error in the ivshim control plane: %v", op, p))
	}
}

// maxError bounds the buffer length believed from the caller: messages are far shorter.
const maxError = 4096

// copyError writes err's message into the caller's buffer of n bytes, truncated and always
// NUL-terminated. A nil buffer or n == 0 gets nothing.
func copyError(dst *C.char, n C.uint64_t, err error) {
	if dst == nil || n == 0 {
		return
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(dst)), min(uint64(n), maxError))
	k := copy(b[:len(b)-1], err.Error())
	b[k] = 0
}

// mpiExchanger runs shim's exchanges through the front's PMPI callbacks. Buffers handed to
// MPI are C memory: MPI libraries may cache registrations of user buffers, which must not be
// Go heap that the collector reuses.
type mpiExchanger struct {
	mpi        *C.struct_ivshim_ctl_mpi
	rank, size int
}

func (e *mpiExchanger) Rank() int { return e.rank }
func (e *mpiExchanger) Size() int { return e.size }

func (e *mpiExchanger) Allgather(send []byte) ([]byte, error) {
	n := len(send)
	sbuf := C.CBytes(send)
	defer C.free(sbuf)
	rbuf := C.malloc(C.size_t(n * e.size))
	if rbuf == nil {
		return nil, fmt.Errorf("allgather: cannot allocate %d bytes", n*e.size)
	}
	defer C.free(rbuf)
	if rc := C.ivshim_call_allgather(e.mpi, sbuf, rbuf, C.uint64_t(n)); rc != 0 {
		return nil, fmt.Errorf("allgather of %d bytes: MPI error %d", n, rc)
	}
	return C.GoBytes(rbuf, C.int(n*e.size)), nil
}

func (e *mpiExchanger) Barrier() error {
	if rc := C.ivshim_call_barrier(e.mpi); rc != 0 {
		return fmt.Errorf("barrier: MPI error %d", rc)
	}
	return nil
}
