"""Float64 central-difference gradient checks of every layer and loss (CPU backend)."""
import numpy as np
import pytest

import gpudl
from gpudl import losses
from gpudl.gradcheck import check_layer, check_loss
from gpudl.layers import Dense, ReLU, Sigmoid, Softmax, Step, Tanh


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def rand(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (3, 5, 4), (7, 2, 9)])
def test_dense(n, fin, fout):
    layer = Dense(fin, fout, dtype=np.float64, seed=3)
    layer.params["b"] = rand(fout, seed=4)  # non-zero bias, so its path is exercised
    errors = check_layer(layer, rand(n, fin))
    assert set(errors) == {"input", "W", "b"}


@pytest.mark.parametrize("cls", [ReLU, Sigmoid, Tanh, Softmax])
def test_activations(cls):
    x = rand(4, 6) * 3
    if cls is ReLU:  # keep away from the kink, where the derivative is undefined
        x[np.abs(x) < 1e-3] = 0.5
    check_layer(cls(), x)


def test_step_has_zero_gradient_away_from_threshold():
    x = rand(3, 4)
    x[np.abs(x) < 1e-3] = 0.5
    errors = check_layer(Step(), x)
    assert errors["input"] == 0.0


def test_sequential_chain():
    model = gpudl.Sequential([Dense(5, 7, dtype=np.float64, seed=0), Tanh(),
                              Dense(7, 3, dtype=np.float64, seed=1), Sigmoid()])
    x = rand(4, 5)
    g = rand(4, 3, seed=2)
    model.forward(x)
    dx = model.backward(g)
    from gpudl.gradcheck import numeric_grad, _compare
    _compare("input", dx, numeric_grad(lambda: float(np.sum(model.forward(x) * g)), x), 1e-7, 1e-5)
    first = model.layers[0]
    _compare("W", first.grads["W"],
             numeric_grad(lambda: float(np.sum(model.forward(x) * g)), first.params["W"]), 1e-7, 1e-5)


def test_mse():
    check_loss(losses.MSE(), rand(5, 3), rand(5, 3, seed=2))


@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_cross_entropy(from_logits):
    pred = rand(6, 2)
    if not from_logits:
        pred = 1 / (1 + np.exp(-pred))  # probabilities, well inside (0, 1)
    target = (rand(6, 2, seed=3) > 0).astype(np.float64)
    check_loss(losses.BinaryCrossEntropy(from_logits=from_logits), pred, target)


def test_cross_entropy():
    labels = np.array([0, 3, 2, 3, 1])
    check_loss(losses.CrossEntropy(), rand(5, 4) * 2, labels)


def test_gradcheck_catches_a_wrong_backward():
    class Broken(Tanh):
        def backward(self, grad):
            return super().backward(grad) * 1.01
    with pytest.raises(AssertionError, match="gradient of input"):
        check_layer(Broken(), rand(2, 3))


def test_a_float32_layer_is_checked_through_a_float64_copy():
    """float32 central differences are noise: the check runs on a float64
    twin and leaves the layer itself as it was."""
    from gpudl.layers import BatchNorm, Conv2D, Residual, SeparableConv2D
    layers = [Dense(5, 4, seed=0), Conv2D(2, 3, 3, padding=1, seed=1),
              SeparableConv2D(2, 3, 3, seed=2),
              Residual([Conv2D(2, 2, 3, padding=1, seed=3), BatchNorm(2), Tanh()])]
    for layer in layers:
        x = rand(3, 5) if isinstance(layer, Dense) else rand(3, 2, 4, 4)
        before = {k: v.copy() for k, v in layer.params.items()}
        errors = check_layer(layer, x, training=True)
        assert set(errors) == {"input"} | set(before), type(layer).__name__
        assert all(e < 1e-6 for e in errors.values()), errors
        for k, v in layer.params.items():
            assert v.dtype == np.float32, k
            np.testing.assert_array_equal(v, before[k])
        assert dict(layer.grads) == {}, "the twin's backward filled the layer's own grads"


def test_a_wrong_backward_of_a_float32_layer_is_still_caught():
    class Broken(Dense):
        def backward(self, grad, need_input_grad=True):
            dx = super().backward(grad, need_input_grad)
            self.grads["W"] = self.grads["W"] * 1.01
            return dx
    with pytest.raises(AssertionError, match="gradient of W"):
        check_layer(Broken(3, 2, seed=0), rand(2, 3))
