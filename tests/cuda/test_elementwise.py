"""Activations, axpby, bias add, row gather and SGD: CUDA backend vs the CPU reference."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cudatest import big, check, dims, examples, host, poisoned, rand, seeds

UNARY = ["relu", "sigmoid", "tanh", "step"]
BACKWARD = {"relu_backward": "relu", "sigmoid_backward": "sigmoid", "tanh_backward": "tanh"}
shapes = st.lists(dims(13), min_size=1, max_size=4).map(tuple)
DTYPES = [np.float32, np.float64]


def tols(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", UNARY)
@examples(12)
@given(shape=shapes, seed=seeds, scale=st.sampled_from([1.0, 30.0]))
def test_unary(be, cpu, op, dtype, shape, seed, scale):
    x = rand(seed, shape, dtype, scale)
    with poisoned(be):
        got = getattr(be, op)(be.asarray(x))
    check(host(be, got), getattr(cpu, op)(x), **tols(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(BACKWARD))
@examples(12)
@given(shape=shapes, seed=seeds)
def test_backward(be, cpu, op, dtype, shape, seed):
    x = rand(seed, shape, dtype)
    # relu_backward takes the forward input; the others the forward output.
    first = x if op == "relu_backward" else getattr(cpu, BACKWARD[op])(x)
    grad = rand(seed + 1, shape, dtype)
    with poisoned(be):
        got = getattr(be, op)(be.asarray(first), be.asarray(grad))
    check(host(be, got), getattr(cpu, op)(first, grad), **tols(dtype))


@pytest.mark.parametrize("op", UNARY)
def test_extremes(be, cpu, op):
    """Large |x| (exp would overflow naively), zero, and both signs."""
    x = np.array([[-1e30, -1e4, -100.0, -88.8, -1e-30, 0.0, 1e-30, 88.8, 100.0, 1e4, 1e30]],
                 np.float32)
    with poisoned(be):
        got = host(be, getattr(be, op)(be.asarray(x)))
    assert np.isfinite(got).all()
    check(got, getattr(cpu, op)(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("size", [1, 300] + big(1 << 20))
def test_unary_sizes(be, cpu, size):
    """Several grid-stride passes (simulator: 4 blocks of 64 threads < 300)."""
    x = rand(size, (size,))
    for op in UNARY:
        with poisoned(be):
            got = getattr(be, op)(be.asarray(x))
        check(host(be, got), getattr(cpu, op)(x), rtol=1e-5, atol=1e-6)


@examples(12)
@given(shape=shapes, seed=seeds, alpha=st.floats(-3, 3), beta=st.floats(-3, 3))
def test_axpby(be, cpu, shape, seed, alpha, beta):
    x = rand(seed, shape)
    y = rand(seed + 1, shape)
    with poisoned(be):
        got = be.axpby(alpha, be.asarray(x), beta, be.asarray(y))
    check(host(be, got), cpu.axpby(alpha, x, beta, y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,f", [(1, 1), (1, 7), (9, 1)] + big((4096, 1000)))
def test_add_bias_edges(be, cpu, n, f):
    _add_bias(be, cpu, n, f, n * 31 + f)


@examples(12)
@given(n=dims(40), f=dims(40), seed=seeds)
def test_add_bias(be, cpu, n, f, seed):
    _add_bias(be, cpu, n, f, seed)


def _add_bias(be, cpu, n, f, seed):
    z = rand(seed, (n, f))
    b = rand(seed + 1, (f,))
    zd = be.asarray(z)
    be.add_bias(zd, be.asarray(b))
    cpu.add_bias(z, b)
    check(host(be, zd), z, rtol=1e-6, atol=0)


@examples(15)
@given(n=dims(30), d=st.lists(dims(5), max_size=2).map(tuple), m=st.integers(0, 40),
       seed=seeds, dtype=st.sampled_from([np.float32, np.int64]))
def test_take_rows(be, cpu, n, d, m, seed, dtype):
    x = rand(seed, (n,) + d, dtype, scale=100)
    idx = np.random.default_rng(seed).integers(-n, n, m)
    with poisoned(be):
        got_host_idx = be.take_rows(be.asarray(x), idx)
        got_dev_idx = be.take_rows(be.asarray(x), be.asarray(idx))
    ref = cpu.take_rows(x, idx)
    check(host(be, got_host_idx), ref, rtol=0, atol=0)
    check(host(be, got_dev_idx), ref, rtol=0, atol=0)


def test_take_rows_errors(be):
    x = be.asarray(rand(0, (5, 3)))
    with pytest.raises(IndexError, match="5"):
        be.take_rows(x, np.array([0, 5]))
    with pytest.raises(IndexError, match="-6"):
        be.take_rows(x, np.array([-6]))


@pytest.mark.parametrize("momentum,nesterov,wd", [
    (0.0, False, 0.0), (0.0, False, 0.01), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, True, 0.1)])
@pytest.mark.parametrize("size", [1, 37, 300] + big(1 << 20))
def test_sgd(be, cpu, momentum, nesterov, wd, size):
    p = rand(size, (size,))
    v = rand(size + 1, (size,)) if momentum else None
    pd = be.asarray(p)
    vd = be.asarray(v) if momentum else None
    for step in range(3):
        g = rand(size + 2 + step, (size,))
        be.sgd_update(pd, be.asarray(g), vd, 0.1, momentum, nesterov, wd)
        cpu.sgd_update(p, g, v, 0.1, momentum, nesterov, wd)
    check(host(be, pd), p, rtol=1e-5, atol=1e-6)
    if momentum:
        check(host(be, vd), v, rtol=1e-5, atol=1e-6)
