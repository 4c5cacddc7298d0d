"""Trainer.fit(validation_split=...): a seeded hold-out of the training data."""
import numpy as np
import pytest

import gpudl
from gpudl.data import validation_split_indices


def _trainer(seed=0):
    gpudl.set_device("cpu")
    gpudl.manual_seed(seed)
    model = gpudl.Sequential([gpudl.layers.Dense(6, 8), gpudl.layers.ReLU(),
                              gpudl.layers.Dense(8, 3)])
    return gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1))


def _data(n=40):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, rng.integers(0, 3, n)


def test_indices_partition_the_samples_and_depend_on_the_seed():
    train, val = validation_split_indices(40, 0.25, seed=3)
    assert len(val) == 10 and len(train) == 30
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(40))
    again = validation_split_indices(40, 0.25, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))
    assert not np.array_equal(val, validation_split_indices(40, 0.25, seed=4)[1])


def test_fit_with_a_split_is_fit_on_the_held_out_part():
    x, y = _data()
    split = _trainer().fit(x, y, epochs=3, batch_size=8, seed=5, verbose=False,
                           validation_split=0.25)
    train, val = validation_split_indices(len(x), 0.25, seed=5)
    explicit = _trainer().fit(x[train], y[train], epochs=3, batch_size=8, seed=5,
                              verbose=False, validation_data=(x[val], y[val]))
    assert "val_loss" in split and "val_accuracy" in split
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert split[k] == explicit[k], k


@pytest.mark.parametrize("kw, match", [
    ({"validation_split": 0}, r"fraction in \(0, 1\)"),
    ({"validation_split": 1.0}, r"fraction in \(0, 1\)"),
    ({"validation_split": True}, r"fraction in \(0, 1\)"),
    ({"validation_split": 0.001}, "no validation samples"),
    ({"validation_split": 0.999}, "no training samples"),
    ({"validation_split": 0.2, "validation_data": _data(5)}, "not both"),
])
def test_bad_splits_are_refused(kw, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        _trainer().fit(x, y, epochs=1, verbose=False, **kw)
