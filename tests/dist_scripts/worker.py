"""Run by tests/test_distributed.py under ``mpiexec -n 2``: one scenario per launch.

    worker.py SCENARIO OUT_DIR

equiv   MLP, per-rank batch 4: final weights (rank 0 writes them), every rank's
        weights compared after every step, each epoch's shards written
syncbn  a small ResNet with SyncBatchNorm, per-rank batch 4: final weights and buffers
files   ModelCheckpoint, CSVLogger and progress lines on every rank's own path
        (only rank 0's may appear), then a resume that must match an uninterrupted run
fail    rank 1 raises in its third step: the job must end, non-zero, quickly
"""
import json
import os
import sys

import numpy as np

import gpudl
from gpudl import distributed as dist
from gpudl.callbacks import Callback, LambdaCallback
from gpudl.checkpoint import ModelCheckpoint
from gpudl.history import CSVLogger

scenario, out = sys.argv[1], sys.argv[2]
ctx = dist.init(device="cpu", timeout=float(os.environ.get("WORKER_TIMEOUT", "60")))
rank = ctx.rank


def mlp_data(n=36):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n)


def image_data(n=32):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, n)


def mlp():
    gpudl.manual_seed(1)
    return gpudl.zoo.mlp((6,), 3, hidden=(8,))


def trainer(model):
    return gpudl.Trainer(model, gpudl.losses.CrossEntropy(),
                         gpudl.optim.SGD(0.1, momentum=0.9), distributed=ctx)


class SameWeights(Callback):
    """After every step, every rank must hold rank 0's weights exactly."""
    steps = 0

    def on_batch_end(self, batch, logs):
        flat = np.concatenate([v.ravel() for v in self.trainer.model.state_arrays().values()])
        every = ctx.comm.allgather(flat)
        if not all(np.array_equal(every[0], e) for e in every[1:]):
            raise AssertionError(f"ranks hold different weights after step {self.trainer.step}")
        self.steps += 1


def save_weights(model, name):
    if ctx.is_main:
        np.savez(os.path.join(out, name), **model.state_arrays())


if scenario == "equiv":
    x, y = mlp_data()
    model = mlp()
    t = trainer(model)
    shards = []
    shard = ctx.shard
    ctx.shard = lambda order: shards.append(shard(order)) or shards[-1]
    check = SameWeights()
    history = t.fit(x, y, epochs=2, batch_size=4, seed=5, verbose=False, callbacks=[check])
    every = [ctx.comm.allgather(np.asarray(s, np.int64)) for s in shards]
    save_weights(model, "equiv.npz")
    if ctx.is_main:
        with open(os.path.join(out, "equiv.json"), "w") as f:
            json.dump({"steps_checked": check.steps, "history": history,
                       "shards": [e.tolist() for e in every], "world": ctx.world_size,
                       "calls": ctx.allreduce_calls}, f)

elif scenario == "syncbn":
    x, y = image_data()
    gpudl.manual_seed(2)
    model = gpudl.zoo.resnet((1, 8, 8), 3, widths=(4, 8))
    dist.convert_sync_batchnorm(model)
    t = trainer(model)
    t.fit(x, y, epochs=2, batch_size=4, seed=7, verbose=False, callbacks=[SameWeights()])
    save_weights(model, "syncbn.npz")

elif scenario == "files":
    x, y = mlp_data()
    # every rank names its own files: only rank 0's may exist afterwards
    ck = os.path.join(out, f"ckpt-rank{rank}.npz")
    t = trainer(mlp())
    t.fit(x, y, epochs=2, batch_size=4, seed=5, verbose=True,
          callbacks=[ModelCheckpoint(ck), CSVLogger(os.path.join(out, f"hist-rank{rank}.csv"))])
    # resume from rank 0's checkpoint (a shared file system) up to epoch 3 ...
    resumed = mlp()
    trainer(resumed).fit(x, y, epochs=3, batch_size=4, seed=5, verbose=False,
                         callbacks=[ModelCheckpoint(ck), CSVLogger(os.path.join(
                             out, f"hist-rank{rank}.csv"))],
                         resume_from=os.path.join(out, "ckpt-rank0.npz"))
    # ... must equal three epochs without interruption
    straight = mlp()
    trainer(straight).fit(x, y, epochs=3, batch_size=4, seed=5, verbose=False)
    a, b = resumed.state_arrays(), straight.state_arrays()
    if not all(np.array_equal(a[k], b[k]) for k in a):
        raise AssertionError("resumed run differs from the uninterrupted one")
    if ctx.is_main:
        print("resume ok", flush=True)

elif scenario == "fail":
    x, y = mlp_data()

    def boom(batch, logs):
        if rank == 1 and batch == 2:
            raise RuntimeError("rank 1 fails on purpose")
    trainer(mlp()).fit(x, y, epochs=50, batch_size=4, seed=5, verbose=False,
                       callbacks=[LambdaCallback(on_batch_end=boom)])

else:
    raise SystemExit(f"unknown scenario {scenario}")
