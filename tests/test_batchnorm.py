"""Batch normalization on the CPU backend: the notes' formula, the full training
gradient, running averages (PyTorch's conventions) and inference."""
import numpy as np
import pytest

import gpudl
from gpudl.gradcheck import check_layer
from gpudl.layers import BatchNorm, Conv2D, Dense, Flatten, ReLU


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def bn(c, **kw):
    layer = BatchNorm(c, dtype=np.float64, **kw)
    layer.params["gamma"] = 1 + 0.5 * rand(c, seed=7)
    layer.params["beta"] = rand(c, seed=8)
    return layer


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3, 5), (2, 1, 4, 4)])
def test_training_gradient(shape):
    errors = check_layer(bn(shape[1]), rand(*shape) * 3 + 1, training=True)
    assert set(errors) == {"input", "gamma", "beta"}


def test_training_output_is_normalised_per_channel():
    layer = bn(3)
    x = rand(8, 3, 4, 4) * 5 + 10
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), layer.params["beta"], atol=1e-10)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), np.abs(layer.params["gamma"]), rtol=1e-4)


def test_running_averages_and_inference():
    layer = bn(2, momentum=0.25)
    x = rand(5, 2, 3, 3) * 2 + 4
    layer.forward(x, training=True)
    m = 5 * 9
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.75 * 0 + 0.25 * mean)
    np.testing.assert_allclose(layer.buffers["running_var"], 0.75 * 1 + 0.25 * var * m / (m - 1))
    y = layer.forward(x, training=False)
    rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
    expect = layer.params["gamma"].reshape(1, -1, 1, 1) * (x - rm.reshape(1, -1, 1, 1)) \
        / np.sqrt(rv.reshape(1, -1, 1, 1) + 1e-5) + layer.params["beta"].reshape(1, -1, 1, 1)
    np.testing.assert_allclose(y, expect, rtol=1e-12)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.ones_like(y))


def test_matches_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    x = rand(6, 3, 4, 5) * 2 + 1
    ours = bn(3)
    ref = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-5).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(ours.params["gamma"]))
        ref.bias.copy_(torch.from_numpy(ours.params["beta"]))
    for _ in range(3):
        y = ours.forward(x, training=True)
        ty = ref.train()(torch.from_numpy(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.buffers["running_var"], ref.running_var.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.forward(x), ref.eval()(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_statistics_are_stable_with_a_large_mean():
    x = (1e4 + rand(16, 2, 8, 8)).astype(np.float32)
    mean, var = gpudl.get_backend().batchnorm_stats(x)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-3)


def test_errors_counts_and_save_load(tmp_path):
    with pytest.raises(gpudl.ShapeError, match=r"\(N, 3\) or \(N, 3, H, W\)"):
        BatchNorm(3).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm(3).forward(np.zeros((1, 3), np.float32), training=True)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=1.5)
    model = gpudl.Sequential([Conv2D(1, 4, 3), BatchNorm(4), ReLU(), Flatten(), Dense(36, 3),
                              BatchNorm(3)], input_shape=(1, 5, 5))
    assert model.num_params() == (9 * 4 + 4) + 2 * 4 + (36 * 3 + 3) + 2 * 3
    x = rand(4, 1, 5, 5).astype(np.float32)
    gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1)).fit(
        x, np.arange(4) % 3, epochs=2, verbose=False)
    model.save(tmp_path / "bn.npz")
    loaded = gpudl.load(tmp_path / "bn.npz")
    np.testing.assert_array_equal(loaded.layers[1].buffers["running_mean"],
                                  model.layers[1].buffers["running_mean"])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
