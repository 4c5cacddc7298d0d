"""The roofline model gpudl.profile reports: the floating-point work and the fewest
bytes moved of every backend op and kernel, from shapes alone; and the rates they
are compared with, each device's datasheet peak and its measured ceiling.

Conventions (hand-countable; tests/test_profile.py counts them by hand):
- FLOPs: an add, a multiply, a compare, an exp, a divide or a square root is one
  operation each, so a multiply-add is two (a matmul is 2 m n k). A reduction
  counts one add per element it reads. Integer index arithmetic is free.
- Bytes: each input array read once and each output written once, at its own
  item size (argmax and label arrays are int64: 8 bytes); an array updated in
  place is read and written. Re-reads a kernel may need (overlapping windows,
  tiles) are not counted: this is the floor, not what a kernel moves.

``op_cost(name, args, kwargs)`` takes a backend method's arguments (without
self) with every array replaced by an ``A(shape, itemsize)``; ``kernel_cost``
takes a kernel's launch arguments the same way. Both return (flops, bytes).
Kernel FLOPs are exact for matrix products, convolutions and pooling and a
per-element estimate elsewhere; those kernels are all memory-bound anyway.
"""
from __future__ import annotations

import inspect
import json
import os
import statistics
import sys
import time
from math import prod
from typing import NamedTuple

import numpy as np

from .backend.base import Backend
from .convshape import output_size

INDEX = 8  # bytes of an int64 index (argmax, labels, take_rows indices)


class A(NamedTuple):
    """An array, as far as costs go: its shape and its item size in bytes."""
    shape: tuple
    itemsize: int

    @property
    def size(self):
        return prod(self.shape)

    @property
    def nbytes(self):
        return self.size * self.itemsize


def _conv_out(x_hw, k_hw, stride, pads, dilation):
    return (output_size(x_hw[0], k_hw[0], stride[0], pads[0] + pads[1], dilation[0]),
            output_size(x_hw[1], k_hw[1], stride[1], pads[2] + pads[3], dilation[1]))


# ---- ops: each takes the bound arguments p (name -> value) ------------------------
def _matmul(p):
    a, b = p["a"], p["b"]
    m, k = a.shape[::-1] if p["trans_a"] else a.shape
    n = b.shape[0] if p["trans_b"] else b.shape[1]
    s = max(a.itemsize, b.itemsize)
    return 2 * m * n * k, (m * k + k * n + m * n) * s


def _conv2d(p):
    x, w = p["x"], p["w"]
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = _conv_out((h, wd), (kh, kw), p["stride"], p["pads"], p["dilation"])
    macs = n * o * oh * ow * cg * kh * kw
    return 2 * macs, (x.size + w.size + n * o * oh * ow) * x.itemsize


def _conv2d_backward_input(p):
    dy, w = p["dy"], p["w"]
    n, o, oh, ow = dy.shape
    _, cg, kh, kw = w.shape
    h, wd = p["in_hw"]
    macs = n * o * oh * ow * cg * kh * kw
    return 2 * macs, (dy.size + w.size + n * cg * p["groups"] * h * wd) * dy.itemsize


def _conv2d_backward_weight(p):
    dy, x = p["dy"], p["x"]
    n, o, oh, ow = dy.shape
    kh, kw = p["k_hw"]
    cg = x.shape[1] // p["groups"]
    macs = n * o * oh * ow * cg * kh * kw
    return 2 * macs, (dy.size + x.size + o * cg * kh * kw) * dy.itemsize


def _pool_out(p, x_hw):
    k, st, pads = p["k_hw"], p["stride"], p["pads"]
    return _conv_out(x_hw, k, st, pads, (1, 1))


def _max_pool2d(p):
    x = p["x"]
    kh, kw = p["k_hw"]
    out = x.shape[0] * x.shape[1] * prod(_pool_out(p, x.shape[2:]))
    return out * kh * kw, (x.size + out) * x.itemsize + out * INDEX


def _max_pool2d_backward(p):
    dy = p["dy"]
    dx = dy.shape[0] * dy.shape[1] * prod(p["in_hw"])
    return dy.size, (dy.size + dx) * dy.itemsize + p["argmax"].size * INDEX


def _avg_pool2d(p):
    x = p["x"]
    kh, kw = p["k_hw"]
    out = x.shape[0] * x.shape[1] * prod(_pool_out(p, x.shape[2:]))
    return out * kh * kw, (x.size + out) * x.itemsize


def _avg_pool2d_backward(p):
    dy = p["dy"]
    kh, kw = p["k_hw"]
    dx = dy.shape[0] * dy.shape[1] * prod(p["in_hw"])
    return dy.size * kh * kw, (dy.size + dx) * dy.itemsize


def _per_element(flops, reads, writes, first):
    """An elementwise op over the array named first: flops, reads and writes per element."""
    def cost(p):
        x = p[first]
        return flops * x.size, (reads + writes) * x.nbytes
    return cost


def _channels(flops, passes, vectors, first):
    """A per-channel op over (N, C, ...): passes over the big array, C-vectors moved."""
    def cost(p):
        x = p[first]
        c = x.shape[1]
        return flops * x.size, (passes * x.size + vectors * c) * x.itemsize
    return cost


def _sgd(p):
    param = p["param"]
    if p["momentum"] == 0.0:
        return 7 * param.size, 3 * param.nbytes
    return (12 if p["nesterov"] else 9) * param.size, 5 * param.nbytes


def _rmsprop(p):
    param = p["param"]
    if p["momentum"] == 0.0:
        return 14 * param.size, 5 * param.nbytes
    return 16 * param.size, 7 * param.nbytes


def _nbytes(x):
    return x.nbytes if isinstance(x, A) else 0


def _asarray(p):
    x, dtype = p["x"], p["dtype"]
    if not isinstance(x, A):
        return 0, 0
    out = x.size * np.dtype(dtype).itemsize if dtype is not None else x.nbytes
    return 0, x.nbytes + out


def _take_rows(p):
    x, idx = p["x"], p["idx"]
    m = idx.size if isinstance(idx, A) else 0
    row = prod(x.shape[1:])
    return 0, 2 * m * row * x.itemsize + m * INDEX


def _dropout_mask(p):
    n = prod(p["shape"])
    return n, n * np.dtype(p["dtype"]).itemsize


def _augment_affine(p):
    x = p["x"]
    per_out = 8 if p["nearest"] else 19  # source coordinates; four taps and three lerps
    return per_out * x.size, (2 * x.size + 6 * x.shape[0]) * x.itemsize


def _take_rows_at(p):
    x, m = p["x"], int(p["count"])
    return 0, 2 * m * prod(x.shape[1:]) * x.itemsize + m * INDEX


OPS = {
    "asarray": _asarray,
    "to_numpy": lambda p: (0, 2 * _nbytes(p["x"])),
    "matmul": _matmul,
    "add_bias": lambda p: (p["z"].size, (2 * p["z"].size + p["b"].size) * p["z"].itemsize),
    "sum_rows": lambda p: (p["g"].size, (p["g"].size + p["g"].shape[1]) * p["g"].itemsize),
    "axpby": _per_element(3, 2, 1, "x"),
    # a few integer ops per value (an add and masks), read once and written once
    "round_to": _per_element(1, 1, 1, "x"),
    "conv2d": _conv2d,
    "conv2d_backward_input": _conv2d_backward_input,
    "conv2d_backward_weight": _conv2d_backward_weight,
    "add_channel_bias": _channels(1, 2, 1, "y"),
    "sum_channels": _channels(1, 1, 1, "g"),
    "max_pool2d": _max_pool2d,
    "max_pool2d_backward": _max_pool2d_backward,
    "avg_pool2d": _avg_pool2d,
    "avg_pool2d_backward": _avg_pool2d_backward,
    # mean: an add; variance: subtract, square, add. Reads x once, writes mean and var.
    "batchnorm_stats": _channels(4, 1, 2, "x"),
    # (x - mean) * invstd * gamma + beta; reads mean, var, gamma, beta, writes invstd
    "batchnorm_forward": _channels(4, 2, 5, "x"),
    # xhat (2), dbeta (1), dgamma (2), dx (4); reads mean, invstd, gamma, writes dgamma, dbeta
    "batchnorm_backward": _channels(9, 3, 5, "x"),
    "dropout_mask": _dropout_mask,
    "dropout_mask_keyed": _dropout_mask,
    "augment_affine_device": _augment_affine,
    "multiply": _per_element(1, 2, 1, "a"),
    "augment_affine": _augment_affine,
    "relu": _per_element(1, 1, 1, "x"),
    "relu_backward": _per_element(1, 2, 1, "x"),
    "sigmoid": _per_element(3, 1, 1, "x"),          # exp(-x), 1 +, divide
    "sigmoid_backward": _per_element(3, 2, 1, "y"),
    "tanh": _per_element(1, 1, 1, "x"),
    "tanh_backward": _per_element(3, 2, 1, "y"),
    "step": _per_element(1, 1, 1, "x"),
    "softmax": _per_element(5, 1, 1, "x"),          # max, subtract, exp, sum, divide
    "softmax_backward": _per_element(4, 2, 1, "y"),
    "softmax_cross_entropy": lambda p: (7 * p["logits"].size,
                                        2 * p["logits"].nbytes + p["labels"].size * INDEX),
    "mse": _per_element(4, 2, 1, "pred"),           # subtract, square, sum; grad scale
    "binary_cross_entropy": _per_element(8, 2, 1, "pred"),
    # g = scale grad + wd param + l1 sign(param): 5 per element, then each update
    "sgd_update": _sgd,
    "adam_update": lambda p: (19 * p["param"].size, 7 * p["param"].nbytes),
    "rmsprop_update": _rmsprop,
    "adagrad_update": lambda p: (12 * p["param"].size, 5 * p["param"].nbytes),
    "sum_squares": lambda p: (2 * sum(a.size for a in p["arrays"]),
                              sum(a.nbytes for a in p["arrays"])),
    "concat_channels": lambda p: (0, 2 * sum(a.nbytes for a in p["xs"])),
    "split_channels": lambda p: (0, 2 * p["g"].nbytes),
    "take_rows": _take_rows,
    "take_rows_at": _take_rows_at,
    # a two-pass sum of the values, then one float64 add
    "metric_add": lambda p: (p["values"].size, p["values"].nbytes + 16),
    # an argmax per row or a compare per element, one float64 flag out each
    "correct_flags": lambda p: (p["pred"].size, p["pred"].nbytes + p["target"].nbytes
                                + 8 * (p["pred"].shape[0] if p["kind"] == "argmax"
                                       else p["pred"].size)),
    "argmax_rows": lambda p: (p["x"].size, p["x"].nbytes + p["x"].shape[0] * INDEX),
}

_SIGNATURES = {}


def op_cost(name, args=(), kwargs=None):
    """(flops, bytes) of backend op ``name`` called with args/kwargs (arrays as A)."""
    sig = _SIGNATURES.get(name)
    if sig is None:
        sig = _SIGNATURES[name] = inspect.signature(getattr(Backend, name))
    bound = sig.bind(None, *args, **(kwargs or {}))
    bound.apply_defaults()
    return tuple(int(v) for v in OPS[name](bound.arguments))


# ---- kernels: from the launch arguments -------------------------------------------
#: FLOPs per element of the largest array, for kernels without an exact model below
PER_ELEMENT = {"im2col": 0, "col2im": 1, "swap_axes01": 0, "concat_channels": 0,
               "split_channels": 0, "take_rows": 0, "axpby": 3, "sigmoid": 3,
               "sigmoid_backward": 3, "tanh_backward": 3, "softmax": 5, "softmax_backward": 4,
               "softmax_cross_entropy": 7, "mse": 4, "binary_cross_entropy": 8,
               "binary_cross_entropy_logits": 8, "sgd": 7, "sgd_momentum": 9, "adam": 19,
               "rmsprop": 14, "rmsprop_momentum": 16, "adagrad": 12, "sum_squares": 2,
               "sqdev_partial": 3, "forward_apply": 4, "backward_partial": 5,
               "backward_apply": 4, "affine_sample": 19}
#: kernels that update their first array in place (read and write it)
IN_PLACE = {"add_bias", "add_channel_bias"}
#: optimizer kernels: every array but the gradient (argument 1) is read and written
UPDATES = {"sgd", "sgd_momentum", "adam", "rmsprop", "rmsprop_momentum", "adagrad"}


def kernel_cost(name, args):
    """(flops, bytes) of one launch of the kernel ``name`` with args (arrays as A)."""
    arrays = [a for a in args if isinstance(a, A)]
    if not arrays:
        return 0, 0
    moved = sum(a.nbytes for a in arrays)
    base = name.split("[")[0]
    if base in IN_PLACE:
        moved += arrays[0].nbytes
    elif base in UPDATES:
        moved += sum(a.nbytes for i, a in enumerate(arrays) if i != 1)
    if base.startswith("matmul") and len(arrays) >= 3:
        a, c = arrays[0], arrays[2]
        m = c.shape[0]
        return 2 * c.size * (a.size // max(m, 1)), moved
    if base.startswith("conv2d_") and len(arrays) >= 3:
        first, second, third = arrays[:3]
        if base.endswith("_bwd_weight"):  # (dy, x, partial): partial rows of O x Cg*KH*KW
            kk = third.shape[-1] if len(third.shape) == 3 else third.shape[-1] // first.shape[1]
            return 2 * first.size * kk, moved
        # fwd (x, w, y) or bwd_input (dy, w, dx): every output of the forward pass
        # is Cg*KH*KW multiply-adds
        out = third if base.endswith("_fwd") else first
        return 2 * out.size * (second.size // max(second.shape[0], 1)), moved
    if base in ("max_pool2d_fwd", "avg_pool2d_fwd", "avg_pool2d_bwd"):
        kh, kw = (args[3], args[4]) if base == "max_pool2d_fwd" else (args[2], args[3])
        window = arrays[1] if base != "avg_pool2d_bwd" else arrays[0]  # y, or dy
        return window.size * int(kh) * int(kw), moved
    if base == "max_pool2d_bwd":
        return arrays[0].size, moved
    return PER_ELEMENT.get(base, 1) * max(a.size for a in arrays), moved


# ---- the other half of the roofline: device peaks and measured ceilings ----------
#: device-name substring -> (label, FP32 non-tensor FLOP/s, memory bytes/s), datasheet
#: (H200: /work/.library/device/H200.md). First match wins: PCIe and NVL before SXM.
PEAKS = (("H200", "H200 SXM", 67e12, 4.8e12),
         ("H100 PCIe", "H100 PCIe", 51e12, 2.0e12),
         ("H100 NVL", "H100 NVL", 60e12, 3.9e12),
         ("H100", "H100 SXM", 67e12, 3.35e12))


#: label -> dense tensor-core FLOP/s per input format (datasheet; the sparse
#: figures are twice these). H200 SXM has the H100 SXM's rates.
TENSOR_PEAKS = {"H200 SXM": {"tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
                "H100 SXM": {"tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
                "H100 NVL": {"tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12},
                "H100 PCIe": {"tf32": 378.0e12, "bf16": 756.5e12, "fp16": 756.5e12}}


def compute_peak(peak, fmt, tensor_cores):
    """The FLOP/s a compute-bound op is held against: the tensor-core rate of
    its input format when it ran on tensor cores, else the FP32 pipes' rate."""
    if peak is None:
        return None
    if fmt and tensor_cores and fmt in TENSOR_PEAKS.get(peak[0], {}):
        return TENSOR_PEAKS[peak[0]][fmt]
    return peak[1]


def device_peak(name):
    """(label, FLOP/s, bytes/s) of a known GPU by its name, else None."""
    for key, label, flops, bw in PEAKS:
        if key in name:
            return label, flops, bw
    return None


def _cache_path():
    folder = os.environ.get("GPUDL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "gpudl")
    return os.path.join(folder, "ceilings.json")


def _device_key(device_name):
    if device_name.startswith("NumPy") or device_name == "CUDA simulator":
        cpu = ""
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((ln.split(":", 1)[1].strip() for ln in f
                            if ln.startswith("model name")), "")
        except OSError:
            pass
        return f"{device_name} | {cpu or sys.platform} x{os.cpu_count()}"
    return device_name


def measure_ceilings(device_name, refresh=False):
    """{"copy_gbps", "matmul_gflops", ...} of the device, measured once and cached."""
    path, key = _cache_path(), _device_key(device_name)
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if key in cache and not refresh:
        return cache[key]
    gpu = not (device_name.startswith("NumPy") or device_name == "CUDA simulator")
    result = _measure_gpu() if gpu else _measure_cpu()
    result.update(device=device_name, date=time.strftime("%Y-%m-%d"))
    cache[key] = result
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measure again next time
    return result


def _measure_cpu(reps=5):
    """NumPy float32 matmul (768^3) and a 32 MiB copy: medians of reps, < 1 s."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((768, 768), dtype=np.float32) for _ in range(2))
    src = rng.standard_normal(1 << 23, dtype=np.float32)
    dst = np.empty_like(src)

    def median(fn):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    t_mm = median(lambda: np.matmul(a, b))
    t_cp = median(lambda: np.copyto(dst, src))
    return {"matmul_gflops": 2 * 768 ** 3 / t_mm / 1e9, "copy_gbps": 2 * src.nbytes / t_cp / 1e9,
            "how": "NumPy float32 matmul 768^3; np.copyto of 32 MiB (read + write)"}


def _measure_gpu(reps=10):
    """cuBLAS float32 matmul (8192^3) and a 1 GiB device-to-device copy, timed with
    CUDA events after a warm-up; medians of reps."""
    import cupy
    n = 8192
    a, b = (cupy.random.standard_normal((n, n), dtype=cupy.float32) for _ in range(2))
    src = cupy.random.standard_normal(1 << 28, dtype=cupy.float32)
    dst = cupy.empty_like(src)

    def median(fn):
        fn()
        times = []
        for _ in range(reps):
            e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            times.append(cupy.cuda.get_elapsed_time(e0, e1) / 1e3)
        return statistics.median(times)
    t_mm = median(lambda: cupy.matmul(a, b))
    t_cp = median(lambda: dst.__setitem__(Ellipsis, src))
    del a, b, src, dst
    cupy.get_default_memory_pool().free_all_blocks()
    return {"matmul_gflops": 2 * n ** 3 / t_mm / 1e9, "copy_gbps": 2 * (4 << 28) / t_cp / 1e9,
            "how": "cupy.matmul float32 8192^3 (cuBLAS); 1 GiB device-to-device copy "
                   "(read + write); CUDA events, median of 10"}


_MEASURED = {}


def rates(device_name, ceilings):
    out = {"peak": device_peak(device_name)}
    if ceilings:
        if device_name not in _MEASURED:
            _MEASURED[device_name] = measure_ceilings(device_name)
        out["ceiling"] = _MEASURED[device_name]
    return out


def roofline(row, rates, name):
    """bound, and the binding rate as % of the peak and of the measured ceiling."""
    rates = rates or {}
    peak, ceil = rates.get("peak"), rates.get("ceiling")
    if row["device"] == "cuda" and name in ("asarray", "to_numpy"):
        return {"bound": "transfer", "pct_peak": None, "pct_ceiling": None}
    tensor = row.get("precision") and row.get("tensor_cores")
    flop_peak = compute_peak(peak, row.get("precision"), tensor)
    ref = (flop_peak, peak[2]) if peak else \
        (ceil["matmul_gflops"] * 1e9, ceil["copy_gbps"] * 1e9) if ceil else None
    f, b = row["flops"], row["bytes"]
    if ref is None:
        bound = "compute" if f and (not b or f / b > 10) else "memory"
    else:
        bound = "compute" if f and (not b or f / b > ref[0] / ref[1]) else "memory"
    rate, key, scale = (row["gflops"], 1, "matmul_gflops") if bound == "compute" else \
        (row["gbps"], 2, "copy_gbps")
    return {"bound": bound,
            "pct_peak": 100 * rate * 1e9 / (flop_peak if key == 1 else peak[key])
            if peak else None,
            "pct_ceiling": 100 * rate / ceil[scale] if ceil and ceil[scale] else None}
