"""Inputs a new user gets wrong, each answered up front with an error that
names the argument and the value (issue 13): labels, the Trainer's arguments,
losses that do not fit the model, seeds, shapes and files."""
import os
import re
import stat
import warnings

import numpy as np
import pytest

import gpudl
from gpudl.checkpoint import CheckpointError, ModelCheckpoint
from gpudl.layers import Dense, ReLU, Sigmoid, Softmax


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


@pytest.mark.parametrize("bad", [4, 9, -1, -4])
def test_cross_entropy_labels_out_of_range(bad):
    """NumPy would raise its own IndexError for 4 and wrap -1 to the last class."""
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(IndexError, match=rf"softmax_cross_entropy: label {bad} \(row 1\) is out "
                                         rf"of range for 4 classes: labels must lie in \[0, 4\)"):
        gpudl.losses.CrossEntropy()(logits, np.array([0, bad, 1]))


# ---- the Trainer's arguments and losses that do not fit the model

X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
Y = np.arange(10) % 3


def trainer(lr=0.1, last=()):
    model = gpudl.Sequential([Dense(4, 8), ReLU(), Dense(8, 3), *last])
    return gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(lr))


@pytest.mark.parametrize("bs", [0, -1, 2.5, True])
def test_predict_batch_size(bs):
    t = trainer()
    with pytest.raises(ValueError, match=rf"predict: batch_size must be a positive integer or "
                                         rf"None, got {re.escape(repr(bs))}"):
        t.predict(X, batch_size=bs)
    with pytest.raises(ValueError, match=rf"evaluate: batch_size must be a positive integer, "
                                         rf"got {re.escape(repr(bs))}"):
        t.evaluate(X, Y, batch_size=bs)
    assert t.predict(X, batch_size=3).shape == (10, 3)  # 3 + 3 + 3 + 1 rows


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_predict_rejects_non_finite_input(bad):
    x = X.copy()
    x[4, 1] = bad
    with pytest.raises(ValueError, match=r"predict: x contains 1 NaN or infinite values "
                                         r"\(first at index \(4, 1\)\)"):
        trainer().predict(x)


@pytest.mark.parametrize("shuffle", ["no", 0, None])
def test_fit_shuffle_must_be_a_bool(shuffle):
    t = trainer()
    w = t.model.state_arrays()
    with pytest.raises(TypeError, match=rf"fit: shuffle must be True or False, got "
                                        rf"{re.escape(repr(shuffle))}"):
        t.fit(X, Y, shuffle=shuffle, verbose=False)
    for k, v in t.model.state_arrays().items():
        np.testing.assert_array_equal(v, w[k])


def test_bce_on_probabilities_rejects_raw_scores():
    """No Sigmoid last: the outputs are not probabilities; stopped at the first batch."""
    model = gpudl.Sequential([Dense(4, 1, seed=0)])
    t = gpudl.Trainer(model, gpudl.losses.BinaryCrossEntropy(), gpudl.optim.SGD(0.1))
    y = (X[:, :1] > 0).astype(np.float32)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*from_logits=True"):
        t.fit(X * 10, y, epochs=3, verbose=False)
    assert t.epoch == 0
    with pytest.raises(ValueError, match=r"got -?\d.* at index \(\d+, 0\).*from_logits=True"):
        gpudl.losses.BinaryCrossEntropy()(np.array([[0.5], [1.5]], np.float32),
                                          np.ones((2, 1), np.float32))
    # a Sigmoid last, and from_logits=True on the raw scores, both train
    for last, loss in (([Sigmoid()], gpudl.losses.BinaryCrossEntropy()),
                       ([], gpudl.losses.BinaryCrossEntropy(from_logits=True))):
        ok = gpudl.Trainer(gpudl.Sequential([Dense(4, 1, seed=0), *last]), loss,
                           gpudl.optim.SGD(0.1))
        assert len(ok.fit(X * 10, y, epochs=2, verbose=False)["loss"]) == 2


def test_softmax_before_cross_entropy_warns_once():
    with pytest.warns(UserWarning, match=r"'softmax' \(Softmax\).*CrossEntropy.*double softmax"
                      ) as caught:
        trainer(last=[Softmax()])
    assert len([w for w in caught if "double softmax" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer()  # logits: no warning
        gpudl.Trainer(gpudl.Sequential([Dense(4, 3), Softmax()]), gpudl.losses.MSE(),
                      gpudl.optim.SGD(0.1))  # MSE on probabilities: no double softmax


@pytest.mark.parametrize("batch_size", [None, 32])
def test_a_loss_grown_a_thousandfold_stops_the_run(batch_size):
    """SGD(1e6) on cross-entropy: the loss grows to ~1e6 and stays finite. The
    reference is the mean loss of the fit's first 32 samples."""
    x = np.random.default_rng(1).standard_normal((96, 4)).astype(np.float32)
    y = np.arange(96) % 3
    t = trainer(lr=1e6)
    with pytest.raises(FloatingPointError, match=r"the loss grew from \d.* at the start to "
                                                 r".*the run diverged; lower the learning rate"):
        t.fit(x, y, epochs=20, batch_size=batch_size, verbose=False)
    assert t.epoch < 2
    # an ordinary run is not stopped
    assert len(trainer(lr=0.1).fit(x, y, epochs=20, batch_size=batch_size,
                                   verbose=False)["loss"]) == 20


# ---- seeds, shapes and files


def test_trainer_needs_a_model():
    with pytest.raises(TypeError, match=r"Trainer: model must be a gpudl.Sequential.*NoneType"):
        gpudl.Trainer(None, gpudl.losses.MSE(), gpudl.optim.SGD(0.1))


@pytest.mark.parametrize("seed", ["abc", -1, 1.5, True, None])
def test_manual_seed_needs_a_non_negative_integer(seed):
    with pytest.raises(ValueError, match=rf"manual_seed: seed must be a non-negative integer, "
                                         rf"got {re.escape(repr(seed))}"):
        gpudl.manual_seed(seed)
    gpudl.manual_seed(0)
    gpudl.manual_seed(np.int64(3))


@pytest.mark.parametrize("shape", [64, (64, 0), "64", (2.5,)])
def test_input_shape_must_be_a_tuple(shape):
    with pytest.raises(TypeError, match=r"Sequential: input_shape must be a tuple of positive "
                                        r"per-sample sizes"):
        gpudl.Sequential([Dense(64, 2)], input_shape=shape)
    with pytest.raises(TypeError, match=r"such as \(64,\), got 64"):
        gpudl.Sequential([Dense(64, 2)], input_shape=64)
    assert gpudl.Sequential([Dense(64, 2)], input_shape=[64]).input_shape == (64,)


def test_save_to_a_directory_says_so(tmp_path):
    model = gpudl.Sequential([Dense(4, 2)], input_shape=(4,))
    with pytest.raises(IsADirectoryError, match=rf"Sequential.save: '{re.escape(str(tmp_path))}' "
                                                r"is a directory.*model.npz"):
        model.save(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_model_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        gpudl.Sequential([Dense(4, 2)], input_shape=(4,)).save(tmp_path / "m.npz")
        t = gpudl.Trainer(gpudl.Sequential([Dense(4, 2)]), gpudl.losses.MSE(),
                          gpudl.optim.SGD(0.1))
        t.fit(X, np.zeros((10, 2)), verbose=False, callbacks=[ModelCheckpoint(tmp_path / "c.npz")])
    finally:
        os.umask(old)
    for name in ("m.npz", "c.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask, name


def test_checkpoint_to_an_unwritable_path_fails_before_any_epoch(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the checkpoint's folder should be")
    path = blocker / "ck.npz"
    t = trainer()
    w = t.model.state_arrays()
    epochs = []
    cb = gpudl.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs.append(epoch))
    with pytest.raises(OSError, match=rf"ModelCheckpoint: cannot write '{re.escape(str(path))}'"):
        t.fit(X, Y, epochs=2, verbose=False, callbacks=[cb, ModelCheckpoint(path)])
    assert epochs == []
    for k, v in t.model.state_arrays().items():
        np.testing.assert_array_equal(v, w[k])


def test_a_checkpoint_and_a_model_file_say_what_they_are(tmp_path):
    t = trainer()
    t.fit(X, Y, verbose=False, callbacks=[ModelCheckpoint(tmp_path / "ck.npz")])
    t.model.save(tmp_path / "model.npz")
    with pytest.raises(gpudl.ModelFileError, match=r"ck.npz' is a gpudl checkpoint "
                                                   r"\(ModelCheckpoint.*resume_from.*not a model file"):
        gpudl.load(tmp_path / "ck.npz")
    with pytest.raises(CheckpointError, match=r"model.npz' is a gpudl model file "
                                              r"\(Sequential.save; read it with gpudl.load\), "
                                              r"not a checkpoint"):
        trainer().fit(X, Y, epochs=2, verbose=False, resume_from=tmp_path / "model.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(gpudl.ModelFileError, match=r"an .npz archive but not a gpudl model file"):
        gpudl.load(tmp_path / "other.npz")


def test_predict_on_one_sample_says_to_add_the_batch_axis():
    from gpudl import zoo
    gpudl.set_device("cpu")
    model = zoo.mlp()
    x = np.zeros(64, np.float32)
    with pytest.raises(gpudl.ShapeError, match=r"one sample \(64,\).*x\[None\]"):
        model.predict(x)
    assert model.predict(x[None]).shape == (1, 10)
