package ctl

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"ivshim.dev/ivshim/broker/api"
)

// DefaultSocket is the broker's default API socket.
const DefaultSocket = "/run/ivshim/broker.sock"

const usage = `usage: ivshimctl [-socket PATH] [-json] [-timeout D] COMMAND
commands:
  status               broker summary
  jobs                 jobs with VMs on this host and their region
  regions              region files and their VM tables
  vms                  running VMs: job, plugged regions, passed-through PCI devices, VF record
  metrics              Prometheus metrics
  migrate [-deadline D] VM DEST
                       migrate a running VM to another host and print the phases'
                       durations; DEST is a libvirt URI, or with hypervisor = netns the
                       other emulated host's netns_dir. The drain of the VM's ranks and
                       the wait for the destination's region each end after D (default:
                       the broker's migrate_deadline); a failed step rolls back.
`

// Run executes one ivshimctl command line (without the program name) and returns the exit
// status: 0 on success, 1 on a broker error, 2 on a usage error.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ivshimctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	socket := fs.String("socket", DefaultSocket, "broker API socket")
	asJSON := fs.Bool("json", false, "print the broker's JSON answer")
	timeout := fs.Duration("timeout", 0, "give up after this long (default 10s, migrate 15m)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cmd := fs.Args()
	var deadline time.Duration
	if len(cmd) > 0 && cmd[0] == "migrate" {
		mf := flag.NewFlagSet("migrate", flag.ContinueOnError)
		mf.SetOutput(stderr)
		mf.Usage = fs.Usage
		mf.DurationVar(&deadline, "deadline", 0, "drain and attach deadline")
		if err := mf.Parse(cmd[1:]); err != nil {
			return 2
		}
		if deadline < 0 || deadline > api.MaxDeadlineMS*time.Millisecond || (deadline > 0 && deadline < time.Millisecond) {
			fmt.Fprintf(stderr, "ivshimctl: -deadline %v: want 1ms..1h\n", deadline)
			return 2
		}
		cmd = append([]string{"migrate"}, mf.Args()...)
		if *timeout == 0 {
			*timeout = 15 * time.Minute
		}
	}
	if *timeout == 0 {
		*timeout = 10 * time.Second
	}
	want := map[string]int{"status": 1, "jobs": 1, "regions": 1, "vms": 1, "metrics": 1, "migrate": 3}
	if len(cmd) == 0 || want[cmd[0]] != len(cmd) {
		fs.Usage()
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := api.NewClient(*socket)
	var (
		v      any
		err    error
		failed any // the result of a migration that ran and failed
	)
	switch cmd[0] {
	case "status":
		v, err = c.Status(ctx)
	case "jobs":
		v, err = c.Jobs(ctx)
	case "regions":
		v, err = c.Regions(ctx)
	case "vms":
		v, err = c.VMs(ctx)
	case "metrics":
		var m string
		m, err = c.Metrics(ctx)
		v = m
	case "migrate":
		var res api.MigrateResult
		res, err = c.Migrate(ctx, api.MigrateRequest{VM: cmd[1], Destination: cmd[2], DeadlineMS: deadline.Milliseconds()})
		v = res
		if err != nil && res.VM != "" {
			failed = res // its phases and rollback are printed too
		}
	}
	if err != nil {
		if failed != nil {
			show(stdout, failed, *asJSON)
		}
		fmt.Fprintf(stderr, "ivshimctl: %v\n", err)
		return 1
	}
	show(stdout, v, *asJSON)
	return 0
}

// show writes v as the broker's JSON or as a table.
func show(stdout io.Writer, v any, asJSON bool) {
	if asJSON {
		if s, ok := v.(string); ok {
			fmt.Fprint(stdout, s)
			return
		}
		b, _ := json.MarshalIndent(v, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return
	}
	printTable(stdout, v)
}

// printTable writes v as a table.
func printTable(out io.Writer, v any) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	switch v := v.(type) {
	case string:
		fmt.Fprint(w, v)
	case api.Status:
		fmt.Fprintf(w, "hypervisor\t%s\nhost id\t%s\nregion dir\t%s\nregion size\t%d\nstarted\t%s\n",
			v.Hypervisor, v.HostID, v.RegionDir, v.RegionSize, v.Started.Format(time.RFC3339))
		fmt.Fprintf(w, "last reconcile\t%s\njobs\t%d\nregions\t%d\nVMs\t%d\n",
			v.LastReconcile.Format(time.RFC3339), v.Jobs, v.Regions, v.VMs)
		if v.LastError != "" {
			fmt.Fprintf(w, "last error\t%s\n", v.LastError)
		}
	case []api.Job:
		fmt.Fprintln(w, "JOB\tREGION\tVMS")
		for _, j := range v {
			fmt.Fprintf(w, "%s\t%s\t%s\n", j.ID, j.Region, strings.Join(j.VMs, ","))
		}
	case []api.Region:
		fmt.Fprintln(w, "JOB\tPATH\tSIZE\tGENERATION\tVMS\tSTATUS")
		for _, r := range v {
			status := "ok"
			if !r.Usable {
				status = "unusable: " + r.Error
			}
			var vms []string
			for _, e := range r.VMs {
				vms = append(vms, fmt.Sprintf("%d:%s:%s", e.Index, e.UUID, e.State))
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\n", r.Job, r.Path, r.Size, r.Generation, strings.Join(vms, ","), status)
		}
	case api.MigrateResult:
		state := "migrated"
		if !v.Migrated {
			state = "not migrated: " + v.FailedStep + " failed"
		}
		fmt.Fprintf(w, "VM\t%s\njob\t%s\ndestination\t%s\nranks drained\t%d\nresult\t%s\n", v.VM, v.Job, v.Destination, v.Ranks, state)
		if len(v.VFs) > 0 {
			fmt.Fprintf(w, "VFs moved\t%s\n", strings.Join(v.VFs, ", "))
		}
		if v.VFsMissing != "" {
			fmt.Fprintf(w, "VFs missing\t%s\n", v.VFsMissing)
		}
		for _, p := range v.Phases {
			fmt.Fprintf(w, "%s\t%.1f ms\n", p.Name, p.Seconds*1e3)
		}
		fmt.Fprintf(w, "total\t%.1f ms\n", v.Seconds*1e3)
		if v.Rollback != "" {
			fmt.Fprintf(w, "rollback\t%s\n", v.Rollback)
		}
	case []api.VM:
		fmt.Fprintln(w, "NAME\tUUID\tJOB\tPLUGGED\tPCI\tVF RECORD\tPROBLEM")
		for _, vm := range v {
			job := vm.Job
			if job == "" {
				job = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", vm.Name, vm.UUID, job, strings.Join(vm.Plugged, ","),
				strings.Join(vm.PCI, ","), strings.Join(vm.VFs, ","), vm.Problem)
		}
	}
}
