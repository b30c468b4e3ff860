package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	lv "libvirt.org/go/libvirt"

	"ivshim.dev/ivshim/broker/hypervisor"
)

// Migration: DEST is the libvirt URI of the destination host's daemon (qemu+ssh://host/system,
// qemu+tls://..., or a local socket, qemu+unix:///system?socket=PATH). The broker connects to it
// and runs a managed live migration (virDomainMigrate with VIR_MIGRATE_LIVE): libvirt talks to
// both daemons and QEMU streams the guest directly to the destination. QEMU refuses to migrate a
// guest with a peer ivshmem device: the coordinator has unplugged the region before Migrate, and
// Migrate waits until the guest has let it go. The destination's broker plugs the job's region
// there from its own libvirt's events. Connections to destinations are kept until Close.

var _ hypervisor.Migrator = (*Hypervisor)(nil)

// CheckDestination accepts a qemu URI other than this daemon's, and connects to it.
func (h *Hypervisor) CheckDestination(dest string) error {
	u, err := url.Parse(dest)
	if err != nil || !(u.Scheme == "qemu" || strings.HasPrefix(u.Scheme, "qemu+")) {
		return fmt.Errorf("destination %q: want a libvirt qemu URI such as qemu+ssh://HOST/system", dest)
	}
	if dest == h.uri {
		return fmt.Errorf("destination %s is this host's own libvirt", dest)
	}
	if _, err := h.connTo(dest); err != nil {
		return err
	}
	return nil
}

// connTo returns the connection to dest, opened at its first use.
func (h *Hypervisor) connTo(dest string) (*lv.Connect, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.peers[dest]; c != nil {
		if alive, err := c.IsAlive(); err == nil && alive {
			return c, nil
		}
		c.Close()
		delete(h.peers, dest)
	}
	c, err := lv.NewConnect(dest)
	if err != nil {
		return nil, fmt.Errorf("connect to destination %s: %w", dest, err)
	}
	if h.peers == nil {
		h.peers = map[string]*lv.Connect{}
	}
	h.peers[dest] = c
	return c, nil
}

// Migrate moves vm live to the daemon at dest, once its ivshim devices are gone.
func (h *Hypervisor) Migrate(ctx context.Context, vm hypervisor.VM, dest string) error {
	dconn, err := h.connTo(dest)
	if err != nil {
		return err
	}
	dom, err := h.lookup(vm)
	if err != nil {
		return err
	}
	defer dom.Free()
	return h.move(ctx, dom, vm, dconn, dest)
}

// Recall moves vm back from dest to this daemon.
func (h *Hypervisor) Recall(ctx context.Context, vm hypervisor.VM, dest string) error {
	dconn, err := h.connTo(dest)
	if err != nil {
		return err
	}
	dom, err := dconn.LookupDomainByUUID(vm.UUID[:])
	if err != nil {
		return fmt.Errorf("domain %s at %s: %w", vm.Name, dest, err)
	}
	defer dom.Free()
	return h.move(ctx, dom, vm, h.conn, h.uri)
}

// move migrates dom live to dconn after waiting, until ctx ends, for its ivshim devices to be
// gone from the live definition (a live unplug completes when the guest releases the device).
func (h *Hypervisor) move(ctx context.Context, dom *lv.Domain, vm hypervisor.VM, dconn *lv.Connect, to string) error {
	for {
		devs, err := h.list(dom)
		if err != nil {
			return fmt.Errorf("migrate domain %s: %w", vm.Name, err)
		}
		if len(devs.Shmems) == 0 {
			break
		}
		if err := sleepCtx(ctx); err != nil {
			return fmt.Errorf("migrate domain %s: %s still plugged: %w", vm.Name, devs.Shmems[0].Name, err)
		}
	}
	done := make(chan error, 1)
	go func() {
		moved, err := dom.Migrate(dconn, lv.MIGRATE_LIVE, "", "", 0)
		if moved != nil {
			moved.Free()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("migrate domain %s to %s: %w", vm.Name, to, err)
		}
		return nil
	case <-ctx.Done():
		// Cancel the job; the migration then fails and the domain keeps running here.
		aerr := dom.AbortJob()
		err := <-done
		return errors.Join(fmt.Errorf("migrate domain %s to %s: %w", vm.Name, to, context.Cause(ctx)), err, aerr)
	}
}

// sleepCtx waits a poll interval, or until ctx ends.
func sleepCtx(ctx context.Context) error {
	t := time.NewTimer(20 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// PluggedAt lists the ivshim devices of the domain called name at dest.
func (h *Hypervisor) PluggedAt(_ context.Context, dest, name string) ([]string, error) {
	dom, err := h.destDomain(dest, name)
	if err != nil {
		return nil, err
	}
	defer dom.Free()
	devs, err := h.list(dom)
	if err != nil {
		return nil, fmt.Errorf("domain %s at %s: %w", name, dest, err)
	}
	var names []string
	for _, s := range devs.Shmems {
		names = append(names, s.Name)
	}
	return names, nil
}

// destDomain looks up the domain called name at dest; the caller frees it.
func (h *Hypervisor) destDomain(dest, name string) (*lv.Domain, error) {
	c, err := h.connTo(dest)
	if err != nil {
		return nil, err
	}
	dom, err := c.LookupDomainByName(name)
	if err != nil {
		return nil, fmt.Errorf("domain %s at %s: %w", name, dest, err)
	}
	return dom, nil
}
