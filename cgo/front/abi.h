/*
 * What differs between the two MPI ABI families the shim is built for.
 *
 * Open MPI's predefined handles are addresses of library globals (MPI_COMM_WORLD is
 * &ompi_mpi_comm_world). The front library is preloaded into every process that inherits
 * LD_PRELOAD, most of which have no libmpi at all, and it does not link libmpi itself, so those
 * references are made weak: they resolve to NULL where libmpi is absent instead of failing the
 * load, and ivs_abi_ok() tells an Open MPI process from anything else. MPICH (and the MPICH ABI
 * of Intel MPI) encodes handles as integer constants, so nothing needs resolving there.
 *
 * Shim-owned request and message handles must never collide with the library's:
 *  - Open MPI: pointers into the shim's own pools (request.c) — the library never hands those out.
 *  - MPICH: integers with handle kind "invalid" (bits 31-30 = 00) and object kind REQUEST
 *    (0x2c000000); the library only issues that pattern for MPI_REQUEST_NULL/MPI_MESSAGE_NULL
 *    (exactly 0x2c000000), so 0x2c000001.. are free for the shim.
 */
#ifndef IVSHIM_ABI_H
#define IVSHIM_ABI_H

#include <mpi.h>
#include <stdint.h>

#if defined(OPEN_MPI)
#define IVS_ABI_NAME "Open MPI"
#define IVS_ABI_LIB "libivshim-openmpi.so"
#pragma weak ompi_mpi_comm_world
#pragma weak ompi_mpi_comm_self
#pragma weak ompi_mpi_comm_null
#pragma weak ompi_request_null
#pragma weak ompi_message_null
#pragma weak ompi_message_no_proc
#pragma weak ompi_mpi_datatype_null
#pragma weak ompi_mpi_op_null
#pragma weak ompi_mpi_win_null
#pragma weak ompi_mpi_file_null
#pragma weak ompi_mpi_group_null
#pragma weak ompi_mpi_byte
#pragma weak ompi_mpi_packed
#pragma weak ompi_mpi_char
#pragma weak ompi_mpi_signed_char
#pragma weak ompi_mpi_unsigned_char
#pragma weak ompi_mpi_short
#pragma weak ompi_mpi_unsigned_short
#pragma weak ompi_mpi_int
#pragma weak ompi_mpi_unsigned
#pragma weak ompi_mpi_long
#pragma weak ompi_mpi_unsigned_long
#pragma weak ompi_mpi_long_long_int
#pragma weak ompi_mpi_unsigned_long_long
#pragma weak ompi_mpi_float
#pragma weak ompi_mpi_double
#pragma weak ompi_mpi_long_double
#pragma weak ompi_mpi_wchar
#pragma weak ompi_mpi_int8_t
#pragma weak ompi_mpi_uint8_t
#pragma weak ompi_mpi_int16_t
#pragma weak ompi_mpi_uint16_t
#pragma weak ompi_mpi_int32_t
#pragma weak ompi_mpi_uint32_t
#pragma weak ompi_mpi_int64_t
#pragma weak ompi_mpi_uint64_t
#pragma weak ompi_mpi_c_bool
#pragma weak ompi_mpi_aint
#pragma weak ompi_mpi_offset
#pragma weak ompi_mpi_count
#pragma weak ompi_mpi_c_float_complex
#pragma weak ompi_mpi_c_double_complex
#pragma weak ompi_mpi_c_long_double_complex
#pragma weak ompi_mpi_float_int
#pragma weak ompi_mpi_double_int
#pragma weak ompi_mpi_long_int
#pragma weak ompi_mpi_2int
#pragma weak ompi_mpi_short_int
#pragma weak ompi_mpi_longdbl_int
#pragma weak ompi_mpi_op_max
#pragma weak ompi_mpi_op_min
#pragma weak ompi_mpi_op_sum
#pragma weak ompi_mpi_op_prod
#pragma weak ompi_mpi_op_land
#pragma weak ompi_mpi_op_band
#pragma weak ompi_mpi_op_lor
#pragma weak ompi_mpi_op_bor
#pragma weak ompi_mpi_op_lxor
#pragma weak ompi_mpi_op_bxor
#pragma weak ompi_mpi_op_maxloc
#pragma weak ompi_mpi_op_minloc
#pragma weak ompi_mpi_op_replace
#pragma weak ompi_mpi_op_no_op
static inline int ivs_abi_ok(void) { return &ompi_mpi_comm_world != NULL; }
#define IVS_HANDLE_KEY(h) ((uintptr_t)(h))
/* What MPI_Status_set_elements_x(st, MPI_BYTE, bytes) and MPI_Status_set_cancelled write. */
static inline void ivs_abi_status_set(MPI_Status *st, uint64_t bytes, int cancelled)
{
	st->_ucount = (size_t)bytes;
	st->_cancelled = cancelled;
}

#elif defined(MPICH)
#define IVS_ABI_NAME "MPICH"
#define IVS_ABI_LIB "libivshim-mpich.so"
static inline int ivs_abi_ok(void) { return 1; }
#define IVS_HANDLE_KEY(h) ((uintptr_t)(unsigned)(h))
/* What MPI_Status_set_elements_x(st, MPI_BYTE, bytes) and MPI_Status_set_cancelled write: the
 * count's low 32 bits, then its high bits above the cancelled bit (MPICH's MPIR_STATUS_SET_*). */
static inline void ivs_abi_status_set(MPI_Status *st, uint64_t bytes, int cancelled)
{
	st->count_lo = (int)(uint32_t)bytes;
	st->count_hi_and_cancelled = (int)(uint32_t)(((bytes >> 32) << 1) | (cancelled ? 1u : 0u));
}
#define IVS_MPICH_REQ_BASE 0x2c000000u
#define IVS_MPICH_MSG_BASE 0x2e000000u
#define IVS_MPICH_IDX_MAX 0x01ffffffu

#else
#error "unknown MPI ABI family: build with Open MPI's or MPICH's mpicc"
#endif

#endif
