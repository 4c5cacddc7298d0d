"""The benchmark suite: named groups on the current device, every result
checked against a reference before it is timed, ratios against baselines
timed in the same run, one JSON file and one dated RESULTS.md entry.

Groups (each reuses the case tables and helpers of the module named):
  gemm    float32 matrix product, n x n x n. GPU: every kernel version of
          gpudl.kernels.matmul (naive, tiled, blocked, warp) and the CUDA C++
          kernels/cu/sgemm.cu (benchmarks/sgemm_cpp.py) vs cuBLAS (cupy.matmul,
          TF32 off). CPU: gpudl's CPU backend vs NumPy and PyTorch CPU.
          Reference: the float64 product. (benchmarks/matmul.py)
  conv    the layers of benchmarks/conv.py, forward and backward (dx, dW, db),
          vs cuDNN through PyTorch (TF32 off, cudnn.benchmark on) and, as its
          own column, PyTorch's defaults; PyTorch CPU on a CPU. Reference:
          PyTorch float64 on the CPU. On a GPU also the kernel-version sweep
          of benchmarks/conv_versions.py (direct, im2col, implicit).
  memory  pooling and batch norm (benchmarks/pool_bn.py) and ReLU, forward and
          backward, vs a copy of the same number of bytes (device-to-device on
          a GPU, NumPy on a CPU) and PyTorch; GB/s from the fewest bytes.
  train   one training step: the MLP of benchmarks/dense_step.py (vs NumPy
          on a CPU) and zoo models (benchmarks/model_step.py), vs PyTorch
          eager (TF32 off) on the same device.

A result that fails its check is reported as FAIL with its error and is not
timed; the run goes on with the next case and exits 1. Ratios are baseline
time / gpudl time: above 1 means gpudl is faster. With several versions of a
kernel (matmul, conv) the sweep says which is fastest where, which one is the
default, and why.

Usage:
  python -m benchmarks [--groups gemm conv memory train | all] [--device auto|cpu|cuda]
                       [--quick] [--repeat N] [--json PATH] [--no-record]
                       [--budget SECONDS] [--no-sweep] [--sizes N ...] [--batch N]
  python -m benchmarks --list
--quick: tiny sizes and 2 timed runs, to check the machinery (not a result).
Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 ... --device cuda) the GPU
path runs with NumPy standing in for CuPy and host timers, as a logic check;
nothing is recorded. JSON: --json, else $OUT/bench.json when OUT is set, else
runs/bench/<date>-<device>.json (schema: see SCHEMA below and README).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback

import numpy as np

from . import common

GROUPS = ("gemm", "conv", "memory", "train")
SCHEMA = "gpudl-bench/1"

#: Why each kernel family's default is the default (design reasons; the sweep
#: adds what this run measured).
DEFAULT_WHY = {
    "matmul": "blocked keeps a 4x4 output micro-tile in registers over a 64x64 block tile, so "
              "each shared-memory value feeds 4 FMAs (tiled: 1; naive re-reads global memory for "
              "every FMA): the fewest bytes moved per FLOP of the three",
    "conv": "im2col runs all the arithmetic in the register-blocked matmul (built for reuse); "
            "direct is the readable reference and the depthwise path; implicit builds im2col's "
            "tiles in shared memory and skips the column matrix",
}


# ---------------------------------------------------------------- structure --
class Impl:
    """One gpudl implementation of a case: ``check()`` runs it once and returns
    its error against the reference (raising AssertionError when it is wrong);
    ``fn`` is what gets timed."""

    def __init__(self, label, fn, check, default=True, version=None, repeat=None):
        self.label, self.fn, self.check = label, fn, check
        self.default, self.version, self.repeat = default, version, repeat


class Baseline:
    """A baseline timed in the same run; ``check()`` (optional) gives its own
    error against the same reference, reported, not judged."""

    def __init__(self, label, fn, short=None, prepare=None, check=None):
        self.label, self.fn, self.short = label, fn, short or label
        self.prepare, self.check = prepare, check


class Case:
    def __init__(self, name, impls, baselines=(), flops=0.0, nbytes=0.0, tol=1e-4,
                 kernel=None, skip=None):
        self.name, self.impls, self.baselines = name, list(impls), list(baselines)
        self.flops, self.nbytes, self.tol, self.kernel = flops, nbytes, tol, kernel
        self.skip = skip  # a reason not to run it at all (e.g. no reference installed)


def host(a):
    """a as a NumPy float64 array, from NumPy, CuPy or PyTorch."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    elif not isinstance(a, np.ndarray) and hasattr(a, "get"):
        a = a.get()
    return np.asarray(a, dtype=np.float64)


def rel_err(got, ref):
    """||got - ref|| / ||ref|| (Frobenius), NaN-propagating."""
    ref = host(ref)
    got = host(got).reshape(ref.shape)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def max_err(pairs):
    return max(rel_err(g, r) for g, r in pairs)


# ------------------------------------------------------------------ context --
class Ctx:
    """The device, timers, sizes and PyTorch settings of one run."""

    def __init__(self, device, quick, repeat, budget, sweep, sizes, batch):
        import gpudl
        from gpudl.backend import gpu_available
        if device == "auto":
            device = "cuda" if gpu_available() else "cpu"
        self.device = device
        self.be = gpudl.set_device(device)
        self.sim = device == "cuda" and self.be.simulator
        self.on_gpu = device == "cuda" and not self.sim
        self.quick, self.sweep, self.sizes, self.batch = quick, sweep, sizes, batch
        if self.on_gpu:
            import cupy
            self.xp = cupy
            self.device_name = common.gpu_name()
        else:
            self.xp = np
            self.device_name = ("CUDA simulator (timings meaningless)" if self.sim
                                else common.cpu_name())
        self.warmup = 3 if self.on_gpu else (0 if self.sim else 1)
        self.repeat = repeat or (1 if self.sim else 2 if quick else 20 if self.on_gpu else 10)
        self.deadline = time.monotonic() + budget if budget else None
        try:
            import torch
        except ImportError:
            torch = None
        self.torch = torch
        self.tdev = None  # where PyTorch baselines run: the device under test
        if torch is not None:
            # PyTorch's own defaults, captured before anything changes them
            self.torch_defaults = (torch.backends.cuda.matmul.allow_tf32,
                                   torch.backends.cudnn.allow_tf32,
                                   torch.backends.cudnn.benchmark)
            if self.on_gpu and torch.cuda.is_available():
                self.tdev = "cuda"
            elif device == "cpu":
                self.tdev = "cpu"
                torch.set_num_threads(os.cpu_count() or 1)
            self.torch_strict()

    # PyTorch settings: float32 against float32, cuDNN's autotuner on
    def torch_strict(self):
        t = self.torch
        if t is not None:
            t.backends.cuda.matmul.allow_tf32 = False
            t.backends.cudnn.allow_tf32 = False
            t.backends.cudnn.benchmark = True

    def torch_default(self):
        t = self.torch
        (t.backends.cuda.matmul.allow_tf32, t.backends.cudnn.allow_tf32,
         t.backends.cudnn.benchmark) = self.torch_defaults

    def torch_name(self):
        t = self.torch
        if self.tdev == "cuda":
            return "PyTorch CUDA eager"
        return f"PyTorch CPU ({t.get_num_threads()} threads)"

    def time(self, fn, repeat=None):
        """Median seconds of fn(): CUDA events on a GPU, host clock otherwise."""
        timer = common.time_cuda if self.on_gpu else common.time_cpu
        return timer(fn, warmup=self.warmup, repeat=repeat or self.repeat)

    def out_of_time(self):
        return self.deadline is not None and time.monotonic() > self.deadline

    def pick(self, full_gpu, full_cpu, quick, sim):
        if self.sim:
            return sim
        if self.quick:
            return quick
        return full_gpu if self.on_gpu else full_cpu


# ------------------------------------------------------------------- groups --
def gemm_cases(ctx):
    """Matrix products; on a GPU the kernel-version sweep of matmul."""
    xp, be = ctx.xp, ctx.be
    sizes = ctx.sizes or ctx.pick([1024, 2048, 4096], [256, 512, 1024], [128], [32])
    for n in sizes:
        def build(n=n):
            rng = np.random.default_rng(n)
            a_h = rng.standard_normal((n, n), dtype=np.float32)
            b_h = rng.standard_normal((n, n), dtype=np.float32)
            a, b = xp.asarray(a_h), xp.asarray(b_h)
            ref = xp.matmul(a.astype(xp.float64), b.astype(xp.float64))
            flops, nbytes = 2.0 * n ** 3, 3 * 4.0 * n * n
            impls, baselines = [], []
            if ctx.device == "cuda":
                from gpudl.kernels import matmul as mm
                versions = mm.KERNELS if ctx.sweep else [mm.MATMUL_DEFAULT]
                for version in versions:
                    c = xp.empty((n, n), dtype=xp.float32)
                    grid, block = mm.launch_config(version, n, n)
                    kernel = mm.KERNELS[version]["nn"]

                    def fn(kernel=kernel, grid=grid, block=block, c=c):
                        be.launch(kernel, grid, block, a, b, c)

                    def check(fn=fn, c=c):
                        c.fill(np.nan)  # poison: every element must be written
                        fn()
                        return rel_err(c, ref)
                    default = version == mm.MATMUL_DEFAULT
                    impls.append(Impl(version + (" (default)" if default else ""), fn, check,
                                      default=default, version=version,
                                      repeat=max(2, ctx.repeat // 4) if version == "naive"
                                      else None))
                if ctx.on_gpu and ctx.sweep:  # CUDA C++ needs a real GPU
                    from .sgemm_cpp import sweep_impls
                    impls += sweep_impls(Impl, a, b, ref, rel_err)
                label = ("cuBLAS (cupy.matmul)" if ctx.on_gpu
                         else "NumPy (stands in for cuBLAS under the simulator)")
                baselines.append(Baseline(label, lambda: xp.matmul(a, b), short="cuBLAS",
                                          check=lambda: rel_err(xp.matmul(a, b), ref)))
            else:
                impls.append(Impl("gpudl (CPU backend)", lambda: be.matmul(a, b),
                                  lambda: rel_err(be.matmul(a, b), ref)))
                baselines.append(Baseline("NumPy (a @ b)", lambda: a @ b, short="NumPy"))
            if ctx.tdev == "cpu":
                t = ctx.torch
                ta, tb = t.from_numpy(a_h), t.from_numpy(b_h)
                baselines.append(Baseline(ctx.torch_name(), lambda: t.mm(ta, tb), short="torch",
                                          check=lambda: rel_err(t.mm(ta, tb), ref)))
            return Case(f"{n}x{n}x{n}", impls, baselines, flops, nbytes, tol=1e-4,
                        kernel="matmul" if ctx.device == "cuda" and ctx.sweep else None)
        yield f"{n}x{n}x{n}", build


def conv_cases(ctx):
    """The layers of benchmarks/conv.py, forward and backward, and on a GPU
    the version sweep of benchmarks/conv_versions.py."""
    from . import conv as cb
    torch, be = ctx.torch, ctx.be
    names = list(cb.LAYERS)
    if ctx.sim:  # direct convolutions as Python threads: the smallest layers only
        names = [k for k in names if k.startswith("LeNet")]
    for name in names:
        kw, kind, n, c, h, w = cb.LAYERS[name]
        n = ctx.batch or (1 if ctx.sim else 2 if ctx.quick else n)
        state = {}

        def setup(name=name, kw=kw, kind=kind, n=n, c=c, h=h, w=w, state=state):
            """The layer, its inputs and the float64 reference, built once for fwd and bwd."""
            if state:
                return state
            import gpudl
            from gpudl.layers import Conv2D, Conv2DTranspose, DepthwiseConv2D
            make = {"conv": Conv2D, "depthwise": DepthwiseConv2D, "transposed": Conv2DTranspose}
            gpudl.manual_seed(0)
            layer = make[kind](**kw)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((n, c, h, w), dtype=np.float32)
            xd = be.asarray(x)
            y = layer.forward(xd, training=True)
            dy = rng.standard_normal(y.shape, dtype=np.float32)
            dyd = be.asarray(dy)
            fn = cb._torch_fn(kind, kw, layer)
            W = be.to_numpy(layer.params["W"])
            B = be.to_numpy(layer.params["b"]) if "b" in layer.params else None

            def tensors(dtype, dev):
                tx = torch.from_numpy(x).to(dev, dtype).requires_grad_(True)
                tw = torch.from_numpy(W).to(dev, dtype).requires_grad_(True)
                tb = (torch.from_numpy(B).to(dev, dtype).requires_grad_(True)
                      if B is not None else None)
                wrt = (tx, tw) + ((tb,) if tb is not None else ())
                return tx, tw, tb, wrt
            tx, tw, tb, wrt = tensors(torch.float64, "cpu")  # the referee
            ty = fn(tx, tw, tb)
            grads = torch.autograd.grad(ty, wrt, torch.from_numpy(dy).double())
            state.update(layer=layer, xd=xd, dyd=dyd, ref_y=ty.detach().numpy(),
                         ref_g=[g.numpy() for g in grads], fn=fn, dy=dy, tensors=tensors)
            return state

        def build(direction, name=name, kind=kind, n=n, setup=setup):
            if torch is None:
                return Case(f"{direction} {name}", [], skip="no PyTorch: no float64 referee")
            s = setup()
            layer, xd, dyd = s["layer"], s["xd"], s["dyd"]
            flops = 2.0 * s["ref_y"].size * s["ref_g"][1][0].size  # per output: Cg*KH*KW MACs
            if kind == "transposed":  # each input pixel scatters through the whole kernel
                flops = 2.0 * xd.size * s["ref_g"][1][0].size
            if direction == "fwd":
                fn = lambda: layer.forward(xd, training=True)  # noqa: E731
                check = lambda: rel_err(fn(), s["ref_y"])  # noqa: E731
            else:
                flops *= 2  # dx and dW
                fn = lambda: layer.backward(dyd)  # noqa: E731

                def check():
                    layer.forward(xd, training=True)
                    dx = fn()
                    got = [dx, layer.grads["W"]] + ([layer.grads["b"]] if "b" in layer.grads
                                                    else [])
                    return max_err(zip(got, s["ref_g"]))
            baselines = []
            if ctx.tdev is not None:
                tx, tw, tb, wrt = s["tensors"](torch.float32, ctx.tdev)
                tfn = s["fn"]
                ty = tfn(tx, tw, tb)
                tdy = torch.from_numpy(s["dy"]).to(ctx.tdev)
                if direction == "fwd":
                    bfn = lambda: tfn(tx, tw, tb)  # noqa: E731
                    bcheck = lambda: rel_err(bfn(), s["ref_y"])  # noqa: E731
                else:
                    bfn = lambda: torch.autograd.grad(ty, wrt, tdy, retain_graph=True)  # noqa
                    bcheck = lambda: max_err(zip(bfn(), s["ref_g"]))  # noqa: E731
                if ctx.tdev == "cuda":
                    d = ctx.torch_defaults
                    baselines.append(Baseline("cuDNN via PyTorch (TF32 off, benchmark on)", bfn,
                                              short="cuDNN", prepare=ctx.torch_strict,
                                              check=bcheck))
                    baselines.append(Baseline(
                        f"PyTorch default (cuDNN TF32 {'on' if d[1] else 'off'}, benchmark "
                        f"{'on' if d[2] else 'off'})", bfn, short="torch-default",
                        prepare=ctx.torch_default, check=bcheck))
                else:
                    baselines.append(Baseline(ctx.torch_name(), bfn, short="torch",
                                              check=bcheck))
            return Case(f"{direction} {name} (batch {n})", [Impl("gpudl", fn, check)],
                        baselines, flops=flops)
        yield f"fwd {name}", lambda build=build: build("fwd")
        yield f"bwd {name}", lambda build=build: build("bwd")
    if ctx.device == "cuda" and ctx.sweep:
        yield from conv_sweep_cases(ctx, names)


def conv_sweep_cases(ctx, names):
    """Every conv kernel version on each plain convolution layer, per op,
    against the CPU reference backend (as benchmarks/conv_versions.py)."""
    from . import conv as cb
    for name in names:
        kw, kind, n, c, h, w = cb.LAYERS[name]
        if kind != "conv":
            continue
        n = ctx.batch or (1 if ctx.sim else 2 if ctx.quick else n)
        state = {}

        def setup(kw=kw, n=n, c=c, h=h, w=w, state=state):
            if state:
                return state
            from .conv_versions import sweep_problem
            state.update(sweep_problem(ctx.be, kw, n, c, h, w))
            return state

        def build(op, setup=setup, name=name, n=n):
            from gpudl.backend import cuda_conv
            from gpudl.kernels import conv as ck
            s, be = setup(), ctx.be
            impls = []
            for version in ck.VERSIONS:
                if op == "fwd":
                    fn = (lambda v=version: cuda_conv.conv2d(be, s["xd"], s["wd"], *s["geo"],
                                                              version=v))
                elif op == "dx":
                    fn = (lambda v=version: cuda_conv.conv2d_backward_input(
                        be, s["dyd"], s["wd"], s["hw"], *s["geo"], version=v))
                else:
                    fn = (lambda v=version: cuda_conv.conv2d_backward_weight(
                        be, s["dyd"], s["xd"], s["kk"], *s["geo"], version=v))
                default = version == ck.CONV_DEFAULT
                impls.append(Impl(version + (" (default)" if default else ""), fn,
                                  lambda fn=fn: rel_err(be.to_numpy(fn()), s["refs"][op]),
                                  default=default, version=version))
            return Case(f"sweep {op} {name} (batch {n})", impls, [], flops=s["flops"],
                        kernel="conv")
        for op in ("fwd", "dx", "dw"):
            yield f"sweep {op} {name}", lambda build=build, op=op: build(op)


def memory_cases(ctx):
    """Memory-bound ops at ResNet sizes: ReLU, and pooling / batch norm from
    benchmarks/pool_bn.py; baselines a copy of the same bytes and PyTorch."""
    from . import pool_bn as pb
    xp, be, torch = ctx.xp, ctx.be, ctx.torch

    def copy_baseline(nbytes):
        count = max(1, int(round(nbytes / 8)))  # float32: half the bytes read, half written
        src, dst = xp.ones(count, dtype=xp.float32), xp.empty(count, dtype=xp.float32)
        label = ("device-to-device copy of the same bytes" if ctx.on_gpu else
                 "NumPy copy of the same bytes" + (" (simulator)" if ctx.sim else ""))
        return Baseline(label, lambda: xp.copyto(dst, src), short="copy")

    # ReLU: the plainest memory-bound kernel; NumPy is its reference
    relu_shape = (1, 2, 8, 8) if ctx.sim else (2, 4, 16, 16) if ctx.quick else (64, 64, 32, 32)

    def relu(direction, shape=relu_shape):
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=np.float32)
        g = rng.standard_normal(shape, dtype=np.float32)
        xd, gd = be.asarray(x), be.asarray(g)
        if direction == "fwd":
            fn, ref, nbytes = (lambda: be.relu(xd)), np.maximum(x, 0), 8.0 * x.size
        else:
            fn, ref, nbytes = (lambda: be.relu_backward(xd, gd)), g * (x > 0), 12.0 * x.size
        bases = [copy_baseline(nbytes)]
        if ctx.tdev is not None:
            tx, tg = torch.from_numpy(x).to(ctx.tdev), torch.from_numpy(g).to(ctx.tdev)
            tfn = ((lambda: torch.relu(tx)) if direction == "fwd" else
                   (lambda: torch.ops.aten.threshold_backward(tg, tx, 0)))
            bases.append(Baseline(ctx.torch_name(), tfn, short="torch",
                                  check=lambda: rel_err(tfn(), ref)))
        return Case(f"{direction} relu {'x'.join(map(str, shape))}",
                    [Impl("gpudl", fn, lambda: rel_err(fn(), ref))], bases, nbytes=nbytes)
    yield "fwd relu", lambda: relu("fwd")
    yield "bwd relu", lambda: relu("bwd")

    names = list(pb.CASES)
    if ctx.sim or ctx.quick:
        names = [k for k in names if k.startswith(("max 3x3", "avg 2x2", "global", "bn, 64"))]
    for name in names:
        op, shape, geo = pb.CASES[name]
        nn_, c, h, w = shape
        if ctx.sim or ctx.quick:
            nn_, c, h, w = 2, min(c, 4), min(h, 8), min(w, 8)
        if ctx.batch:
            nn_ = ctx.batch
        shape = (nn_, c, h, w)
        state = {}

        def setup(op=op, shape=shape, geo=geo, state=state):
            if state:
                return state
            rng = np.random.default_rng(0)
            x = rng.standard_normal(shape, dtype=np.float32)
            if op == "bn":
                x += 0.5  # a mean well off zero: the statistics must not cancel
            dy = rng.standard_normal(pb.out_shape(op, shape, geo), dtype=np.float32)
            params = None
            if op == "bn":
                params = (1 + 0.1 * rng.standard_normal(shape[1], dtype=np.float32),
                          0.1 * rng.standard_normal(shape[1], dtype=np.float32))
            fwd, bwd, outs = pb.gpudl_fns(be, op, shape, geo, x, dy, params)
            state.update(x=x, dy=dy, fwd=fwd, bwd=bwd, ny=int(np.prod(outs["y"].shape)))
            if ctx.tdev is not None:
                state["tfwd"], state["tbwd"], state["ref"] = pb.torch_fns(
                    torch, ctx.tdev, op, shape, geo, x, dy, params)
            elif torch is not None:  # the simulator: PyTorch checks on the CPU
                state["ref"] = pb.torch_fns(torch, "cpu", op, shape, geo, x, dy, params)[2]
            elif ctx.device == "cuda":
                state["ref"] = pb.numpy_reference(op, shape, geo, x, dy, params)
            return state

        def validate(name=name, op=op, state=state):
            """Run forward and backward afresh and check both (pool_bn.check)."""
            if "err" not in state:
                s = state
                r = s["fwd"]()
                outs = ({"y": r[0]} if op == "bn" else {"y": r[0], "argmax": r[1]} if op == "max"
                        else {"y": r})
                state["err"] = pb.check(name, be, op, outs, s["bwd"](), s["ref"])
            return state["err"]

        def build(direction, name=name, op=op, shape=shape, setup=setup, validate=validate):
            if torch is None and ctx.device == "cpu":
                return Case(f"{direction} {name}", [], skip="no PyTorch: no independent "
                            "reference (gpudl's CPU backend is the NumPy reference)")
            s = setup()
            nbytes = pb.min_bytes(op, s["x"].size, s["ny"], direction)
            bases = [copy_baseline(nbytes)]
            if "tfwd" in s:
                bases.append(Baseline(ctx.torch_name(), s["t" + direction], short="torch"))
            return Case(f"{direction} {name} {'x'.join(map(str, shape))}",
                        [Impl("gpudl", s[direction], validate)], bases, nbytes=nbytes)
        yield f"fwd {name}", lambda build=build: build("fwd")
        yield f"bwd {name}", lambda build=build: build("bwd")


def train_cases(ctx):
    """One training step: the MLP of dense_step.py and zoo models of model_step.py."""
    from . import dense_step as ds
    torch = ctx.torch
    batch = ctx.batch or ctx.pick(1024, 128, 16, 4)

    def dense():
        if ctx.sim:
            return Case("dense MLP", [], skip="784-512-512-10 is too slow for the simulator")
        x, y = ds.data(batch)
        step, model = ds.gpudl_step_fn(ctx.device, x, y)
        be = model.backend

        def check():  # one step from the same weights as the NumPy baseline's
            ws, bs = ds.init()
            ds.numpy_step(ws, bs, x, y)
            step()
            dense_layers = [layer for layer in model.layers if "W" in layer.params]
            return max(rel_err(be.to_numpy(d.params["W"]), w) for d, w in zip(dense_layers, ws))
        bases = []
        if ctx.device == "cpu":
            ws, bs = ds.init()
            bases.append(Baseline("NumPy, written plainly", lambda: ds.numpy_step(ws, bs, x, y),
                                  short="NumPy"))
        if ctx.tdev is not None:
            ctx.torch_strict()
            bases.append(Baseline(ctx.torch_name() + " (TF32 off)",
                                  ds.torch_step_fn(ctx.tdev, x, y), short="torch",
                                  prepare=ctx.torch_strict))
        flops = 6.0 * batch * sum(a * b for a, b in zip(ds.WIDTHS[:-1], ds.WIDTHS[1:]))
        return Case(f"dense MLP {'-'.join(map(str, ds.WIDTHS))} batch {batch}",
                    [Impl("gpudl", step, check)], bases, flops=flops, tol=1e-5)
    yield "dense", dense

    from . import model_step as ms
    models = ["lenet"] if ctx.quick or ctx.sim else ["lenet", "resnet"]
    size = 8 if ctx.sim else 32
    mbatch = ctx.batch or ctx.pick(64, 64, 4, 2)
    for name in models:
        def model(name=name):
            if torch is None:
                return Case(name, [], skip="no PyTorch: no twin and no float64 referee")
            from .torch_twin import twin
            ctx.torch_strict()
            m = ms.build_gpudl(name, ctx.device, size)
            x, y = ms.data(mbatch, m.input_shape)
            tdev = ctx.tdev or "cpu"  # the simulator checks against PyTorch CPU
            net, pairs = twin(m, torch, tdev)
            gstep = ms.gpudl_step_fn(m, x, y)
            tstep = ms.torch_step_fn(torch, net, tdev, x, y)

            case_ref = []

            def check():  # raises AssertionError past model_step's tolerances
                _, worst, (g_flips, _) = ms.check(torch, m, pairs, gstep, tstep, x, y, name,
                                                  verbose=False)
                # a ReLU input that float32 puts on the other side of 0 moves
                # every gradient below it: model_step's looser bound applies then
                case_ref[0].tol = ms.KINK_GRAD_TOL if g_flips else ms.GRAD_TOL
                return worst["g_64"]  # gradient error against float64
            bases = []
            if ctx.tdev is not None:
                bases.append(Baseline(ctx.torch_name() + " (TF32 off)", tstep, short="torch",
                                      prepare=ctx.torch_strict))
            label = name if size == 32 else f"{name} ({size}x{size})"
            case_ref.append(Case(f"{label} step batch {mbatch} ({m.num_params():,} params)",
                                 [Impl("gpudl", gstep, check)], bases, tol=ms.GRAD_TOL))
            return case_ref[0]
        yield f"{name} step", model


GROUP_FNS = {"gemm": gemm_cases, "conv": conv_cases, "memory": memory_cases,
             "train": train_cases}


# ------------------------------------------------------------------- runner --
def _entry(group, case_name, label, case=None, impl=None):
    return {"group": group, "case": case_name, "impl": label,
            "version": impl.version if impl else None,
            "default": impl.default if impl else None,
            "kernel": case.kernel if case else None,
            "status": None, "message": "", "rel_err": None,
            "tol": case.tol if case else None, "median_ms": None,
            "flops": (case.flops or None) if case else None,
            "bytes": (case.nbytes or None) if case else None,
            "gflop_s": None, "gb_s": None, "baselines": {}}


def run_case(ctx, group, case_name, build, log=print):
    """Build a case, check each implementation, time those that pass, then
    time the baselines. Returns the case's entries."""
    if ctx.out_of_time():
        e = _entry(group, case_name, "-")
        e.update(status="skipped", message="time budget spent")
        return [e]
    try:
        case = build()
    except Exception as ex:  # a broken setup is one failed case, not a dead run
        e = _entry(group, case_name, "-")
        e.update(status="error", message=f"setup: {type(ex).__name__}: {ex}")
        traceback.print_exc()
        return [e]
    if case.skip:
        e = _entry(group, case.name, "-", case)
        e.update(status="skipped", message=case.skip)
        return [e]
    entries = []
    for impl in case.impls:
        e = _entry(group, case.name, impl.label, case, impl)
        entries.append(e)
        try:
            err = impl.check()
        except AssertionError as ex:
            e.update(status="fail", message=str(ex)[:500])
        except Exception as ex:
            e.update(status="error", message=f"{type(ex).__name__}: {ex}"[:500])
            traceback.print_exc()
        else:
            e["rel_err"] = err
            if not (err is not None and err < case.tol):  # NaN never passes
                e.update(status="fail",
                         message=f"error {err:.2e} against the reference, tolerance {case.tol:g}")
        if e["status"] is None:
            t = ctx.time(impl.fn, repeat=impl.repeat)
            e.update(status="ok", median_ms=t * 1e3)
            if case.flops:
                e["gflop_s"] = case.flops / t / 1e9
            if case.nbytes:
                e["gb_s"] = case.nbytes / t / 1e9
        log(_line(e))
    ok = [e for e in entries if e["status"] == "ok"]
    if ok:  # baselines only where there is something right to compare them with
        for b in case.baselines:
            res = {"label": b.label, "median_ms": None, "rel_err": None}
            try:
                if b.prepare:
                    b.prepare()
                if b.check:
                    res["rel_err"] = b.check()
                t = ctx.time(b.fn)
                res["median_ms"] = t * 1e3
                if case.nbytes:
                    res["gb_s"] = case.nbytes / t / 1e9
                if case.flops:
                    res["gflop_s"] = case.flops / t / 1e9
            except Exception as ex:
                res["error"] = f"{type(ex).__name__}: {ex}"[:300]
            finally:
                ctx.torch_strict()
            for e in ok:
                r = dict(res)
                if r["median_ms"]:
                    r["ratio"] = r["median_ms"] / e["median_ms"]
                e["baselines"][b.short] = r
            log(f"    baseline {b.label}: " + (f"{res['median_ms']:.3f} ms" if res["median_ms"]
                                               else res.get("error", "-")))
    return entries


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _line(e):
    if e["status"] != "ok":
        return f"  [{e['group']}] {e['case']} | {e['impl']}: {e['status'].upper()} {e['message']}"
    return (f"  [{e['group']}] {e['case']} | {e['impl']}: {e['median_ms']:.3f} ms, "
            f"err {_fmt(e['rel_err'], '.1e')}")


def sweep_summary(entries, indicative=True):
    """Per kernel family: fastest version per case, the default, and why.
    indicative False (quick sizes, the simulator): the timings choose nothing."""
    out = []
    for kernel in sorted({e["kernel"] for e in entries if e["kernel"]}):
        rows = [e for e in entries if e["kernel"] == kernel]
        cases = list(dict.fromkeys(e["case"] for e in rows))
        default = next((e["version"] for e in rows if e["default"]), None)
        versions = list(dict.fromkeys(e["version"] for e in rows))
        per_case, wins = [], dict.fromkeys(versions, 0)
        failed = sorted({e["version"] for e in rows if e["status"] in ("fail", "error")})
        for case in cases:
            times = {e["version"]: e["median_ms"] for e in rows
                     if e["case"] == case and e["status"] == "ok"}
            if not times:
                continue
            best = min(times, key=times.get)
            wins[best] += 1
            per_case.append({"case": case, "ms": times, "fastest": best})
        timed = len(per_case)
        verdict = f"measured: the default '{default}' was fastest in {wins.get(default, 0)} " \
                  f"of {timed} cases"
        others = {v: k for v, k in wins.items() if v != default and k}
        if others:
            verdict += "; faster elsewhere: " + ", ".join(f"'{v}' in {k}" for v, k in
                                                           others.items())
        if failed:
            verdict += f"; FAILED checks: {', '.join(failed)}"
        if not indicative:
            verdict += " (quick sizes or the simulator: not a basis for choosing)"
        elif timed and wins.get(default, 0) < timed / 2:
            verdict += f" -- reconsider the default of {kernel}"
        out.append({"kernel": kernel, "default": default, "versions": versions,
                    "wins": wins, "cases": per_case,
                    "why": DEFAULT_WHY.get(kernel, "") + ". " + verdict})
    return out


def default_json_path(ctx, stamp):
    if os.environ.get("OUT"):
        return os.path.join(os.environ["OUT"], "bench.json")
    kind = "sim" if ctx.sim else ctx.device
    return os.path.join("runs", "bench", f"{stamp.replace(':', '').replace(' ', '-')}-{kind}.json")


def table_rows(entries):
    rows = []
    for e in entries:
        ratios = ", ".join(f"{k} {_fmt(b.get('ratio'), '.2f')}" for k, b in e["baselines"].items())
        status = e["status"] if e["status"] == "ok" else f"{e['status'].upper()}: {e['message']}"
        rows.append([e["group"], e["case"], e["impl"], status[:90], _fmt(e["median_ms"], ".3f"),
                     _fmt(e["gflop_s"], ".1f"), _fmt(e["gb_s"], ".1f"), ratios or "-",
                     _fmt(e["rel_err"], ".1e")])
    return rows


def print_summary(doc):
    """A short table of a result file: default implementations only, the
    sweeps in one line each (benchmarks/gpu_check.sh prints it last)."""
    dev = doc["device"]
    print(f"benchmarks on {dev['name']} ({doc['date']}, commit {doc['commit']}): "
          f"{doc['failures']} failed check(s), {doc['seconds']} s")
    for e in doc["results"]:
        if e["kernel"] and not e["default"] and e["status"] == "ok":
            continue  # other versions: in the sweep lines
        if e["status"] != "ok":
            print(f"  {e['group']:<6} {e['case'][:44]:<44} {e['status'].upper()}: "
                  f"{e['message'][:60]}")
            continue
        ratios = " ".join(f"{k} {_fmt(b.get('ratio'), '.2f')}" for k, b in e["baselines"].items())
        rate = (f"{e['gflop_s']:.0f} GF/s" if e["gflop_s"] else
                f"{e['gb_s']:.0f} GB/s" if e["gb_s"] else "")
        impl = "" if e["impl"] == "gpudl" else " " + e["impl"].replace(" (default)", "*")
        print(f"  {e['group']:<6} {(e['case'] + impl)[:44]:<44} {e['median_ms']:>9.3f} ms "
              f"{rate:>11}  {ratios}")
    for s in doc["sweep"]:
        best = ", ".join(f"{c['case'][:28]}: {c['fastest']}" for c in s["cases"][:4])
        print(f"  sweep {s['kernel']}: default {s['default']}; wins {s['wins']}; {best}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", nargs="+", default=["all"], help=f"{' '.join(GROUPS)} or all")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 timed runs")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs per result (default 20 GPU, 10 CPU, 2 quick)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="gemm sizes n")
    p.add_argument("--batch", type=int, default=None, help="override conv/memory/train batch")
    p.add_argument("--json", default=None, help="result file (default: see above)")
    p.add_argument("--no-record", action="store_true",
                   help="do not append to RESULTS.md (also GPUDL_BENCH_NO_RECORD=1)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; cases not started by then are reported as skipped")
    p.add_argument("--no-sweep", action="store_true",
                   help="GPU: time only the default kernel versions")
    p.add_argument("--list", action="store_true", help="list the groups and exit")
    args = p.parse_args(argv)
    if args.list:
        for g in GROUPS:
            print(f"{g:<7} {GROUP_FNS[g].__doc__.split(chr(10))[0]}")
        return 0
    groups = list(GROUPS) if "all" in args.groups else args.groups
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        p.error(f"unknown group(s) {', '.join(bad)}: choose from {', '.join(GROUPS)} or all")

    t0 = time.monotonic()
    ctx = Ctx(args.device, args.quick, args.repeat, args.budget, not args.no_sweep,
              args.sizes, args.batch)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    json_path = args.json or default_json_path(ctx, stamp)
    if os.path.dirname(json_path):
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    doc = {"schema": SCHEMA, "date": stamp, "commit": common.commit(),
           "device": {"kind": "cuda-simulator" if ctx.sim else ctx.device,
                      "name": ctx.device_name},
           "versions": common.versions(), "argv": sys.argv[1:] if argv is None else list(argv),
           "groups": groups, "quick": ctx.quick, "repeat": ctx.repeat, "warmup": ctx.warmup,
           "timer": "CUDA events" if ctx.on_gpu else "host clock (time.perf_counter)",
           "cpus": os.cpu_count(), "load_start": load0, "load_end": None,
           "torch_defaults": (dict(zip(("matmul_tf32", "cudnn_tf32", "cudnn_benchmark"),
                                       ctx.torch_defaults)) if ctx.torch else None),
           "seconds": None, "results": [], "sweep": [], "failures": 0}

    def save():
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
    print(f"benchmarks: {', '.join(groups)} on {ctx.device_name}"
          f"{' (quick)' if ctx.quick else ''}; {ctx.repeat} timed runs each", flush=True)
    for group in groups:
        print(f"== {group}", flush=True)
        try:
            cases = list(GROUP_FNS[group](ctx))
        except Exception as ex:
            e = _entry(group, "-", "-")
            e.update(status="error", message=f"{type(ex).__name__}: {ex}")
            traceback.print_exc()
            doc["results"].append(e)
            continue
        for case_name, build in cases:
            doc["results"].extend(run_case(ctx, group, case_name, build,
                                           log=lambda s: print(s, flush=True)))
            save()  # after every case: a run killed later keeps what it measured
    doc["sweep"] = sweep_summary(doc["results"], indicative=not (ctx.quick or ctx.sim))
    doc["failures"] = sum(e["status"] in ("fail", "error") for e in doc["results"])
    doc["load_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    doc["seconds"] = round(time.monotonic() - t0, 1)
    save()

    notes = [f"`python -m benchmarks --groups {' '.join(groups)}"
             f"{' --quick' if ctx.quick else ''}`, {doc['seconds']} s; timer: {doc['timer']}, "
             f"median of {ctx.repeat} runs after {ctx.warmup} warm-up. Each gpudl result was "
             "checked against its reference (float64 product for gemm, PyTorch float64 for conv (the CPU backend for its sweep), "
             "PyTorch / NumPy for memory, NumPy / PyTorch float64 for train) before it was "
             "timed; a FAIL row was not timed. Ratios: baseline time / gpudl time (above 1: "
             "gpudl faster); GFLOP/s from the op's FLOP count, GB/s from the fewest bytes it "
             "must move."]
    if ctx.device == "cpu" and load0 is not None:
        notes.append(f"CPU load average (1 min) {load0:.2f} at the start, "
                     f"{doc['load_end']:.2f} at the end, on {os.cpu_count()} logical CPUs"
                     + (": the machine was busy, so ratios are disturbed."
                        if max(load0, doc["load_end"]) > 0.5 * (os.cpu_count() or 1) else "."))
    for s in doc["sweep"]:
        notes.append(f"Sweep {s['kernel']} (default {s['default']}): {s['why']}")
    if ctx.torch and ctx.tdev == "cuda":
        d = doc["torch_defaults"]
        notes.append(f"cuDNN = PyTorch with TF32 off and cudnn.benchmark on; torch-default = "
                     f"PyTorch's own settings (cuDNN TF32 {d['cudnn_tf32']}, benchmark "
                     f"{d['cudnn_benchmark']}), its error in the JSON.")
    record = not args.no_record and not ctx.sim and not ctx.quick
    common.record(f"Benchmark suite: {', '.join(groups)}, float32, "
                  f"{'CUDA simulator' if ctx.sim else ctx.device}",
                  ctx.device_name,
                  ["group", "case", "impl", "status", "ms", "GFLOP/s", "GB/s",
                   "baseline/ours", "rel. err"],
                  table_rows(doc["results"]), notes="\n\n".join(notes),
                  write=False if not record else None)
    print(f"JSON: {json_path}" + ("" if record else " (RESULTS.md not written: "
                                  + ("--no-record" if args.no_record else
                                     "quick mode" if ctx.quick else "simulator") + ")"))
    if doc["failures"]:
        print(f"benchmarks: {doc['failures']} result(s) FAILED their check (not timed)")
    return 1 if doc["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
