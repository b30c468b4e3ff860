! f_binding.h: the Fortran binding a test program is compiled for (-DUSE_MPIFH: include
! "mpif.h"; -DUSE_MPI: use mpi; neither: use mpi_f08), its name BINDING, and the types and
! status accessors that differ between them. f_use.h, included inside the program unit, names
! the binding. Included by the C preprocessor (.F90).

#if defined(USE_MPIFH)
#define BINDING "mpifh"
#elif defined(USE_MPI)
#define BINDING "mpi"
#else
#define USE_F08
#define BINDING "f08"
#endif

#ifdef USE_F08
#define T_COMM type(MPI_Comm)
#define T_INFO type(MPI_Info)
#define T_REQ type(MPI_Request)
#define T_MSG type(MPI_Message)
#define T_GROUP type(MPI_Group)
#define T_TYPE type(MPI_Datatype)
#define T_STATUS type(MPI_Status)
#define T_WIN type(MPI_Win)
#define T_FILE type(MPI_File)
#define STATUS_ARRAY(name, n) type(MPI_Status) :: name(n)
#define STATUS_AT(s, i) s(i)
#define SOURCE_OF(s) s%MPI_SOURCE
#define TAG_OF(s) s%MPI_TAG
#define TAG_AT(s, i) s(i)%MPI_TAG
#else
#define T_COMM integer
#define T_INFO integer
#define T_REQ integer
#define T_MSG integer
#define T_GROUP integer
#define T_TYPE integer
#define T_STATUS integer, dimension(MPI_STATUS_SIZE)
#define T_WIN integer
#define T_FILE integer
#define STATUS_ARRAY(name, n) integer :: name(MPI_STATUS_SIZE, n)
#define STATUS_AT(s, i) s(:, i)
#define SOURCE_OF(s) s(MPI_SOURCE)
#define TAG_OF(s) s(MPI_TAG)
#define TAG_AT(s, i) s(MPI_TAG, i)
#endif
