"""Model averaging, the notes' cure for overfitting: average several models'
predictions, or one model's weights along its training run.

    Ensemble([m1, m2, m3])          mean of the models' softmax probabilities
                                    (or of raw outputs, or a majority vote)
    EMA(decay=0.999)                a callback: shadow = decay shadow + (1 - decay) w
                                    after every optimizer step (Polyak averaging)
    SWA(start_epoch=8)              a callback: the equal-weight mean of the weights
                                    at the end of epochs start_epoch, +freq, ...
                                    (Izmailov et al., 2018, "Averaging weights leads
                                    to wider optima and better generalization")
    update_bn(model, x)             batch-norm running statistics recomputed for
                                    weights that no training step has seen

Averaged weights are kept on the model's backend and updated with the backend
op ``axpby`` (a new array per update; there is no in-place version), so the
averaging costs one elementwise kernel per parameter and never leaves the device.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings

import numpy as np

from .callbacks import Callback
from .errors import ShapeError
from .layers import BatchNorm, Dropout, Softmax


# ---------------------------------------------------------------------------
# averaging predictions
def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Ensemble:
    """Averages the predictions of several trained models.

    ``combine``: "mean_probs" (classifiers: the mean of each model's softmax of
    its logits; a model whose last layer is Softmax gives its probabilities
    as they are), "mean" (the mean of the raw outputs, for any output shape) or
    "vote" (each model's argmax is one vote; ``predict`` gives the share of the
    votes per class, ``predict_classes`` the winner, ties going to the class
    with the larger mean probability). The models may live on different
    backends: each one predicts on its own, and the results meet on the host."""

    COMBINES = ("mean_probs", "mean", "vote")

    def __init__(self, models, combine="mean_probs"):
        models = list(models)
        if not models:
            raise ValueError("Ensemble needs at least one model")
        for i, m in enumerate(models):
            if not callable(getattr(m, "predict", None)):
                raise TypeError(f"Ensemble: models[{i}] is {type(m).__name__}, "
                                f"which has no predict(x, batch_size)")
        if combine not in self.COMBINES:
            raise ValueError(f"Ensemble: combine must be one of {self.COMBINES}, got {combine!r}")
        self.models, self.combine = models, combine
        shapes = [self._known_output_shape(m) for m in models]
        if None not in shapes:
            self._check_shapes(shapes, "output shapes")

    @staticmethod
    def _known_output_shape(model):
        try:
            return tuple(model.output_shape())
        except (AttributeError, ShapeError, TypeError):
            return None  # unknown until it predicts

    def _check_shapes(self, shapes, what):
        if len(set(shapes)) > 1:
            listed = ", ".join(f"model {i}: {s}" for i, s in enumerate(shapes))
            raise ShapeError(f"Ensemble: the models' {what} differ ({listed}); "
                             f"only models with the same outputs can be averaged")
        shape = shapes[0]
        per_sample = shape[1:] if what == "predictions" else shape
        if self.combine != "mean" and (len(per_sample) != 1 or per_sample[0] < 2):
            raise ShapeError(f"Ensemble(combine={self.combine!r}) needs class scores of shape "
                             f"(N, C) with C >= 2, got {what} {shape}; use combine='mean'")

    def _outputs(self, x, batch_size):
        outs = [np.asarray(m.predict(x, batch_size=batch_size)) for m in self.models]
        self._check_shapes([o.shape for o in outs], "predictions")
        return outs

    def _probs(self, outs):
        return [o.astype(np.float64) if isinstance(getattr(m, "layers", [None])[-1], Softmax)
                else _softmax(o) for m, o in zip(self.models, outs)]

    def predict(self, x, batch_size=None):
        """Host array in, host array out (like Sequential.predict), in the
        models' output dtype: mean probabilities, mean outputs or vote shares."""
        outs = self._outputs(x, batch_size)
        dtype = np.result_type(*outs)
        if self.combine == "mean":
            return np.mean([o.astype(np.float64) for o in outs], axis=0).astype(dtype)
        if self.combine == "mean_probs":
            return np.mean(self._probs(outs), axis=0).astype(dtype)
        return (self._votes(outs) / len(outs)).astype(dtype)

    @staticmethod
    def _votes(outs):
        n, c = outs[0].shape
        votes = np.zeros((n, c))
        for o in outs:
            votes[np.arange(n), np.argmax(o, axis=1)] += 1
        return votes

    def predict_classes(self, x, batch_size=None):
        """The ensemble's class for each sample, as int64 (N,)."""
        outs = self._outputs(x, batch_size)
        if self.combine == "vote":
            # vote counts are integers and mean probabilities lie in [0, 1]:
            # half of one breaks ties and never overturns a vote
            score = self._votes(outs) + 0.5 * np.mean(self._probs(outs), axis=0)
        elif self.combine == "mean":
            score = np.mean([o.astype(np.float64) for o in outs], axis=0)
            if score.ndim != 2 or score.shape[1] < 2:
                raise ShapeError(f"Ensemble: classes need outputs of shape (N, C) with C >= 2, "
                                 f"got {score.shape}")
        else:
            score = np.mean(self._probs(outs), axis=0)
        return np.argmax(score, axis=1).astype(np.int64)

    def evaluate(self, x, y, batch_size=None) -> dict:
        """{"accuracy": share of samples whose class is right}; y holds labels
        (N,) or one-hot rows (N, C)."""
        y = np.asarray(y)
        labels = np.argmax(y, axis=1) if y.ndim == 2 else y
        if labels.ndim != 1 or labels.shape[0] != np.asarray(x).shape[0]:
            raise ShapeError(f"Ensemble.evaluate: x has {np.asarray(x).shape[0]} samples but "
                             f"y has shape {y.shape}; expected labels (N,) or one-hot (N, C)")
        pred = self.predict_classes(x, batch_size)
        return {"accuracy": float(np.mean(pred == labels))}

    def __repr__(self):
        return f"Ensemble({len(self.models)} models, combine={self.combine!r})"


# ---------------------------------------------------------------------------
# averaging weights during training
def _entries(model, store):
    """(key, layer, name, array) for every param or buffer, keyed "<layer index>.<name>"
    like the optimizer's state (a container's children under dotted names)."""
    for i, layer in enumerate(model.layers):
        arrays = getattr(layer, store)
        for name in list(arrays):
            yield f"{i}.{name}", layer, name, arrays[name]


class _WeightAverage(Callback):
    """Averaged copies of a model's params (and buffers), on the model's backend."""

    def __init__(self):
        self.model = None
        self._params: dict = {}
        self._buffers: dict = {}
        self._backend = None  # where the arrays live; None: host copies from load_arrays

    @property
    def _label(self):
        return type(self).__name__

    def set_trainer(self, trainer) -> None:
        super().set_trainer(trainer)
        self.model = trainer.model

    def _model(self, model):
        model = model if model is not None else self.model
        if model is None:
            raise RuntimeError(f"{self._label}: no model yet; train with this callback or "
                               f"pass model=")
        return model

    def _place(self, model):
        """Move the averages to the model's backend and check they fit it."""
        be = model.backend
        if self._backend is not be:
            src = self._backend
            for store in (self._params, self._buffers):
                for k, v in store.items():
                    store[k] = be.asarray(v if src is None else src.to_numpy(v))
            self._backend = be
        self._check_fits(model)

    def _check_fits(self, model):
        want = {k: tuple(a.shape) for k, _, _, a in _entries(model, "params")}
        have = {k: tuple(a.shape) for k, a in self._params.items()}
        if want != have:
            diff = sorted(set(want.items()) ^ set(have.items()))[:4]
            raise ShapeError(f"{self._label}: the averaged weights do not fit this model "
                             f"(first differences, key and shape: {diff})")

    def _copy(self, v, dst):
        return dst.asarray(v) if dst is self._backend else dst.asarray(self._backend.to_numpy(v))

    @property
    def has_average(self) -> bool:
        return bool(self._params)

    def apply_to(self, model=None):
        """Write copies of the averaged weights into ``model`` (default: the
        trained one), which may live on another backend; returns it."""
        model = self._model(model)
        if not self._params:
            raise RuntimeError(f"{self._label}: nothing averaged yet")
        if self._backend is None:
            self._place(model)  # host copies from load_arrays
        else:
            self._check_fits(model)
        for attr, store in (("params", self._params), ("buffers", self._buffers)):
            for key, layer, name, a in _entries(model, attr):
                if key in store:
                    getattr(layer, attr)[name] = self._copy(store[key], layer.backend)
        return model

    @contextlib.contextmanager
    def average_weights(self, model=None):
        """``with ema.average_weights(): model.predict(...)`` runs with the averaged
        weights and puts the model's own arrays (the same objects) back after."""
        model = self._model(model)
        saved = [(getattr(layer, attr), name, a) for attr in ("params", "buffers")
                 for _, layer, name, a in _entries(model, attr)]
        self.apply_to(model)
        try:
            yield model
        finally:
            for store, name, a in saved:
                store[name] = a

    def copy_model(self, model=None):
        """A new model (a deep copy, sharing the backends) holding the averaged weights."""
        model = self._model(model)
        memo = {id(layer.backend): layer.backend for layer in model.walk()}
        return self.apply_to(copy.deepcopy(model, memo))

    # ---- checkpoints: host copies under "param.<key>" and "buffer.<key>"
    def arrays(self) -> dict:
        out = {}
        for prefix, store in (("param.", self._params), ("buffer.", self._buffers)):
            for k, v in store.items():
                out[prefix + k] = (np.array(v, copy=True) if self._backend is None
                                   else self._backend.to_numpy(v))
        return out

    def load_arrays(self, arrays: dict) -> None:
        params, buffers = {}, {}
        for k, v in arrays.items():
            kind, _, key = k.partition(".")
            if kind not in ("param", "buffer") or not key:
                raise KeyError(f"{self._label}.load_arrays: unexpected key {k!r} "
                               f"(expected 'param.<key>' or 'buffer.<key>')")
            (params if kind == "param" else buffers)[key] = np.array(v, copy=True)
        self._params, self._buffers, self._backend = params, buffers, None
        if self.model is not None and params:
            self._place(self.model)


class EMA(_WeightAverage):
    """Exponential moving average of the weights, updated after every optimizer step:

        shadow <- d shadow + (1 - d) w,   d = decay,
        or, with ``warmup``, d_t = min(decay, (1 + t) / (10 + t)), t = updates so far

    so early shadows are not dominated by the random initial weights. Buffers
    (batch norm's running statistics) are copied, not averaged. The shadow
    starts as a copy of the weights when training begins (or continues from
    a checkpoint's ``load_arrays``)."""

    def __init__(self, decay=0.999, warmup=True):
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating)) \
                or not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be a number in [0, 1), got {decay!r}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t)) if self.warmup else self.decay

    def on_train_begin(self, logs):
        self.model = self.trainer.model
        self._start(self.model)
        self._place(self.model)  # a resumed shadow must fit the model

    def _start(self, model):
        """Shadow := a copy of the weights, unless there is one (a resumed run)."""
        if self._params:
            if self._backend is not model.backend:
                self._place(model)
            return
        self._backend = model.backend
        self._params = {k: layer.backend.asarray(a) for k, layer, _, a in _entries(model, "params")}
        self._buffers = {k: layer.backend.asarray(a) for k, layer, _, a in _entries(model, "buffers")}

    def on_batch_end(self, batch, logs):
        self.update()

    def update(self, model=None):
        """One EMA step from the model's current weights (the trainer calls it)."""
        model = self._model(model)
        self._start(model)
        d = self.current_decay()
        for key, layer, _, p in _entries(model, "params"):
            if layer.trainable:
                self._params[key] = layer.backend.axpby(d, self._params[key], 1.0 - d, p)
            else:  # frozen: keep it bit-identical
                self._params[key] = layer.backend.asarray(p)
        for key, layer, _, b in _entries(model, "buffers"):
            self._buffers[key] = layer.backend.asarray(b)
        self.num_updates += 1

    def get_state(self) -> dict:
        return {"num_updates": self.num_updates}

    def set_state(self, state: dict) -> None:
        self.num_updates = int(state.get("num_updates", 0))

    def __repr__(self):
        return f"EMA(decay={self.decay}, warmup={self.warmup})"


class SWA(_WeightAverage):
    """Stochastic weight averaging: the equal-weight mean of the weights at the
    end of epochs start_epoch, start_epoch + freq, ... (epochs count from 1,
    as the callback hooks do).

    ``lr``: a constant learning rate set on the optimizer (``optimizer.lr =
    lr``, which replaces a schedule) from the beginning of epoch
    ``start_epoch`` on; the optimizer keeps it after training. At train end (``apply_at_end``) the average replaces the model's
    weights and, given ``bn_x`` (training inputs), ``update_bn`` recomputes the
    batch-norm statistics for it; ``finalize()`` does the same by hand and
    ``copy_model(bn_x=...)`` leaves the trained model as it is."""

    def __init__(self, start_epoch, freq=1, lr=None, bn_x=None, bn_batch_size=256,
                 apply_at_end=True):
        super().__init__()
        for arg, v in (("start_epoch", start_epoch), ("freq", freq), ("bn_batch_size", bn_batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"SWA: {arg} must be a positive integer, got {v!r}")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating))
                               or not (math.isfinite(lr) and lr > 0)):
            raise ValueError(f"SWA: lr must be a positive number or None, got {lr!r}")
        self.start_epoch, self.freq = int(start_epoch), int(freq)
        self.lr = None if lr is None else float(lr)
        self.bn_x, self.bn_batch_size, self.apply_at_end = bn_x, int(bn_batch_size), apply_at_end
        self.n_averaged = 0

    def _lr_error(self, opt, why):
        return AttributeError(
            f"SWA(lr={self.lr}): cannot set the learning rate of {type(opt).__name__} ({why}); "
            f"pass lr=None and give the optimizer the rate (or schedule) the SWA epochs should use")

    def on_train_begin(self, logs):
        self.model = self.trainer.model
        if self._params:
            self._place(self.model)
        if self.lr is not None:  # fail now, not at epoch start_epoch
            opt = self.trainer.optimizer
            prop = getattr(type(opt), "lr", None)
            if not hasattr(opt, "lr"):
                raise self._lr_error(opt, "it has no attribute lr")
            if isinstance(prop, property) and prop.fset is None:
                raise self._lr_error(opt, "lr is a read-only property")

    def on_epoch_begin(self, epoch, logs):
        if self.lr is None or epoch < self.start_epoch:
            return
        opt = self.trainer.optimizer
        try:
            opt.lr = self.lr
        except AttributeError as e:
            raise self._lr_error(opt, str(e)) from None

    def on_epoch_end(self, epoch, logs):
        if epoch >= self.start_epoch and (epoch - self.start_epoch) % self.freq == 0:
            self.update()

    def update(self, model=None):
        """Add the model's current weights to the average."""
        model = self._model(model)
        if not self._params:
            self._backend = model.backend
        elif self._backend is not model.backend:
            self._place(model)
        n = self.n_averaged + 1
        for key, layer, _, p in _entries(model, "params"):
            if n == 1:
                self._params[key] = layer.backend.asarray(p)
            else:  # avg_n = avg_{n-1} + (w - avg_{n-1}) / n
                self._params[key] = layer.backend.axpby(1.0 - 1.0 / n, self._params[key], 1.0 / n, p)
        self.n_averaged = n

    def on_train_end(self, logs):
        if not self.apply_at_end:
            return
        if self.n_averaged:
            self.finalize()
        else:
            warnings.warn(f"SWA: training ended after {self.trainer.epoch} epochs, before "
                          f"start_epoch={self.start_epoch}; the model keeps its own weights",
                          stacklevel=2)

    def finalize(self, bn_x=None, batch_size=None, model=None):
        """Put the average into the model and recompute batch-norm statistics
        on bn_x (default: the constructor's); returns the model."""
        model = self.apply_to(model)
        bn_x = self.bn_x if bn_x is None else bn_x
        if bn_x is not None:
            update_bn(model, bn_x, batch_size or self.bn_batch_size)
        elif any(isinstance(layer, BatchNorm) for layer in model.walk()):
            warnings.warn("SWA: the model has batch norm but no bn_x was given; its running "
                          "statistics belong to the last weights, not the average: call "
                          "update_bn(model, x_train)", stacklevel=2)
        return model

    def copy_model(self, model=None, bn_x=None, batch_size=None):
        """A new model with the averaged weights (and, given bn_x, fresh batch-norm
        statistics); the trained model is left as it is."""
        clone = super().copy_model(model)
        bn_x = self.bn_x if bn_x is None else bn_x
        if bn_x is not None:
            update_bn(clone, bn_x, batch_size or self.bn_batch_size)
        return clone

    def get_state(self) -> dict:
        return {"n_averaged": self.n_averaged}

    def set_state(self, state: dict) -> None:
        self.n_averaged = int(state.get("n_averaged", 0))

    def __repr__(self):
        return f"SWA(start_epoch={self.start_epoch}, freq={self.freq}, lr={self.lr})"


# ---------------------------------------------------------------------------
def update_bn(model, x, batch_size=256):
    """Recompute every BatchNorm layer's running statistics for the model's
    current weights: reset them, then run forward passes in training mode over
    x with momentum 1 / (k + 1) for batch k, which makes each running value the
    plain average of the batches' statistics (the mean of the batch means; the
    variance is each batch's unbiased one, so one batch of all the data gives
    the exact mean and unbiased variance). Momentum and dropout's mask counter
    are put back afterwards; returns the model."""
    bns = [layer for layer in model.walk() if isinstance(layer, BatchNorm)]
    if not bns:
        return model
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ShapeError(f"update_bn: x must be a non-empty batch (N, ...), got shape {x.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"update_bn: batch_size must be a positive integer, got {batch_size!r}")
    n, be = x.shape[0], model.backend
    starts = list(range(0, n, int(batch_size)))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()  # a lone last sample joins the batch before it (one value has no variance)
    bounds = list(zip(starts, starts[1:] + [n]))
    momenta = [bn.momentum for bn in bns]
    dropouts = [(layer, layer.calls) for layer in model.walk()
                if isinstance(layer, Dropout) and hasattr(layer, "calls")]
    for bn in bns:
        c, dt = bn.num_features, bn.dtype
        bn.buffers["running_mean"] = bn.backend.zeros((c,), dt)
        bn.buffers["running_var"] = bn.backend.asarray(np.ones(c), dtype=dt)
    try:
        for k, (a, b) in enumerate(bounds):
            for bn in bns:
                bn.momentum = 1.0 / (k + 1)
            model.forward(be.asarray(x[a:b], dtype=model.dtype), training=True)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        for layer, calls in dropouts:
            layer.calls = calls
    return model
