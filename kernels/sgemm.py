"""Launch side of the CUDA C++ SGEMM (kernels/cu/sgemm.cu) on a real GPU.

    sgemm(a, b, c, trans_a=False, trans_b=False)   # c = op(a) @ op(b), CuPy float32

Same shapes and flags as gpudl.kernels.matmul: op(A) is (M, K), op(B) is
(K, N), C is (M, N), all C-contiguous; A is stored (K, M) when trans_a, B
(N, K) when trans_b. The kernels need a GPU and CuPy (the simulator cannot
run CUDA C++); their numba twin matmul_warp is what the simulator tests, and
tests/test_sgemm_host.py runs the .cu source itself on the CPU.

128-bit loads need both operands' rows (the loaded, contiguous axis) to be a
multiple of 4 floats long and 16-byte aligned; otherwise the _scalar entries
run, element by element with the same tiling. ``entry`` makes that choice
and is plain Python, so it is tested without a GPU.
"""
from __future__ import annotations

from . import cuda_cpp
from .matmul_warp import BM, BN, NTHREADS

MODULE = "sgemm"
VARIANTS = ("nn", "nt", "tn", "tt")
# BLOCKS_PER_SM -> the NVRTC options building that shape of the kernel (see
# the top of sgemm.cu): 2 caps registers at 128 for two blocks per SM, 1
# unrolls the k-loop fully with about 167 registers.
OPTIONS = {2: (), 1: ("-DSGEMM_BLOCKS_PER_SM=1",)}
_INT_MAX = 2**31 - 1  # the kernels take int dimensions


def _vec_ok(shape, ptr):
    """Rows of a multiple of 4 floats and a 16-byte-aligned start: every
    4-element group is one aligned float4, entirely inside or outside."""
    return shape[1] % 4 == 0 and ptr % 16 == 0


def entry(variant, a_shape, b_shape, a_ptr, b_ptr):
    """Kernel name in sgemm.cu for C-contiguous float32 operands of these shapes
    and device addresses: "sgemm_<variant>", or "sgemm_<variant>_scalar"
    where a row stride is not a multiple of 4 floats or an operand is not
    16-byte aligned."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    vec = _vec_ok(a_shape, a_ptr) and _vec_ok(b_shape, b_ptr)
    return f"sgemm_{variant}" + ("" if vec else "_scalar")


def dims(a_shape, b_shape, c_shape, trans_a, trans_b):
    """(m, n, k) of the product, checking the three shapes agree and fit in int."""
    m, ka = (a_shape[1], a_shape[0]) if trans_a else (a_shape[0], a_shape[1])
    kb, n = (b_shape[1], b_shape[0]) if trans_b else (b_shape[0], b_shape[1])
    if ka != kb or tuple(c_shape) != (m, n):
        raise ValueError(f"sgemm: op(a) is ({m}, {ka}), op(b) is ({kb}, {n}), c is "
                         f"{tuple(c_shape)}")
    if max(m, n, ka, *a_shape, *b_shape) > _INT_MAX:
        raise ValueError("sgemm: a dimension does not fit the kernels' int arguments")
    return m, n, ka


def launch_config(m, n):
    """(grid, block): one 256-thread block per 128 x 128 tile of C, x along columns."""
    return ((n + BN - 1) // BN, (m + BM - 1) // BM, 1), (NTHREADS, 1, 1)


def kernel(name, blocks_per_sm=2):
    """The cupy.RawKernel ``name`` of sgemm.cu, built for the current GPU."""
    return cuda_cpp.load_module(MODULE, OPTIONS[blocks_per_sm]).get_function(name)


def sgemm(a, b, c, trans_a=False, trans_b=False, blocks_per_sm=2):
    """c = op(a) @ op(b) on CuPy's current stream; a, b, c C-contiguous float32."""
    import numpy as np
    for name, x in (("a", a), ("b", b), ("c", c)):
        if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
            raise ValueError(f"sgemm: {name} must be a C-contiguous 2-D float32 array, got "
                             f"{x.dtype} of shape {x.shape}")
    m, n, k = dims(a.shape, b.shape, c.shape, trans_a, trans_b)
    if m == 0 or n == 0:  # an empty grid is a launch error
        return c
    variant = ("t" if trans_a else "n") + ("t" if trans_b else "n")
    fn = kernel(entry(variant, a.shape, b.shape, a.data.ptr, b.data.ptr), blocks_per_sm)
    grid, block = launch_config(m, n)
    i32 = np.int32
    fn(grid, block, (a, b, c, i32(m), i32(n), i32(k), i32(a.shape[1]), i32(b.shape[1]),
                     i32(c.shape[1])))
    return c
