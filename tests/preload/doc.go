// Package preload tests what the shim libraries do to processes merely by being preloaded: a
// process that never calls MPI_Init (a shell, mpirun, orted, hydra_pmi_proxy) must not load the
// Go control plane or start extra threads; a job without a region must stay pure pass-through;
// a library of the wrong MPI ABI family must stop the program with a clear message instead of
// crashing it.
package preload
