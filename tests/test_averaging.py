"""Model averaging: ensembles of predictions, EMA and SWA of weights, update_bn."""
import json
import warnings

import numpy as np
import pytest

import gpudl
from gpudl.averaging import EMA, SWA, Ensemble, update_bn
from gpudl.backend import CPUBackend
from gpudl.callbacks import Callback
from gpudl.errors import ShapeError
from gpudl.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, ReLU, Residual
from gpudl.losses import CrossEntropy
from gpudl.optim import SGD
from gpudl.zoo import mlp


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


class Recorder(Callback):
    """Host copies of the params at train begin, after every step, and at every epoch end."""

    def __init__(self):
        self.start, self.steps, self.epochs, self.lrs = None, [], {}, []

    def on_train_begin(self, logs):
        self.start = self.trainer.model.state_arrays()

    def on_batch_end(self, batch, logs):
        self.steps.append(self.trainer.model.state_arrays())
        self.lrs.append(self.trainer.optimizer.lr)

    def on_epoch_end(self, epoch, logs):
        self.epochs[epoch] = self.trainer.model.state_arrays()


def tiny_data(n=16, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, features)).astype(np.float32),
            rng.integers(0, classes, n))


def fit(model, x, y, callbacks, epochs=2, batch_size=4, optimizer=None):
    trainer = gpudl.Trainer(model, CrossEntropy(), optimizer or SGD(0.2, momentum=0.5))
    trainer.fit(x, y, epochs=epochs, batch_size=batch_size, seed=0, verbose=False,
                callbacks=callbacks)
    return trainer


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Fixed:
    """A stand-in model whose predictions are given (no known output shape)."""

    def __init__(self, out):
        self.out = np.asarray(out, dtype=np.float32)

    def predict(self, x, batch_size=None):
        return self.out


# ---- Ensemble
def test_mean_probs_is_the_mean_of_each_models_softmax():
    models = []
    for seed in (1, 2, 3):
        gpudl.manual_seed(seed)
        models.append(mlp(8, 5, hidden=(6,)))
    models[1].to(CPUBackend())  # a backend of its own
    x = np.random.default_rng(0).standard_normal((7, 8)).astype(np.float32)
    logits = [m.predict(x) for m in models]
    assert not np.allclose(logits[0], logits[1])
    want = np.mean([softmax(l.astype(np.float64)) for l in logits], axis=0)
    got = Ensemble(models).predict(x, batch_size=3)
    assert got.shape == (7, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(Ensemble(models, "mean").predict(x), np.mean(logits, axis=0),
                               rtol=1e-5, atol=1e-6)
    labels = np.argmax(want, axis=1)
    assert Ensemble(models).evaluate(x, labels) == {"accuracy": 1.0}
    assert Ensemble(models).evaluate(x, np.eye(5)[(labels + 1) % 5]) == {"accuracy": 0.0}


def test_a_softmax_output_is_averaged_as_it_is():
    gpudl.manual_seed(4)
    m = gpudl.Sequential([Dense(3, 4), gpudl.layers.Softmax()])
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(Ensemble([m, m]).predict(x), m.predict(x), rtol=1e-6)


def test_vote_counts_argmaxes_and_breaks_ties_by_mean_probability():
    a = [[5, 0, 0], [0, 5, 0], [0, 0, 5], [3, 0, 0]]   # argmax 0 1 2 0
    b = [[5, 0, 0], [0, 0, 5], [0, 0, 5], [0, 3, 0]]   # argmax 0 2 2 1
    c = [[0, 5, 0], [0, 5, 0], [5, 0, 0], [0, 0, 9]]   # argmax 1 1 0 2
    ens = Ensemble([Fixed(a), Fixed(b), Fixed(c)], combine="vote")
    shares = ens.predict(np.zeros((4, 1)))
    np.testing.assert_allclose(shares, [[2 / 3, 1 / 3, 0], [0, 2 / 3, 1 / 3],
                                        [1 / 3, 0, 2 / 3], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    # the last sample is a three-way tie; model c is the most confident
    np.testing.assert_array_equal(ens.predict_classes(np.zeros((4, 1))), [0, 1, 2, 2])
    assert ens.evaluate(np.zeros((4, 1)), [0, 1, 2, 0])["accuracy"] == 0.75


def test_outputs_of_different_shapes_are_refused():
    gpudl.manual_seed(0)
    with pytest.raises(ShapeError, match=r"model 0: \(10,\), model 1: \(5,\)"):
        Ensemble([mlp(8, 10, hidden=(4,)), mlp(8, 5, hidden=(4,))])
    ens = Ensemble([Fixed(np.zeros((4, 3))), Fixed(np.zeros((4, 2)))], combine="mean")
    with pytest.raises(ShapeError, match="differ"):
        ens.predict(np.zeros((4, 1)))
    with pytest.raises(ShapeError, match="combine='mean'"):
        Ensemble([Fixed(np.zeros((4, 1)))], combine="vote").predict(np.zeros((4, 1)))
    with pytest.raises(ValueError, match="combine"):
        Ensemble([Fixed(np.zeros((4, 3)))], combine="median")
    with pytest.raises(TypeError, match="predict"):
        Ensemble([object()])


# ---- EMA
@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_the_recurrence_step_by_step(warmup):
    gpudl.manual_seed(0)
    model = gpudl.Sequential([Dense(4, 5), ReLU(), Dense(5, 3)])
    x, y = tiny_data()
    rec, ema = Recorder(), EMA(decay=0.9, warmup=warmup)
    fit(model, x, y, [rec, ema])
    assert len(rec.steps) == 8 and ema.num_updates == 8
    shadow = rec.start
    for t, w in enumerate(rec.steps):
        d = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
        shadow = {k: np.float32(d) * shadow[k] + np.float32(1 - d) * w[k] for k in w}
    got = ema.arrays()
    assert set(got) == {"param." + k[len("layers."):] for k in shadow}
    for k, v in shadow.items():
        np.testing.assert_allclose(got["param." + k[len("layers."):]], v, rtol=1e-6, atol=1e-7)
    assert not np.allclose(shadow["layers.0.W"], rec.steps[-1]["layers.0.W"])


def test_ema_swaps_in_and_restores_the_weights_bit_identically():
    gpudl.manual_seed(1)
    model = gpudl.Sequential([Dense(4, 6), BatchNorm(6), ReLU(), Dense(6, 3)])
    x, y = tiny_data()
    ema = EMA(decay=0.9)
    fit(model, x, y, [ema])
    before = model.state_arrays()
    objects = [layer.params[k] for layer in model.layers for k in layer.params]
    out = model.predict(x)
    with ema.average_weights() as m:
        assert m is model
        inside = model.state_arrays()
        for k, v in ema.arrays().items():
            kind, _, rest = k.partition(".")
            i, _, name = rest.partition(".")
            key = f"layers.{i}.{'buffer.' if kind == 'buffer' else ''}{name}"
            np.testing.assert_array_equal(inside[key], v)
        # buffers are copied, not averaged: the last running statistics
        np.testing.assert_array_equal(inside["layers.1.buffer.running_mean"],
                                      before["layers.1.buffer.running_mean"])
        assert not np.allclose(model.predict(x), out)
    with pytest.raises(KeyError):
        with ema.average_weights():
            raise KeyError("an error inside the block")
    after = model.state_arrays()
    assert all(np.array_equal(after[k], before[k]) for k in before)
    assert [layer.params[k] for layer in model.layers for k in layer.params] == objects
    np.testing.assert_array_equal(model.predict(x), out)

    clone = ema.copy_model()
    assert clone is not model and clone.layers[0].backend is model.layers[0].backend
    np.testing.assert_array_equal(clone.layers[0].params["W"], ema.arrays()["param.0.W"])
    fit(clone, x, y, [], epochs=1)  # training the copy touches neither the shadow nor the model
    np.testing.assert_array_equal(ema.arrays()["param.0.W"], inside["layers.0.W"])
    np.testing.assert_array_equal(model.layers[0].params["W"], before["layers.0.W"])


def test_ema_state_and_arrays_resume_the_average_exactly():
    x, y = tiny_data()

    def run(split):
        gpudl.manual_seed(2)
        model = gpudl.Sequential([Dense(4, 5), ReLU(), Dense(5, 3)])
        trainer = gpudl.Trainer(model, CrossEntropy(), SGD(0.2))
        ema = EMA(decay=0.95)
        kw = dict(batch_size=4, shuffle=False, verbose=False)
        if not split:
            trainer.fit(x, y, epochs=2, callbacks=[ema], **kw)
            return ema
        trainer.fit(x, y, epochs=1, callbacks=[ema], **kw)
        state = json.loads(json.dumps(ema.get_state()))
        resumed = EMA(decay=0.95)
        resumed.load_arrays(ema.arrays())
        resumed.set_state(state)
        trainer.fit(x, y, epochs=1, callbacks=[resumed], **kw)
        return resumed

    whole, resumed = run(False).arrays(), run(True).arrays()
    assert whole.keys() == resumed.keys()
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k])


def test_ema_refuses_a_shadow_of_another_model():
    ema = EMA()
    ema.load_arrays({"param.0.W": np.zeros((2, 2)), "param.0.b": np.zeros(2)})
    with pytest.raises(ShapeError, match="do not fit"):
        ema.apply_to(gpudl.Sequential([Dense(3, 2)]))
    with pytest.raises(KeyError, match="unexpected key"):
        ema.load_arrays({"W": np.zeros(2)})
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)


# ---- SWA
def test_swa_is_the_mean_of_the_weights_at_the_chosen_epochs():
    gpudl.manual_seed(3)
    model = gpudl.Sequential([Dense(4, 5), ReLU(), Dense(5, 3)])
    x, y = tiny_data()
    rec, swa = Recorder(), SWA(start_epoch=2, freq=2, lr=0.05)
    trainer = fit(model, x, y, [rec, swa], epochs=6, optimizer=SGD(0.2, momentum=0.5))
    assert swa.n_averaged == 3
    want = {k: np.mean([rec.epochs[e][k] for e in (2, 4, 6)], axis=0) for k in rec.epochs[6]}
    got = model.state_arrays()  # apply_at_end put the average in
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(swa.arrays()["param." + k[len("layers."):]], want[k],
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["layers.0.W"], rec.epochs[6]["layers.0.W"])
    # the SWA rate from epoch 2 on (4 steps an epoch)
    assert rec.lrs[:4] == [0.2] * 4 and rec.lrs[4:] == [0.05] * 20
    assert trainer.optimizer.lr == 0.05
    assert json.loads(json.dumps(swa.get_state()))["n_averaged"] == 3


def test_swa_before_start_epoch_warns_and_leaves_the_model():
    gpudl.manual_seed(3)
    model = gpudl.Sequential([Dense(4, 3)])
    x, y = tiny_data()
    rec = Recorder()
    with pytest.warns(UserWarning, match="before start_epoch=5"):
        fit(model, x, y, [rec, SWA(start_epoch=5)], epochs=2)
    np.testing.assert_array_equal(model.layers[0].params["W"], rec.epochs[2]["layers.0.W"])


def test_swa_lr_on_an_optimizer_whose_rate_cannot_be_set_says_so():
    class Locked(SGD):
        """An optimizer whose lr refuses assignment once built."""

        def __init__(self):
            super().__init__(0.2)
            self.locked = True

        def __setattr__(self, name, value):
            if name == "lr" and getattr(self, "locked", False):
                raise AttributeError("can't set attribute 'lr'")
            super().__setattr__(name, value)

    gpudl.manual_seed(3)
    model = gpudl.Sequential([Dense(4, 3)])
    x, y = tiny_data()
    w0 = model.state_arrays()["layers.0.W"]
    with pytest.raises(AttributeError, match="cannot set the learning rate of Locked.*lr=None"):
        fit(model, x, y, [SWA(start_epoch=1, lr=0.01)], optimizer=Locked())
    np.testing.assert_array_equal(model.layers[0].params["W"], w0)
    fit(model, x, y, [SWA(start_epoch=1)], optimizer=Locked())  # no lr: nothing to set


def test_swa_recomputes_batch_norm_for_the_average():
    gpudl.manual_seed(5)
    model = gpudl.Sequential([Dense(4, 6), BatchNorm(6), ReLU(), Dense(6, 3)])
    x, y = tiny_data()
    fit(model, x, y, [SWA(start_epoch=1, bn_x=x, bn_batch_size=len(x))], epochs=3)
    z = model.layers[0].forward(x)  # the averaged first layer feeds the batch norm
    bn = model.layers[1]
    np.testing.assert_allclose(bn.buffers["running_mean"], z.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.buffers["running_var"], z.var(axis=0, ddof=1), rtol=1e-5)
    with pytest.warns(UserWarning, match="update_bn"):
        fit(model, x, y, [SWA(start_epoch=1)], epochs=1)


# ---- update_bn
def conv_bn(in_hw=6):
    return gpudl.Sequential([Conv2D(2, 3, 3), BatchNorm(3), ReLU(), Dropout(0.3), Flatten()],
                            input_shape=(2, in_hw, in_hw))


def channel_stats(z, ddof):
    return z.mean(axis=(0, 2, 3)), z.var(axis=(0, 2, 3), ddof=ddof)


def test_update_bn_on_one_batch_gives_the_exact_mean_and_unbiased_variance():
    gpudl.manual_seed(6)
    model = conv_bn()
    bn, drop = model.layers[1], model.layers[3]
    bn.buffers["running_mean"] = np.full(3, 7.0, np.float32)  # stale statistics
    bn.buffers["running_var"] = np.full(3, 9.0, np.float32)
    calls = drop.calls
    x = np.random.default_rng(0).standard_normal((10, 2, 6, 6)).astype(np.float32) + 0.5
    z = model.layers[0].forward(x).astype(np.float64)
    assert update_bn(model, x, batch_size=10) is model
    mean, var = channel_stats(z, ddof=1)
    np.testing.assert_allclose(bn.buffers["running_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.buffers["running_var"], var, rtol=1e-5)
    assert bn.momentum == 0.1 and drop.calls == calls and model.training is False


def test_update_bn_over_batches_is_their_cumulative_average():
    gpudl.manual_seed(7)
    inner = BatchNorm(3)
    model = gpudl.Sequential([Conv2D(1, 3, 3, padding="same"), Residual([inner])],
                             input_shape=(1, 5, 5))
    x = np.random.default_rng(1).standard_normal((12, 1, 5, 5)).astype(np.float32)
    z = model.layers[0].forward(x).astype(np.float64)
    update_bn(model, x, batch_size=4)  # three equal batches: the mean of the means is the mean
    np.testing.assert_allclose(inner.buffers["running_mean"], channel_stats(z, 0)[0],
                               rtol=1e-5, atol=1e-6)
    per_batch = [channel_stats(z[s:s + 4], ddof=1)[1] for s in (0, 4, 8)]
    np.testing.assert_allclose(inner.buffers["running_var"], np.mean(per_batch, axis=0), rtol=1e-5)
    update_bn(model, x[:9], batch_size=4)  # a lone last sample joins the batch before it
    means = [channel_stats(z[a:b], 0)[0] for a, b in ((0, 4), (4, 9))]
    np.testing.assert_allclose(inner.buffers["running_mean"], np.mean(means, axis=0),
                               rtol=1e-5, atol=1e-6)
    assert inner.momentum == 0.1


def test_update_bn_without_batch_norm_does_nothing():
    model = gpudl.Sequential([Dense(3, 2)])
    assert update_bn(model, np.zeros((4, 3))) is model


# ---- does averaging hurt? (a fixed-seed run; generous margin)
@pytest.mark.slow
def test_ema_and_swa_do_not_hurt_digits_accuracy():
    (x_train, y_train), (x_test, y_test) = gpudl.data.load_digits()
    gpudl.manual_seed(0)
    model = mlp(64, 10, hidden=(64,))
    ema, swa = EMA(decay=0.99), SWA(start_epoch=6, lr=0.02, apply_at_end=False)
    trainer = gpudl.Trainer(model, CrossEntropy(), SGD(0.1, momentum=0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit(x_train, y_train, epochs=10, batch_size=32, seed=0, verbose=False,
                    callbacks=[ema, swa])
    base = trainer.evaluate(x_test, y_test)["accuracy"]
    with ema.average_weights():
        ema_acc = trainer.evaluate(x_test, y_test)["accuracy"]
    swa_acc = gpudl.Trainer(swa.copy_model(), CrossEntropy(), SGD(0.1)).evaluate(
        x_test, y_test)["accuracy"]
    print(f"digits test accuracy: last {base:.4f}, EMA {ema_acc:.4f}, SWA {swa_acc:.4f}")
    assert base > 0.93
    assert ema_acc >= base - 0.02 and swa_acc >= base - 0.02
