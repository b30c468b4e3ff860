! f_use.h: inside a program unit, the binding f_binding.h chose.
#if defined(USE_MPIFH)
  implicit none
  include 'mpif.h'
#elif defined(USE_MPI)
  use mpi
  implicit none
#else
  use mpi_f08
  implicit none
#endif
