"""Inverted dropout on the CPU backend."""
import numpy as np
import pytest

import gpudl
from gpudl.layers import Dense, Dropout, ReLU


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


X = np.random.default_rng(0).standard_normal((200, 50)).astype(np.float32) + 3.0


def test_inference_is_the_identity():
    d = Dropout(0.5, seed=1)
    assert d.forward(X) is X
    assert d.backward(X) is X


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_training_drops_a_fraction_p_and_rescales(p):
    y = Dropout(p, seed=3).forward(X, training=True)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.02  # 10,000 units: 4 standard deviations or so
    np.testing.assert_allclose(y[kept], X[kept] / (1 - p), rtol=1e-6)
    assert abs(y.mean() - X.mean()) < 0.1   # the expectation is unchanged


def test_backward_uses_the_forward_mask():
    d = Dropout(0.4, seed=5)
    y = d.forward(X, training=True)
    g = np.random.default_rng(1).standard_normal(X.shape).astype(np.float32)
    dx = d.backward(g)
    np.testing.assert_array_equal(dx != 0, y != 0)
    np.testing.assert_allclose(dx[y != 0], g[y != 0] / 0.6, rtol=1e-6)


def test_masks_are_seeded_and_change_between_steps():
    a, b = Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    first = a.forward(X, training=True)
    np.testing.assert_array_equal(first, b.forward(X, training=True))
    assert not np.array_equal(first != 0, a.forward(X, training=True) != 0)
    assert not np.array_equal(first != 0, Dropout(0.5, seed=8).forward(X, training=True) != 0)
    gpudl.manual_seed(11)
    s1 = Dropout(0.5).seed
    gpudl.manual_seed(11)
    assert Dropout(0.5).seed == s1


def test_bad_p_and_p_zero():
    for p in (-0.1, 1.0, 1.5, "0.5"):
        with pytest.raises(ValueError, match="p must be a number in"):
            Dropout(p)
    np.testing.assert_array_equal(Dropout(0.0).forward(X, training=True), X)


def test_training_with_dropout_is_reproducible_and_saves(tmp_path):
    def run():
        gpudl.manual_seed(0)
        model = gpudl.Sequential([Dense(50, 20), ReLU(), Dropout(0.3), Dense(20, 3)])
        gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.05)).fit(
            X, np.arange(200) % 3, epochs=2, batch_size=50, seed=0, verbose=False)
        return model
    a, b = run(), run()
    for k, v in a.state_arrays().items():
        np.testing.assert_array_equal(v, b.state_arrays()[k])
    a.save(tmp_path / "d.npz")
    loaded = gpudl.load(tmp_path / "d.npz")
    assert loaded.layers[2].p == 0.3 and loaded.layers[2].seed == a.layers[2].seed
    np.testing.assert_array_equal(loaded.predict(X), a.predict(X))
