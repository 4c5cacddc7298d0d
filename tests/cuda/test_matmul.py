"""Every matmul version and transposition, launched directly and through the backend."""
import numpy as np
import pytest
from hypothesis import given

from cudatest import big, check, dims, examples, host, poison_fill, poisoned, rand, seeds
from gpudl.errors import ShapeError
from gpudl.kernels import matmul as mm

VARIANTS = ["nn", "nt", "tn", "tt"]


def operands(seed, m, n, k, variant, dtype=np.float32):
    ta, tb = variant[0] == "t", variant[1] == "t"
    a = rand(seed, (k, m) if ta else (m, k), dtype)
    b = rand(seed + 1, (n, k) if tb else (k, n), dtype)
    return a, b, ta, tb


def tol(k, dtype=np.float32):
    # Rounding grows with the length of each dot product.
    return (1e-5 * k, 1e-4) if dtype == np.float32 else (1e-12 * k, 1e-10)


def run_direct(be, cpu, version, variant, m, n, k, seed, dtype=np.float32):
    a, b, ta, tb = operands(seed, m, n, k, variant, dtype)
    c = be.asarray(poison_fill((m, n), dtype))
    grid, block = mm.launch_config(version, m, n)
    be.launch(mm.KERNELS[version][variant], grid, block, be.asarray(a), be.asarray(b), c)
    atol, rtol = tol(k, dtype)
    check(host(be, c), cpu.matmul(a, b, ta, tb), rtol=rtol, atol=atol)


@pytest.mark.parametrize("variant", VARIANTS)
@examples(8)
@given(m=dims(40), n=dims(40), k=dims(40), seed=seeds)
def test_naive(be, cpu, variant, m, n, k, seed):
    run_direct(be, cpu, "naive", variant, m, n, k, seed)


# Tiled and blocked cost ~1 s per simulated launch: few examples, sizes that
# straddle tile edges.
@pytest.mark.parametrize("variant", VARIANTS)
@examples(4)
@given(m=dims(35), n=dims(35), k=dims(40), seed=seeds)
def test_tiled(be, cpu, variant, m, n, k, seed):
    run_direct(be, cpu, "tiled", variant, m, n, k, seed)


@pytest.mark.parametrize("variant", VARIANTS)
@examples(4)
@given(m=dims(40), n=dims(40), k=dims(40), seed=seeds)
def test_blocked(be, cpu, variant, m, n, k, seed):
    run_direct(be, cpu, "blocked", variant, m, n, k, seed)


# Edges: one row/column/inner element, one past a tile in each dimension,
# more than one k-slab, and (on a GPU) realistic sizes.
EDGES = [
    ("naive", "nn", 1, 1, 1), ("naive", "tt", 1, 33, 2),
    ("tiled", "nn", 17, 1, 33), ("tiled", "tn", 1, 17, 17),
    ("tiled", "nt", 16, 16, 16),
    ("blocked", "nn", 65, 3, 17), ("blocked", "tn", 2, 65, 33),
    ("blocked", "nt", 1, 1, 1), ("blocked", "tt", 3, 5, 64),
] + big(*[(v, t, 1000, 1030, 1027) for v in mm.KERNELS for t in VARIANTS],
        ("blocked", "nn", 4096, 4097, 129))


@pytest.mark.parametrize("version,variant,m,n,k", EDGES)
def test_edges(be, cpu, version, variant, m, n, k):
    run_direct(be, cpu, version, variant, m, n, k, seed=m * 1000 + n + k)


def test_default_float64(be, cpu):
    run_direct(be, cpu, mm.MATMUL_DEFAULT, "nt", 19, 23, 18, seed=7, dtype=np.float64)


@pytest.mark.parametrize("variant", VARIANTS)
@examples(3)
@given(m=dims(30), n=dims(30), k=dims(30), seed=seeds)
def test_backend(be, cpu, variant, m, n, k, seed):
    a, b, ta, tb = operands(seed, m, n, k, variant)
    with poisoned(be):
        got = be.matmul(be.asarray(a), be.asarray(b), trans_a=ta, trans_b=tb)
    atol, rtol = tol(k)
    check(host(be, got), cpu.matmul(a, b, ta, tb), rtol=rtol, atol=atol)


def test_backend_shape_errors(be):
    a = be.asarray(rand(0, (3, 4)))
    b = be.asarray(rand(1, (5, 6)))
    with pytest.raises(ShapeError, match=r"\(3, 4\).*\(5, 6\)"):
        be.matmul(a, b)
    with pytest.raises(ShapeError, match="2-D"):
        be.matmul(be.asarray(rand(0, (3,))), b)
    assert be.matmul(a, be.asarray(rand(2, (6, 4))), trans_b=True).shape == (3, 6)
