"""Helpers shared by the CUDA tests: tolerances, inputs, poisoned outputs, sizes."""
import contextlib
import functools

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gpudl.backend import simulator_enabled

SIM = simulator_enabled()

# Realistic sizes, added only on a real GPU (each simulated thread costs ~0.2 ms).
def big(*cases):
    return [] if SIM else list(cases)


def examples(n):
    """Hypothesis settings: few examples, no deadline (the simulator is slow)."""
    return settings(max_examples=n, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


dims = functools.partial(st.integers, 1)
seeds = st.integers(0, 2**32 - 1)


def rand(seed, shape, dtype=np.float32, scale=1.0):
    """Standard normal * scale, resampled away from exact zeros."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    x[x == 0] = 0.5
    return x.astype(dtype)


def check(got, ref, rtol=1e-4, atol=1e-5):
    """|got - ref| <= atol + rtol |ref| everywhere; a NaN in got fails."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    assert got.dtype == ref.dtype, f"dtype {got.dtype} != reference {ref.dtype}"
    assert got.flags.c_contiguous
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    tol = atol + rtol * np.abs(ref.astype(np.float64))
    ok = err <= tol  # False where got is NaN
    if not ok.all():
        bad = np.argwhere(~ok)[:5]
        raise AssertionError(
            f"{(~ok).sum()} of {ok.size} elements off; first at {bad.tolist()}: got "
            f"{got[tuple(bad[0])]}, reference {ref[tuple(bad[0])]}, tol {tol[tuple(bad[0])]:.3g}")


def poison_fill(shape, dtype):
    if np.issubdtype(np.dtype(dtype), np.floating):
        return np.full(shape, np.nan, dtype)
    return np.full(shape, -77777, dtype)


@contextlib.contextmanager
def poisoned(be):
    """Every array the backend allocates starts NaN (or -77777 for integers),
    so an element a kernel forgets to write cannot pass for a result."""
    def empty(shape, dtype):
        return be.asarray(poison_fill(shape, dtype))
    be.empty = empty
    try:
        yield be
    finally:
        del be.empty


def host(be, x):
    return be.to_numpy(x)
