/* Reports, from inside an MPI rank, whether the shim's Go control plane is loaded in this
 * process and in the process that launched it (Open MPI's orted, MPICH's hydra_pmi_proxy),
 * before and after MPI_Init. Used by tests/preload to prove that the Go runtime starts only in
 * ranks of jobs that have a region. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int mapped(pid_t pid)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	int found = 0;
	while (fgets(line, sizeof line, f))
		if (strstr(line, "libivshim-ctl.so"))
			found = 1;
	fclose(f);
	return found;
}

static int threads(void)
{
	char line[256];
	int n = -1;
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "Threads: %d", &n) == 1)
			break;
	fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	int before = mapped(getpid()), parent = mapped(getppid());
	MPI_Init(&argc, &argv);
	int rank;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	int after = mapped(getpid());
	printf("rank=%d ctl_before_init=%d ctl_after_init=%d ctl_in_launcher=%d threads=%d\n", rank, before, after, parent, threads());
	MPI_Finalize();
	return 0;
}
