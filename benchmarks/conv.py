"""Convolution forward, input gradient and weight gradient: gpudl against PyTorch
(cuDNN on a GPU: TF32 off and cudnn.benchmark on, and PyTorch's defaults
separately; oneDNN/ATen on a CPU). Each gpudl result is checked against
PyTorch before it is timed.
Usage: python -m benchmarks.conv [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import argparse

import numpy as np

from .common import cpu_name, gpu_name, record, time_cpu, time_cuda

# (name, N, C, H, W, O, K, stride, padding, dilation, groups)
SHAPES = [
    ("3x3 same", 32, 64, 32, 32, 64, 3, 1, 1, 1, 1),
    ("3x3 stride 2", 32, 64, 32, 32, 128, 3, 2, 1, 1, 1),
    ("3x3 dilation 2", 16, 32, 32, 32, 32, 3, 1, 2, 2, 1),
    ("depthwise 3x3", 32, 128, 32, 32, 128, 3, 1, 1, 1, 128),
    ("1x1 pointwise", 32, 128, 16, 16, 256, 1, 1, 0, 1, 1),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="a quarter of the batch")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import gpudl
    be = gpudl.set_device(args.device)
    dev = "cuda" if args.device == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    timer = time_cuda if args.device == "cuda" else time_cpu
    rows = []
    for name, n, c, h, w, o, k, s, pd, d, g in SHAPES:
        if args.quick:
            n = max(1, n // 4)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, h, w), dtype=np.float32)
        wt = rng.standard_normal((o, c // g, k, k), dtype=np.float32) * 0.1
        pads, st, dil = (pd, pd, pd, pd), (s, s), (d, d)
        xd, wd = be.asarray(x), be.asarray(wt)
        y = be.conv2d(xd, wd, st, pads, dil, g)
        dy = be.asarray(rng.standard_normal(y.shape, dtype=np.float32))
        tx = torch.from_numpy(x).to(dev).requires_grad_(True)
        tw = torch.from_numpy(wt).to(dev).requires_grad_(True)
        ty = F.conv2d(tx, tw, stride=s, padding=pd, dilation=d, groups=g)
        tdy = torch.from_numpy(be.to_numpy(dy)).to(dev)
        tdx, tdw = torch.autograd.grad(ty, (tx, tw), tdy)
        ours = {"forward": lambda: be.conv2d(xd, wd, st, pads, dil, g),
                "input grad": lambda: be.conv2d_backward_input(dy, wd, (h, w), st, pads, dil, g),
                "weight grad": lambda: be.conv2d_backward_weight(dy, xd, (k, k), st, pads, dil, g)}
        theirs = {"forward": lambda: F.conv2d(tx, tw, stride=s, padding=pd, dilation=d, groups=g),
                  "input grad": lambda: torch.nn.grad.conv2d_input(
                      tx.shape, tw, tdy, stride=s, padding=pd, dilation=d, groups=g),
                  "weight grad": lambda: torch.nn.grad.conv2d_weight(
                      tx, tw.shape, tdy, stride=s, padding=pd, dilation=d, groups=g)}
        refs = {"forward": ty, "input grad": tdx, "weight grad": tdw}
        flops = 2.0 * n * o * y.shape[2] * y.shape[3] * (c // g) * k * k
        for op in ours:
            got = be.to_numpy(ours[op]())
            ref = refs[op].detach().cpu().numpy()
            err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
            if not err < 1e-4:
                raise AssertionError(f"{name} {op}: relative error {err} against PyTorch")
            with torch.no_grad():
                t_ours = timer(ours[op], repeat=args.repeat)
                t_ref = timer(theirs[op], repeat=args.repeat)
            rows.append([name, op, f"{t_ours * 1e3:.3f}", f"{t_ref * 1e3:.3f}",
                         f"{flops / t_ours / 1e9:.1f}", f"{t_ref / t_ours:.3f}", f"{err:.1e}"])
    base = "cuDNN via PyTorch (TF32 off, benchmark on)" if dev == "cuda" else \
        f"PyTorch CPU ({torch.get_num_threads()} threads)"
    record(f"Convolutions vs {base}, float32{' (quick)' if args.quick else ''}",
           gpu_name() if dev == "cuda" else cpu_name(),
           ["shape", "op", "gpudl ms", "baseline ms", "gpudl GFLOP/s", "baseline / gpudl",
            "rel. error"], rows,
           notes="Shapes (N, C, H, W -> O, K, stride, padding, dilation, groups): "
                 + "; ".join(f"{r[0]} ({r[1]}, {r[2]}, {r[3]}, {r[4]} -> {r[5]}, {r[6]}, {r[7]}, "
                             f"{r[8]}, {r[9]}, {r[10]})" for r in SHAPES)
                 + ". A ratio above 1 means gpudl is faster.",
           json_path=args.json)


if __name__ == "__main__":
    main()
