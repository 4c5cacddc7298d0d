"""Tensor-core matmul for the CUDA backend (kernels/gemm_mma.py).

cuda_lowp.matmul calls this, when tensor_cores_enabled() says so, with both
inputs already rounded to the format (float32 arrays holding TF32, BF16 or
FP16 values). On a GPU they are narrowed to the 16-bit storage the kernel
reads (exact: the values are representable) and the CUDA C++ kernel runs;
under the simulator the numba twin runs on the float32 arrays themselves.
Rows that are not whole 16-byte chunks (or misaligned bases) take the
kernel's element-load variant instead of cp.async; the twin covers both
(its loader zero-fills partial chunks as that variant does).
"""
from __future__ import annotations

import numpy as np

from ..kernels import gemm_mma as gm


def _dims(a, b, trans_a, trans_b):
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    return m, n, k, k2


def _storage(cp, x, fmt):
    if fmt == "bf16":  # the top half of a float32 that is already a BF16 value
        return (x.view(cp.uint32) >> 16).astype(cp.uint16)
    if fmt == "fp16":
        return x.astype(cp.float16)
    return x  # TF32: float32 storage, rounded by cvt.rna in the kernel (a no-op here)


def matmul(be, a, b, trans_a, trans_b, fmt, out=None):
    """C = op(a) @ op(b) on tensor cores; None for what this path does not
    handle (not 2-D float32, mismatched k): the caller's FP32 path then
    runs, or raises its usual ShapeError. out: a C-contiguous float32 (m, n)
    array (a view, such as one group's slice of a 3-D result) to write C
    into instead of a new one, so callers need no copy."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype != np.float32 or b.dtype != np.float32:
        return None
    m, n, k, k2 = _dims(a, b, trans_a, trans_b)
    if k != k2:
        return None  # the FP32 path raises the backend's usual ShapeError
    variant = ("t" if trans_a else "n") + ("t" if trans_b else "n")
    if out is not None and (tuple(out.shape) != (m, n) or out.dtype != np.float32
                            or not out.flags.c_contiguous):
        raise ValueError(f"cuda_mma.matmul: out must be C-contiguous float32 of shape {(m, n)}, "
                         f"got {out.dtype} of shape {tuple(out.shape)}")
    a, b = be._c(a), be._c(b)
    c = be.empty((m, n), np.float32) if out is None else out
    cp = be._cp
    be.tensor_core_launches += 1  # the profiler marks the op that made it (profile.py)
    if cp is None:  # simulator: the twin reads the rounded float32 values
        if m and n:
            grid, block = gm.launch_config(m, n)
            be.launch(gm.TWINS[fmt][variant], grid, block, a, b, c)
        return c
    gm.launch(_storage(cp, a, fmt), _storage(cp, b, fmt), c, trans_a, trans_b, fmt,
              stream=cp.cuda.get_current_stream())
    return c
