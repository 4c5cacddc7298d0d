"""Reduced-precision matmul for the CUDA backend (gpudl/precision.py).

The default path rounds both inputs to the format with the rounding kernels
(kernels/rounding.py), then runs the float32 matmul: the products of rounded
values are exact in float32, so this is a tensor core's result up to the order
of the FP32 sums, on any GPU and in the simulator. The tensor-core kernels
(kernels/gemm_mma.py) replace it where tensor_cores_enabled() says so.
"""
from __future__ import annotations

import os

import numpy as np

from .. import precision as prec
from ..errors import ShapeError
from ..kernels import rounding


def tensor_cores_enabled(be) -> bool:
    """Tensor-core kernels for reduced-precision matmuls: opt-in with
    GPUDL_TENSOR_CORES=1 until a GPU check has passed and timed them."""
    return os.environ.get("GPUDL_TENSOR_CORES") == "1"


def round_to(be, x, fmt):
    prec.check_format(fmt, "round_to")
    x = be._c(x)
    if np.dtype(x.dtype) != np.float32:
        raise ValueError(f"round_to: needs a float32 array, got {x.dtype}")
    if fmt is None:
        return x
    out = be.empty(x.shape, np.float32)
    kernel, bits = rounding.KERNELS[fmt]
    src, dst = x.reshape(-1), out.reshape(-1)
    if bits:
        src, dst = src.view(np.uint32), dst.view(np.uint32)
    be._launch_flat(kernel, x.size, src, dst)
    return out


def matmul(be, a, b, trans_a, trans_b, fmt):
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"matmul needs 2-D arrays, got a of shape {tuple(a.shape)} "
                         f"and b of shape {tuple(b.shape)}")
    a, b = be._lowp(fmt, a, b)
    if tensor_cores_enabled(be):  # None: a shape the tensor-core kernel cannot take
        from . import cuda_mma
        c = cuda_mma.matmul(be, a, b, trans_a, trans_b, fmt)
        if c is not None:
            return c
    return be.matmul(a, b, trans_a, trans_b)
