"""The zoo's networks on the CUDA backend (the simulator in CI, the GPU when there
is one) follow the CPU run step for step: LeNet on the digits themselves, and
small residual (sum and concatenation) and depthwise-separable networks."""
import copy

import numpy as np
import pytest

import gpudl
from gpudl import zoo
from gpudl.layers import Concat, Conv2D, ReLU, Residual


def _fit(model, x, y, batch_size, epochs=1):
    opt = gpudl.optim.SGD(0.05, momentum=0.9, weight_decay=1e-3)
    history = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), opt).fit(
        x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=False)
    return history, model.state_arrays()


def _match(build, x, y, batch_size, epochs=1):
    gpudl.set_device("cpu")
    gpudl.manual_seed(11)
    cpu_model = build()
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    assert gpu_model.backend.name == "cuda"
    start = cpu_model.state_arrays()
    h_cpu, w_cpu = _fit(cpu_model, x, y, batch_size, epochs)
    h_gpu, w_gpu = _fit(gpu_model, x, y, batch_size, epochs)
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-5, atol=1e-6)
    for k in w_cpu:
        if "buffer" not in k:
            assert not np.array_equal(w_cpu[k], start[k]), f"{k} did not train"
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=2e-4, atol=2e-5, err_msg=k)
    return cpu_model, gpu_model


def test_lenet_on_digits_matches_cpu():
    """Steps on real digits at LeNet's 32x32: every weight after the update, and
    the loss. In the simulator one step on one digit (every simulated thread
    costs about 0.2 ms, and LeNet's convolutions and dense layers make tens of
    thousands of them); on a GPU two steps of 128."""
    from gpudl.data import load_digits
    (x, y), _ = load_digits(flatten=False, upscale=4)
    n = 1 if gpudl.backend.simulator_enabled() else 256
    x, y = x[:n], y[:n]
    cpu_model, gpu_model = _match(lambda: zoo.lenet((1, 32, 32), 10), x, y, max(n // 2, 1))
    if not gpudl.backend.simulator_enabled():
        np.testing.assert_allclose(gpu_model.predict(x), cpu_model.predict(x),
                                   rtol=1e-4, atol=1e-5)


def test_small_resnet_matches_cpu():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 3)
    _match(lambda: zoo.resnet((1, 6, 6), 3, widths=(2, 4)), x, y, None, epochs=2)


def test_concat_residual_and_branches_match_cpu():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 2, 2)
    _match(lambda: gpudl.Sequential([
        Residual([Conv2D(2, 3, 3, padding="same"), ReLU()], merge="concat"),     # 5 channels
        Concat([Conv2D(5, 2, 1), [Conv2D(5, 1, 3, stride=2, padding="same"), ReLU(),
                                  gpudl.layers.Conv2DTranspose(1, 1, 2, stride=2)], None]),
        gpudl.layers.GlobalAvgPool2D(), gpudl.layers.Dense(8, 2)], input_shape=(2, 4, 4)),
        x, y, None, epochs=2)


def test_small_mobilenet_matches_cpu():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 1, 5, 5)).astype(np.float32)
    y = rng.integers(0, 2, 2)
    # two steps: with beta = 0, ReLU and batch norm make the stem's gamma
    # scale-free, so its first gradient is zero
    _match(lambda: zoo.mobilenet((1, 5, 5), 2, widths=(2, 3), strides=(1, 2)), x, y, None,
           epochs=2)


@pytest.mark.skipif(gpudl.backend.simulator_enabled(), reason="full-size run on a real GPU only")
def test_resnet_cifar_size_matches_cpu():
    rng = np.random.default_rng(6)
    x = rng.random((32, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    _match(lambda: zoo.resnet((3, 32, 32), 10), x, y, 16)
