"""Dropout masks on the CUDA backend are the CPU backend's, bit for bit."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cudatest import big, check, examples, host, poisoned, rand
from gpudl.kernels import dropout as dk


@examples(10)
@given(n=st.integers(1, 300), p=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
       seed=st.integers(0, 2**63 - 1), counter=st.integers(0, 10**6),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_mask_matches_cpu(be, cpu, n, p, seed, counter, dtype):
    with poisoned(be):
        got = host(be, be.dropout_mask((n,), p, seed, counter, dtype))
    np.testing.assert_array_equal(got, cpu.dropout_mask((n,), p, seed, counter, dtype))
    assert got.dtype == dtype


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (7, 33)] + big((64, 128, 32, 32), (4096, 4096)))
def test_mask_shapes_and_multiply(be, cpu, shape):
    mask = cpu.dropout_mask(shape, 0.25, 123, 9, np.float32)
    np.testing.assert_array_equal(host(be, be.dropout_mask(shape, 0.25, 123, 9, np.float32)), mask)
    x = rand(1, shape)
    with poisoned(be):
        got = host(be, be.multiply(be.asarray(x), be.asarray(mask)))
    check(got, cpu.multiply(x, mask), rtol=0, atol=0)


def test_kernel_launched_directly(be, cpu):
    from gpudl.backend import dropout_key
    key, threshold = dropout_key.key_and_threshold(0.5, 42, 3)
    out = be.asarray(np.full(50, np.nan, np.float32))
    keys = be.asarray(np.array([key, threshold], np.uint64))
    be.launch(dk.dropout_mask, 2, 8, out, keys, np.float32(2.0))
    np.testing.assert_array_equal(host(be, out), cpu.dropout_mask((50,), 0.5, 42, 3, np.float32))
