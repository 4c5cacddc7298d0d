"""Augmentation on the CUDA backend (kernels/augment.py) equals the CPU backend's."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cudatest import big, check, examples, host, poisoned, rand, seeds
from gpudl.augment import Augment, affine_theta
from gpudl.kernels import augment as ak

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


@examples(8)
@given(n=st.integers(1, 3), c=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7),
       shift=st.integers(0, 3), flip=st.booleans(), rotate=st.sampled_from([0.0, 7.5, 45.0, 180.0]),
       fill=st.sampled_from([0.0, -1.5]), seed=seeds, step=st.integers(0, 10**6),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_augment_matches_cpu(be, cpu, n, c, h, w, shift, flip, rotate, fill, seed, step, dtype):
    x = rand(seed, (n, c, h, w), dtype)
    aug = dict(shift=shift, flip=flip, rotate=rotate, seed=seed, fill=fill)
    ref = Augment(**aug, backend=cpu)(x, step)
    with poisoned(be):
        got = host(be, Augment(**aug, backend=be)(be.asarray(x), step))
    if rotate == 0.0:  # nearest sampling: exact copies on both
        np.testing.assert_array_equal(got, ref)
    check(got, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nearest", [False, True])
def test_random_theta_matches_cpu(be, cpu, dtype, nearest):
    """Any affine map, including points far outside the image and shears."""
    rng = np.random.default_rng(3)
    x = rand(4, (3, 2, 5, 4), dtype)
    theta = rng.uniform(-2, 2, (3, 6))
    theta[:, [2, 5]] *= 4
    theta[2] = [0, 0, 1e6, 0, 0, -1e6]  # every point far outside: all fill
    ref = cpu.augment_affine(x, theta, 0.25, nearest)
    with poisoned(be):
        got = host(be, be.augment_affine(be.asarray(x), theta, 0.25, nearest))
    check(got, ref, **TOL[dtype])
    assert (got[2] == np.asarray(0.25, dtype)).all()


def test_quarter_turn_on_device(be):
    x = rand(7, (2, 3, 4, 4), np.float32)
    theta = affine_theta(4, 4, [0, 0], [0, 0], [False, True], [90.0, 90.0])
    with poisoned(be):
        got = host(be, be.augment_affine(be.asarray(x), theta))
    np.testing.assert_allclose(got[0], np.rot90(x[0], 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(got[1], np.rot90(x[1], 1, axes=(1, 2))[:, :, ::-1], atol=1e-5)


def test_kernel_launched_directly_grid_stride(be, cpu):
    """Two blocks of 8 threads cover 2 * 2 * 5 * 3 = 60 elements by grid-stride."""
    x = rand(1, (2, 2, 5, 3), np.float32)
    theta = affine_theta(5, 3, [1, -2], [0, 1], [True, False], [10.0, -30.0])
    out = be.asarray(np.full(x.shape, np.nan, np.float32))
    be.launch(ak.affine_sample, 2, 8, be.asarray(x), be.asarray(theta, dtype=np.float32), out,
              np.float32(0.0), False)
    check(host(be, out), cpu.augment_affine(x, theta), **TOL[np.float32])


@pytest.mark.parametrize("shape", big((256, 3, 32, 32), (64, 1, 28, 28)))
def test_realistic_batch(be, cpu, shape):
    x = rand(2, shape, np.float32)
    aug = dict(shift=4, flip=True, rotate=15.0, seed=1)
    ref = Augment(**aug, backend=cpu)(x, 100)
    check(host(be, Augment(**aug, backend=be)(be.asarray(x), 100)), ref, **TOL[np.float32])
