/*
 * test_init.h: MPI_Init for the test programs, or MPI_Init_thread at the thread level named by
 * IVSHIM_TEST_THREAD (single, funneled, serialized, multiple). The random-layout test
 * (tests/layouts) gives ranks of one job different levels; the programs stay single-threaded.
 */
#ifndef TEST_INIT_H
#define TEST_INIT_H

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline void test_init(int *argc, char ***argv)
{
    static const struct {
        const char *name;
        int level;
    } levels[] = {{"single", MPI_THREAD_SINGLE}, {"funneled", MPI_THREAD_FUNNELED},
                  {"serialized", MPI_THREAD_SERIALIZED}, {"multiple", MPI_THREAD_MULTIPLE}};
    const char *want = getenv("IVSHIM_TEST_THREAD");
    if (want == NULL || *want == '\0') {
        MPI_Init(argc, argv);
        return;
    }
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        if (strcmp(want, levels[i].name) == 0) {
            int provided = -1;
            MPI_Init_thread(argc, argv, levels[i].level, &provided);
            return;
        }
    }
    fprintf(stderr, "IVSHIM_TEST_THREAD=%s: want single, funneled, serialized or multiple\n", want);
    exit(2);
}

#endif
