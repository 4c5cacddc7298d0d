"""Tensor-core GEMM (kernels/cu/gemm_mma.cu) against float64 products of the
rounded inputs, every precision and transposition.

In the simulator the numba twin runs: the .cu kernel's tile loader, shared
layout, stage ring, ldmatrix lane addressing, mma fragment layouts and
epilogue, with the warp's register exchanges done through shared memory. On
a real GPU the .cu kernel itself runs through CuPy on the same problems.
Shapes are not multiples of the 128x128 block tile or of the k-slab. Where
the stored rows are whole 16-byte chunks the cp.async kernels run; the other
shapes take the _unaligned kernels (element loads), whose twin is the same
one: its loader zero-fills the partial chunks that only those shapes have.
"""
import numpy as np
import pytest

from cudatest import SIM, big, check, host, poison_fill, poisoned, rand
from gpudl.kernels import gemm_mma as gm
from gpudl.precision import round_to

PRECS = list(gm.ELEM)
VARIANTS = list(gm.VARIANTS)

# (variant, m, n, k): the free dimensions odd, the row dimensions aligned but
# off the tile; k = 40 is 2 slabs of 16-bit data or 3 of TF32 (a K tail in both).
SHAPES = {"nn": (70, 48, 40), "nt": (70, 45, 40), "tn": (72, 48, 40), "tt": (72, 45, 40)}


def operands(seed, prec, variant, m, n, k):
    ta, tb = gm.VARIANTS[variant]
    a = round_to(rand(seed, (k, m) if ta else (m, k)), prec)
    b = round_to(rand(seed + 1, (n, k) if tb else (k, n)), prec)
    return a, b, ta, tb


def reference(a, b, ta, tb):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return ((a64.T if ta else a64) @ (b64.T if tb else b64)).astype(np.float32)


def stored(x, prec):
    """The array the .cu kernel reads: float32, BF16 bits or half."""
    if prec == "bf16":
        return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)  # exact: x is rounded
    return x.astype(gm.STORAGE[prec])


def run(prec, variant, m, n, k, seed, aligned=True):
    # the shape is in the class the test means: cp.async kernel or element loads
    assert (gm.misaligned(prec, variant, m, n, k) is None) == aligned
    a, b, ta, tb = operands(seed, prec, variant, m, n, k)
    c = poison_fill((m, n), np.float32)
    grid, block = gm.launch_config(m, n)
    if SIM:
        gm.TWINS[prec][variant][grid, block](a, b, c)
        got = c
    else:
        import cupy
        dc = cupy.asarray(c)
        gm.launch(cupy.asarray(stored(a, prec)), cupy.asarray(stored(b, prec)), dc, ta, tb, prec)
        got = cupy.asnumpy(dc)
    # Products of rounded values are exact in FP32; only the FP32 sums round
    # (the tensor core's internal order and truncation differ from a loop's),
    # so the FP32 matmul tests' tolerance applies. A misplaced fragment is off by O(1).
    check(got, reference(a, b, ta, tb), rtol=1e-4, atol=1e-5 * k)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prec", PRECS)
def test_off_tile(prec, variant):
    run(prec, variant, *SHAPES[variant], seed=10 * PRECS.index(prec) + VARIANTS.index(variant))


# More slabs than stages, so the ring wraps (TF32: 5 slabs of 16; 16-bit: 5 of
# 32); two block tiles down and two across (one slab each, to stay cheap); on a
# GPU several block tiles in both directions and real sizes.
DEEP = [("tf32", "tn", 12, 20, 72), ("bf16", "nt", 5, 3, 136), ("fp16", "nn", 3, 8, 136),
        ("fp16", "tt", 136, 9, 16), ("tf32", "nn", 5, 132, 8)] + big(
    *[(p, v, 1000, 1032, 1024) for p in PRECS for v in VARIANTS],
    ("bf16", "nt", 4097, 129, 264), ("tf32", "nt", 257, 4100, 72))


@pytest.mark.parametrize("prec,variant,m,n,k", DEEP)
def test_deep_and_large(prec, variant, m, n, k):
    run(prec, variant, m, n, k, seed=m + n + k)


# Rows that are not whole 16-byte chunks: the _unaligned kernels on a GPU,
# partial chunks in the twin's loader.
UNALIGNED = [("tf32", "nn", 70, 45, 37), ("bf16", "nt", 33, 20, 37), ("fp16", "tn", 35, 21, 24),
             ("tf32", "tt", 19, 45, 13)] + big(
    *[(p, v, 70, 45, 37) for p in PRECS for v in VARIANTS],
    *[(p, "nn", 1001, 1003, 1021) for p in PRECS])


@pytest.mark.parametrize("prec,variant,m,n,k", UNALIGNED)
def test_unaligned(prec, variant, m, n, k):
    run(prec, variant, m, n, k, seed=m * n + k, aligned=False)


def test_alignment_rules():
    # Stored rows must be whole 16-byte chunks: 8 halves or 4 floats.
    assert gm.misaligned("bf16", "nn", 70, 45, 40) is not None   # B (K, N): 45 halves a row
    assert gm.misaligned("bf16", "nt", 70, 45, 40) is None       # A and B rows are K long
    assert gm.misaligned("bf16", "tn", 70, 48, 40) is not None   # A (K, M): 70 halves
    assert gm.misaligned("tf32", "tn", 68, 44, 3) is None
    assert gm.misaligned("tf32", "nt", 68, 44, 6) is not None
    assert gm.misaligned("fp16", "nt", 8, 8, 8, pointers=(0x1000, 0x1008)) is not None
    with pytest.raises(ValueError, match="precision"):
        gm.misaligned("fp8", "nn", 8, 8, 8)
    assert gm.kernel_name("fp16", "tn", aligned=False) == "gemm_f16_tn_unaligned"


def test_shared_memory_fits():
    for prec in PRECS:
        for variant in VARIANTS:
            assert 48 * 1024 < gm.smem_bytes(prec, variant) <= gm.SMEM_LIMIT


# ---- the backend hook (gpudl/backend/cuda_mma.py, called by cuda_lowp.matmul) --------
def test_backend_tensor_core_path(be):
    from gpudl.backend import cuda_mma
    m, n, k = 33, 17, 24
    a, b, ta, tb = operands(5, "bf16", "nt", m, n, k)
    with poisoned(be):
        got = cuda_mma.matmul(be, be.asarray(a), be.asarray(b), ta, tb, "bf16")
    assert got is not None, "the tensor-core path declined a 2-D float32 problem"
    check(host(be, got), reference(a, b, ta, tb), rtol=1e-4, atol=1e-5 * k)
    # rows of 17 halves: the element-load kernel on a GPU
    a, b, ta, tb = operands(6, "bf16", "nn", m, n, k)
    with poisoned(be):
        got = cuda_mma.matmul(be, be.asarray(a), be.asarray(b), ta, tb, "bf16")
    check(host(be, got), reference(a, b, ta, tb), rtol=1e-4, atol=1e-5 * k)
    # not this path's to handle: the FP32 path raises the backend's ShapeError
    assert cuda_mma.matmul(be, be.asarray(a), be.asarray(a), False, False, "bf16") is None


def test_lowp_matmul_uses_tensor_cores_when_enabled(be, monkeypatch):
    cuda_lowp = pytest.importorskip("gpudl.backend.cuda_lowp")
    from gpudl.backend import cuda_mma
    calls = []
    real = cuda_mma.matmul

    def spy(*args):
        out = real(*args)
        calls.append(out is not None)  # False: declined, the FP32 path ran
        return out
    monkeypatch.setattr(cuda_mma, "matmul", spy)
    m, n, k = 20, 9, 16
    a = rand(8, (m, k))
    b = rand(9, (n, k))
    ra, rb = round_to(a, "tf32"), round_to(b, "tf32")
    monkeypatch.delenv("GPUDL_TENSOR_CORES", raising=False)
    cuda_lowp.matmul(be, be.asarray(a), be.asarray(b), False, True, "tf32")
    assert calls == []  # off by default
    monkeypatch.setenv("GPUDL_TENSOR_CORES", "1")
    got = cuda_lowp.matmul(be, be.asarray(a), be.asarray(b), False, True, "tf32")
    assert calls == [True]
    check(host(be, got), reference(ra, rb, False, True), rtol=1e-4, atol=1e-5 * k)
