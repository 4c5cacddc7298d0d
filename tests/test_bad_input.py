"""Every bad input gets a clear error naming the argument or layer and the values."""
import numpy as np
import pytest

import gpudl
from gpudl.layers import Dense, ReLU, Softmax


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def model():
    return gpudl.Sequential([Dense(4, 8, name="hidden"), ReLU(), Dense(8, 3, name="head")])


def trainer(lr=0.1):
    return gpudl.Trainer(model(), gpudl.losses.CrossEntropy(), gpudl.optim.SGD(lr))


X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
Y = np.arange(10) % 3


def test_layer_wrong_input_shape_names_the_layer():
    with pytest.raises(gpudl.ShapeError, match=r"'hidden'.*\(batch, 4\).*\(2, 5\)"):
        model().forward(np.zeros((2, 5), np.float32))
    with pytest.raises(gpudl.ShapeError, match="Softmax"):
        Softmax().forward(np.zeros(3, np.float32))


def test_fit_wrong_feature_count():
    with pytest.raises(gpudl.ShapeError, match=r"'hidden'.*4 input features.*\(5,\)"):
        trainer().fit(np.zeros((10, 5), np.float32), Y, verbose=False)


def test_fit_sample_count_mismatch():
    with pytest.raises(gpudl.ShapeError, match="10 samples but its targets have 9"):
        trainer().fit(X, Y[:9], verbose=False)


def test_labels_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\).*e.g. 3"):
        trainer().fit(X, np.arange(10) % 4, verbose=False)
    with pytest.raises(ValueError, match=r"e.g. -1"):
        trainer().fit(X, -(np.arange(10) % 2), verbose=False)


def test_nan_in_data():
    x = X.copy()
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or infinite values \(first at index \(3, 2\)\)"):
        trainer().fit(x, Y, verbose=False)
    with pytest.raises(ValueError, match="validation_data"):
        trainer().fit(X, Y, validation_data=(x, Y), verbose=False)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf"), "0.1"])
def test_bad_learning_rate(lr):
    with pytest.raises(ValueError, match=r"SGD: lr must be"):
        gpudl.optim.SGD(lr)


@pytest.mark.parametrize("kwargs,match", [({"momentum": 1.0}, "momentum"),
                                          ({"momentum": -0.5}, "momentum"),
                                          ({"nesterov": True}, "nesterov"),
                                          ({"weight_decay": -1}, "weight_decay")])
def test_bad_optimizer_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpudl.optim.SGD(0.1, **kwargs)


@pytest.mark.parametrize("bs", [0, -3, 2.5, True])
def test_bad_batch_size(bs):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer.*{bs!r}"):
        trainer().fit(X, Y, batch_size=bs, verbose=False)


def test_bad_epochs():
    with pytest.raises(ValueError, match="epochs"):
        trainer().fit(X, Y, epochs=0, verbose=False)


def test_bad_dense_sizes():
    with pytest.raises(ValueError, match="out_features must be a positive integer, got 0"):
        Dense(3, 0)


def test_unknown_device():
    with pytest.raises(gpudl.DeviceError, match="unknown device 'tpu'"):
        gpudl.set_device("tpu")


def test_cuda_without_gpu(monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(gpudl.backend, "gpu_available", lambda: False)
    with pytest.raises(gpudl.DeviceError, match="no GPU is visible"):
        gpudl.set_device("cuda")


def test_env_variable_picks_the_device(monkeypatch):
    monkeypatch.setattr(gpudl.backend, "_current", None)
    monkeypatch.setenv("GPUDL_DEVICE", "cpu")
    assert gpudl.get_device() == "cpu"
    monkeypatch.setattr(gpudl.backend, "_current", None)
    monkeypatch.setenv("GPUDL_DEVICE", "quantum")
    with pytest.raises(gpudl.DeviceError, match="quantum"):
        gpudl.get_backend()


def test_loss_shape_errors():
    with pytest.raises(gpudl.ShapeError, match=r"MSE.*\(2, 3\).*\(2, 4\)"):
        gpudl.losses.MSE()(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(gpudl.ShapeError, match="CrossEntropy"):
        gpudl.losses.CrossEntropy()(np.zeros((2, 3)), np.zeros((3,), np.int64))
    with pytest.raises(TypeError, match="integers"):
        gpudl.losses.CrossEntropy()(np.zeros((2, 3)), np.zeros((2,), np.float32))


def test_bce_targets_out_of_range():
    t = gpudl.Trainer(gpudl.Sequential([Dense(4, 1)]), gpudl.losses.BinaryCrossEntropy(),
                      gpudl.optim.SGD(0.1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        t.fit(X, np.full((10, 1), 2.0), verbose=False)


def test_divergence_stops_with_a_clear_message():
    t = gpudl.Trainer(gpudl.Sequential([Dense(4, 1)]), gpudl.losses.MSE(), gpudl.optim.SGD(1e6))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        t.fit(X * 1e3, np.ones((10, 1)), epochs=50, verbose=False)
