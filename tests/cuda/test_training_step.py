"""The whole CUDA path, end to end: a training step on the CUDA backend (the
simulator in CI, the GPU when there is one) gives the CPU backend's weights."""
import copy

import numpy as np
import pytest

import gpudl
from gpudl.layers import Dense, ReLU, Sigmoid, Tanh


def _pair(layers_fn):
    gpudl.set_device("cpu")
    gpudl.manual_seed(3)
    cpu_model = gpudl.Sequential(layers_fn())
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    assert gpu_model.backend.name == "cuda"
    return cpu_model, gpu_model


def _fit(model, loss, x, y, batch_size, epochs=1):
    opt = gpudl.optim.SGD(0.2, momentum=0.9, nesterov=True, weight_decay=0.01)
    history = gpudl.Trainer(model, loss, opt).fit(x, y, epochs=epochs, batch_size=batch_size,
                                                  seed=0, verbose=False)
    return history, model.state_arrays()


@pytest.mark.parametrize("batch_size", [None, 4])
def test_cross_entropy_step_matches_cpu(batch_size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    cpu_model, gpu_model = _pair(lambda: [Dense(5, 6), ReLU(), Dense(6, 3)])
    w_start = cpu_model.state_arrays()
    h_cpu, w_cpu = _fit(cpu_model, gpudl.losses.CrossEntropy(), x, y, batch_size, epochs=2)
    h_gpu, w_gpu = _fit(gpu_model, gpudl.losses.CrossEntropy(), x, y, batch_size, epochs=2)
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-5, atol=1e-6)
    assert h_gpu["accuracy"] == h_cpu["accuracy"]
    for k in w_cpu:
        assert not np.allclose(w_cpu[k], w_start[k]), f"{k} did not train"
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("loss", [gpudl.losses.MSE(), gpudl.losses.BinaryCrossEntropy(),
                                  gpudl.losses.BinaryCrossEntropy(from_logits=True)])
def test_regression_and_binary_losses_match_cpu(loss):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = (rng.random((6, 2)) > 0.5).astype(np.float32)
    last = [] if getattr(loss, "from_logits", True) else [Sigmoid()]
    cpu_model, gpu_model = _pair(lambda: [Dense(4, 5), Tanh(), Dense(5, 2)] + last)
    _, w_cpu = _fit(cpu_model, loss, x, y, None)
    _, w_gpu = _fit(gpu_model, loss, x, y, None)
    for k in w_cpu:
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_save_on_cuda_load_on_cpu(tmp_path):
    _, gpu_model = _pair(lambda: [Dense(3, 2)])
    gpu_model.save(tmp_path / "m.npz")
    gpudl.set_device("cpu")
    loaded = gpudl.load(tmp_path / "m.npz")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x), gpu_model.predict(x), rtol=1e-6, atol=1e-6)


def test_perceptron_rule_on_the_cuda_backend_matches_cpu():
    from gpudl.data import logic_gate
    from gpudl.layers import Perceptron
    x, y = logic_gate("nand")
    gpudl.set_device("cpu")
    cpu_p = Perceptron(2, seed=0)
    gpu_p = copy.deepcopy(cpu_p).to(gpudl.backend._make("cuda"))
    assert cpu_p.fit(x, y, epochs=20, seed=0) == gpu_p.fit(x, y, epochs=20, seed=0)
    np.testing.assert_array_equal(gpu_p.predict(x), y)
    np.testing.assert_allclose(gpu_p.backend.to_numpy(gpu_p.params["W"]), cpu_p.params["W"],
                               rtol=1e-6)


def test_cnn_step_matches_cpu():
    """Convolutions (strided, padded, depthwise, transposed) in a training step."""
    from gpudl.layers import Conv2D, Conv2DTranspose, DepthwiseConv2D, Flatten
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    y = rng.integers(0, 3, 3)
    gpudl.set_device("cpu")
    gpudl.manual_seed(4)
    cpu_model = gpudl.Sequential([
        Conv2D(2, 3, 3, stride=2, padding="same"), ReLU(),          # 5x5 -> 3x3
        DepthwiseConv2D(3, 2, padding=1, dilation=2), Tanh(),       # 3x3 -> 3x3
        Conv2DTranspose(3, 2, 2, stride=2), ReLU(),                 # 3x3 -> 6x6
        Flatten(), Dense(2 * 6 * 6, 3)], input_shape=(2, 5, 5))
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    w_start = cpu_model.state_arrays()
    h_cpu, w_cpu = _fit(cpu_model, gpudl.losses.CrossEntropy(), x, y, None)
    h_gpu, w_gpu = _fit(gpu_model, gpudl.losses.CrossEntropy(), x, y, None)
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-5, atol=1e-6)
    for k in w_cpu:
        assert not np.allclose(w_cpu[k], w_start[k]), f"{k} did not train"
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_pooling_and_batchnorm_step_matches_cpu():
    """Batch norm (training statistics, running averages) and both poolings in a step."""
    from gpudl.layers import AvgPool2D, BatchNorm, Conv2D, GlobalAvgPool2D, MaxPool2D
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 2, 4)
    gpudl.set_device("cpu")
    gpudl.manual_seed(6)
    cpu_model = gpudl.Sequential([
        Conv2D(1, 3, 3, padding="same"), BatchNorm(3), ReLU(),
        MaxPool2D(2, padding=1), AvgPool2D(2, stride=1), GlobalAvgPool2D(),   # 6 -> 4 -> 3 -> 1
        BatchNorm(3), Dense(3, 2)], input_shape=(1, 6, 6))
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    h_cpu, w_cpu = _fit(cpu_model, gpudl.losses.CrossEntropy(), x, y, None, epochs=2)
    h_gpu, w_gpu = _fit(gpu_model, gpudl.losses.CrossEntropy(), x, y, None, epochs=2)
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-5, atol=1e-6)
    assert any("buffer.running_var" in k for k in w_cpu)
    for k in w_cpu:
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=1e-4, atol=1e-5, err_msg=k)
    xt = rng.standard_normal((3, 1, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(gpu_model.predict(xt), cpu_model.predict(xt), rtol=1e-4, atol=1e-5)


def test_dropout_step_matches_cpu():
    """Both backends draw the same dropout masks, so training stays identical."""
    from gpudl.layers import Dropout
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    cpu_model, gpu_model = _pair(lambda: [Dense(5, 8), ReLU(), Dropout(0.4, seed=77), Dense(8, 3)])
    h_cpu, w_cpu = _fit(cpu_model, gpudl.losses.CrossEntropy(), x, y, 3, epochs=2)
    h_gpu, w_gpu = _fit(gpu_model, gpudl.losses.CrossEntropy(), x, y, 3, epochs=2)
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-5, atol=1e-6)
    for k in w_cpu:
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=1e-5, atol=1e-6, err_msg=k)
