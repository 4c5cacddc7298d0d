"""The precision policy on the CUDA backend: the rounding kernels match the
NumPy reference bit for bit, reduced-precision matmul and convolutions match
the CPU's, and a mixed-precision training step matches the CPU's."""
import copy

import numpy as np
import pytest

import gpudl
from cudatest import check, host, poisoned, rand
from gpudl import precision as P


@pytest.fixture(autouse=True)
def fp32_after():
    yield
    gpudl.set_precision("fp32")


def edge_values():
    """Random bit patterns (every exponent, NaN, inf, subnormals) and the ties
    and overflow edges of each format."""
    u = np.random.default_rng(0).integers(0, 2 ** 32, size=300, dtype=np.uint64)
    x = u.astype(np.uint32).view(np.float32)
    edges = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, -(1 + 2 ** -11), 65519, 65520,
                      2.0 ** -25, 1.5 * 2.0 ** -25, 3.4e38, -0.0, np.inf, -np.inf], np.float32)
    return np.concatenate([x, edges])


@pytest.mark.parametrize("fmt", P.FORMATS)
def test_rounding_kernels_match_the_reference_bit_for_bit(be, fmt):
    x = edge_values()
    with poisoned(be):
        got = host(be, be.round_to(be.asarray(x), fmt))
    want = P.round_to(x, fmt)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("fmt", P.FORMATS)
@pytest.mark.parametrize("variant", ["nn", "tn", "nt"])
def test_reduced_precision_matmul_matches_cpu(be, cpu, fmt, variant):
    ta, tb = variant[0] == "t", variant[1] == "t"
    m, n, k = 19, 13, 21
    a = rand(1, (k, m) if ta else (m, k))
    b = rand(2, (n, k) if tb else (k, n))
    with poisoned(be):
        got = host(be, be.matmul(be.asarray(a), be.asarray(b), ta, tb, precision=fmt))
    check(got, cpu.matmul(a, b, ta, tb, precision=fmt), rtol=1e-5, atol=1e-5 * k)


def test_reduced_precision_convolutions_match_cpu(be, cpu):
    x = rand(3, (2, 3, 6, 5))
    w = rand(4, (4, 3, 3, 3))
    geo = ((1, 2), (1, 1, 1, 0), (1, 1))
    y_cpu = cpu.conv2d(x, w, *geo, precision="bf16")
    dy = rand(5, y_cpu.shape)
    with poisoned(be):
        y = host(be, be.conv2d(be.asarray(x), be.asarray(w), *geo, precision="bf16"))
        dx = host(be, be.conv2d_backward_input(be.asarray(dy), be.asarray(w), (6, 5), *geo,
                                               precision="fp16"))
        dw = host(be, be.conv2d_backward_weight(be.asarray(dy), be.asarray(x), (3, 3), *geo,
                                                precision="tf32"))
    check(y, y_cpu, rtol=1e-5, atol=1e-4)
    check(dx, cpu.conv2d_backward_input(dy, w, (6, 5), *geo, precision="fp16"),
          rtol=1e-5, atol=1e-4)
    check(dw, cpu.conv2d_backward_weight(dy, x, (3, 3), *geo, precision="tf32"),
          rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("policy", ["bf16-mixed", "fp16-mixed"])
def test_mixed_precision_step_matches_cpu(policy):
    from gpudl.layers import Conv2D, Dense, Flatten, ReLU
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 2, 5, 5)).astype(np.float32)
    y = rng.integers(0, 3, 4)
    gpudl.set_device("cpu")
    gpudl.manual_seed(7)
    cpu_model = gpudl.Sequential([Conv2D(2, 3, 3, padding="same"), ReLU(), Flatten(),
                                  Dense(3 * 5 * 5, 3)], input_shape=(2, 5, 5))
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    start = cpu_model.state_arrays()
    results = []
    for model in (cpu_model, gpu_model):
        tr = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1, momentum=0.9),
                           precision=policy)
        hist = tr.fit(x, y, epochs=1, batch_size=2, seed=0, verbose=False)
        results.append((hist, model.state_arrays(), tr.loss_scaler))
    (h_cpu, w_cpu, s_cpu), (h_gpu, w_gpu, s_gpu) = results
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-4, atol=1e-5)
    if policy == "fp16-mixed":
        assert s_cpu.state_dict() == s_gpu.state_dict() and s_cpu.good_steps == 2
    for k in w_cpu:
        assert not np.allclose(w_cpu[k], start[k]), f"{k} did not train"
        # one rounding boundary crossed differently moves a weight by a BF16 step
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=1e-3, atol=1e-4, err_msg=k)
