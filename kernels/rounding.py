"""Rounding float32 values to the formats tensor cores read: BF16, TF32, FP16.

The result stays in float32 storage: each value becomes the nearest value
the narrower format can hold, so a float32 matmul of rounded inputs has the
products a tensor core forms (they are exact in float32) and differs from it
only in the order of the FP32 additions. gpudl/precision.py's round_to is
the NumPy reference these match bit for bit.

BF16 and TF32 work on the bits (uint32 views of the float32 arrays, which
the backend makes for free): numba has no bfloat16 type. FP16 goes through
numba's float16 conversion, which is cvt.rn.f16.f32 on the device.
"""
import numpy as np
from numba import cuda

_QUIET = 0x00400000
_ABS = 0x7FFFFFFF
_INF = 0x7F800000


@cuda.jit
def round_bf16(src, dst):
    """dst = src rounded to BF16 (nearest even), both uint32 views of float32."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dst.shape[0], stride):
        u = src[i]
        if (u & _ABS) > _INF:  # NaN: quiet it and keep it a NaN after truncation
            dst[i] = (u | _QUIET) & 0xFFFF0000
        else:
            # int64 arithmetic: a carry out of bit 31 is dropped by the store
            dst[i] = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000


@cuda.jit
def round_tf32(src, dst):
    """dst = src rounded to TF32 (half away from zero, as cvt.rna.tf32.f32)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dst.shape[0], stride):
        u = src[i]
        if (u & _ABS) > _INF:
            dst[i] = (u | _QUIET) & 0xFFFFE000
        else:
            dst[i] = (u + 0x1000) & 0xFFFFE000


@cuda.jit
def round_fp16(src, dst):
    """dst = src rounded to FP16 (nearest even; beyond 65504 it is inf)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dst.shape[0], stride):
        dst[i] = np.float32(np.float16(src[i]))


#: format -> (kernel, whether it takes uint32 views)
KERNELS = {"bf16": (round_bf16, True), "tf32": (round_tf32, True), "fp16": (round_fp16, False)}
