/*
 * ivs_copy: every copy of message data (user buffers, pair rings, collective areas) goes through
 * here instead of memcpy.
 *
 * glibc's memcpy moves a block of x86_rep_movsb_threshold bytes or more (4 KiB with AVX2, the
 * default tuning) with `rep movsb`. On this project's test machine (AMD EPYC) that took 5-8 times
 * as long for some placements of the buffers: MPI_Bcast of 4 KiB through the region 1.6-2.1 us
 * and of 8 KiB 3.0-4.1 us, where 6 KiB took 0.4 us; with the threshold raised through
 * GLIBC_TUNABLES, 0.23-0.47 us and 0.6-0.8 us. The shim cannot choose where applications put their
 * buffers, so it copies in pieces below the threshold, which keep glibc on its vector loop; a
 * piece costs one call, a few percent of its copy.
 */
#ifndef IVSHIM_FRONT_COPY_H
#define IVSHIM_FRONT_COPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define IVS_COPY_PIECE 2048u /* below glibc's rep movsb threshold with AVX2 or AVX-512 */

static inline void ivs_copy(void *dst, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;
	do {
		size_t k = n < IVS_COPY_PIECE ? n : IVS_COPY_PIECE;
		/* Hide k's bound from GCC, which would expand the copy inline with rep movsq. */
		__asm__("" : "+r"(k));
		memcpy(d, s, k);
		d += k, s += k, n -= k;
	} while (n);
}

#endif
