package metrics

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Counter only goes up.
type Counter struct{ v atomic.Uint64 }

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Value returns the count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// Gauge is a value that goes up and down.
type Gauge struct{ v atomic.Int64 }

// Set stores v.
func (g *Gauge) Set(v int) { g.v.Store(int64(v)) }

// Value returns the current value.
func (g *Gauge) Value() int64 { return g.v.Load() }

// latencyBounds are the histogram bucket upper bounds in seconds: hot-plug through libvirt
// takes tens to hundreds of milliseconds, a symlink microseconds.
var latencyBounds = [...]float64{0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Histogram counts durations in latencyBounds buckets.
type Histogram struct {
	mu     sync.Mutex
	counts [len(latencyBounds) + 1]uint64 // per bucket of latencyBounds, then +Inf
	sum    float64
	n      uint64
}

// Observe records one duration.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(latencyBounds) && s > latencyBounds[i] {
		i++
	}
	h.mu.Lock()
	h.counts[i]++
	h.sum += s
	h.n++
	h.mu.Unlock()
}

// Since observes the time elapsed since start.
func (h *Histogram) Since(start time.Time) { h.Observe(time.Since(start)) }

// Broker is the set of metrics one broker exports.
type Broker struct {
	Regions        Gauge // region files the broker manages
	VMs            Gauge // running VMs that belong to a job
	RejectedVMs    Gauge // running VMs with a bad job tag or VF record
	RegionsCreated Counter
	RegionsRemoved Counter
	// RegionsUndersized counts regions created below what their job's vCPUs need at the
	// default ring size (the cap was reached): smaller rings, or no shared memory for a group
	// that large. The broker's log says which, per region.
	RegionsUndersized Counter
	Attaches          Counter
	AttachErrors      Counter
	Detaches          Counter
	DetachErrors      Counter
	// VFAttaches and VFAttachErrors count the SR-IOV VFs passed through to VMs by their VF
	// record (broker/vfs.go); VFsMissing is how many recorded VFs the running VMs lack now.
	VFAttaches      Counter
	VFAttachErrors  Counter
	VFsMissing      Gauge
	Reconciles      Counter
	ReconcileErrors Counter
	// Migrations count the migrations the coordinator completed, MigrationErrors those that
	// failed (and were rolled back), MigrationsRefused the requests it refused untouched.
	Migrations        Counter
	MigrationErrors   Counter
	MigrationsRefused Counter
	MigrateDrainTime  Histogram
	MigrateDetachTime Histogram
	MigrateMoveTime   Histogram
	MigrateAttachTime Histogram
	MigrateTime       Histogram
	AttachTime        Histogram
	DetachTime        Histogram
	ReconcileTime     Histogram
	// Traffic, when set, reports what VMs sent over the network per VM pair.
	Traffic func() ([]Pair, error)
}

// Elsewhere is the receiving side of traffic to no running VM of this host.
const Elsewhere = "elsewhere"

// Pair is what one VM sent over the network to another (or Elsewhere).
type Pair struct {
	Src, Dst      string
	Frames, Bytes uint64
}

// WriteText writes every metric in the Prometheus text format.
func (m *Broker) WriteText(w io.Writer) error {
	var b strings.Builder
	gauge(&b, "ivshim_broker_regions", "Region files managed by the broker.", m.Regions.Value())
	gauge(&b, "ivshim_broker_vms", "Running VMs that belong to an ivshim job.", m.VMs.Value())
	gauge(&b, "ivshim_broker_rejected_vms", "Running VMs whose ivshim metadata (job tag, VF record) is malformed or hostile.", m.RejectedVMs.Value())
	counter(&b, "ivshim_broker_regions_created_total", "Regions created.", "", m.RegionsCreated.Value())
	counter(&b, "ivshim_broker_regions_removed_total", "Regions removed.", "", m.RegionsRemoved.Value())
	counter(&b, "ivshim_broker_regions_undersized_total", "Regions capped below what the job's vCPUs on the host need for default-size rings.", "", m.RegionsUndersized.Value())
	counter(&b, "ivshim_broker_attach_total", "Region hot-plug attempts by result.", `result="ok"`, m.Attaches.Value())
	sample(&b, "ivshim_broker_attach_total", `result="error"`, m.AttachErrors.Value())
	counter(&b, "ivshim_broker_detach_total", "Region unplug attempts by result.", `result="ok"`, m.Detaches.Value())
	sample(&b, "ivshim_broker_detach_total", `result="error"`, m.DetachErrors.Value())
	counter(&b, "ivshim_broker_vf_attach_total", "SR-IOV VF pass-through attempts for VMs' VF records, by result.", `result="ok"`, m.VFAttaches.Value())
	sample(&b, "ivshim_broker_vf_attach_total", `result="error"`, m.VFAttachErrors.Value())
	gauge(&b, "ivshim_broker_vfs_missing", "VFs that running VMs' VF records name and no free VF of this host could give.", m.VFsMissing.Value())
	counter(&b, "ivshim_broker_reconcile_total", "Reconcile passes by result.", `result="ok"`, m.Reconciles.Value())
	sample(&b, "ivshim_broker_reconcile_total", `result="error"`, m.ReconcileErrors.Value())
	counter(&b, "ivshim_broker_migrations_total", "VM migrations by result (error: failed and rolled back; refused: not started).", `result="ok"`, m.Migrations.Value())
	sample(&b, "ivshim_broker_migrations_total", `result="error"`, m.MigrationErrors.Value())
	sample(&b, "ivshim_broker_migrations_total", `result="refused"`, m.MigrationsRefused.Value())
	m.MigrateDrainTime.write(&b, "ivshim_broker_migrate_drain_seconds", "Migration phase drain: until the VM's ranks released the region.")
	m.MigrateDetachTime.write(&b, "ivshim_broker_migrate_detach_seconds", "Migration phase detach: unplugging the region from the VM.")
	m.MigrateMoveTime.write(&b, "ivshim_broker_migrate_move_seconds", "Migration phase migrate: the hypervisor moving the VM.")
	m.MigrateAttachTime.write(&b, "ivshim_broker_migrate_attach_seconds", "Migration phase attach: until the destination plugged the job's region.")
	m.MigrateTime.write(&b, "ivshim_broker_migrate_seconds", "Whole migrations, rollbacks included.")
	m.AttachTime.write(&b, "ivshim_broker_attach_seconds", "Latency of region hot-plug.")
	m.DetachTime.write(&b, "ivshim_broker_detach_seconds", "Latency of region unplug.")
	m.ReconcileTime.write(&b, "ivshim_broker_reconcile_seconds", "Duration of reconcile passes.")
	if m.Traffic != nil {
		pairs, err := m.Traffic()
		if err != nil {
			return fmt.Errorf("write metrics: %w", err)
		}
		writePairs(&b, pairs)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write metrics: %w", err)
	}
	return nil
}

func writePairs(b *strings.Builder, pairs []Pair) {
	help := " sent over the network by VMs of this host, by sending VM (src) and receiving VM (dst; " +
		Elsewhere + ": another host, a broadcast or the host)."
	header(b, "ivshim_broker_vm_network_frames_total", "Frames"+help, "counter")
	for _, p := range pairs {
		sample(b, "ivshim_broker_vm_network_frames_total", pairLabels(p), p.Frames)
	}
	header(b, "ivshim_broker_vm_network_bytes_total", "Bytes"+help, "counter")
	for _, p := range pairs {
		sample(b, "ivshim_broker_vm_network_bytes_total", pairLabels(p), p.Bytes)
	}
}

// labelEscaper escapes a label value for the text format.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func pairLabels(p Pair) string {
	return `src="` + labelEscaper.Replace(p.Src) + `",dst="` + labelEscaper.Replace(p.Dst) + `"`
}

func header(b *strings.Builder, name, help, typ string) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func sample(b *strings.Builder, name, labels string, v uint64) {
	if labels != "" {
		name += "{" + labels + "}"
	}
	fmt.Fprintf(b, "%s %d\n", name, v)
}

func gauge(b *strings.Builder, name, help string, v int64) {
	header(b, name, help, "gauge")
	fmt.Fprintf(b, "%s %d\n", name, v)
}

func counter(b *strings.Builder, name, help, labels string, v uint64) {
	header(b, name, help, "counter")
	sample(b, name, labels, v)
}

func (h *Histogram) write(b *strings.Builder, name, help string) {
	h.mu.Lock()
	counts, sum, n := h.counts, h.sum, h.n
	h.mu.Unlock()
	header(b, name, help, "histogram")
	var cum uint64
	for i, le := range latencyBounds {
		cum += counts[i]
		sample(b, name+"_bucket", `le="`+strconv.FormatFloat(le, 'g', -1, 64)+`"`, cum)
	}
	sample(b, name+"_bucket", `le="+Inf"`, n)
	fmt.Fprintf(b, "%s_sum %s\n", name, strconv.FormatFloat(sum, 'g', -1, 64))
	sample(b, name+"_count", "", n)
}
