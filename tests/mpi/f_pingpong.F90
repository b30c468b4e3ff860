! f_pingpong.F90: point-to-point, collectives and communicators from Fortran, exercising the
! routines the shim interposes (tests/fortran lists which); one source for the three Fortran
! bindings, chosen when compiling:
!
!   -DUSE_MPIFH   include "mpif.h"   (gfortran 10 and later also need -fallow-argument-mismatch)
!   -DUSE_MPI     use mpi
!   (neither)     use mpi_f08
!
! The Go test tests/fortran builds it with mpifort.openmpi and mpifort.mpich and runs it on an
! emulated cluster of two co-located VMs, without and with the shim, and compares the reports.
! Ranks pair up (0-1, 2-3, ...), so any even number of ranks works. Every rank checks what it
! receives; rank 0 prints one line
!
!   f_pingpong_<binding>: <N> ranks, <C> checks, <F> failures
!
! after any "FAIL rank <r>: <what>" lines, then
!
!   indices: waitany <i> <j> <k>, waitsome/testsome from <l> <m>
!
! the indices MPI_WAITANY returned for two requests (sorted) and for two null ones, and the
! lowest index MPI_WAITSOME and MPI_TESTSOME returned: "waitany 1 2 undefined, waitsome/testsome
! from 1 1" by the standard. They are reported rather than checked: MPICH 4.0's Fortran bindings
! get them wrong (the Go test knows how). Last comes
!
!   traffic: collectives <n>, library collectives <l>, gated calls <g>, messages sent by rank <m0> <m1> ...
!
! the collective calls every rank made (those the shim runs itself and those only the library
! runs: v-variants, scans), its blocking collective calls that pass the shim's gate
! (communicator and window creation, fences, MPI_Win_free, collective file I/O, accept and
! connect) and the point-to-point messages each rank sent, which the
! Go test finds again in the shim's statistics. No check is counted inside a polling loop, so the
! report is the same whatever the transport and the timing; it differs between the libraries
! (only Open MPI runs the accept/connect part, and only MPICH the MPI-4 parts).

#include "f_binding.h"

program f_pingpong
  use, intrinsic :: iso_c_binding, only: c_ptr, c_f_pointer
#include "f_use.h"
  integer, parameter :: NBIG = 200000
  integer :: sizes(3) = (/ 1, 1000, NBIG /)
  integer :: rank, nranks, partner, ierr, i, k, n, seen(3), nrank, npartner
  integer :: checks, failures, tot(2), sums(2), ivals(3), isum, gathered(64), nsent, ncoll, nlib, vcounts(64), vdispls(64)
  integer, allocatable :: sbuf(:), rbuf(:)
  double precision :: dval, dmax, dbuf(500)
  integer :: nout, ndone, bad, idxs(4), got(4), tags(4), lows(2), dims(2), src, dst
  logical :: flag, even, periods(2), remain(2)
  T_COMM :: newcomm, dupcomm, cartcomm, subcomm, nodecomm, grpcomm, halfcomm, intercomm, mergedcomm
  integer :: msize, mrank
  T_GROUP :: group, pgroup, lgroup
  T_TYPE :: triple
  T_REQ :: reqs(4), req, bigreqs(12)
  T_MSG :: msg
  T_STATUS :: st
  T_WIN :: win
  integer :: winbuf(10), ngated
  T_FILE :: fh
  character(len=200) :: fname, tmpdir
  integer :: fnlen
  character(len=MPI_MAX_PORT_NAME) :: port
  character(len=MPI_MAX_LIBRARY_VERSION_STRING) :: libver
  integer, pointer :: wptr(:)
  type(c_ptr) :: cbase
#ifndef USE_F08
  integer(kind=MPI_ADDRESS_KIND) :: abase
#endif
  STATUS_ARRAY(sts, 4)
  STATUS_ARRAY(bigsts, 12)

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks, ierr)
  checks = 0
  failures = 0
  ngated = 0
  nsent = 0
  ncoll = 0
  nlib = 0
  if (nranks < 2 .or. mod(nranks, 2) /= 0 .or. nranks > 64) then
    if (rank == 0) print '(a,i0)', 'f_pingpong: needs an even number of ranks up to 64, got ', nranks
    call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
  end if
  partner = ieor(rank, 1)
  even = mod(rank, 2) == 0
  allocate(sbuf(NBIG), rbuf(NBIG))

  ! Blocking ping-pong, three sizes (the largest streams through the ring in pieces).
  do k = 1, 3
    n = sizes(k)
    if (even) then
      call fill(sbuf, n, rank, k)
      call MPI_Send(sbuf, n, MPI_INTEGER, partner, 10 + k, MPI_COMM_WORLD, ierr)
      nsent = nsent + 1
      call MPI_Recv(rbuf, n, MPI_INTEGER, partner, 20 + k, MPI_COMM_WORLD, st, ierr)
      call check_status(st, partner, 20 + k, n, 'blocking pong status')
      call check_data(rbuf, n, rank, k, 1, 'blocking pong data')
    else
      call MPI_Recv(rbuf, n, MPI_INTEGER, partner, 10 + k, MPI_COMM_WORLD, st, ierr)
      call check_status(st, partner, 10 + k, n, 'blocking ping status')
      call check_data(rbuf, n, partner, k, 0, 'blocking ping data')
      sbuf(1:n) = rbuf(1:n) + 1
      call MPI_Send(sbuf, n, MPI_INTEGER, partner, 20 + k, MPI_COMM_WORLD, ierr)
      nsent = nsent + 1
    end if
  end do

  ! Nonblocking exchange, completed by Wait, by Test then Waitall, by Waitall with statuses.
  do k = 1, 3
    n = sizes(k)
    call fill(sbuf, n, rank, 10 + k)
    call MPI_Irecv(rbuf, n, MPI_INTEGER, partner, 30 + k, MPI_COMM_WORLD, reqs(1), ierr)
    call MPI_Isend(sbuf, n, MPI_INTEGER, partner, 30 + k, MPI_COMM_WORLD, reqs(2), ierr)
    nsent = nsent + 1
    select case (k)
    case (1)
      call MPI_Wait(reqs(1), st, ierr)
      call check_status(st, partner, 30 + k, n, 'irecv wait status')
      call MPI_Wait(reqs(2), MPI_STATUS_IGNORE, ierr)
    case (2)
      flag = .false.
      do while (.not. flag)
        call MPI_Test(reqs(1), flag, st, ierr)
      end do
      call check_status(st, partner, 30 + k, n, 'irecv test status')
      call MPI_Waitall(2, reqs, MPI_STATUSES_IGNORE, ierr)
    case default
      call MPI_Waitall(2, reqs, sts, ierr)
      call check_status(STATUS_AT(sts, 1), partner, 30 + k, n, 'irecv waitall status')
    end select
    call check(reqs(1) == MPI_REQUEST_NULL .and. reqs(2) == MPI_REQUEST_NULL, 'requests null after completion')
    call check_data(rbuf, n, partner, 10 + k, 0, 'nonblocking data')
  end do

  ! Waitany over a synchronous send and a receive, then over two null requests.
  call fill(sbuf, 100, rank, 40)
  call MPI_Irecv(rbuf, 100, MPI_INTEGER, partner, 40, MPI_COMM_WORLD, reqs(1), ierr)
  call MPI_Issend(sbuf, 100, MPI_INTEGER, partner, 40, MPI_COMM_WORLD, reqs(2), ierr)
  nsent = nsent + 1
  do i = 1, 2
    call MPI_Waitany(2, reqs, seen(i), st, ierr)
    if (seen(i) == 1) call check_status(st, partner, 40, 100, 'waitany receive status')
  end do
  call MPI_Waitany(2, reqs, seen(3), st, ierr)
  call check(reqs(1) == MPI_REQUEST_NULL .and. reqs(2) == MPI_REQUEST_NULL, 'waitany requests null')
  call check_data(rbuf, 100, partner, 40, 0, 'waitany data')

  ! Testall until done.
  call fill(sbuf, 300, rank, 41)
  call MPI_Irecv(rbuf, 300, MPI_INTEGER, partner, 41, MPI_COMM_WORLD, reqs(1), ierr)
  call MPI_Isend(sbuf, 300, MPI_INTEGER, partner, 41, MPI_COMM_WORLD, reqs(2), ierr)
  nsent = nsent + 1
  flag = .false.
  do while (.not. flag)
    call MPI_Testall(2, reqs, flag, sts, ierr)
  end do
  call check_status(STATUS_AT(sts, 1), partner, 41, 300, 'testall status')
  call check_data(rbuf, 300, partner, 41, 0, 'testall data')

  ! Wildcard receives keep the sender's order; a probe sees the first message.
  if (even) then
    do i = 1, 3
      sbuf(1:i) = 100 * rank + i
      call MPI_Send(sbuf, i, MPI_INTEGER, partner, 50 + i, MPI_COMM_WORLD, ierr)
      nsent = nsent + 1
    end do
  else
    call MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, st, ierr)
    call check_status(st, partner, 51, 1, 'probe status')
    do i = 1, 3
      call MPI_Recv(rbuf, 3, MPI_INTEGER, MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, st, ierr)
      call check_status(st, partner, 50 + i, i, 'wildcard status')
      call check(rbuf(1) == 100 * partner + i, 'wildcard data')
    end do
  end if

  ! Matched probes the other way round: Mprobe + Mrecv, Improbe + Imrecv.
  if (.not. even) then
    call fill(sbuf, 7, rank, 61)
    call MPI_Send(sbuf, 5, MPI_INTEGER, partner, 61, MPI_COMM_WORLD, ierr)
    nsent = nsent + 1
    call MPI_Send(sbuf, 7, MPI_INTEGER, partner, 62, MPI_COMM_WORLD, ierr)
    nsent = nsent + 1
  else
    call MPI_Mprobe(partner, 61, MPI_COMM_WORLD, msg, st, ierr)
    call check_status(st, partner, 61, 5, 'mprobe status')
    call MPI_Mrecv(rbuf, 5, MPI_INTEGER, msg, st, ierr)
    call check(msg == MPI_MESSAGE_NULL, 'message null after mrecv')
    call check_data(rbuf, 5, partner, 61, 0, 'mrecv data')
    flag = .false.
    do while (.not. flag)
      call MPI_Improbe(MPI_ANY_SOURCE, 62, MPI_COMM_WORLD, flag, msg, st, ierr)
    end do
    call MPI_Imrecv(rbuf, 7, MPI_INTEGER, msg, req, ierr)
    call MPI_Wait(req, st, ierr)
    call check_status(st, partner, 62, 7, 'imrecv status')
    call check_data(rbuf, 7, partner, 61, 0, 'imrecv data')
  end if

  ! Sendrecv and Sendrecv_replace.
  call fill(sbuf, 1000, rank, 70)
  call MPI_Sendrecv(sbuf, 1000, MPI_INTEGER, partner, 70, rbuf, 1000, MPI_INTEGER, partner, 70, &
                    MPI_COMM_WORLD, st, ierr)
  nsent = nsent + 1
  call check_status(st, partner, 70, 1000, 'sendrecv status')
  call check_data(rbuf, 1000, partner, 70, 0, 'sendrecv data')
  do i = 1, 500
    dbuf(i) = rank + 0.5d0 * i
  end do
  call MPI_Sendrecv_replace(dbuf, 500, MPI_DOUBLE_PRECISION, partner, 71, partner, 71, MPI_COMM_WORLD, st, ierr)
  nsent = nsent + 1
  call check(all(dbuf == (/ (partner + 0.5d0 * i, i = 1, 500) /)), 'sendrecv_replace data')

  ! Persistent requests: Startall + Waitall three times, Start + Wait once, then freed.
  call MPI_Recv_init(rbuf, 64, MPI_INTEGER, partner, 80, MPI_COMM_WORLD, reqs(1), ierr)
  call MPI_Send_init(sbuf, 64, MPI_INTEGER, partner, 80, MPI_COMM_WORLD, reqs(2), ierr)
  do k = 1, 4
    call fill(sbuf, 64, rank, 80 + k)
    if (k < 4) then
      call MPI_Startall(2, reqs, ierr)
      nsent = nsent + 1
      call MPI_Waitall(2, reqs, sts, ierr)
      call check_status(STATUS_AT(sts, 1), partner, 80, 64, 'persistent status')
    else
      call MPI_Start(reqs(1), ierr)
      call MPI_Start(reqs(2), ierr)
      nsent = nsent + 1
      call MPI_Wait(reqs(2), MPI_STATUS_IGNORE, ierr)
      call MPI_Wait(reqs(1), MPI_STATUS_IGNORE, ierr)
    end if
    call check_data(rbuf, 64, partner, 80 + k, 0, 'persistent data')
  end do
  call check(reqs(1) /= MPI_REQUEST_NULL .and. reqs(2) /= MPI_REQUEST_NULL, 'persistent requests kept')
  call MPI_Request_free(reqs(1), ierr)
  call MPI_Request_free(reqs(2), ierr)
  call check(reqs(1) == MPI_REQUEST_NULL .and. reqs(2) == MPI_REQUEST_NULL, 'persistent requests freed')

  ! Collectives on MPI_COMM_WORLD.
  call MPI_Barrier(MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  if (rank == 0) call fill(sbuf, 1000, 0, 90)
  call MPI_Bcast(sbuf, 1000, MPI_INTEGER, 0, MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  call check_data(sbuf, 1000, 0, 90, 0, 'bcast data')
  ivals = (/ rank + 1, rank * rank, -rank /)
  tot = 0
  call MPI_Allreduce(ivals, tot, 2, MPI_INTEGER, MPI_SUM, MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  call check(tot(1) == nranks * (nranks + 1) / 2 .and. tot(2) == (nranks - 1) * nranks * (2 * nranks - 1) / 6, &
             'allreduce sum')
  dval = 0.5d0 * (rank + 1)
  call MPI_Allreduce(dval, dmax, 1, MPI_DOUBLE_PRECISION, MPI_MAX, MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  call check(dmax == 0.5d0 * nranks, 'allreduce max double')
  ivals = rank
  call MPI_Allreduce(MPI_IN_PLACE, ivals, 3, MPI_INTEGER, MPI_MAX, MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  call check(all(ivals == nranks - 1), 'allreduce in place')
  isum = -1
  call MPI_Reduce(rank, isum, 1, MPI_INTEGER, MPI_SUM, 0, MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  call check(rank /= 0 .or. isum == nranks * (nranks - 1) / 2, 'reduce sum')
  gathered = -1
  call MPI_Allgather(rank, 1, MPI_INTEGER, gathered, 1, MPI_INTEGER, MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  call check(all(gathered(1:nranks) == (/ (i, i = 0, nranks - 1) /)), 'allgather')
  ! Collectives only the library runs: from Fortran too they pass through the shim, which waits
  ! for them polling its own messages (a migration's agreement needs the answer of a rank there).
  vcounts = 1
  vdispls = (/ (i, i = 0, 63) /)
  gathered = -1
  call MPI_Allgatherv(rank, 1, MPI_INTEGER, gathered, vcounts, vdispls, MPI_INTEGER, MPI_COMM_WORLD, ierr)
  nlib = nlib + 1
  call check(all(gathered(1:nranks) == (/ (i, i = 0, nranks - 1) /)), 'allgatherv')
  isum = -1
  call MPI_Scan(rank, isum, 1, MPI_INTEGER, MPI_SUM, MPI_COMM_WORLD, ierr)
  nlib = nlib + 1
  call check(isum == rank * (rank + 1) / 2, 'scan')
  gathered = -1
  call MPI_Alltoallv(vdispls, vcounts, vdispls, MPI_INTEGER, gathered, vcounts, vdispls, MPI_INTEGER, &
                     MPI_COMM_WORLD, ierr)
  nlib = nlib + 1
  call check(all(gathered(1:nranks) == rank), 'alltoallv')

  ! A split communicator in reverse rank order: exchange, reduce, broadcast, free.
  call MPI_Comm_split(MPI_COMM_WORLD, 0, nranks - rank, newcomm, ierr)
  ngated = ngated + 1 ! a communicator creation: gated
  call MPI_Comm_rank(newcomm, nrank, ierr)
  call check(nrank == nranks - 1 - rank, 'split rank')
  npartner = ieor(nrank, 1)
  call fill(sbuf, 5000, nrank, 100)
  call MPI_Irecv(rbuf, 5000, MPI_INTEGER, npartner, 100, newcomm, reqs(1), ierr)
  call MPI_Isend(sbuf, 5000, MPI_INTEGER, npartner, 100, newcomm, reqs(2), ierr)
  nsent = nsent + 1
  call MPI_Waitall(2, reqs, sts, ierr)
  call check_status(STATUS_AT(sts, 1), npartner, 100, 5000, 'split exchange status')
  call check_data(rbuf, 5000, npartner, 100, 0, 'split exchange data')
  call MPI_Barrier(newcomm, ierr)
  ncoll = ncoll + 1
  isum = -1
  call MPI_Allreduce(rank, isum, 1, MPI_INTEGER, MPI_MAX, newcomm, ierr)
  ncoll = ncoll + 1
  call check(isum == nranks - 1, 'split allreduce')
  if (nrank == 0) call fill(sbuf, 10, rank, 101)
  call MPI_Bcast(sbuf, 10, MPI_INTEGER, 0, newcomm, ierr)
  ncoll = ncoll + 1
  call check_data(sbuf, 10, nranks - 1, 101, 0, 'split bcast data')
  call MPI_Comm_free(newcomm, ierr)
  call check(newcomm == MPI_COMM_NULL, 'split comm freed')

  ! A duplicate of MPI_COMM_WORLD.
  call MPI_Comm_dup(MPI_COMM_WORLD, dupcomm, ierr)
  ngated = ngated + 1 ! a communicator creation: gated
  call fill(sbuf, 10, rank, 110)
  call MPI_Sendrecv(sbuf, 10, MPI_INTEGER, partner, 110, rbuf, 10, MPI_INTEGER, partner, 110, &
                    dupcomm, st, ierr)
  nsent = nsent + 1
  call check_data(rbuf, 10, partner, 110, 0, 'dup sendrecv data')
  call MPI_Comm_free(dupcomm, ierr)

  ! Waitsome, then Testsome, over two receives and two sends until all four completed. The
  ! indices are checked relative to the lowest one seen, which goes into the report.
  do k = 1, 2
    call fill(sbuf, 2000, rank, 120 + k)
    call MPI_Irecv(rbuf(1:1000), 1000, MPI_INTEGER, partner, 120, MPI_COMM_WORLD, reqs(1), ierr)
    call MPI_Irecv(rbuf(1001:2000), 1000, MPI_INTEGER, partner, 121, MPI_COMM_WORLD, reqs(2), ierr)
    call MPI_Isend(sbuf(1:1000), 1000, MPI_INTEGER, partner, 120, MPI_COMM_WORLD, reqs(3), ierr)
    call MPI_Isend(sbuf(1001:2000), 1000, MPI_INTEGER, partner, 121, MPI_COMM_WORLD, reqs(4), ierr)
    nsent = nsent + 2
    ndone = 0
    got = -1000
    do while (ndone < 4)
      if (k == 1) then
        call MPI_Waitsome(4, reqs, nout, idxs, sts, ierr)
      else
        call MPI_Testsome(4, reqs, nout, idxs, sts, ierr)
      end if
      if (nout < 0 .or. ndone + nout > 4) exit
      do i = 1, nout
        got(ndone + i) = idxs(i)
        tags(ndone + i) = TAG_AT(sts, i)
      end do
      ndone = ndone + nout
    end do
    lows(k) = minval(got)
    bad = 0
    do i = 1, 4
      if (count(got == lows(k) + i - 1) /= 1) bad = bad + 1
      if (got(i) - lows(k) <= 1 .and. tags(i) /= 120 + got(i) - lows(k)) bad = bad + 1
    end do
    call check(ndone == 4 .and. bad == 0, 'waitsome/testsome indices and statuses')
    call check_data(rbuf, 2000, partner, 120 + k, 0, 'waitsome/testsome data')
    call MPI_Waitsome(4, reqs, nout, idxs, sts, ierr)
    call check(nout == MPI_UNDEFINED, 'waitsome on null requests')
  end do

  ! Waitall over more requests than the shim converts on its stack: six receives, six sends.
  call fill(sbuf, 600, rank, 125)
  do i = 1, 6
    call MPI_Irecv(rbuf(100 * i - 99:100 * i), 100, MPI_INTEGER, partner, 125 + i, MPI_COMM_WORLD, &
                   bigreqs(i), ierr)
    call MPI_Isend(sbuf(100 * i - 99:100 * i), 100, MPI_INTEGER, partner, 125 + i, MPI_COMM_WORLD, &
                   bigreqs(6 + i), ierr)
  end do
  nsent = nsent + 6
  call MPI_Waitall(12, bigreqs, bigsts, ierr)
  bad = 0
  do i = 1, 6
    if (TAG_AT(bigsts, i) /= 125 + i .or. bigreqs(i) /= MPI_REQUEST_NULL) bad = bad + 1
  end do
  call check(bad == 0, 'waitall of 12 statuses')
  call check_data(rbuf, 600, partner, 125, 0, 'waitall of 12 data')

  ! A receive nobody matches, cancelled: Request_get_status, then Wait and Test_cancelled.
  call MPI_Irecv(rbuf, 10, MPI_INTEGER, partner, 999, MPI_COMM_WORLD, req, ierr)
  call MPI_Cancel(req, ierr)
  flag = .false.
  do while (.not. flag)
    call MPI_Request_get_status(req, flag, st, ierr)
  end do
  call MPI_Wait(req, st, ierr)
  call MPI_Test_cancelled(st, flag, ierr)
  call check(flag .and. req == MPI_REQUEST_NULL, 'cancelled receive')

  ! Ssend found by Iprobe; Rsend to a receive posted before a barrier.
  if (even) then
    call fill(sbuf, 50, rank, 130)
    call MPI_Ssend(sbuf, 50, MPI_INTEGER, partner, 130, MPI_COMM_WORLD, ierr)
    nsent = nsent + 1
  else
    flag = .false.
    do while (.not. flag)
      call MPI_Iprobe(partner, 130, MPI_COMM_WORLD, flag, st, ierr)
    end do
    call check_status(st, partner, 130, 50, 'iprobe status')
    call MPI_Recv(rbuf, 50, MPI_INTEGER, partner, 130, MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
    call check_data(rbuf, 50, partner, 130, 0, 'ssend data')
    call MPI_Irecv(rbuf, 20, MPI_INTEGER, partner, 131, MPI_COMM_WORLD, req, ierr)
  end if
  call MPI_Barrier(MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  if (even) then
    call fill(sbuf, 20, rank, 131)
    call MPI_Rsend(sbuf, 20, MPI_INTEGER, partner, 131, MPI_COMM_WORLD, ierr)
    nsent = nsent + 1
  else
    call MPI_Wait(req, st, ierr)
    call check_status(st, partner, 131, 20, 'rsend status')
    call check_data(rbuf, 20, partner, 131, 0, 'rsend data')
  end if

  ! Gather, Scatter, Alltoall, Reduce_scatter_block.
  ivals(1) = 10 * rank + 1
  call MPI_Gather(ivals, 1, MPI_INTEGER, gathered, 1, MPI_INTEGER, 0, MPI_COMM_WORLD, ierr)
  call check(rank /= 0 .or. all(gathered(1:nranks) == (/ (10 * i + 1, i = 0, nranks - 1) /)), 'gather')
  if (rank == 0) gathered(1:nranks) = (/ (7 * i, i = 1, nranks) /)
  call MPI_Scatter(gathered, 1, MPI_INTEGER, isum, 1, MPI_INTEGER, 0, MPI_COMM_WORLD, ierr)
  call check(isum == 7 * (rank + 1), 'scatter')
  sbuf(1:nranks) = (/ (100 * rank + i, i = 0, nranks - 1) /)
  call MPI_Alltoall(sbuf, 1, MPI_INTEGER, rbuf, 1, MPI_INTEGER, MPI_COMM_WORLD, ierr)
  call check(all(rbuf(1:nranks) == (/ (100 * i + rank, i = 0, nranks - 1) /)), 'alltoall')
  sbuf(1:2 * nranks) = rank + 1
  call MPI_Reduce_scatter_block(sbuf, rbuf, 2, MPI_INTEGER, MPI_SUM, MPI_COMM_WORLD, ierr)
  call check(all(rbuf(1:2) == nranks * (nranks + 1) / 2), 'reduce_scatter_block')
  ncoll = ncoll + 4

  ! A periodic ring (LOGICAL periods) as an N x 1 grid, and its 1 x 1 sub-grids (LOGICAL
  ! remain_dims; MPICH 4.0 returns MPI_COMM_NULL for 0-dimensional ones).
  dims = (/ nranks, 1 /)
  periods = (/ .true., .false. /)
  call MPI_Cart_create(MPI_COMM_WORLD, 2, dims, periods, .false., cartcomm, ierr)
  ngated = ngated + 1 ! a communicator creation: gated
  call MPI_Cart_shift(cartcomm, 0, 1, src, dst, ierr)
  call check(src == mod(rank - 1 + nranks, nranks) .and. dst == mod(rank + 1, nranks), 'cart shift')
  call fill(sbuf, 30, rank, 140)
  call MPI_Sendrecv(sbuf, 30, MPI_INTEGER, dst, 140, rbuf, 30, MPI_INTEGER, src, 140, cartcomm, st, ierr)
  nsent = nsent + 1
  call check_data(rbuf, 30, src, 140, 0, 'cart sendrecv data')
  remain = (/ .false., .true. /)
  call MPI_Cart_sub(cartcomm, remain, subcomm, ierr)
  ngated = ngated + 1 ! a communicator creation: gated
  call MPI_Comm_size(subcomm, n, ierr)
  call check(n == 1, 'cart_sub size')
  call MPI_Comm_free(subcomm, ierr)
  call MPI_Comm_free(cartcomm, ierr)

  ! The ranks sharing memory with this one, and a communicator made from a group.
  call MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, nodecomm, ierr)
  ngated = ngated + 1 ! a communicator creation: gated
  call MPI_Comm_size(nodecomm, n, ierr)
  call check(n >= 1, 'split_type size')
  call MPI_Comm_free(nodecomm, ierr)
  call MPI_Comm_group(MPI_COMM_WORLD, group, ierr)
  call MPI_Comm_create(MPI_COMM_WORLD, group, grpcomm, ierr)
  ngated = ngated + 1 ! a communicator creation: gated
  call MPI_Group_free(group, ierr)
  isum = -1
  call MPI_Allreduce(rank, isum, 1, MPI_INTEGER, MPI_MIN, grpcomm, ierr)
  ncoll = ncoll + 1
  call check(isum == 0, 'comm_create allreduce')
  call MPI_Comm_free(grpcomm, ierr)

  ! A derived datatype, freed after use.
  call MPI_Type_contiguous(3, MPI_INTEGER, triple, ierr)
  call MPI_Type_commit(triple, ierr)
  call fill(sbuf, 300, rank, 150)
  call MPI_Sendrecv(sbuf, 100, triple, partner, 150, rbuf, 100, triple, partner, 150, MPI_COMM_WORLD, st, ierr)
  nsent = nsent + 1
  call check_data(rbuf, 300, partner, 150, 0, 'derived datatype data')
  call MPI_Type_free(triple, ierr)
  call check(triple == MPI_DATATYPE_NULL, 'datatype freed')

  ! Windows, made by MPI_Win_create and by MPI_Win_allocate: a Put to the partner between two
  ! fences, then freed. These 8 calls pass the shim's gate where the ranks share a host.
  ngated = ngated + 8
  winbuf = -1
  call MPI_Win_create(winbuf, int(40, MPI_ADDRESS_KIND), 4, MPI_INFO_NULL, MPI_COMM_WORLD, win, ierr)
  call fence_put(win, winbuf, 160, 'win_create put')
#ifdef USE_F08
  call MPI_Win_allocate(int(40, MPI_ADDRESS_KIND), 4, MPI_INFO_NULL, MPI_COMM_WORLD, cbase, win, ierr)
#else
  call MPI_Win_allocate(int(40, MPI_ADDRESS_KIND), 4, MPI_INFO_NULL, MPI_COMM_WORLD, abase, win, ierr)
  cbase = transfer(abase, cbase)
#endif
  call c_f_pointer(cbase, wptr, (/ 10 /))
  wptr = -1
  call fence_put(win, wptr, 170, 'win_allocate put')
#ifdef LARGE_WINDOWS
  ! MPI-4's forms with an INTEGER(MPI_ADDRESS_KIND) displacement unit (MPICH's mpi_f08):
  ! MPI_Win_allocate and MPI_Win_create, each with a Put between two fences, then freed.
  ngated = ngated + 8
  call MPI_Win_allocate(int(40, MPI_ADDRESS_KIND), int(4, MPI_ADDRESS_KIND), MPI_INFO_NULL, MPI_COMM_WORLD, &
                        cbase, win, ierr)
  call c_f_pointer(cbase, wptr, (/ 10 /))
  wptr = -1
  call fence_put(win, wptr, 171, 'large win_allocate put')
  winbuf = -1
  call MPI_Win_create(winbuf, int(40, MPI_ADDRESS_KIND), int(4, MPI_ADDRESS_KIND), MPI_INFO_NULL, &
                      MPI_COMM_WORLD, win, ierr)
  call fence_put(win, winbuf, 172, 'large win_create put')
#endif

  ! Active-target synchronisation: each rank exposes its window to its partner and puts into
  ! the partner's (post, start, put, complete, wait). Win_create, Win_start, Win_wait and
  ! Win_free pass the shim's gate.
  ngated = ngated + 4
  winbuf = -1
  call MPI_Win_create(winbuf, int(40, MPI_ADDRESS_KIND), 4, MPI_INFO_NULL, MPI_COMM_WORLD, win, ierr)
  call MPI_Comm_group(MPI_COMM_WORLD, group, ierr)
  call MPI_Group_incl(group, 1, (/ partner /), pgroup, ierr)
  call fill(sbuf, 10, rank, 175)
  call MPI_Win_post(pgroup, 0, win, ierr)
  call MPI_Win_start(pgroup, 0, win, ierr)
  call MPI_Put(sbuf, 10, MPI_INTEGER, partner, 0_MPI_ADDRESS_KIND, 10, MPI_INTEGER, win, ierr)
  call MPI_Win_complete(win, ierr)
  call MPI_Win_wait(win, ierr)
  call check_data(winbuf, 10, partner, 175, 0, 'post/start put')
  ! A second epoch, its exposure ended by polling MPI_Win_test: its gate counts once however
  ! often the test finds the origin done before the library is (Win_start and the exposure: 2).
  ngated = ngated + 2
  call fill(sbuf, 10, rank, 176)
  call MPI_Win_post(pgroup, 0, win, ierr)
  call MPI_Win_start(pgroup, 0, win, ierr)
  call MPI_Put(sbuf, 10, MPI_INTEGER, partner, 0_MPI_ADDRESS_KIND, 10, MPI_INTEGER, win, ierr)
  call MPI_Win_complete(win, ierr)
  flag = .false.
  do while (.not. flag)
    call MPI_Win_test(win, flag, ierr)
  end do
  call check_data(winbuf, 10, partner, 176, 0, 'post/start put, Win_test')
  call MPI_Win_free(win, ierr)
  call MPI_Group_free(pgroup, ierr)
  call MPI_Group_free(group, ierr)

  ! An intercommunicator between the even and the odd ranks (leaders: world ranks 0 and 1): the
  ! split, the intercommunicator's creation, a barrier over it (the library's) and its merge
  ! (the odd ranks high) pass the gate; the merged order is checked.
  ngated = ngated + 4
  nlib = nlib + 1
  call MPI_Comm_split(MPI_COMM_WORLD, mod(rank, 2), rank, halfcomm, ierr)
  call MPI_Intercomm_create(halfcomm, 0, MPI_COMM_WORLD, 1 - mod(rank, 2), 9, intercomm, ierr)
  call MPI_Barrier(intercomm, ierr)
  call MPI_Intercomm_merge(intercomm, mod(rank, 2) == 1, mergedcomm, ierr)
  call MPI_Comm_size(mergedcomm, msize, ierr)
  call MPI_Comm_rank(mergedcomm, mrank, ierr)
  if (mod(rank, 2) == 0) then
    call check(msize == nranks .and. mrank == rank / 2, 'merged rank (even)')
  else
    call check(msize == nranks .and. mrank == (nranks + 1) / 2 + rank / 2, 'merged rank (odd)')
  end if
  call MPI_Comm_free(mergedcomm, ierr)
  call MPI_Comm_free(intercomm, ierr)
  call MPI_Comm_free(halfcomm, ierr)

#ifdef MPI4_GROUPS
  ! MPI-4's communicators from groups (MPICH): the world's, which the shim records (a barrier on
  ! it takes the region), and an intercommunicator between this rank and its partner. Both
  ! creations pass the gate.
  ngated = ngated + 2
  ncoll = ncoll + 1
  call MPI_Comm_group(MPI_COMM_WORLD, group, ierr)
  call MPI_Comm_create_from_group(group, 'f_pingpong world', MPI_INFO_NULL, MPI_ERRORS_RETURN, mergedcomm, ierr)
  call MPI_Comm_size(mergedcomm, msize, ierr)
  call check(ierr == MPI_SUCCESS .and. msize == nranks, 'communicator from a group')
  call MPI_Barrier(mergedcomm, ierr)
  call MPI_Comm_free(mergedcomm, ierr)
  call MPI_Group_incl(group, 1, (/ partner /), pgroup, ierr)
  call MPI_Group_incl(group, 1, (/ rank /), lgroup, ierr)
  call MPI_Intercomm_create_from_groups(lgroup, 0, pgroup, 0, 'f_pingpong pair', MPI_INFO_NULL, &
                                        MPI_ERRORS_RETURN, intercomm, ierr)
  call MPI_Comm_remote_size(intercomm, msize, ierr)
  call check(ierr == MPI_SUCCESS .and. msize == 1, 'intercommunicator from groups')
  call MPI_Comm_free(intercomm, ierr)
  call MPI_Group_free(lgroup, ierr)
  call MPI_Group_free(pgroup, ierr)
  call MPI_Group_free(group, ierr)
#endif

  ! Accept and connect between the even and the odd ranks (Open MPI: MPICH 4.0.2's UCX netmod
  ! has no ports): rank 0 opens a port and sends its name to rank 1, the even half accepts, the
  ! odd half connects. The split, the accept or connect and the disconnect pass the gate.
  call MPI_Get_library_version(libver, n, ierr)
  if (index(libver(1:n), 'Open MPI') > 0) then
    ngated = ngated + 3
    call MPI_Comm_split(MPI_COMM_WORLD, mod(rank, 2), rank, halfcomm, ierr)
    port = ' '
    if (rank == 0) then
      call MPI_Open_port(MPI_INFO_NULL, port, ierr)
      call MPI_Send(port, MPI_MAX_PORT_NAME, MPI_CHARACTER, 1, 77, MPI_COMM_WORLD, ierr)
      nsent = nsent + 1
    else if (rank == 1) then
      call MPI_Recv(port, MPI_MAX_PORT_NAME, MPI_CHARACTER, 0, 77, MPI_COMM_WORLD, st, ierr)
    end if
    if (mod(rank, 2) == 0) then
      call MPI_Comm_accept(port, MPI_INFO_NULL, 0, halfcomm, intercomm, ierr)
    else
      call MPI_Comm_connect(port, MPI_INFO_NULL, 0, halfcomm, intercomm, ierr)
    end if
    call check(ierr == MPI_SUCCESS, 'accept/connect')
    call MPI_Comm_remote_size(intercomm, msize, ierr)
    call check(msize == nranks / 2, 'accepted/connected intercommunicator')
    call MPI_Comm_disconnect(intercomm, ierr)
    if (rank == 0) call MPI_Close_port(port, ierr)
    call MPI_Comm_free(halfcomm, ierr)
  end if

  ! A file of the world, by collective I/O: rank 0 names it (in TMPDIR, else /tmp); each rank
  ! sees its own 10 integers through its view, writes them, reads them back by a split
  ! collective. open, set_view, write_at_all, read_all_begin, read_all_end and close: 6 more
  ! gated calls.
  ngated = ngated + 6
  if (rank == 0) then
    call get_environment_variable('TMPDIR', tmpdir, fnlen)
    if (fnlen == 0 .or. fnlen > 150) tmpdir = '/tmp'
    write (fname, '(a,a,i0,a)') trim(tmpdir), '/f_pingpong_' // BINDING // '_', getpid(), '.dat'
  end if
  call MPI_Bcast(fname, len(fname), MPI_CHARACTER, 0, MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 1
  call MPI_File_open(MPI_COMM_WORLD, fname, MPI_MODE_CREATE + MPI_MODE_RDWR + MPI_MODE_DELETE_ON_CLOSE, &
    MPI_INFO_NULL, fh, ierr)
  call check(ierr == MPI_SUCCESS, 'file open')
  call MPI_File_set_view(fh, int(rank * 40, MPI_OFFSET_KIND), MPI_INTEGER, MPI_INTEGER, 'native', MPI_INFO_NULL, ierr)
  call check(ierr == MPI_SUCCESS, 'file view')
  call fill(sbuf, 10, rank, 180)
  call MPI_File_write_at_all(fh, 0_MPI_OFFSET_KIND, sbuf, 10, MPI_INTEGER, st, ierr)
  call check(ierr == MPI_SUCCESS, 'file write_at_all')
  rbuf(1:10) = -1
  call MPI_File_read_all_begin(fh, rbuf, 10, MPI_INTEGER, ierr)
  call MPI_File_read_all_end(fh, rbuf, st, ierr)
  call check(ierr == MPI_SUCCESS, 'file read_all_end')
  call check_data(rbuf, 10, rank, 180, 0, 'file data')
  call MPI_File_close(fh, ierr)
  call check(fh == MPI_FILE_NULL, 'file closed')

  tot = (/ checks, failures /)
  call MPI_Reduce(tot, sums, 2, MPI_INTEGER, MPI_SUM, 0, MPI_COMM_WORLD, ierr)
  ncoll = ncoll + 2
  call MPI_Gather(nsent, 1, MPI_INTEGER, gathered, 1, MPI_INTEGER, 0, MPI_COMM_WORLD, ierr)
  if (rank == 0) then
    write (*, '(a,a,a,i0,a,i0,a,i0,a)') 'f_pingpong_', BINDING, ': ', nranks, ' ranks, ', sums(1), ' checks, ', &
      sums(2), ' failures'
    if (seen(3) == MPI_UNDEFINED) then
      write (*, '(a,i0,1x,i0,a,i0,1x,i0)') 'indices: waitany ', minval(seen(1:2)), maxval(seen(1:2)), &
        ' undefined, waitsome/testsome from ', lows
    else
      write (*, '(a,i0,1x,i0,1x,i0,a,i0,1x,i0)') 'indices: waitany ', minval(seen(1:2)), maxval(seen(1:2)), &
        seen(3), ', waitsome/testsome from ', lows
    end if
    write (*, '(a,i0,a,i0,a,i0,a,64(1x,i0))') 'traffic: collectives ', ncoll, ', library collectives ', nlib, &
      ', gated calls ', ngated, ', messages sent by rank', gathered(1:nranks)
  end if
  flush (6)
  call MPI_Finalize(ierr)
  if (failures > 0) stop 1

contains

  ! A Put of pattern(rank, k, 1:10) into the partner's window w between two fences; buf is this
  ! rank's window memory, which must then hold the partner's. Then w is freed.
  subroutine fence_put(w, buf, k, what)
    T_WIN, intent(inout) :: w
    integer, intent(inout) :: buf(*)
    integer, intent(in) :: k
    character(*), intent(in) :: what
    call fill(sbuf, 10, rank, k)
    call MPI_Win_fence(0, w, ierr)
    call MPI_Put(sbuf, 10, MPI_INTEGER, partner, 0_MPI_ADDRESS_KIND, 10, MPI_INTEGER, w, ierr)
    call MPI_Win_fence(0, w, ierr)
    call check_data(buf, 10, partner, k, 0, what)
    call MPI_Win_free(w, ierr)
    call check(w == MPI_WIN_NULL, what // ': window freed')
  end subroutine fence_put

  ! The test pattern of message k from rank r.
  integer function pattern(r, k, i)
    integer, intent(in) :: r, k, i
    pattern = r * 1000003 + k * 7919 + i
  end function pattern

  subroutine fill(buf, n, r, k)
    integer, intent(out) :: buf(*)
    integer, intent(in) :: n, r, k
    integer :: j
    do j = 1, n
      buf(j) = pattern(r, k, j)
    end do
  end subroutine fill

  subroutine check(ok, what)
    logical, intent(in) :: ok
    character(*), intent(in) :: what
    checks = checks + 1
    if (.not. ok) then
      failures = failures + 1
      write (*, '(a,i0,a,a)') 'FAIL rank ', rank, ': ', what
    end if
  end subroutine check

  ! buf(1:n) must hold pattern(r, k, :) + add.
  subroutine check_data(buf, n, r, k, add, what)
    integer, intent(in) :: buf(*), n, r, k, add
    character(*), intent(in) :: what
    integer :: j, bad
    bad = 0
    do j = 1, n
      if (buf(j) /= pattern(r, k, j) + add) bad = bad + 1
    end do
    call check(bad == 0, what)
  end subroutine check_data

  subroutine check_status(s, source, tag, count, what)
    T_STATUS, intent(in) :: s
    integer, intent(in) :: source, tag, count
    character(*), intent(in) :: what
    integer :: got
    call MPI_Get_count(s, MPI_INTEGER, got, ierr)
    call check(SOURCE_OF(s) == source .and. TAG_OF(s) == tag .and. got == count, what)
  end subroutine check_status

end program f_pingpong
