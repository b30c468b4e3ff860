package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"time"
)

// Moves moves VMs of a job between the cluster's hosts while the job runs, as a co-scheduler
// would: one move at a time, every Every, a VM and a destination host drawn from Seed, with
// Deadline for the drain and the attach (0: the broker's default). Each move is written to Log.
type Moves struct {
	Every, Deadline time.Duration
	Seed            uint64 // 0: from the clock (written to Log)
	Log             io.Writer
}

// MoveCount is what the moves did.
type MoveCount struct {
	Migrated, RolledBack int
}

// StartMoves begins moving the VMs among vms (a job's, in rank order: repeats are one VM) and
// returns stop, which waits for the move under way and returns the counts, and an error for
// every move that failed without a rollback that restored the VM's place (a rollback is what a
// drain that missed its deadline gets: a rank computing, or blocked in a library call). The
// hosts need brokers.
func (c *Cluster) StartMoves(vms []*VM, mv Moves) (stop func() (MoveCount, error)) {
	if mv.Seed == 0 {
		mv.Seed = uint64(time.Now().UnixNano())
	}
	if mv.Log == nil {
		mv.Log = io.Discard
	}
	fmt.Fprintf(mv.Log, "moving the job's VMs every %v, seed %d\n", mv.Every, mv.Seed)
	var own []*VM
	for _, vm := range vms {
		if !slices.Contains(own, vm) {
			own = append(own, vm)
		}
	}
	rng := rand.New(rand.NewPCG(mv.Seed, 0x6d6f7665))
	quit, done := make(chan struct{}), make(chan struct{})
	var n MoveCount
	var failed []error
	go func() {
		defer close(done)
		tick := time.NewTicker(mv.Every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			vm := own[rng.IntN(len(own))]
			var dests []*Host
			for _, h := range c.Hosts {
				if h != vm.Host {
					dests = append(dests, h)
				}
			}
			if len(dests) == 0 {
				continue
			}
			dest, from := dests[rng.IntN(len(dests))], vm.Host.Name
			// A move runs to its end even when the job has ended: a half-done one would leave
			// the broker's coordinator busy.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			res, err := c.Migrate(ctx, vm, dest, mv.Deadline)
			cancel()
			what := "migrated"
			switch {
			case err == nil:
				n.Migrated++
			case res.RolledBack:
				n.RolledBack++
				what = fmt.Sprintf("rolled back at %s (%s): %s", res.FailedStep, res.Rollback, res.Error)
			default:
				failed = append(failed, fmt.Errorf("move %d of VM %s from %s to %s: %w", i, vm.Name, from, dest.Name, err))
				what = "FAILED: " + err.Error()
			}
			fmt.Fprintf(mv.Log, "move %d: VM %s %s -> %s: %s, phases %v\n", i, vm.Name, from, dest.Name, what, res.Phases)
		}
	}()
	return func() (MoveCount, error) {
		close(quit)
		<-done
		fmt.Fprintf(mv.Log, "moves: %d migrated, %d rolled back, %d failed (seed %d)\n", n.Migrated, n.RolledBack, len(failed), mv.Seed)
		return n, errors.Join(failed...)
	}
}
