"""Data-parallel scaling: one training step of a zoo model on 1 and 2 ranks (MPI, CPU).

Each configuration runs under ``mpiexec -n R`` (mpich from the ``dist``
extra); every rank times steps of forward, loss, backward, bucketed
gradient all-reduce (gpudl.distributed.DataParallel) and SGD update on
8x8 digit-sized images. Reported: step time (median over ranks' means),
samples per second over all ranks, the share of the step spent in the
gradient all-reduce (waiting for the slower rank included), and the time
of one bare all-reduce of the model's gradients.

Usage: python -m benchmarks.scaling [--model resnet] [--batch 32] [--steps 20]
       [--ranks 1 2] [--threads 1]
(``--worker`` is the per-rank entry the driver launches.)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def worker(args):
    import gpudl
    from gpudl import distributed as dist
    from gpudl.zoo import MODELS
    ctx = dist.init(device="cpu")
    gpudl.manual_seed(0)
    model = MODELS[args.model][0]((1, 8, 8), 10)
    ctx.broadcast_model(model)
    loss, opt = gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.01, momentum=0.9)
    be = model.backend
    loss.backend = be
    rng = np.random.default_rng(ctx.rank)
    x = be.asarray(rng.normal(size=(args.batch, 1, 8, 8)), dtype=np.float32)
    y = be.asarray(rng.integers(0, 10, args.batch), dtype=np.int64)

    def step():
        out = model.forward(x, training=True)
        loss(out, y)
        model.backward(loss.backward(), need_input_grad=False)
        ctx.average_gradients(model)
        opt.step(model)
    for _ in range(args.warmup):
        step()
    ctx.comm.barrier()
    ctx.comm_seconds = 0.0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    total = time.perf_counter() - t0
    comm_share = ctx.comm_seconds / total
    # one bare all-reduce of a gradient-sized buffer, for the latency/bandwidth part alone
    n = sum(int(np.prod(p.shape)) for l in model.layers for p in l.params.values())
    buf = np.zeros(n, np.float32)
    bare = []
    for _ in range(20):
        ctx.comm.barrier()
        t = time.perf_counter()
        ctx.comm.allreduce(buf)
        bare.append(time.perf_counter() - t)
    every = ctx.comm.allgather(np.array([total / args.steps, comm_share, statistics.median(bare)]))
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({
            "ranks": ctx.world_size, "params": n, "buckets": len(ctx.bucket_order(model)),
            "step_s": float(np.median(every[:, 0])), "comm_share": float(np.mean(every[:, 1])),
            "bare_allreduce_s": float(np.median(every[:, 2]))}))


def launch(ranks, args, threads):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        env = dict(os.environ, GPUDL_DEVICE="cpu", OMP_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "benchmarks.scaling",
               "--worker", "--out", out, "--model", args.model, "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
        subprocess.run(cmd, check=True, env=env, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return json.loads(Path(out).read_text())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet")
    p.add_argument("--batch", type=int, default=32, help="per-rank batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per rank")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    from .common import cpu_name, record
    rows, base = [], None
    load_before = os.getloadavg()[0]
    configs = [(r, args.batch) for r in args.ranks]
    if 2 in args.ranks and args.batch % 2 == 0:  # strong scaling: same global batch
        configs.append((2, args.batch // 2))
    for ranks, batch in configs:
        a = argparse.Namespace(**{**vars(args), "batch": batch})
        res = launch(ranks, a, args.threads)
        thr = ranks * batch / res["step_s"]
        if base is None:
            base = thr
        rows.append([args.model, ranks, batch, ranks * batch, f"{res['step_s'] * 1e3:.1f}",
                     f"{thr:.0f}", f"{thr / base:.2f}", f"{100 * res['comm_share']:.1f}",
                     f"{res['bare_allreduce_s'] * 1e3:.3f}", res["buckets"]])
    notes = (f"One training step per row (forward, cross-entropy, backward, bucketed gradient "
             f"all-reduce over MPI, SGD momentum update), {args.steps} timed steps after "
             f"{args.warmup} warm-up, per-rank batch as given, 8x8 single-channel inputs, "
             f"{args.threads} BLAS thread(s) per rank, mpich shared memory on one machine. "
             f"samples/s counts every rank's samples; speedup is against the first row. "
             f"comm % = share of the step spent in DataParallel.average_gradients (the "
             f"all-reduce plus waiting for the slower rank); bare all-reduce = one MPI "
             f"all-reduce of a buffer the size of all gradients, after a barrier. The "
             f"machine has {os.cpu_count()} cores, so 2 ranks fill it: expect little or no "
             f"speedup here (the ranks share the cores and memory bandwidth, and other jobs "
             f"may run: 1-minute load average {load_before:.1f} before, "
             f"{os.getloadavg()[0]:.1f} after); the numbers show the overhead of the "
             f"communication, not the scaling across machines or GPUs.")
    record(f"Data-parallel scaling, {args.model} training step, 1 and 2 CPU ranks (MPI)",
           cpu_name(), ["model", "ranks", "batch/rank", "global batch", "step ms",
                        "samples/s", "speedup", "comm %", "bare all-reduce ms", "buckets"],
           rows, notes)


if __name__ == "__main__":
    main()
