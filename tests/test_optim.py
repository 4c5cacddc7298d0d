"""SGD: the notes' momentum, Nesterov, weight decay; PyTorch's trajectory with a constant lr."""
import numpy as np
import pytest

import gpudl
from gpudl.layers import Dense


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def run_on_quadratic(opt, steps=6, w0=(1.0, -2.0, 0.5)):
    """Minimise L = 0.5 * sum(a * w^2) with the optimizer; returns the trajectory of w."""
    layer = Dense(3, 1, dtype=np.float64)
    model = gpudl.Sequential([layer])
    layer.params["W"][:] = np.array([w0])
    a = np.array([[1.0, 3.0, 0.2]])
    path = []
    for _ in range(steps):
        layer.grads = {"W": a * layer.params["W"], "b": np.zeros(1)}
        opt.step(model)
        path.append(layer.params["W"].copy())
    return np.array(path)[:, 0]


def pytorch_style(lr, m, nesterov, wd, steps=6, w0=(1.0, -2.0, 0.5)):
    """PyTorch's documented SGD recursion, written out: b = m b + g; w -= lr (g + m b | b)."""
    w, b, a, out = np.array(w0), None, np.array([1.0, 3.0, 0.2]), []
    for _ in range(steps):
        g = a * w + wd * w
        b = g if b is None else m * b + g
        w = w - lr * ((g + m * b) if nesterov else b)
        out.append(w.copy())
    return np.array(out)


@pytest.mark.parametrize("m,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                           (0.5, True, 0.0), (0.9, False, 0.01),
                                           (0.9, True, 0.1)])
def test_matches_pytorch_recursion(m, nesterov, wd):
    ours = run_on_quadratic(gpudl.optim.SGD(0.1, momentum=m, nesterov=nesterov, weight_decay=wd))
    np.testing.assert_allclose(ours, pytorch_style(0.1, m, nesterov, wd), rtol=1e-12)


def test_notes_momentum_formula():
    """v_t = -lr grad + alpha v_{t-1}, w_{t+1} = w_t + v_t, checked for two steps by hand."""
    lr, alpha, a = 0.1, 0.9, np.array([1.0, 3.0, 0.2])
    w0 = np.array([1.0, -2.0, 0.5])
    v1 = -lr * a * w0
    w1 = w0 + v1
    v2 = -lr * a * w1 + alpha * v1
    w2 = w1 + v2
    ours = run_on_quadratic(gpudl.optim.SGD(lr, momentum=alpha), steps=2)
    np.testing.assert_allclose(ours, [w1, w2], rtol=1e-12)


def test_weight_decay_skips_biases():
    layer = Dense(2, 1, dtype=np.float64)
    layer.params["b"][:] = 5.0
    layer.grads = {"W": np.zeros((1, 2)), "b": np.zeros(1)}
    gpudl.optim.SGD(0.1, weight_decay=0.5).step(gpudl.Sequential([layer]))
    assert layer.params["b"][0] == 5.0


def test_frozen_layers_are_not_updated():
    model = gpudl.Sequential([Dense(2, 2), Dense(2, 1)])
    model.layers[0].trainable = False
    before = model.layers[0].params["W"].copy()
    x = np.ones((3, 2), np.float32)
    gpudl.Trainer(model, gpudl.losses.MSE(), gpudl.optim.SGD(0.1)).fit(
        x, np.ones((3, 1)), epochs=2, verbose=False)
    np.testing.assert_array_equal(model.layers[0].params["W"], before)
    assert "W" not in model.layers[0].grads  # no weight-gradient work for a frozen layer


def test_against_torch_when_installed():
    torch = pytest.importorskip("torch")
    w = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True)
    a = torch.tensor([[1.0, 3.0, 0.2]], dtype=torch.float64)
    path = []
    for _ in range(6):
        opt.zero_grad()
        (0.5 * (a * w * w).sum()).backward()
        opt.step()
        path.append(w.detach().numpy()[0].copy())
    ours = run_on_quadratic(gpudl.optim.SGD(0.1, momentum=0.9, nesterov=True))
    np.testing.assert_allclose(ours, np.array(path), rtol=1e-12)
