"""Kernel-version sweep for convolutions on the GPU: every version in
gpudl.kernels.conv.VERSIONS (direct, im2col, implicit) on the layers of
benchmarks/conv.py, each checked against the CPU reference before timing.
The fastest that is right everywhere should be CONV_DEFAULT.
Usage: python -m benchmarks.conv_versions [--repeat 5] [--batch 64]
"""
from __future__ import annotations

import argparse

import numpy as np

from .common import gpu_name, record, time_cuda
from .conv import LAYERS


def sweep_problem(be, kw, n, c, h, w):
    """One stride-1 convolution layer's inputs on ``be`` and its three CPU
    reference results: geo, hw, kk, xd, wd, dyd, flops, refs (fwd, dx, dw)."""
    from gpudl.backend.cpu import CPUBackend
    cpu = CPUBackend()
    o, k, pad = kw["out_channels"], kw["kernel_size"], kw.get("padding", 0)
    geo = ((1, 1), (pad,) * 4, (1, 1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, k, k), dtype=np.float32) * 0.1
    y_ref = cpu.conv2d(x, wt, *geo)
    dy = rng.standard_normal(y_ref.shape, dtype=np.float32)
    return {"geo": geo, "hw": (h, w), "kk": (k, k), "xd": be.asarray(x), "wd": be.asarray(wt),
            "dyd": be.asarray(dy), "flops": 2.0 * y_ref.size * c * k * k,
            "refs": {"fwd": y_ref, "dx": cpu.conv2d_backward_input(dy, wt, (h, w), *geo),
                     "dw": cpu.conv2d_backward_weight(dy, x, (k, k), *geo)}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import gpudl
    from gpudl.backend import cuda_conv
    from gpudl.kernels import conv as ck
    be = gpudl.set_device("cuda")
    rows = []
    for name, (kw, kind, n, c, h, w) in LAYERS.items():
        if kind != "conv":
            continue
        s = sweep_problem(be, kw, args.batch or n, c, h, w)
        xd, wd, dyd, geo, flops = s["xd"], s["wd"], s["dyd"], s["geo"], s["flops"]
        (k, _), refs = s["kk"], (s["refs"]["fwd"], s["refs"]["dx"], s["refs"]["dw"])
        for version in ck.VERSIONS:
            ops = (lambda: cuda_conv.conv2d(be, xd, wd, *geo, version=version),
                   lambda: cuda_conv.conv2d_backward_input(be, dyd, wd, (h, w), *geo,
                                                           version=version),
                   lambda: cuda_conv.conv2d_backward_weight(be, dyd, xd, (k, k), *geo,
                                                            version=version))
            row = [name, version + (" (default)" if version == ck.CONV_DEFAULT else "")]
            for op, ref in zip(ops, refs):
                err = float(np.linalg.norm(be.to_numpy(op()) - ref) / np.linalg.norm(ref))
                if not err < 1e-4:
                    raise AssertionError(f"{name} {version}: relative error {err}")
                t = time_cuda(op, repeat=args.repeat)
                row += [f"{t * 1e3:.3f}", f"{flops / t / 1e12:.2f}"]
            rows.append(row)
    record("Convolution kernel versions (float32, GPU)", gpu_name(),
           ["layer", "version", "fwd ms", "fwd TFLOP/s", "dx ms", "dx TFLOP/s", "dw ms",
            "dw TFLOP/s"], rows, notes="Each op checked against the CPU reference first.",
           json_path=args.json)


if __name__ == "__main__":
    main()
