"""The CUDA C++ SGEMM (kernels/cu/sgemm.cu) against the CPU reference, on a
real GPU only: the simulator cannot run CUDA C++ (its numba twin
matmul_warp is tested there, tests/cuda/test_matmul_warp.py).

Both shapes of the kernel (two blocks per SM and one), all four variants,
the 128-bit and the scalar entries (rows of a multiple of 4 floats or not,
an operand 4 bytes off a 16-byte boundary), tile edges and k = 0; outputs
start NaN.
"""
import numpy as np
import pytest

from cudatest import SIM, check, rand
from test_matmul import VARIANTS, tol

cupy = pytest.importorskip("cupy") if not SIM else None
pytestmark = pytest.mark.skipif(SIM, reason="CUDA C++ kernels need a real GPU")

from gpudl.kernels import sgemm as sg  # noqa: E402


def device(x, offset=0):
    """x on the GPU; offset > 0 places it that many floats into a buffer, so
    its address is 4 * offset bytes off the allocation's alignment."""
    if not offset:
        return cupy.asarray(x)
    buf = cupy.empty(x.size + offset, x.dtype)
    view = buf[offset:].reshape(x.shape)
    view[...] = cupy.asarray(x)
    return view


def run(cpu, variant, m, n, k, blocks, offset=0, seed=0):
    ta, tb = variant[0] == "t", variant[1] == "t"
    a = rand(seed, (k, m) if ta else (m, k))
    b = rand(seed + 1, (n, k) if tb else (k, n))
    ad, bd = device(a, offset), device(b)
    c = cupy.full((m, n), cupy.nan, cupy.float32)
    sg.sgemm(ad, bd, c, ta, tb, blocks_per_sm=blocks)
    atol, rtol = tol(max(k, 1))
    check(cupy.asnumpy(c), cpu.matmul(a, b, ta, tb), rtol=rtol, atol=atol)
    return sg.entry(variant, a.shape, b.shape, ad.data.ptr, bd.data.ptr)


@pytest.mark.parametrize("blocks", sorted(sg.OPTIONS))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("m,n,k", [(130, 129, 19), (132, 136, 20), (1, 1, 1), (3, 5, 0),
                                   (1000, 1030, 1027), (1024, 1024, 1024), (257, 260, 2052)])
def test_sgemm(cpu, variant, m, n, k, blocks):
    run(cpu, variant, m, n, k, blocks, seed=m + n + k)


@pytest.mark.parametrize("variant", VARIANTS)
def test_entries_taken(cpu, variant):
    # Aligned rows of 4k floats take the float4 path, 19-float rows and a
    # view 4 bytes off alignment the scalar one; both must be right.
    assert run(cpu, variant, 132, 136, 20, 2) == f"sgemm_{variant}"
    assert run(cpu, variant, 130, 129, 19, 2) == f"sgemm_{variant}_scalar"
    assert run(cpu, variant, 132, 136, 20, 2, offset=1) == f"sgemm_{variant}_scalar"


def test_rejects_bad_operands():
    a = cupy.zeros((4, 4), cupy.float64)
    with pytest.raises(ValueError, match="float32"):
        sg.sgemm(a, a, a)
    f = cupy.zeros((4, 4), cupy.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        sg.sgemm(f.T, f, f)
    with pytest.raises(ValueError, match=r"op\(a\)"):
        sg.sgemm(f, cupy.zeros((3, 4), cupy.float32), f)
