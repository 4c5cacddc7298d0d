"""Data-parallel training across processes: one per GPU (NCCL) or per CPU
share (MPI). See docs/distributed.md.

    import gpudl
    from gpudl import distributed as dist
    ctx = dist.init()                       # rank, size and device from the launcher
    model = gpudl.zoo.resnet((1, 8, 8), 10)
    dist.convert_sync_batchnorm(model)      # optional: global batch statistics
    trainer = gpudl.Trainer(model, loss, optimizer, distributed=ctx)
    trainer.fit(x, y, batch_size=32, seed=0)   # 32 per rank

and launch ``mpiexec -n 4 python train.py`` (or ``gpudl train --distributed``).
"""
from .comm import (DEFAULT_TIMEOUT, Communicator, DistributedError, MPIComm, NCCLComm,
                   SingleComm, TCPStore, ThreadComm, ThreadGroup)
from .ddp import DataParallel, make_buckets
from .env import LaunchInfo, abort, current, init, launch_info, shutdown
from .sampler import DistributedSampler
from .syncbn import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

__all__ = ["init", "current", "shutdown", "abort", "launch_info", "LaunchInfo", "DataParallel",
           "DistributedSampler", "SyncBatchNorm", "convert_sync_batchnorm",
           "revert_sync_batchnorm", "Communicator", "MPIComm", "NCCLComm", "SingleComm",
           "TCPStore", "ThreadComm", "ThreadGroup", "DistributedError", "make_buckets",
           "DEFAULT_TIMEOUT"]
