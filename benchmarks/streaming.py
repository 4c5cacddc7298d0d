"""Streaming data vs the in-memory fast path: one epoch of Trainer.fit, and the loader alone.

Data: MNIST-sized synthetic digits (N images of 1x28x28, uint8 pixels, 10
classes) written to a temporary folder as an IDX pair (the MNIST format) and
as a float32 .npy (pixels / 255, the decoded values), so the three sources
hold the same samples:
  in-memory   fit(x, y) on ndarrays: uploaded once, batches gathered on the device
  memmap      fit(ArrayDataset(np.load(x.npy, mmap_mode="r"), y)): float32 rows
              gathered from the map by the loader thread
  idx         fit(gpudl.datasets.open_idx(...)): uint8 rows read from the map and
              decoded to float32 in the loader thread
Models: gpudl.zoo.mlp (784-256-128-10, flattened input) and gpudl.zoo.lenet
on 1x28x28, SGD momentum 0.9, the same seed for every source (so the same
batches: the check before timing is that the streamed runs' weights equal
the in-memory run's bit for bit on the CPU). Throughput is samples per
second of one epoch (median of --repeat epochs after one warm-up epoch);
ratio = streamed / in-memory (1.0: streaming costs nothing).

Loader only: batches per second of one pass of the streamed sources with
no training: the background-thread loader (gpudl.stream.Feed.epoch, what
fit uses) and, for comparison, the same fetch and decode run inline.

The files are freshly written, so they sit in the page cache: this measures
the loader's gather, decode and hand-over, not the disk. Usage:
  python -m benchmarks.streaming [--samples N] [--batch B] [--models mlp lenet]
                                 [--repeat R] [--blas-threads T] [--quick]
                                 [--json out.json] [--no-record]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import struct
import tempfile
import time

import numpy as np

from .common import cpu_name, gpu_name, record

MODELS = ("mlp", "lenet")
SOURCES = ("in-memory", "memmap", "idx")


def write_data(folder, n, seed=0):
    """IDX images/labels and x.npy/y.npy of the same n synthetic 28x28 digits."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    paths = {}
    for name, arr in (("images", images), ("labels", labels)):
        paths[name] = os.path.join(folder, f"{name}-idx{arr.ndim}-ubyte")
        with open(paths[name], "wb") as f:
            f.write(struct.pack(">I", 0x0800 | arr.ndim))
            f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
            f.write(arr.tobytes())
    x = images[:, None].astype(np.float32)
    x /= 255  # as the IDX reader decodes, so every source holds the same values
    paths["x"], paths["y"] = os.path.join(folder, "x.npy"), os.path.join(folder, "y.npy")
    np.save(paths["x"], x)
    np.save(paths["y"], labels.astype(np.int64))
    return paths


def sources(paths, flatten):
    """name -> (fit's positional arguments, fit keywords) for each source."""
    from gpudl.data import ArrayDataset
    from gpudl.datasets import open_idx
    x = np.load(paths["x"])
    y = np.load(paths["y"])
    xm = np.load(paths["x"], mmap_mode="r")
    if flatten:
        x, xm = x.reshape(len(x), -1), xm.reshape(len(xm), -1)
    return {"in-memory": ((x, y), {}),
            "memmap": ((ArrayDataset(xm, np.load(paths["y"], mmap_mode="r")),), {}),
            "idx": ((open_idx(paths["images"], paths["labels"], flatten=flatten),), {})}


def make_trainer(model):
    import gpudl
    gpudl.manual_seed(0)
    net = gpudl.zoo.mlp((784,), 10) if model == "mlp" else gpudl.zoo.lenet((1, 28, 28))
    return gpudl.Trainer(net, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.01, momentum=0.9))


def time_fits(model, srcs, batch, repeat):
    """{source: (samples/s of one epoch, trainer)}: a warm-up epoch each, then
    ``repeat`` rounds timing one epoch of every source in turn, so a machine
    shared with other jobs loads them alike."""
    trainers = {name: make_trainer(model) for name in SOURCES}
    times = {name: [] for name in SOURCES}
    for r in range(1 + repeat):
        for name in SOURCES:
            fit_args, kw = srcs[name]
            t0 = time.perf_counter()
            trainers[name].fit(*fit_args, epochs=1, batch_size=batch, seed=1, verbose=False, **kw)
            if r:
                times[name].append(time.perf_counter() - t0)
    n = len(srcs["in-memory"][0][0])
    return {name: (n / statistics.median(times[name]), trainers[name]) for name in SOURCES}


def blas_limit(threads):
    """A context limiting BLAS to ``threads`` (None: as it is), via threadpoolctl."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=threads, user_api="blas")


def blas_threads():
    try:
        from threadpoolctl import threadpool_info
        return ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info()
                         if i["user_api"] == "blas") or "?"
    except ImportError:
        return "?"


def same_weights(a, b, exact=True):
    """Whether two runs trained on the same batches: bit for bit on the CPU; on a
    GPU within float32 rounding (an upload and a device gather of the same batch
    feed the same kernels, but the check must not fail on a reduction's order)."""
    sa, sb = a.model.state_arrays(), b.model.state_arrays()
    if exact:
        return all(np.array_equal(sa[k], sb[k]) for k in sa)
    return all(np.allclose(sa[k], sb[k], rtol=1e-4, atol=1e-6) for k in sa)


def loader_rate(dataset, model, batch, threaded):
    """Batches per second of one pass over ``dataset`` in a shuffled order."""
    from gpudl import stream as streams
    trainer = make_trainer(model)
    src = streams.source(dataset, None, True, "bench")
    feed = streams.Feed(trainer.model, trainer.loss, src)
    order = np.random.default_rng(0).permutation(src.n)
    t0 = time.perf_counter()
    count = 0
    if threaded:
        with feed.epoch(order, batch) as batches:
            for _ in batches:
                count += 1
    else:
        for task in src.tasks(order, batch):
            feed.produce(task)
            count += 1
    return count / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="limit BLAS threads (threadpoolctl); default: as they are")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: batches uploaded per step (GPUDL_PINNED_UPLOAD=1 from pinned "
                         "memory) against the data uploaded once")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    import gpudl
    gpudl.set_device(args.device)
    on_gpu = args.device == "cuda"
    if args.quick:
        args.samples, args.repeat = min(args.samples, 256), 1
    rows, loader_rows, checks = [], [], {}
    with tempfile.TemporaryDirectory(prefix="gpudl-stream-bench-") as folder:
        paths = write_data(folder, args.samples)
        for model in args.models:
            srcs = sources(paths, flatten=model == "mlp")
            with blas_limit(args.blas_threads):
                timed = time_fits(model, srcs, args.batch, args.repeat)
            rates = {k: v[0] for k, v in timed.items()}
            trainers = {k: v[1] for k, v in timed.items()}
            for name in SOURCES[1:]:
                checks[f"{model} {name}"] = same_weights(trainers["in-memory"], trainers[name],
                                                         exact=not on_gpu)
                if not checks[f"{model} {name}"]:
                    raise AssertionError(f"{model}: the {name} run's weights differ from the "
                                         f"in-memory run's: not the same batches")
            base = rates["in-memory"]
            rows.append([model, args.batch] + [f"{rates[s]:,.0f}" for s in SOURCES]
                        + [f"{rates[s] / base:.2f}" for s in SOURCES[1:]])
            for name in SOURCES[1:]:
                ds = srcs[name][0][0]
                with blas_limit(args.blas_threads):
                    threaded = loader_rate(ds, model, args.batch, True)
                    inline = loader_rate(ds, model, args.batch, False)
                loader_rows.append([f"{name} ({'flat' if model == 'mlp' else '1x28x28'})",
                                    args.batch, f"{threaded:,.0f}",
                                    f"{threaded * args.batch:,.0f}", f"{inline:,.0f}"])
    header = ["model", "batch", "in-memory samples/s", "memmap samples/s", "idx samples/s",
              "memmap / in-memory", "idx / in-memory"]
    lheader = ["source", "batch", "loader batches/s", "loader samples/s", "inline batches/s"]
    widths = [max(len(str(x)) for x in col) for col in zip(lheader, *loader_rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    loader_table = "\n".join([line(lheader), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                             + [line(r) for r in loader_rows])
    with blas_limit(args.blas_threads):
        threads = blas_threads()
    notes = (f"BLAS threads: {threads}. {args.samples} synthetic 28x28 digits, one epoch per timing (median of "
             f"{args.repeat} after a warm-up), SGD momentum 0.9, seed 1; the streamed runs' "
             f"weights equal the in-memory run's bit for bit (checked). Files in the page "
             f"cache: the loader's gather/decode/hand-over, not disk reads.\n\n"
             f"Loader alone (no training; shuffled order):\n\n{loader_table}")
    write = False if (args.no_record or args.quick) else None
    pinned = " pinned uploads" if on_gpu and os.environ.get("GPUDL_PINNED_UPLOAD") == "1" else ""
    record(f"Streaming data vs in-memory fit (benchmarks/streaming.py), float32, "
           f"{args.device}{pinned}, BLAS threads {threads}",
           gpu_name() if on_gpu else cpu_name(), header, rows, notes=notes, write=write)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows, "loader_header": lheader,
                       "loader_rows": loader_rows, "checks": checks,
                       "samples": args.samples, "blas_threads": threads}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
