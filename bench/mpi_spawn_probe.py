# How long MPI_Comm_spawn of 2 workers takes from a singleton (the measurement behind the
# cluster pool's "run under mpirun" error; see docs/architecture.md). Needs mpi4py.
import sys, time
t0 = time.perf_counter()
from mpi4py import MPI
t1 = time.perf_counter()
child = MPI.COMM_SELF.Spawn(sys.executable, args=["-c", "from mpi4py import MPI; c = MPI.Comm.Get_parent(); c.Barrier(); c.Disconnect()"], maxprocs=2)
child.Barrier()
t2 = time.perf_counter()
child.Disconnect()
print(f"init {t1-t0:.3f} s, Comm_spawn of 2 workers {t2-t1:.3f} s")
