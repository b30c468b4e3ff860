package shim

import (
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/ivshmem"
)

// beatInterval is how often a rank advances its slot's heartbeat and polls the region
// generation. It must stay well below staleWait, or a live job looks dead to a newcomer.
const beatInterval = 100 * time.Millisecond

// watcher is the one goroutine a rank with a slot runs: it keeps the slot's heartbeat going,
// so that another job instance never takes over a live session, and logs changes of the
// broker's generation counter (VM arrivals and departures). When the broker flags the rank's
// own VM leaving (a migration's drain), it logs a warning once per flag; the data plane
// (cgo/front/migrate.c) sees the flag itself, does the switch and tells the user. It runs from the moment the
// slot is claimed until Stop, which comes before the slot is released and the region unmapped.
type watcher struct {
	stop chan struct{}
	done chan struct{}
}

func startWatcher(r *ivshmem.Region, slot, vm uint32, log *zap.Logger) *watcher {
	w := &watcher{stop: make(chan struct{}), done: make(chan struct{})}
	r.Beat(slot)
	go w.run(r, slot, vm, r.Generation(), log)
	return w
}

// leavingNotice is what the watcher logs when the broker flags the rank's VM leaving.
const leavingNotice = "the VM is flagged leaving (a migration): the data plane moves this rank's traffic to the MPI library and releases the region"

func (w *watcher) run(r *ivshmem.Region, slot, vm uint32, gen uint64, log *zap.Logger) {
	defer close(w.done)
	// A fault on the mapping (a truncated file, an unplugged BAR) becomes a panic here rather
	// than killing the MPI process; the rank then simply stops beating.
	debug.SetPanicOnFault(true)
	defer func() {
		if p := recover(); p != nil {
			log.Error("region watcher stopped", zap.Any("panic", p))
		}
	}()
	t := time.NewTicker(beatInterval)
	defer t.Stop()
	leaving := false
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		r.Beat(slot)
		g := r.Generation()
		if g == gen {
			continue
		}
		fields := []zap.Field{zap.Uint64("from", gen), zap.Uint64("to", g)}
		if vm != ivshmem.NoVM {
			if v, err := r.VMAt(vm); err != nil {
				fields = append(fields, zap.NamedError("vm_error", err))
			} else {
				fields = append(fields, zap.Uint32("vm", vm), zap.Uint32("vm_state", uint32(v.State)))
				if now := v.State == ivshmem.VMLeaving; now != leaving {
					leaving = now
					if now {
						log.Warn(leavingNotice)
					}
				}
			}
		}
		log.Info("region generation changed", fields...)
		gen = g
	}
}

// Stop ends the goroutine and waits for it; no heartbeat happens after Stop returns.
func (w *watcher) Stop() {
	close(w.stop)
	<-w.done
}
