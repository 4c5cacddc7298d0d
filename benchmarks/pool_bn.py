"""Pooling and batch normalization, forward and backward, at ResNet sizes:
gpudl's backend ops, each checked against PyTorch (or, without PyTorch, the
NumPy reference backend) before it is timed.

Every row gives the fewest bytes the op must move (see BYTES_NOTE) and the
bandwidth that implies. Baselines, timed in the same run:
- on a GPU: a device-to-device copy (cupy.copyto) moving the same number of
  bytes (it reads half and writes half), so "ours/copy" is the fraction of
  copy bandwidth reached; and PyTorch CUDA on the same op where it is
  installed (forward, and autograd backward via torch.autograd.grad);
- on a CPU: PyTorch CPU (all logical CPUs) on the same op.
Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) the CUDA path runs with
host timers and no copy baseline, only to check the logic; nothing is recorded.
Usage: python -m benchmarks.pool_bn [--device cpu|cuda] [--repeat N] [--batch N]
       [--cases max bn ...] [--tiny] [--json out.json]
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from .common import cpu_name, gpu_name, record, time_cpu, time_cuda

F32, I64 = 4, 8  # bytes per float32 value, per int64 argmax

_NOPAD = (0, 0, 0, 0)
# name: (op, (N, C, H, W), (kernel, stride, pads (top, bottom, left, right)) for pooling)
CASES = {
    "max 3x3 s2 p1, 64ch@32": ("max", (64, 64, 32, 32), ((3, 3), (2, 2), (1, 1, 1, 1))),
    "max 2x2 s2, 64ch@32": ("max", (64, 64, 32, 32), ((2, 2), (2, 2), _NOPAD)),
    "max 2x2 s2, 128ch@16": ("max", (64, 128, 16, 16), ((2, 2), (2, 2), _NOPAD)),
    "avg 2x2 s2, 128ch@16": ("avg", (64, 128, 16, 16), ((2, 2), (2, 2), _NOPAD)),
    "avg 3x3 s1 p1, 64ch@32": ("avg", (64, 64, 32, 32), ((3, 3), (1, 1), (1, 1, 1, 1))),
    "global avg, 256ch@8": ("gap", (64, 256, 8, 8), None),
    "bn, 64ch@32": ("bn", (64, 64, 32, 32), None),
    "bn, 128ch@16": ("bn", (64, 128, 16, 16), None),
    "bn, 256ch@8": ("bn", (64, 256, 8, 8), None),
    "bn, 3ch@128 (few channels)": ("bn", (64, 3, 128, 128), None),
    "bn, 8ch@128 (few channels)": ("bn", (64, 8, 128, 128), None),
}

BYTES_NOTE = (
    "min MB counts the fewest bytes each op must move (float32 4 B, int64 argmax 8 B per "
    "element; per-channel vectors ignored): max pool fwd reads x, writes y and argmax; max "
    "pool bwd reads dy and argmax, writes dx; avg / global avg pool reads x (dy) and writes "
    "y (dx); BN training fwd (statistics + normalise) reads x once and writes y (8 B/elt; "
    "gpudl's two-pass statistics read x twice more, 16 B/elt moved); BN bwd reads dy and x "
    "once and writes dx (12 B/elt; gpudl reads dy and x twice, 20 B/elt). GB/s = min bytes / "
    "median time.")


def min_bytes(op, nx, ny, direction):
    """The fewest bytes op must move: nx input elements, ny output elements."""
    if op == "max":  # fwd: x -> y, argmax; bwd: dy, argmax -> dx
        return F32 * nx + (F32 + I64) * ny
    if op in ("avg", "gap"):
        return F32 * (nx + ny)
    if op == "bn":
        return (2 if direction == "fwd" else 3) * F32 * nx
    raise ValueError(op)


def _pool_geometry(op, shape, geo):
    if op == "gap":
        hw = tuple(shape[2:])
        return hw, hw, _NOPAD
    return geo


def out_shape(op, shape, geo):
    n, c, h, w = shape
    if op == "bn":
        return shape
    from gpudl.convshape import conv_output_hw
    k, s, pads = _pool_geometry(op, shape, geo)
    return (n, c) + tuple(conv_output_hw((h, w), k, s, pads, (1, 1), op))


def gpudl_fns(be, op, shape, geo, x, dy, params):
    """(forward fn, backward fn, forward outputs {"y", ["argmax"]}) on backend be.

    x, dy and params (gamma, beta for BN) are NumPy arrays."""
    xd, dyd = be.asarray(x), be.asarray(dy)
    h, w = shape[2:]
    if op == "bn":
        gamma, beta = be.asarray(params[0]), be.asarray(params[1])

        def fwd():
            mean, var = be.batchnorm_stats(xd)
            return be.batchnorm_forward(xd, mean, var, gamma, beta, 1e-5) + (mean,)
        y, invstd, mean = fwd()

        def bwd():
            return be.batchnorm_backward(dyd, xd, mean, invstd, gamma)
        return fwd, bwd, {"y": y}
    k, s, pads = _pool_geometry(op, shape, geo)
    if op == "max":
        def fwd():
            return be.max_pool2d(xd, k, s, pads)
        y, argmax = fwd()

        def bwd():
            return be.max_pool2d_backward(dyd, argmax, (h, w), k, s, pads)
        return fwd, bwd, {"y": y, "argmax": argmax}

    def fwd():
        return be.avg_pool2d(xd, k, s, pads)

    def bwd():
        return be.avg_pool2d_backward(dyd, (h, w), k, s, pads)
    return fwd, bwd, {"y": fwd()}


def torch_fns(torch, dev, op, shape, geo, x, dy, params):
    """PyTorch's forward and autograd-backward fns on dev and its reference outputs
    {"y", ["argmax"], "dx", ["dgamma", "dbeta"]} as NumPy arrays."""
    import torch.nn.functional as F
    tx = torch.from_numpy(x).to(dev).requires_grad_(True)
    tdy = torch.from_numpy(dy).to(dev)
    if op == "bn":
        c = shape[1]
        tg = torch.from_numpy(params[0]).to(dev).requires_grad_(True)
        tb = torch.from_numpy(params[1]).to(dev).requires_grad_(True)
        rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)

        def fwd():
            return F.batch_norm(tx, rm, rv, tg, tb, training=True, momentum=0.1, eps=1e-5)
        wrt = (tx, tg, tb)
    else:
        k, s, pads = _pool_geometry(op, shape, geo)
        pad = (pads[0], pads[2])  # symmetric in every case here
        if op == "max":
            def fwd():
                return F.max_pool2d(tx, k, s, pad, return_indices=True)
        elif op == "avg":
            def fwd():
                return F.avg_pool2d(tx, k, s, pad, count_include_pad=False)
        else:
            def fwd():
                return F.adaptive_avg_pool2d(tx, 1)
        wrt = (tx,)
    out = fwd()
    ty = out[0] if op == "max" else out

    def bwd():
        return torch.autograd.grad(ty, wrt, tdy, retain_graph=True)
    grads = bwd()
    ref = {"y": ty.detach().cpu().numpy(), "dx": grads[0].cpu().numpy()}
    if op == "max":
        ref["argmax"] = out[1].cpu().numpy()
    if op == "bn":
        ref["dgamma"], ref["dbeta"] = grads[1].cpu().numpy(), grads[2].cpu().numpy()
    return fwd, bwd, ref


def numpy_reference(op, shape, geo, x, dy, params):
    """The NumPy reference backend's outputs, for a CUDA run without PyTorch."""
    from gpudl.backend.cpu import CPUBackend
    fwd, bwd, ref = gpudl_fns(CPUBackend(), op, shape, geo, x, dy, params)
    got = bwd()
    if op == "bn":
        ref["dx"], ref["dgamma"], ref["dbeta"] = got
    else:
        ref["dx"] = got
    return ref


def rel_err(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def check(name, be, op, outs_f, outs_b, ref):
    """Max rel. error of gpudl's outputs against ref; argmax must match exactly."""
    got = {"y": outs_f["y"]}
    if op == "bn":
        got["dx"], got["dgamma"], got["dbeta"] = outs_b
    else:
        got["dx"] = outs_b
    errs = {k: rel_err(be.to_numpy(v), ref[k]) for k, v in got.items()}
    if op == "max":
        a = be.to_numpy(outs_f["argmax"]).reshape(ref["argmax"].shape)
        bad = int((a != ref["argmax"]).sum())
        if bad:
            raise AssertionError(f"{name}: {bad} argmax indices differ from the reference")
    if not max(errs.values()) < 1e-4:
        raise AssertionError(f"{name}: relative errors {errs} against the reference")
    return max(errs.values())


def select(cases, wanted):
    if not wanted:
        return dict(cases)
    wanted = [w.lower() for w in wanted]
    out = {k: v for k, v in cases.items()
           if any(w == v[0] or w in k.lower() for w in wanted)}
    if not out:
        raise SystemExit(f"--cases {' '.join(wanted)} matches none of: {', '.join(cases)} "
                         f"(or the op names max, avg, gap, bn)")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when CuPy sees a GPU, else cpu")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs (default 20 cuda, 10 cpu, 2 simulator)")
    p.add_argument("--batch", type=int, default=None, help="override every batch size")
    p.add_argument("--cases", nargs="+", default=None,
                   help="substrings of case names, or op names max avg gap bn")
    p.add_argument("--tiny", action="store_true",
                   help="batch 2, at most 4 channels and 8x8 (for the CUDA simulator)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import gpudl
    from gpudl.backend import gpu_available
    device = args.device
    if device == "auto":
        device = "cuda" if gpu_available() else "cpu"
    be = gpudl.set_device(device)
    sim = device == "cuda" and be.simulator
    on_gpu = device == "cuda" and not sim
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and device == "cpu":
        torch.set_num_threads(os.cpu_count())
    # The PyTorch column runs on the device under test: CPU for cpu, CUDA for cuda.
    tdev = None
    if torch is not None:
        if device == "cpu":
            tdev = "cpu"
        elif on_gpu and torch.cuda.is_available():
            tdev = "cuda"

    if on_gpu:
        import cupy
        timer, warmup = time_cuda, 3
    else:
        cupy = None
        timer, warmup = time_cpu, 1
    repeat = args.repeat or (20 if on_gpu else (2 if sim else 10))

    def t(fn):
        return timer(fn, warmup=warmup, repeat=repeat)

    def copy_time(nbytes):
        """A device-to-device copy moving nbytes in all (half read, half written)."""
        count = max(1, int(round(nbytes / (2 * F32))))
        src = cupy.ones(count, dtype=cupy.float32)
        dst = cupy.empty_like(src)
        tc = t(lambda: cupy.copyto(dst, src))
        return tc, 2 * F32 * count / tc

    rows = []
    for name, (op, shape, geo) in select(CASES, args.cases).items():
        n, c, h, w = shape
        if args.tiny:
            n, c, h, w = 2, min(c, 4), min(h, 8), min(w, 8)
        if args.batch:
            n = args.batch
        shape = (n, c, h, w)
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=np.float32)
        if op == "bn":
            x += 0.5  # a mean well off zero: the statistics must not cancel
        dy = rng.standard_normal(out_shape(op, shape, geo), dtype=np.float32)
        params = None
        if op == "bn":
            params = (1 + 0.1 * rng.standard_normal(c, dtype=np.float32),
                      0.1 * rng.standard_normal(c, dtype=np.float32))
        fwd, bwd, outs_f = gpudl_fns(be, op, shape, geo, x, dy, params)
        outs_b = bwd()
        if tdev is not None:
            tfwd, tbwd, ref = torch_fns(torch, tdev, op, shape, geo, x, dy, params)
        elif torch is not None:  # the simulator, or a GPU without torch.cuda: check on the CPU
            tfwd = tbwd = None
            ref = torch_fns(torch, "cpu", op, shape, geo, x, dy, params)[2]
        else:
            tfwd = tbwd = None
            ref = numpy_reference(op, shape, geo, x, dy, params) if device == "cuda" else None
        err = check(name, be, op, outs_f, outs_b, ref) if ref is not None else None
        nx = x.size
        ny = int(np.prod(outs_f["y"].shape))
        for direction, ours, theirs in (("fwd", fwd, tfwd), ("bwd", bwd, tbwd)):
            nbytes = min_bytes(op, nx, ny, direction)
            t_ours = t(ours)
            row = [name, direction, "x".join(map(str, shape)), f"{nbytes / 1e6:.2f}",
                   f"{t_ours * 1e3:.3f}", f"{nbytes / t_ours / 1e9:.1f}"]
            if device == "cuda":
                if on_gpu:
                    _, copy_gbs = copy_time(nbytes)
                    row += [f"{copy_gbs:.0f}", f"{nbytes / t_ours / 1e9 / copy_gbs:.2f}"]
                else:
                    row += ["-", "-"]  # no CuPy under the simulator
            if tdev is not None:
                t_theirs = t(theirs)
                row += [f"{t_theirs * 1e3:.3f}", f"{t_theirs / t_ours:.2f}"]
            elif device == "cuda":
                row += ["-", "-"]
            row.append("-" if err is None else f"{err:.1e}")
            rows.append(row)
        print(" | ".join(rows[-2]) + "\n" + " | ".join(rows[-1]), flush=True)

    header = ["case", "pass", "input NxCxHxW", "min MB", "gpudl ms", "gpudl GB/s"]
    if device == "cuda":
        header += ["copy GB/s", "ours/copy", "torch ms", "torch/ours"]
    elif tdev is not None:
        header += ["torch ms", "torch/ours"]
    header.append("max rel. err")
    if device == "cuda":
        base = "a device copy of the same bytes" + (" and PyTorch CUDA" if tdev else "")
        if sim:
            base = "nothing (numba CUDA simulator, a logic check)"
        where = gpu_name() if on_gpu else "CUDA simulator (timings meaningless)"
    else:
        base = f"PyTorch CPU ({torch.get_num_threads()} threads)" if tdev else "no baseline"
        where = cpu_name()
    if torch is not None or device == "cuda":
        ref_name = "PyTorch" if torch is not None else "the NumPy reference backend"
        checked = f"Outputs checked against {ref_name} before timing"
    else:
        checked = "Outputs not checked (no PyTorch; the CPU backend is the NumPy reference)"
    notes = (BYTES_NOTE + " bwd = every gradient of the op (for BN dx, dgamma and dbeta). "
             + ("ours/copy = gpudl GB/s / copy GB/s (a copy moving the same bytes). "
                if device == "cuda" else "")
             + ("torch/ours = PyTorch time / gpudl time (above 1: gpudl faster). " if tdev else "")
             + f"{checked}; medians of {repeat} timed runs.")
    if sim:
        os.environ["GPUDL_BENCH_NO_RECORD"] = "1"  # simulator timings are not results
    record(f"Pooling and batch norm, forward and backward, float32, {device}, vs {base}",
           where, header, rows, notes=notes, json_path=args.json)


if __name__ == "__main__":
    main()
