"""The notes' expressivity claims: a perceptron learns NAND, not XOR; an MLP learns XOR."""
import numpy as np
import pytest

import gpudl
from gpudl.data import logic_gate
from gpudl.layers import Dense, Perceptron, Sigmoid, Tanh


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


@pytest.mark.parametrize("gate", ["nand", "and", "or"])
def test_perceptron_learns_linearly_separable_gates(gate):
    x, y = logic_gate(gate)
    p = Perceptron(2, seed=0)
    mistakes = p.fit(x, y, epochs=100, lr=1.0, seed=0)
    assert mistakes[-1] == 0
    np.testing.assert_array_equal(p.predict(x), y)


def test_perceptron_cannot_learn_xor():
    x, y = logic_gate("xor")
    p = Perceptron(2, seed=0)
    mistakes = p.fit(x, y, epochs=200, lr=1.0, seed=0)
    assert len(mistakes) == 200 and min(mistakes) > 0
    assert np.sum(p.predict(x) != y) >= 1
    # Whatever it learned, no line separates XOR: some corner is always wrong.


def test_perceptron_has_no_backprop():
    with pytest.raises(NotImplementedError, match="perceptron rule"):
        Perceptron(2).backward(np.zeros((1, 1)))


def test_mlp_learns_xor():
    gpudl.manual_seed(0)
    x, y = logic_gate("xor")
    model = gpudl.Sequential([Dense(2, 8, seed=1), Tanh(), Dense(8, 1, seed=2), Sigmoid()])
    trainer = gpudl.Trainer(model, gpudl.losses.BinaryCrossEntropy(), gpudl.optim.SGD(0.5, 0.9))
    history = trainer.fit(x, y.reshape(-1, 1), epochs=300, batch_size=None, verbose=False)
    assert history["accuracy"][-1] == 1.0
    np.testing.assert_array_equal((model.predict(x)[:, 0] > 0.5).astype(np.float32), y)
