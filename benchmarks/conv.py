"""Forward and backward (input and weight gradients) of a fixed set of
convolution layers: gpudl against PyTorch (cuDNN on a GPU, TF32 off and
cudnn.benchmark on; ATen/oneDNN on a CPU). Each gpudl result is checked
against PyTorch before it is timed.
Usage: python -m benchmarks.conv [--device cpu|cuda] [--repeat 5]
"""
from __future__ import annotations

import argparse

import numpy as np

from .common import cpu_name, gpu_name, record, time_cpu, time_cuda

# name: (gpudl layer kwargs, kind, batch, input C, H, W)
LAYERS = {
    "LeNet conv1 1->6 5x5": (dict(in_channels=1, out_channels=6, kernel_size=5), "conv", 64, 1, 32, 32),
    "LeNet conv2 6->16 5x5": (dict(in_channels=6, out_channels=16, kernel_size=5), "conv", 64, 6, 14, 14),
    "ResNet 3x3 64->64 @32": (dict(in_channels=64, out_channels=64, kernel_size=3, padding=1,
                                   bias=False), "conv", 64, 64, 32, 32),
    "ResNet 3x3 128->128 @16": (dict(in_channels=128, out_channels=128, kernel_size=3, padding=1,
                                     bias=False), "conv", 64, 128, 16, 16),
    "depthwise 3x3 128 @16": (dict(channels=128, kernel_size=3, padding=1), "depthwise", 64, 128, 16, 16),
    "transposed 4x4 s2 64->32 @16": (dict(in_channels=64, out_channels=32, kernel_size=4, stride=2,
                                          padding=1), "transposed", 64, 64, 16, 16),
}


def _torch_fn(kind, kw, layer):
    import torch.nn.functional as F
    if kind == "transposed":
        return lambda x, w, b: F.conv_transpose2d(x, w, b, stride=kw["stride"], padding=kw["padding"])
    groups = kw.get("channels", 1) if kind == "depthwise" else 1
    pad = kw.get("padding", 0)
    return lambda x, w, b: F.conv2d(x, w, b, padding=pad, groups=groups)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="override every batch size")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    import gpudl
    from gpudl.layers import Conv2D, Conv2DTranspose, DepthwiseConv2D
    be = gpudl.set_device(args.device)
    dev = "cuda" if args.device == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    timer = time_cuda if dev == "cuda" else time_cpu
    make = {"conv": Conv2D, "depthwise": DepthwiseConv2D, "transposed": Conv2DTranspose}
    rows = []
    for name, (kw, kind, n, c, h, w) in LAYERS.items():
        n = args.batch or n
        gpudl.manual_seed(0)
        layer = make[kind](**kw)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, h, w), dtype=np.float32)
        xd = be.asarray(x)
        y = layer.forward(xd, training=True)
        dy = be.asarray(rng.standard_normal(y.shape, dtype=np.float32))
        dx = layer.backward(dy)
        tx = torch.from_numpy(x).to(dev).requires_grad_(True)
        tw = torch.from_numpy(be.to_numpy(layer.params["W"])).to(dev).requires_grad_(True)
        tb = (torch.from_numpy(be.to_numpy(layer.params["b"])).to(dev).requires_grad_(True)
              if "b" in layer.params else None)
        fn = _torch_fn(kind, kw, layer)
        ty = fn(tx, tw, tb)
        tdy = torch.from_numpy(be.to_numpy(dy)).to(dev)
        wrt = (tx, tw) + ((tb,) if tb is not None else ())  # the same work as layer.backward
        tgrads = torch.autograd.grad(ty, wrt, tdy, retain_graph=True)
        errs = []
        for got, ref in ((y, ty), (dx, tgrads[0]), (layer.grads["W"], tgrads[1])):
            ref = ref.detach().cpu().numpy()
            errs.append(float(np.linalg.norm(be.to_numpy(got) - ref) / np.linalg.norm(ref)))
        if not max(errs) < 1e-4:
            raise AssertionError(f"{name}: relative errors {errs} against PyTorch")
        t_fwd = timer(lambda: layer.forward(xd, training=True), repeat=args.repeat)
        t_bwd = timer(lambda: layer.backward(dy), repeat=args.repeat)
        t_tfwd = timer(lambda: fn(tx, tw, tb), repeat=args.repeat)
        t_tbwd = timer(lambda: torch.autograd.grad(ty, wrt, tdy, retain_graph=True),
                       repeat=args.repeat)
        rows.append([name, n, f"{t_fwd * 1e3:.2f}", f"{t_tfwd * 1e3:.2f}", f"{t_tfwd / t_fwd:.2f}",
                     f"{t_bwd * 1e3:.2f}", f"{t_tbwd * 1e3:.2f}", f"{t_tbwd / t_bwd:.2f}",
                     f"{max(errs):.1e}"])
    base = "cuDNN via PyTorch (TF32 off, benchmark on)" if dev == "cuda" else \
        f"PyTorch CPU ({torch.get_num_threads()} threads)"
    record(f"Convolution layers vs {base}, float32", gpu_name() if dev == "cuda" else cpu_name(),
           ["layer", "batch", "fwd ms", "base fwd ms", "fwd base/ours", "bwd ms", "base bwd ms",
            "bwd base/ours", "max rel. err"], rows,
           notes="bwd = input gradient and weight (and bias) gradient together. A ratio above 1 "
                 "means gpudl is faster.", json_path=args.json)


if __name__ == "__main__":
    main()
