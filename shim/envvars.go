package shim

// EnvVar is one environment variable of the shim.
type EnvVar struct {
	Name string
	// Front: the C front library reads it (cgo/front, in every process that preloads it).
	// Go: the control plane reads it (packages shim and ivshmem, inside MPI_Init, loaded only
	// when some rank may have a region).
	Front, Go bool
	Values    string // what it accepts, and what unset means
	Meaning   string
}

// EnvVars is the one list of the IVSHIM_* variables that the shim (the front library and the
// control plane) reads. README.md's table under "Running an MPI program with the shim" lists
// the same names, and a test keeps both equal to what the sources outside tests/ read.
// Variables that only the test harness reads (under tests/, such as IVSHIM_TEST_THREAD of the
// MPI test programs) are not the shim's and are not listed.
var EnvVars = []EnvVar{
	{Name: "IVSHIM_REGION", Front: true, Go: true,
		Values:  "path of a region file; unset: look for the ivshmem PCI device",
		Meaning: "the region to use (emulation, tests), instead of PCI discovery; a file that cannot be opened or is not a valid region stops the job"},
	{Name: "IVSHIM_JOB", Go: true,
		Values:  "a job id: 1-63 of A-Z a-z 0-9 . _ -, not starting with . or -; unset: any job",
		Meaning: "use the ivshmem device whose region belongs to this job when a VM has several; with IVSHIM_REGION, a region of another job stops the job"},
	{Name: "IVSHIM_VERBOSE", Go: true,
		Values:  "0 (default), 1, 2",
		Meaning: "1: rank 0 prints the path table, every rank its traffic per path and, if it passes through, why; 2: also one line per rank at start"},
	{Name: "IVSHIM_STALL_SECONDS", Go: true,
		Values:  "whole seconds, 0 (never) to 86400; unset: 60 with IVSHIM_VERBOSE, else never",
		Meaning: "a wait of the shim's data plane that lasts this long prints, on the rank's stderr, what it waits for (queued sends, posted receives, each pair's path and switch state), then again at every doubling"},
	{Name: "IVSHIM_LOG", Go: true,
		Values:  "off (default), json or console, optionally followed by :debug, :info, :warn or :error",
		Meaning: "structured logs of the control plane to stderr"},
	{Name: "IVSHIM_VM_ID", Go: true,
		Values:  "a UUID; unset: the SMBIOS system UUID if readable",
		Meaning: "the VM's identity in the region's VM table, where SMBIOS has none (emulation)"},
	{Name: "IVSHIM_DISABLE", Front: true,
		Values:  "unset, empty or 0: off; anything else: on",
		Meaning: "pure pass-through even with a region"},
	{Name: "IVSHIM_CTL_LIB", Front: true,
		Values:  "path of libivshim-ctl.so; unset: next to the front library",
		Meaning: "where the front library loads the control plane from"},
	{Name: "IVSHIM_SYSFS", Front: true, Go: true,
		Values:  "absolute path of a directory; unset: /sys",
		Meaning: "sysfs root for device discovery and the SMBIOS UUID (tests)"},
}
