"""Batch normalization: CUDA kernels vs the CPU reference (cpu_bn.py).

Forward and backward get their per-channel inputs (mean, var, invstd) from
the CPU backend, so each kernel is checked on its own and errors do not
compound from one op into the next.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cudatest import big, check, dims, examples, host, poisoned, rand, seeds
from gpudl.errors import ShapeError

EPS = 1e-5


def _inputs(seed, shape, dtype=np.float32):
    c = shape[1]
    x = rand(seed, shape, dtype)
    dy = rand(seed + 1, shape, dtype)
    gamma = rand(seed + 2, (c,), dtype)
    beta = rand(seed + 3, (c,), dtype)
    return x, dy, gamma, beta


def _tols(m, dtype):
    """(rtol, atol) for sums of m terms of size ~1 in dtype."""
    if dtype == np.float64:
        return 1e-11, 1e-12 * np.sqrt(m)
    return 1e-4, 2e-6 * np.sqrt(m)


def _compare_all(be, cpu, x, dy, gamma, beta):
    """stats, forward and backward of the CUDA backend against the CPU's."""
    n, c, h, w = x.shape
    m = n * h * w
    rtol, atol = _tols(m, x.dtype)
    mean, var = cpu.batchnorm_stats(x)
    y, invstd = cpu.batchnorm_forward(x, mean, var, gamma, beta, EPS)
    dx, dgamma, dbeta = cpu.batchnorm_backward(dy, x, mean, invstd, gamma)
    a = be.asarray
    with poisoned(be):
        g_mean, g_var = be.batchnorm_stats(a(x))
        g_y, g_invstd = be.batchnorm_forward(a(x), a(mean), a(var), a(gamma), a(beta), EPS)
        g_dx, g_dgamma, g_dbeta = be.batchnorm_backward(a(dy), a(x), a(mean), a(invstd),
                                                        a(gamma))
    check(host(be, g_mean), mean, rtol, atol / m + atol * 1e-2)
    check(host(be, g_var), var, rtol, atol / m + atol * 1e-2)
    check(host(be, g_invstd), invstd, rtol, 0)
    # y, dx: invstd can reach 1/sqrt(eps) where var ~ 0 (m == 1), so scale by it
    s = float(np.max(np.abs(invstd))) * max(1.0, float(np.max(np.abs(gamma))))
    check(host(be, g_y), y, rtol, atol * 1e-1 * s)
    check(host(be, g_dbeta), dbeta, rtol, atol)
    check(host(be, g_dgamma), dgamma, rtol, atol * s)
    check(host(be, g_dx), dx, rtol, atol * 1e-1 * s)


@examples(12)
@given(n=dims(4), c=dims(5), h=dims(7), w=dims(7), seed=seeds)
def test_batchnorm(be, cpu, n, c, h, w, seed):
    x, dy, gamma, beta = _inputs(seed % 2**30, (n, c, h, w))
    _compare_all(be, cpu, x, dy, gamma, beta)


@examples(5)
@given(n=st.integers(2, 40), c=dims(5), seed=seeds)
def test_batchnorm_dense(be, cpu, n, c, seed):
    """A dense (N, C) batch as (N, C, 1, 1)."""
    x, dy, gamma, beta = _inputs(seed % 2**30, (n, c, 1, 1))
    _compare_all(be, cpu, x, dy, gamma, beta)


# (4, 1, 7, 7) and (4, 2, 7, 7) split each channel over several y-slices of
# blocks in the simulator (by > 1), so the fixed-order second pass adds rows.
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (4, 1, 7, 7), (4, 2, 7, 7), (3, 5, 1, 1)]
                         + big((64, 3, 224, 224), (64, 256, 8, 8), (256, 16, 1, 1)))
def test_batchnorm_shapes(be, cpu, shape):
    x, dy, gamma, beta = _inputs(sum(shape), shape)
    _compare_all(be, cpu, x, dy, gamma, beta)


def test_batchnorm_float64(be, cpu):
    x, dy, gamma, beta = _inputs(11, (3, 2, 5, 4), np.float64)
    _compare_all(be, cpu, x, dy, gamma, beta)


@pytest.mark.parametrize("shape", [(4, 2, 7, 7)] + big((64, 3, 224, 224)))
def test_stats_large_offset(be, cpu, shape):
    """x = 1e4 + N(0, 1): two passes keep the variance; E[x^2] - E[x]^2 in
    float32 would not (x^2 ~ 1e8 has an ulp of 8, the variance is ~1)."""
    x = (1e4 + rand(3, shape, np.float64)).astype(np.float32)
    x64 = x.astype(np.float64)
    mean64 = x64.mean(axis=(0, 2, 3))
    var64 = ((x64 - mean64[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    one_pass = (np.square(x).mean(axis=(0, 2, 3)) - np.square(x.mean(axis=(0, 2, 3))))
    assert np.max(np.abs(one_pass - var64) / var64) > 1e-2  # the test can tell them apart
    with poisoned(be):
        g_mean, g_var = be.batchnorm_stats(be.asarray(x))
    check(host(be, g_mean).astype(np.float64), mean64, rtol=1e-6, atol=0)
    check(host(be, g_var).astype(np.float64), var64, rtol=1e-4, atol=0)
    mean, var = cpu.batchnorm_stats(x)
    check(host(be, g_var), var, rtol=1e-4, atol=0)


def test_shape_errors(be):
    x = be.asarray(rand(0, (2, 3, 4, 4)))
    v3 = be.asarray(rand(1, (3,)))
    v4 = be.asarray(rand(2, (4,)))
    with pytest.raises(ShapeError, match=r"\(2, 3, 4\)"):
        be.batchnorm_stats(be.asarray(rand(0, (2, 3, 4))))
    with pytest.raises(ShapeError, match=r"gamma.*\(4,\)"):
        be.batchnorm_forward(x, v3, v3, v4, v3, EPS)
    with pytest.raises(ShapeError, match=r"\(2, 3, 4, 5\).*\(2, 3, 4, 4\)"):
        be.batchnorm_backward(be.asarray(rand(3, (2, 3, 4, 5))), x, v3, v3, v3)
    with pytest.raises(ShapeError, match=r"invstd.*\(4,\)"):
        be.batchnorm_backward(x, x, v3, v4, v3)
