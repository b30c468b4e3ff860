/*
 * Smoke test of libivshim-ctl.so as the C front uses it. It forks RANKS processes (default 1)
 * that form a fake MPI job: allgather and barrier go through an anonymous shared mapping and a
 * process-shared barrier. Each process then dlopen()s the library (after the fork: the Go
 * runtime does not survive fork), resolves the symbols, starts, makes its inbound rings and checks
 * them and its outbound ones through region_base, tries a collective area, passes a barrier and finalizes twice. Every output
 * line starts with "rank=R " and holds key=value pairs for ctl_test.go.
 *   usage: smoke /path/to/libivshim-ctl.so [RANKS]
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ivshim_ctl.h"
#include "ivshim_region.h"

#define MAX_RANKS 8

struct world {
	pthread_barrier_t barrier;
	int size;
	unsigned char buf[MAX_RANKS * 4096];
};

struct rank_ctx {
	struct world *world;
	int rank;
};

static int fake_barrier(void *ctx)
{
	pthread_barrier_wait(&((struct rank_ctx *)ctx)->world->barrier);
	return 0;
}

static int fake_allgather(void *ctx, const void *send, void *recv, uint64_t bytes)
{
	struct rank_ctx *c = ctx;
	struct world *w = c->world;
	if (bytes * w->size > sizeof w->buf)
		return 1;
	memcpy(w->buf + c->rank * bytes, send, bytes);
	fake_barrier(ctx);
	memcpy(recv, w->buf, bytes * w->size);
	fake_barrier(ctx); /* nobody overwrites buf before everyone copied it out */
	return 0;
}

/* check_ring validates what ivshim_ctl_start promised about one ring offset. */
static const char *check_ring(const struct ivshim_ctl_start_args *a, uint64_t off, uint32_t sender, uint32_t receiver)
{
	if (off < IVSHIM_HEADER_SIZE || off + IVSHIM_RING_DATA_OFF > a->region_size)
		return "offset outside the region";
	const struct ivshim_ring *r = (const struct ivshim_ring *)((const char *)a->region_base + off);
	if (r->sender_slot != sender || r->receiver_slot != receiver)
		return "ring names another pair";
	if (off + IVSHIM_RING_DATA_OFF + r->capacity > a->region_size)
		return "ring data outside the region";
	return "ok";
}

/* The pair word from sender to receiver, read through the region's header. */
static uint64_t pair_word(const struct ivshim_ctl_start_args *a, uint32_t sender, uint32_t receiver)
{
	const struct ivshim_region_header *h = a->region_base;
	const uint64_t *pairs = (const uint64_t *)((const char *)a->region_base + h->pair_table_off);
	return __atomic_load_n(&pairs[(uint64_t)sender * h->slot_count + receiver], __ATOMIC_ACQUIRE);
}

static int run_rank(const char *path, struct world *w, int rank)
{
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 2;
	}
	ivshim_ctl_start_fn start = (ivshim_ctl_start_fn)dlsym(lib, IVSHIM_CTL_START_SYM);
	ivshim_ctl_alloc_fn alloc = (ivshim_ctl_alloc_fn)dlsym(lib, IVSHIM_CTL_ALLOC_SYM);
	ivshim_ctl_free_fn release = (ivshim_ctl_free_fn)dlsym(lib, IVSHIM_CTL_FREE_SYM);
	ivshim_ctl_finalize_fn finalize = (ivshim_ctl_finalize_fn)dlsym(lib, IVSHIM_CTL_FINALIZE_SYM);
	ivshim_ctl_ring_fn ring = (ivshim_ctl_ring_fn)dlsym(lib, IVSHIM_CTL_RING_SYM);
	if (!start || !alloc || !release || !finalize || !ring) {
		fprintf(stderr, "dlsym: a symbol is missing\n");
		return 2;
	}

	struct rank_ctx ctx = {w, rank};
	struct ivshim_ctl_peer peers[MAX_RANKS];
	struct ivshim_ctl_start_args args;
	memset(peers, 0xff, sizeof peers); /* start must write every peer */
	memset(&args, 0, sizeof args);
	args.abi = IVSHIM_CTL_ABI;
	args.world_rank = rank;
	args.world_size = w->size;
	args.mpi_library = "smoke fake MPI 1.0";
	args.mpi.ctx = &ctx;
	args.mpi.allgather = fake_allgather;
	args.mpi.barrier = fake_barrier;
	args.peers = peers;
	int rc = start(&args);
	printf("rank=%d start=%d verbose=%d error=%s\n", rank, rc, args.verbose, args.error);
	char err[32]; /* short on purpose: messages are truncated, always terminated */
	/* Rings are made on first use: each rank makes its inbound ring from every co-located peer,
	 * as the front does when the peer asks, then finds its outbound ones in the pair table. */
	uint64_t rx[MAX_RANKS] = {0};
	for (int p = 0; p < w->size; p++)
		if (rc == 0 && peers[p].path == IVSHIM_PATH_SHM)
			rx[p] = ring(peers[p].slot, 0, err, sizeof err);
	fake_barrier(&ctx);
	for (int p = 0; p < w->size; p++) {
		const struct ivshim_ctl_peer *q = &peers[p];
		printf("rank=%d peer=%d path=%u", rank, p, q->path);
		if (rc == 0 && q->path == IVSHIM_PATH_SHM)
			printf(" slot=%u tx=%s rx=%s", q->slot, check_ring(&args, pair_word(&args, args.self_slot, q->slot), args.self_slot, q->slot),
			       check_ring(&args, rx[p], q->slot, args.self_slot));
		printf("\n");
	}
	if (rc == 0) { /* a slot outside the job's group on this region is refused */
		memset(err, 'x', sizeof err);
		uint64_t off = ring(7, 0, err, sizeof err);
		printf("rank=%d stranger_ring=%d errlen=%zu\n", rank, off != 0, off ? 0 : strlen(err));
	}
	if (rc == 0)
		printf("rank=%d self_slot=%u local_ranks=%u region_size=%llu\n", rank, args.self_slot, args.local_ranks,
		       (unsigned long long)args.region_size);
	rc = start(&args);
	printf("rank=%d start_again=%d error=%s\n", rank, rc, args.error);

	memset(err, 'x', sizeof err);
	uint64_t off = alloc(4096, err, sizeof err);
	printf("rank=%d alloc_ok=%d errlen=%zu error=%s\n", rank, off != 0, off ? 0 : strlen(err), off ? "" : err);
	memset(err, 'x', sizeof err);
	rc = release(off ? off : 4096, err, sizeof err);
	printf("rank=%d free=%d errlen=%zu\n", rank, rc, rc ? strlen(err) : 0);

	struct ivshim_ctl_stats stats = {{1, 2}, {3, 4}, 5, 6, 7};
	fake_barrier(&ctx); /* the front drains its rings and passes a barrier first */
	printf("rank=%d finalize=%d\n", rank, finalize(&stats, err, sizeof err));
	printf("rank=%d finalize_again=%d\n", rank, finalize(&stats, err, sizeof err));
	return 0;
}

int main(int argc, char **argv)
{
	int size = argc == 3 ? atoi(argv[2]) : 1;
	if (argc < 2 || argc > 3 || size < 1 || size > MAX_RANKS) {
		fprintf(stderr, "usage: %s LIB [RANKS<=%d]\n", argv[0], MAX_RANKS);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0); /* one write per line: ranks share stdout */
	struct world *w = mmap(NULL, sizeof *w, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (w == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	pthread_barrierattr_t attr;
	pthread_barrierattr_init(&attr);
	pthread_barrierattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	pthread_barrier_init(&w->barrier, &attr, size);
	w->size = size;
	for (int r = 1; r < size; r++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 2;
		}
		if (pid == 0)
			return run_rank(argv[1], w, r);
	}
	int status = run_rank(argv[1], w, 0);
	for (int r = 1; r < size; r++) {
		int st;
		if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			status = 2;
	}
	return status;
}
