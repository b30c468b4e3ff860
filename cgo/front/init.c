/* MPI_Init(_thread) and MPI_Finalize: decide whether the job uses shared memory, load the Go
 * control plane only then, take the region and the co-located peers it negotiated (their rings
 * come on first use: pairs.c), and tear down in order. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ivshim.h"

static int ctl_allgather(void *ctx, const void *send, void *recv, uint64_t bytes)
{
	(void)ctx;
	return PMPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
}

static int ctl_barrier(void *ctx)
{
	(void)ctx;
	return PMPI_Barrier(MPI_COMM_WORLD);
}

/* Why this rank must not use shared memory whatever its region, or NULL. */
static const char *passthrough_reason(int provided)
{
	const char *off = getenv("IVSHIM_DISABLE");
	if (off && *off && strcmp(off, "0") != 0)
		return "IVSHIM_DISABLE is set";
	if (provided == MPI_THREAD_MULTIPLE)
		return "MPI_THREAD_MULTIPLE: the data plane serves one thread at a time";
	return NULL;
}

/* Whether this rank may have a region: the cheap checks the control plane would repeat. */
static int region_possible(void)
{
	const char *r = getenv("IVSHIM_REGION");
	if (r && *r)
		return 1;
	const char *sys = getenv("IVSHIM_SYSFS");
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s/bus/pci/devices", sys && *sys ? sys : "/sys");
	DIR *d = opendir(dir);
	if (!d)
		return 0;
	int found = 0;
	struct dirent *e;
	while (!found && (e = readdir(d))) {
		char path[PATH_MAX + 300], buf[16] = {0};
		snprintf(path, sizeof path, "%s/%s/vendor", dir, e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		int ok = fgets(buf, sizeof buf, f) && strncmp(buf, "0x1af4", 6) == 0;
		fclose(f);
		if (!ok)
			continue;
		snprintf(path, sizeof path, "%s/%s/device", dir, e->d_name);
		if ((f = fopen(path, "r"))) {
			found = fgets(buf, sizeof buf, f) && strncmp(buf, "0x1110", 6) == 0;
			fclose(f);
		}
	}
	closedir(d);
	return found;
}

/* The Go runtime requires SA_ONSTACK on every handler that can run on its threads; MPI
 * libraries install some (Open MPI: SIGABRT/SIGSEGV..., MPICH: SIGUSR1) without it. */
static void signals_onstack(void)
{
	for (int sig = 1; sig < NSIG; sig++) {
		struct sigaction sa;
		if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) != 0)
			continue;
		if (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_ONSTACK))
			continue;
		sa.sa_flags |= SA_ONSTACK;
		sigaction(sig, &sa, NULL);
	}
}

static void *load_ctl(void)
{
	const char *path = getenv("IVSHIM_CTL_LIB");
	char buf[PATH_MAX];
	if (!path || !*path) {
		Dl_info info;
		if (!dladdr((void *)region_possible, &info) || !info.dli_fname)
			ivs_fatal("cannot find the shim library's own path");
		snprintf(buf, sizeof buf, "%s", info.dli_fname);
		char *slash = strrchr(buf, '/');
		snprintf(slash ? slash + 1 : buf, sizeof buf - (size_t)(slash ? slash + 1 - buf : 0), "libivshim-ctl.so");
		path = buf;
	}
	signals_onstack();
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		ivs_fatal("cannot load the control plane %s: %s", path, dlerror());
	return h;
}

static void *ctl_sym(void *h, const char *name)
{
	void *s = dlsym(h, name);
	if (!s)
		ivs_fatal("control plane lacks %s", name);
	return s;
}

/* The region's tables, where the header says they are. The header's layout words are immutable
 * after publication, but shared: read once, checked against the mapping, kept private. At start,
 * and at a rejoin (migrate.c) for the new region. */
void ivs_region_tables(uint32_t self_slot)
{
	const struct ivshim_region_header *h = (const struct ivshim_region_header *)ivs.base;
	uint64_t so = h->slot_table_off, vo = h->vm_table_off, po = h->pair_table_off;
	uint32_t ns = h->slot_count, nv = h->vm_count;
	if (so % IVSHIM_CACHELINE || vo % IVSHIM_CACHELINE || po % IVSHIM_CACHELINE || so > ivs.size || vo > ivs.size ||
	    po > ivs.size || ns > IVSHIM_MAX_SLOTS || self_slot >= ns ||
	    (uint64_t)ns * sizeof(struct ivshim_slot) > ivs.size - so || (uint64_t)nv * sizeof(struct ivshim_vm) > ivs.size - vo ||
	    (uint64_t)ns * ns * sizeof(uint64_t) > ivs.size - po)
		ivs_fatal("region header: slot table (%#lx, %u), VM table (%#lx, %u) or pair table (%#lx) outside the region, "
		          "or own slot %u beyond it", (unsigned long)so, ns, (unsigned long)vo, nv, (unsigned long)po, self_slot);
	ivs.slots = (struct ivshim_slot *)(ivs.base + so);
	ivs.nslots = ns;
	ivs.vms = (const struct ivshim_vm *)(ivs.base + vo);
	ivs.nvms = nv;
	ivs.pairs = (uint64_t *)(ivs.base + po);
	ivs.self_slot = self_slot;
	memcpy(ivs.host_id, h->host_id, sizeof ivs.host_id);
}

static void setup_peers(struct ivshim_ctl_peer *peers)
{
	ivs.peers = calloc((size_t)ivs.world_size, sizeof *ivs.peers);
	ivs.local_world = calloc((size_t)ivs.world_size, sizeof *ivs.local_world);
	if (!ivs.peers || !ivs.local_world)
		ivs_fatal("out of memory");
	for (int w = 0; w < ivs.world_size; w++) {
		if (peers[w].path != IVSHIM_PATH_SHM) {
			ivs.has_net = 1;
			continue;
		}
		struct ivs_peer *p = calloc(1, sizeof *p); /* no rings yet: made on first use (pairs.c) */
		if (!p)
			ivs_fatal("out of memory");
		p->local = ivs.nlocal;
		p->world = w;
		p->slot = peers[w].slot;
		ivs.local_world[ivs.nlocal++] = w;
		ivs.peers[w] = p;
	}
}

/* A rank of an active job that uses no region itself: every peer is on the library's path, and
 * it still takes part in the job-wide agreements (context ids, collective plans). */
static void setup_no_peers(void)
{
	ivs.peers = calloc((size_t)ivs.world_size, sizeof *ivs.peers);
	ivs.local_world = calloc((size_t)ivs.world_size, sizeof *ivs.local_world); /* a join adds some */
	if (!ivs.peers || !ivs.local_world)
		ivs_fatal("out of memory");
	ivs.nlocal = 0;
	ivs.has_net = ivs.world_size > 1;
}

static void check_abi(void)
{
	char v[MPI_MAX_LIBRARY_VERSION_STRING] = "";
	int len = 0;
	PMPI_Get_library_version(v, &len);
	int ompi = strstr(v, "Open MPI") != NULL;
#if defined(OPEN_MPI)
	int ok = ompi && ivs_abi_ok();
#else
	int ok = !ompi;
#endif
	if (!ok) {
		fprintf(stderr, "ivshim: %s is built for the %s ABI but this program uses \"%.60s\": "
		        "preload the shim library of its MPI family instead\n", IVS_ABI_LIB, IVS_ABI_NAME, v);
		exit(1);
	}
}

static void *ctl_handle;

static int init_common(int rc, int provided)
{
	if (rc != MPI_SUCCESS)
		return rc;
	ivs.ctlcomm = MPI_COMM_NULL;
	ivs.gatecomm = MPI_COMM_NULL;
	PMPI_Comm_rank(MPI_COMM_WORLD, &ivs.world_rank);
	PMPI_Comm_size(MPI_COMM_WORLD, &ivs.world_size);
	ivs.thread_multiple = provided == MPI_THREAD_MULTIPLE;
	const char *pass = passthrough_reason(provided);
	int want = !pass && region_possible(), any = 0;
	PMPI_Allreduce(&want, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
	if (!any)
		return MPI_SUCCESS; /* pure pass-through: the Go runtime is never loaded */
	ctl_handle = load_ctl();
	ivshim_ctl_start_fn start = (ivshim_ctl_start_fn)ctl_sym(ctl_handle, IVSHIM_CTL_START_SYM);
	ivs.ctl_alloc = (ivshim_ctl_alloc_fn)ctl_sym(ctl_handle, IVSHIM_CTL_ALLOC_SYM);
	ivs.ctl_free = (ivshim_ctl_free_fn)ctl_sym(ctl_handle, IVSHIM_CTL_FREE_SYM);
	ivs.ctl_finalize = (ivshim_ctl_finalize_fn)ctl_sym(ctl_handle, IVSHIM_CTL_FINALIZE_SYM);
	ivs.ctl_release = (ivshim_ctl_release_fn)ctl_sym(ctl_handle, IVSHIM_CTL_RELEASE_SYM);
	ivs.ctl_ring = (ivshim_ctl_ring_fn)ctl_sym(ctl_handle, IVSHIM_CTL_RING_SYM);
	ivs.ctl_rejoin = (ivshim_ctl_rejoin_fn)ctl_sym(ctl_handle, IVSHIM_CTL_REJOIN_SYM);
	ivs.ctl_adopt = (ivshim_ctl_adopt_fn)ctl_sym(ctl_handle, IVSHIM_CTL_ADOPT_SYM);
	char ver[MPI_MAX_LIBRARY_VERSION_STRING] = "";
	int len;
	PMPI_Get_library_version(ver, &len);
	struct ivshim_ctl_start_args a = {
		.abi = IVSHIM_CTL_ABI,
		.world_rank = ivs.world_rank,
		.world_size = ivs.world_size,
		.mpi_library = ver,
		.passthrough = pass,
		.mpi = {.ctx = NULL, .allgather = ctl_allgather, .barrier = ctl_barrier},
		.peers = calloc((size_t)ivs.world_size, sizeof(struct ivshim_ctl_peer)),
	};
	if (!a.peers)
		ivs_fatal("out of memory");
	int res = start(&a);
	signals_onstack();
	if (res < 0)
		ivs_fatal("%s", a.error);
	ivs.verbose = a.verbose;
	ivs.stall_ns = (uint64_t)(a.stall_seconds > 0 ? a.stall_seconds : 0) * 1000000000u;
	ivs_status_init();
	if (res == 0) {
		ivs.base = a.region_base;
		ivs.size = a.region_size;
		ivs_region_tables(a.self_slot);
		setup_peers(a.peers);
		ivs_pairs_init();
		ivs_migrate_init();
		ivs.enabled = 1;
	} else if (ivs.verbose) {
		fprintf(stderr, a.joins_later ? "ivshim: rank %d: no region yet (%s): it joins its VM's region once plugged\n"
		                              : "ivshim: rank %d pass-through: %s\n", ivs.world_rank, a.error);
	}
	int joins_later = res == 1 && a.joins_later;
	free(a.peers);
	int active = 0;
	PMPI_Allreduce(&ivs.enabled, &active, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
	ivs.job_active = active;
	if (!ivs.job_active)
		return MPI_SUCCESS;
	if (PMPI_Comm_dup(MPI_COMM_WORLD, &ivs.ctlcomm) != MPI_SUCCESS ||
	    PMPI_Comm_dup(MPI_COMM_WORLD, &ivs.gatecomm) != MPI_SUCCESS)
		ivs_fatal("cannot create the shim's own communicators");
	int *ub, flag = 0;
	PMPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
	ivs.tag_ub = flag ? *ub : 32767; /* the least MPI allows */
	if (!ivs.enabled) {
		setup_no_peers();
		if (joins_later) /* like a rank that released its region: its traffic is counted, so its
		                    pairs can move to rings once it joins (migrate.c) */
			ivs_migrate_start_released();
	}
	if (ivs.enabled) {
		ivs_lib_hook_install();
		if (!ivs_lib_hooked() && (ivs.verbose || ivs.world_rank == 0))
			fprintf(stderr, "ivshim: rank %d: the MPI library offers no progress hook: the rings move only "
			        "inside the shim's own calls\n", ivs.world_rank);
	}
	/* Collective areas, and the agreement a migration runs on them, exist only in a job some of
	 * whose ranks share a host at MPI_Init (ivs.coll_areas); how the library's collectives are
	 * called follows from it and from whether a rank with rings could not hook the library's
	 * progress (ivs.coll_nb_all: coll.h). Both the same on every rank. */
	int mine[2] = {ivs.nlocal >= 2, ivs.enabled && !ivs_lib_hooked()}, all[2] = {0, 0};
	PMPI_Allreduce(mine, all, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
	ivs.coll_areas = all[0];
	ivs.coll_nb_all = all[1];
	return ivs_comm_world_init();
}

int MPI_Init(int *argc, char ***argv)
{
	check_abi();
	int rc = PMPI_Init(argc, argv), provided = MPI_THREAD_SINGLE;
	if (rc == MPI_SUCCESS)
		PMPI_Query_thread(&provided);
	return init_common(rc, provided);
}

int MPI_Init_thread(int *argc, char ***argv, int required, int *provided)
{
	check_abi();
	/* *provided only once the library has set it (an argument list has no order of evaluation) */
	int rc = PMPI_Init_thread(argc, argv, required, provided);
	return init_common(rc, rc == MPI_SUCCESS ? *provided : MPI_THREAD_SINGLE);
}

/* Drain what this rank still has in flight, then wait (progressing) until every rank has, so
 * no peer is left pushing into a ring nobody reads. */
static void drain(void)
{
	unsigned spins = 0;
	ivs.finalizing = 1; /* no join exchange begins now (join.c): its messages would outlive the drain */
	while (ivs.nsend_queued || ivs.nsync_wait) {
		if (!ivs_progress())
			ivs_wait_pause(&spins);
	}
	ivs_migrate_drain();
	MPI_Request req;
	PMPI_Ibarrier(MPI_COMM_WORLD, &req);
	for (;;) {
		int flag = 0;
		PMPI_Test(&req, &flag, MPI_STATUS_IGNORE);
		if (flag)
			break;
		ivs_ctl_wait_step(&spins); /* ranks still agreeing on a collective switch need this one's answer */
	}
}

int MPI_Finalize(void)
{
	if (ivs.job_active) {
		drain();
		ivs_join_check();
	}
	if (ivs.ctl_finalize) {
		char err[256] = "";
		ivs_lib_hook_remove();
		ivs.enabled = 0;
		if (ivs.ctl_finalize(&ivs.stats, err, sizeof err) != 0)
			fprintf(stderr, "ivshim: rank %d: finalize: %s\n", ivs.world_rank, err);
	}
	return PMPI_Finalize();
}
