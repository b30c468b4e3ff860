! f_spawn.F90: MPI_Comm_spawn and MPI_Comm_spawn_multiple from Fortran, with command lines the
! children check; one source for the three Fortran bindings, chosen as in f_pingpong.F90
! (-DUSE_MPIFH, -DUSE_MPI, or neither for mpi_f08). The Go test tests/fortran runs it on Open
! MPI (MPICH 4.0.2's hydra cannot spawn through the cluster's ssh stand-in), without and with
! the shim.
!
! The parents (MPI_COMM_WORLD, any size) spawn two copies of this program with the arguments
! "single" "two words", then two more by MPI_Comm_spawn_multiple, one command each, with
! "multi" "first" and "multi" "second" (array_of_argv(i, j): argument j of command i, ended by
! a blank one). Every child compares its command line with what it was given, the children's
! rank 0 sends the parents' rank 0 the number of mismatches, and both sides disconnect.
! Parent rank 0 prints
!
!   f_spawn_<binding>: <N> parents, <S> + <M> children, <ok|FAILED>, gated calls 2
!
! gated calls: the spawn and the spawn_multiple, which pass the shim's gate on MPI_COMM_WORLD on
! every parent (the disconnects are over communicators with members of another MPI_COMM_WORLD,
! which the shim leaves alone); the Go test finds them in the parents' statistics.

#include "f_binding.h"

program f_spawn
#include "f_use.h"
  T_COMM :: parent, inter
  T_INFO :: infos(2)
  integer :: ierr, rank, nparents, nkids(2), errs(2), maxprocs(2), bad, total
  character(len=256) :: cmd, arg
  character(len=16) :: args(3)
  character(len=256) :: cmds(2)
  character(len=16) :: argvs(2, 3)
  character(len=6) :: verdict
  logical :: fine

  call MPI_Init(ierr)
  call MPI_Comm_get_parent(parent, ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  if (parent == MPI_COMM_NULL) then
    call MPI_Comm_size(MPI_COMM_WORLD, nparents, ierr)
    call get_command_argument(0, cmd)
    fine = .true.
    total = 0

    args(1) = 'single'
    args(2) = 'two words'
    args(3) = ' '
    errs = -1
    call MPI_Comm_spawn(cmd, args, 2, MPI_INFO_NULL, 0, MPI_COMM_WORLD, inter, errs, ierr)
    fine = fine .and. ierr == MPI_SUCCESS .and. all(errs == MPI_SUCCESS)
    call collect(inter, nkids(1))

    cmds = cmd
    argvs = ' '
    argvs(1, 1) = 'multi'
    argvs(1, 2) = 'first'
    argvs(2, 1) = 'multi'
    argvs(2, 2) = 'second'
    maxprocs = 1
    infos = MPI_INFO_NULL
    call MPI_Comm_spawn_multiple(2, cmds, argvs, maxprocs, infos, 0, MPI_COMM_WORLD, inter, &
                                 MPI_ERRCODES_IGNORE, ierr)
    fine = fine .and. ierr == MPI_SUCCESS
    call collect(inter, nkids(2))

    if (rank == 0) then
      verdict = 'FAILED'
      if (fine .and. total == 0) verdict = 'ok'
      write (*, '(a,a,a,i0,a,i0,a,i0,a,a,a)') 'f_spawn_', BINDING, ': ', nparents, ' parents, ', nkids(1), ' + ', &
        nkids(2), ' children, ', trim(verdict), ', gated calls 2'
    end if
  else
    ! a child: its command line, as its spawn gave it
    bad = 0
    call get_command_argument(1, arg)
    if (trim(arg) == 'single') then
      call get_command_argument(2, arg)
      if (command_argument_count() /= 2 .or. trim(arg) /= 'two words') bad = 1
    else if (trim(arg) == 'multi') then
      call get_command_argument(2, arg)
      if (command_argument_count() /= 2) bad = 1
      if (rank == 0 .and. trim(arg) /= 'first') bad = 1
      if (rank == 1 .and. trim(arg) /= 'second') bad = 1
    else
      bad = 1
    end if
    call MPI_Allreduce(bad, total, 1, MPI_INTEGER, MPI_SUM, MPI_COMM_WORLD, ierr)
    if (rank == 0) call MPI_Send(total, 1, MPI_INTEGER, 0, 1, parent, ierr)
    call MPI_Comm_disconnect(parent, ierr)
  end if
  call MPI_Finalize(ierr)

contains

  ! The children's verdict (added to total, on parent rank 0), their number, and the end of inter.
  subroutine collect(c, n)
    T_COMM, intent(inout) :: c
    integer, intent(out) :: n
    integer :: got
    T_STATUS :: st
    call MPI_Comm_remote_size(c, n, ierr)
    if (rank == 0) then
      call MPI_Recv(got, 1, MPI_INTEGER, 0, 1, c, st, ierr)
      total = total + got
    end if
    call MPI_Comm_disconnect(c, ierr)
  end subroutine collect

end program f_spawn
