"""matmul_warp (version "warp"), the simulator twin of kernels/cu/sgemm.cu.

Each simulated launch of a 256-thread block costs seconds, so the shapes are
few and chosen: past a 128 tile edge in m and n with k not a multiple of the
8-wide k-slab (a partial last slab), exact slabs with several double-buffer
swaps, and single rows/columns. Outputs start NaN, so an unwritten element
fails; the reference is the CPU backend.
"""
import numpy as np
import pytest

from cudatest import big, check, host, poisoned
from test_matmul import VARIANTS, operands, run_direct, tol
from gpudl.kernels import matmul as mm
from gpudl.kernels import matmul_warp as mw


def test_tiling_constants():
    # The kernel's shifts and masks assume this geometry; the C++ twin too.
    assert (mw.BM, mw.BN, mw.BK, mw.WM, mw.WN, mw.TM, mw.TN) == (128, 128, 8, 64, 32, 8, 8)
    assert mm.launch_config("warp", 130, 129) == ((2, 2), (256,))


@pytest.mark.parametrize("variant", VARIANTS)
def test_tile_edges(be, cpu, variant):
    # 2 x 2 blocks, the last row/column of blocks nearly empty; 3 slabs, the
    # last holding 3 of 8 k-values.
    run_direct(be, cpu, "warp", variant, 130, 129, 19, seed=11)


@pytest.mark.parametrize("variant,m,n,k", [
    ("nn", 3, 131, 40),   # 5 full slabs: buffers swap 4 times
    ("tt", 129, 2, 16),
    ("nt", 1, 1, 1),
    ("tn", 7, 5, 9),
# (test_matmul's EDGES run every version at 1000 x 1030 x 1027 on a GPU.)
] + big(("nn", 2048, 2048, 2048), ("tt", 1031, 2049, 515)))
def test_shapes(be, cpu, variant, m, n, k):
    run_direct(be, cpu, "warp", variant, m, n, k, seed=m + 7 * n + 13 * k)


def test_float64(be, cpu):
    run_direct(be, cpu, "warp", "tn", 9, 130, 11, seed=5, dtype=np.float64)


def test_through_backend(be, cpu, monkeypatch):
    # The backend launches MATMUL_DEFAULT; making "warp" the default for one
    # call checks its 1-D block goes through be.matmul's launch path.
    monkeypatch.setattr(mm, "MATMUL_DEFAULT", "warp")
    a, b, ta, tb = operands(3, 6, 130, 10, "nt")
    with poisoned(be):
        got = be.matmul(be.asarray(a), be.asarray(b), trans_a=ta, trans_b=tb)
    atol, rtol = tol(10)
    check(host(be, got), cpu.matmul(a, b, ta, tb), rtol=rtol, atol=atol)
