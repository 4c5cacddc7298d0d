"""Starting a distributed run from the launcher's environment.

    mpiexec -n N ...        MPI sets PMI_RANK / OMPI_COMM_WORLD_RANK / PMIX_RANK...:
                            rank and size come from MPI (mpi4py's COMM_WORLD),
                            the local rank from MPI_LOCALRANKID or
                            OMPI_COMM_WORLD_LOCAL_RANK (else a shared-memory split)
    torchrun-style / Slurm  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
                            (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID stand in
                            for the first three under srun)
    nothing                 a world of one process

One process per GPU: on CUDA each process takes GPU ``local_rank`` (modulo
the GPUs it sees) before any CUDA work, and the communicator is NCCL, its
unique id broadcast over MPI or, without MPI, over a TCP store at
MASTER_ADDR:MASTER_PORT. On the CPU the communicator is MPI.
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass

from .comm import DistributedError, MPIComm, NCCLComm, SingleComm, TCPStore

_CONTEXT = None

_MPI_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_MPI_LOCAL = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


@dataclass
class LaunchInfo:
    launcher: str           # "mpi", "env", "slurm" or "none"
    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None = None
    master_port: int | None = None


def _int(environ, *names):
    for n in names:
        if environ.get(n, "") != "":
            return int(environ[n])
    return None


def launch_info(environ=None) -> LaunchInfo:
    """Who this process is, from the launcher's variables (see the module docstring).
    Under MPI, rank and world size are read again from MPI itself by init()."""
    env = os.environ if environ is None else environ
    addr = env.get("MASTER_ADDR") or None
    port = _int(env, "MASTER_PORT")
    if any(env.get(n) for n in _MPI_RANK):
        rank = _int(env, *_MPI_RANK)
        size = _int(env, "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
        local = _int(env, *_MPI_LOCAL)
        return LaunchInfo("mpi", rank, size or 1, rank if local is None else local, addr, port)
    if env.get("RANK") and env.get("WORLD_SIZE"):
        rank, size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK", "SLURM_LOCALID")
        return LaunchInfo("env", rank, size, rank if local is None else local, addr, port)
    if env.get("SLURM_PROCID") and env.get("SLURM_NTASKS"):
        rank, size = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        return LaunchInfo("slurm", rank, size, _int(env, "SLURM_LOCALID") or 0, addr, port)
    return LaunchInfo("none", 0, 1, 0, addr, port)


def _select_gpu(local_rank):
    """Make GPU local_rank (modulo the visible ones) current for CuPy and numba."""
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    if n == 0:
        raise DistributedError("device cuda asked for, but no GPU is visible")
    dev = local_rank % n
    cupy.cuda.Device(dev).use()
    try:
        from numba import cuda
        cuda.select_device(dev)
    except Exception:  # noqa: BLE001 - numba picks up CuPy's current device anyway
        pass
    return dev


def _install_abort_hook(comm):
    """An uncaught exception on one rank aborts every rank (mpiexec then exits
    non-zero) instead of leaving the others waiting in a collective."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        # The one line first: another rank may abort the job (a timeout of its
        # own) while this one is still writing the traceback.
        print(f"gpudl.distributed: rank {comm.rank}: uncaught {kind.__name__}: {value}; "
              f"aborting the job", file=sys.stderr, flush=True)
        try:
            previous(kind, value, tb)
        finally:
            comm.abort(1)
    sys.excepthook = hook


def init(device=None, backend="auto", timeout=None, bucket_mb=25.0, drop_last=False,
         abort_on_error=True):
    """Set up this process's part of a data-parallel run and return its
    DataParallel context (pass it to ``Trainer(..., distributed=ctx)``).

    ``device``: "auto", "cpu" or "cuda" (default GPUDL_DEVICE or auto); gpudl's
    current device is set to it (on CUDA after taking GPU local_rank).
    ``backend``: "auto" (NCCL on CUDA when CuPy has it, MPI otherwise),
    "nccl" or "mpi". ``timeout``: seconds a collective may take before the job
    is aborted (default GPUDL_DIST_TIMEOUT or 300). ``abort_on_error``: an
    uncaught exception on any rank aborts the whole job."""
    global _CONTEXT
    import gpudl
    from .ddp import DataParallel
    info = launch_info()
    device = device or os.environ.get("GPUDL_DEVICE", "auto") or "auto"
    want_cuda = device == "cuda" or (device == "auto" and gpudl.gpu_available())
    bootstrap = None
    if info.launcher == "mpi":
        bootstrap = MPIComm(timeout=timeout)
        info.rank, info.world_size = bootstrap.rank, bootstrap.size
        if os.environ.get("MPI_LOCALRANKID") is None and \
                os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK") is None:
            from mpi4py import MPI
            info.local_rank = bootstrap.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    if want_cuda and not gpudl.backend.simulator_enabled():
        _select_gpu(info.local_rank)
    be = gpudl.set_device("cuda" if want_cuda else "cpu")
    if backend not in ("auto", "nccl", "mpi"):
        raise ValueError(f"gpudl.distributed.init: backend must be auto, nccl or mpi, "
                         f"got {backend!r}")
    if info.world_size == 1:
        comm = bootstrap or SingleComm(timeout)
    else:
        use_nccl = backend == "nccl" or (backend == "auto" and be.name == "cuda"
                                         and getattr(be, "_cp", None) is not None
                                         and _has_nccl())
        if use_nccl:
            if bootstrap is None:
                if info.master_addr is None or info.master_port is None:
                    raise DistributedError(
                        f"rank {info.rank} of {info.world_size}: without MPI, NCCL needs "
                        f"MASTER_ADDR and MASTER_PORT to exchange its unique id")
                bootstrap = TCPStore(info.master_addr, info.master_port, info.rank,
                                     info.world_size, timeout)
            comm = NCCLComm(info.rank, info.world_size, bootstrap, timeout)
        elif bootstrap is not None:
            comm = bootstrap
        else:
            raise DistributedError(
                f"rank {info.rank} of {info.world_size} ({info.launcher} launch): training "
                f"on the {be.name} needs MPI here; launch with mpiexec (pip install "
                f"'gpudl[dist]'), or use GPUs with NCCL")
    if abort_on_error and comm.size > 1:
        _install_abort_hook(comm)
    ctx = DataParallel(comm, bucket_mb=bucket_mb, drop_last=drop_last)
    ctx.launch = info
    _CONTEXT = ctx
    return ctx


def _has_nccl():
    try:
        from cupy.cuda import nccl
        return bool(getattr(nccl, "available", True))
    except ImportError:
        return False


def current():
    """The context init() returned, or None."""
    return _CONTEXT


def shutdown():
    """Forget the context (tests; a process normally ends with its run)."""
    global _CONTEXT
    _CONTEXT = None


def abort(message=None, code=1):
    """Stop every rank of the job now."""
    ctx = _CONTEXT
    if message and ctx is None:
        traceback.print_stack()
    (ctx.comm if ctx else SingleComm()).abort(code, message)
