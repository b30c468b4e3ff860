// Package api is the broker's control interface: HTTP/JSON over a unix socket (mode 0600, so
// only the broker's user, root, can use it), served by the broker and used by ivshimctl.
//
//	GET  /v1/status   Status: host, hypervisor, counts, last reconcile and its error
//	GET  /v1/jobs     []Job: jobs with VMs on this host and their region
//	GET  /v1/regions  []Region: region files, their VM tables, and whether they are usable
//	GET  /v1/vms      []VM: running VMs, their job (or why their tag was rejected), plugged devices
//	POST /v1/migrate  MigrateRequest -> MigrateResult once the migration ended: 200 migrated;
//	                  500 with the MigrateResult of a migration that failed (phases, failed
//	                  step, rollback); refused untouched: 400 bad destination, 404 unknown VM,
//	                  409 the VM is already migrating, 501 the hypervisor cannot migrate
//	GET  /metrics     Prometheus text format
//
// Errors are JSON {"error": "..."} with a 4xx or 5xx status. Request bodies are limited to
// MaxBody bytes and decoded strictly (unknown fields and trailing data are errors).
//
// The server reads a Source, which the broker implements; the wire types here are the contract
// between broker and CLI.
package api
