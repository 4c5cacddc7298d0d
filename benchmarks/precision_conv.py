"""The convolution half of benchmarks/precision_step.py, and what both halves share.

Every distinct 3x3 convolution of zoo.resnet (3x32x32, the network graph_step.py
times), forward, input gradient (not for the stem: a training step never
computes it) and weight gradient, through the backend ops with precision=
None (fp32), "tf32", "bf16", "fp16" (inputs rounded each call, FP32 sums),
with GPUDL_TENSOR_CORES=0 and =1, against cuDNN through PyTorch at the same
precision: float32 with cudnn.allow_tf32 off (fp32) or on (tf32), bfloat16
and float16 tensors made from the same rounded values (exact). Asymmetric
"same" padding (stride 2) is applied to PyTorch's input beforehand, untimed.

Checked before timing: gpudl against the CPU backend's op of the same
precision, ||got - ref|| / ||ref|| <= 1e-4 (the same rounded inputs: only the
order of the FP32 sums differs); PyTorch against it within 4 units of its
format (2e-3 TF32 and FP16, 1.6e-2 BF16: its 16-bit results are stored in 16
bits), 1e-4 in fp32. Whether a tensor-core kernel ran is counted (launches of
the CUDA C++ tensor-core kernels in the checked call), not assumed: a TC column
whose call launched none says "no TC call" and is not timed again (a tree, or
a conv version, that keeps the FP32 kernels on rounded inputs).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

import numpy as np

from . import model_step as ms

FORMATS = {"fp32": None, "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}
OP_TOL = 1e-4
NA = "n/a"
HEADER = ["batch", "layer", "op", "prec", "gpudl ms", "gpudl TC ms", "torch ms",
          "gpudl TFLOP/s", "torch TFLOP/s", "torch / gpudl", "err gpudl", "err torch"]


def unit(fmt):
    """Unit roundoff of a format (half its last place): 2**-(mantissa bits + 1)."""
    from gpudl.precision import MANTISSA_BITS
    return 2.0 ** -(MANTISSA_BITS[fmt or "fp32"] + 1)


def torch_op_tol(fmt):
    return OP_TOL if fmt is None else 4 * unit(fmt)


def _gpu_or_exit():
    """Exit 2 with a reason unless CuPy and PyTorch both see a real GPU."""
    why = None
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        why = "numba's CUDA simulator is on (its times mean nothing; --device cpu checks logic)"
    else:
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() < 1:
                why = "CuPy sees no CUDA device"
        except Exception as e:  # no CuPy, no driver
            why = f"{type(e).__name__}: {e}"
        if why is None:
            import torch
            if not torch.cuda.is_available():
                why = "PyTorch sees no GPU (its baselines must run on the same device)"
    if why:
        print(f"precision_step: --device cuda needs an NVIDIA GPU with CuPy and PyTorch CUDA "
              f"({why}); nothing was measured.", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def tensor_cores(on):
    """GPUDL_TENSOR_CORES for a block (cuda_lowp reads it at every call); None leaves it."""
    old = os.environ.get("GPUDL_TENSOR_CORES")
    if on is not None:
        os.environ["GPUDL_TENSOR_CORES"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GPUDL_TENSOR_CORES", None)
        else:
            os.environ["GPUDL_TENSOR_CORES"] = old


@contextlib.contextmanager
def count_tc_calls(on_gpu):
    """[n]: tensor-core kernel launches in the block, counted at the launchers of the CUDA
    C++ kernels (gemm_mma.launch, and conv_mma.launch where the tree has it), which the
    backend calls through the module attribute."""
    calls, patched = [0], []
    if on_gpu:
        for name in ("gpudl.kernels.gemm_mma", "gpudl.kernels.conv_mma"):
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue

            def counted(*a, _orig=mod.launch, **k):
                calls[0] += 1
                return _orig(*a, **k)
            patched.append((mod, mod.launch))
            mod.launch = counted
    try:
        yield calls
    finally:
        for mod, orig in patched:
            mod.launch = orig


@contextlib.contextmanager
def torch_tf32(torch, on):
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def norm_err(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = float(np.linalg.norm(ref))
    return float(np.linalg.norm(got - ref)) / (scale or 1.0)


def walk_shapes(layers, shape):
    """(layer, input shape) of every leaf layer, into Residual/Concat chains."""
    from gpudl.layers.branches import Branches
    for layer in layers:
        if isinstance(layer, Branches):
            for chain in layer.chains.values():
                yield from walk_shapes(chain, shape)
        else:
            yield layer, shape
        shape = tuple(layer.output_shape(shape))


def resnet_convs(size):
    """The distinct 3x3 convolutions of zoo.resnet on 3 x size x size, in order:
    [(label, C, O, (H, W), stride, pads, is_stem)]."""
    import gpudl
    from gpudl import zoo
    from gpudl.layers import Conv2D
    gpudl.set_device("cpu")
    model = zoo.resnet(in_shape=(3, size, size), classes=ms.CLASSES)
    out, seen = [], set()
    for layer, shape in walk_shapes(model.layers, tuple(model.input_shape)):
        if not isinstance(layer, Conv2D) or layer.kernel_size != (3, 3):
            continue
        c, h, w = shape
        key = (c, layer.out_channels, h, w, layer.stride, layer.pads((h, w)))
        if key in seen:
            continue
        seen.add(key)
        stem = not out
        label = (("stem " if stem else "") + f"{c}->{layer.out_channels} {h}x{w}"
                 + (f" s{layer.stride[0]}" if layer.stride != (1, 1) else ""))
        out.append((label,) + key[:2] + ((h, w), layer.stride, layer.pads((h, w)), stem))
    return out


def _ms(t):
    return f"{t * 1e3:.3f}" if isinstance(t, float) else t


def _tf(flops, t):
    return f"{flops / t / 1e12:.3g}" if isinstance(t, float) else NA


def _ratio(base, ours):
    return f"{base / ours:.2f}" if isinstance(base, float) and isinstance(ours, float) else NA


def _err(e):
    return f"{e:.1e}" if isinstance(e, float) else "-"


# ---- (a) convolutions ----------------------------------------------------------
def conv_case(ctx, conv, batch, pname):
    """One convolution at one precision: three ops, each checked, then timed."""
    from gpudl.backend.cpu import CPUBackend
    from gpudl.precision import round_to
    torch, be, on_gpu = ctx["torch"], ctx["be"], ctx["on_gpu"]
    label, c, o, (h, w), stride, pads, stem = conv
    fmt, geo = FORMATS[pname], (stride, pads, (1, 1))
    cpu = CPUBackend()
    rng = np.random.default_rng(batch * 1000 + c)
    x = rng.standard_normal((batch, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, 3, 3), dtype=np.float32) * 0.1
    y = cpu.conv2d(x, wt, *geo, precision=fmt)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    flops = 2.0 * y.size * c * 9
    refs = {"fwd": y, "dx": cpu.conv2d_backward_input(dy, wt, (h, w), *geo, precision=fmt),
            "dw": cpu.conv2d_backward_weight(dy, x, (3, 3), *geo, precision=fmt)}
    xd, wd, dyd = be.asarray(x), be.asarray(wt), be.asarray(dy)
    ours = {"fwd": lambda: be.conv2d(xd, wd, *geo, precision=fmt),
            "dx": lambda: be.conv2d_backward_input(dyd, wd, (h, w), *geo, precision=fmt),
            "dw": lambda: be.conv2d_backward_weight(dyd, xd, (3, 3), *geo, precision=fmt)}
    # PyTorch: the same (rounded, for 16-bit) inputs; asymmetric pads applied beforehand
    top, bottom, left, right = pads
    sym = (top, left) == (bottom, right)
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(pname, torch.float32)
    tin = lambda a: torch.from_numpy(round_to(a, fmt) if tdt != torch.float32 else a).to(
        ctx["tdev"]).to(tdt)
    xt = tin(x) if sym else torch.nn.functional.pad(tin(x), (left, right, top, bottom))
    wtt, dyt = tin(wt), tin(dy)
    tpad = [top, left] if sym else [0, 0]
    bw = lambda mask: torch.ops.aten.convolution_backward(
        dyt, xt, wtt, None, list(stride), tpad, [1, 1], False, [0, 0], 1, mask)
    theirs = {"fwd": lambda: torch.nn.functional.conv2d(xt, wtt, None, stride, tpad),
              "dx": lambda: bw([True, False, False])[0],
              "dw": lambda: bw([False, True, False])[1]}
    # dx against the padded input: the rows and columns of the pre-padding cut off
    crop = {} if sym else {"dx": lambda t: t[:, :, top:top + h, left:left + w]}
    torch_why = None
    if not on_gpu and pname == "tf32":
        torch_why = "no TF32 on a CPU"
    modes = [False, True] if on_gpu and fmt else [None]
    res = {"ops": {}}
    for op in ("fwd", "dx", "dw"):
        r = res["ops"][op] = {}
        if op == "dx" and stem:
            r["skipped"] = "the stem's input gradient is never computed"
            continue
        for mode in modes:
            key = {None: "gpudl", False: "gpudl", True: "gpudl TC"}[mode]
            with tensor_cores(mode), count_tc_calls(on_gpu) as calls:
                err = norm_err(be.to_numpy(ours[op]()), refs[op])
            r[f"{key} err"], r[f"{key} tc calls"] = err, calls[0]
            if not err <= OP_TOL:
                raise AssertionError(f"conv {label} b{batch} {pname} {op} ({key}): error "
                                     f"{err:.1e} against the CPU reference (tolerance {OP_TOL})")
            if mode and not calls[0]:
                r[key] = "no TC call"  # the same path as TC off: nothing new to time
                continue
            with tensor_cores(mode):
                r[key] = ctx["timer"](ours[op], warmup=ctx["warmup"], repeat=ctx["repeat"])
        if torch_why:
            r["torch"] = torch_why
            continue
        with torch_tf32(torch, pname == "tf32"):
            try:
                got = theirs[op]()
            except RuntimeError as e:  # e.g. a dtype PyTorch's CPU convolution lacks
                r["torch"] = f"unsupported: {str(e).splitlines()[0][:80]}"
                continue
            got = crop.get(op, lambda t: t)(got)
            r["torch err"] = err = norm_err(got.float().cpu().numpy(), refs[op])
            if not err <= torch_op_tol(fmt):
                raise AssertionError(f"conv {label} b{batch} {pname} {op}: PyTorch differs from "
                                     f"the reference by {err:.1e} (tolerance {torch_op_tol(fmt)})")
            r["torch"] = ctx["timer"](theirs[op], warmup=ctx["warmup"], repeat=ctx["repeat"])
    res["flops"] = flops
    return res


def conv_rows(label, batch, pname, res):
    rows = []
    for op, r in res["ops"].items():
        if "skipped" in r:
            continue
        times = [t for t in (r.get("gpudl"), r.get("gpudl TC")) if isinstance(t, float)]
        best = min(times) if times else None
        tc = r.get("gpudl TC", NA)
        rows.append([batch, label, op, pname, _ms(r["gpudl"]), _ms(tc), _ms(r["torch"]),
                     _tf(res["flops"], best), _tf(res["flops"], r["torch"]),
                     _ratio(r["torch"], best), _err(r.get("gpudl err")),
                     _err(r.get("torch err"))])
    return rows
