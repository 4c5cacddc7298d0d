"""Kernel-version sweep for convolutions on the GPU: every version in
gpudl.kernels.conv.VERSIONS (direct, im2col, implicit) on the layers of
benchmarks/conv.py, each checked against the CPU reference before timing.
The fastest that is right everywhere should be CONV_DEFAULT.

--precisions tf32 bf16 fp16 adds each version at reduced precision with
GPUDL_TENSOR_CORES=1: im2col's GEMMs on kernels/cu/gemm_mma.cu, implicit on
kernels/cu/conv_mma.cu (direct has no tensor-core kernel: FP32 on rounded
inputs). Inputs are rounded once, untimed (the layers round them per call);
references are the CPU ops of the same precision; a row whose op ran no
tensor-core kernel fails instead of being timed as one.
Usage: python -m benchmarks.conv_versions [--repeat 5] [--batch 64]
       [--precisions fp32 tf32 bf16 fp16]
"""
from __future__ import annotations

import argparse

import numpy as np

from .common import gpu_name, record, time_cuda
from .conv import LAYERS


def sweep_problem(be, kw, n, c, h, w, fmt=None):
    """One stride-1 convolution layer's inputs on ``be`` and its three CPU
    reference results: geo, hw, kk, xd, wd, dyd, flops, refs (fwd, dx, dw).
    fmt: inputs rounded to that format, references of that precision."""
    from gpudl.backend.cpu import CPUBackend
    from gpudl.precision import round_to
    cpu = CPUBackend()
    o, k, pad = kw["out_channels"], kw["kernel_size"], kw.get("padding", 0)
    geo = ((1, 1), (pad,) * 4, (1, 1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, k, k), dtype=np.float32) * 0.1
    y_ref = cpu.conv2d(x, wt, *geo, precision=fmt)
    dy = rng.standard_normal(y_ref.shape, dtype=np.float32)
    if fmt is not None:  # what the backend's conv methods hand cuda_conv
        x, wt, dy = (round_to(t, fmt) for t in (x, wt, dy))
    return {"geo": geo, "hw": (h, w), "kk": (k, k), "xd": be.asarray(x), "wd": be.asarray(wt),
            "dyd": be.asarray(dy), "flops": 2.0 * y_ref.size * c * k * k,
            "refs": {"fwd": y_ref,
                     "dx": cpu.conv2d_backward_input(dy, wt, (h, w), *geo, precision=fmt),
                     "dw": cpu.conv2d_backward_weight(dy, x, (k, k), *geo, precision=fmt)}}


def _tensor_core_launches():
    """[n], counting conv GEMMs that ran on tensor cores (cuda_mma.matmul
    results, conv_mma launches) while installed; returns (count, undo)."""
    from gpudl.backend import cuda_conv_mma, cuda_mma
    count = [0]
    real_mm, real_run = cuda_mma.matmul, cuda_conv_mma._run

    def mm(*a, **k):
        out = real_mm(*a, **k)
        count[0] += out is not None
        return out

    def run(*a, **k):
        count[0] += 1
        return real_run(*a, **k)
    cuda_mma.matmul, cuda_conv_mma._run = mm, run

    def undo():
        cuda_mma.matmul, cuda_conv_mma._run = real_mm, real_run
    return count, undo


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--precisions", nargs="+", default=["fp32"],
                   help="fp32 (the FP32 kernels), tf32, bf16, fp16 (tensor cores)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import os

    import gpudl
    from gpudl.backend import cuda_conv
    from gpudl.kernels import conv as ck
    be = gpudl.set_device("cuda")
    rows = []
    old_tc = os.environ.get("GPUDL_TENSOR_CORES")
    count, undo = _tensor_core_launches()
    try:
        for name, (kw, kind, n, c, h, w) in LAYERS.items():
            if kind != "conv":
                continue
            for prec in args.precisions:
                fmt = None if prec == "fp32" else prec
                os.environ["GPUDL_TENSOR_CORES"] = "0" if fmt is None else "1"
                rows += _sweep_layer(be, cuda_conv, ck, name, kw, (args.batch or n, c, h, w),
                                     fmt, args.repeat, count)
    finally:
        undo()
        if old_tc is None:
            os.environ.pop("GPUDL_TENSOR_CORES", None)
        else:
            os.environ["GPUDL_TENSOR_CORES"] = old_tc
    record("Convolution kernel versions (GPU; fp32, or tensor cores per precision)", gpu_name(),
           ["layer", "version", "precision", "fwd ms", "fwd TFLOP/s", "dx ms", "dx TFLOP/s",
            "dw ms", "dw TFLOP/s"], rows,
           notes="Each op checked against the CPU reference of its precision first; "
           "reduced-precision rows use GPUDL_TENSOR_CORES=1 on inputs rounded beforehand.",
           json_path=args.json)


def _sweep_layer(be, cuda_conv, ck, name, kw, nchw, fmt, repeat, count):
    s = sweep_problem(be, kw, *nchw, fmt=fmt)
    xd, wd, dyd, geo, flops = s["xd"], s["wd"], s["dyd"], s["geo"], s["flops"]
    (k, _), refs = s["kk"], (s["refs"]["fwd"], s["refs"]["dx"], s["refs"]["dw"])
    h, w = s["hw"]
    rows = []
    for version in ck.VERSIONS:
        ops = (lambda: cuda_conv.conv2d(be, xd, wd, *geo, version=version, fmt=fmt),
               lambda: cuda_conv.conv2d_backward_input(be, dyd, wd, (h, w), *geo,
                                                       version=version, fmt=fmt),
               lambda: cuda_conv.conv2d_backward_weight(be, dyd, xd, (k, k), *geo,
                                                        version=version, fmt=fmt))
        row = [name, version + (" (default)" if version == ck.CONV_DEFAULT else ""),
               fmt or "fp32"]
        for op, ref in zip(ops, refs):
            before = count[0]
            err = float(np.linalg.norm(be.to_numpy(op()) - ref) / np.linalg.norm(ref))
            if not err < 1e-4:
                raise AssertionError(f"{name} {version} {fmt}: relative error {err}")
            if fmt is not None and version != "direct" and count[0] == before:
                raise AssertionError(f"{name} {version} {fmt}: no tensor-core kernel ran")
            t = time_cuda(op, repeat=repeat)
            row += [f"{t * 1e3:.3f}", f"{flops / t / 1e12:.2f}"]
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
