"""Trainer: full-batch, mini-batch and online gradient descent with history."""
from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from .callbacks import CallbackList
from .errors import ShapeError
from .losses import Loss
from .optim import Optimizer


class _RankCallbackList(CallbackList):
    """Distributed runs, ranks other than 0: callbacks that write files
    (ModelCheckpoint, CSVLogger, or any with ``main_process_only = True``)
    are skipped; the others (EarlyStopping...) run on every rank, on the
    reduced metrics, so every rank stops at the same epoch. The list (and
    so the checkpoint's callback indices) stays the same on every rank."""

    def _runs(self, cb):
        return not _main_only(cb)


def _main_only(cb) -> bool:
    from .checkpoint import ModelCheckpoint
    from .history import CSVLogger
    return bool(getattr(cb, "main_process_only", isinstance(cb, (ModelCheckpoint, CSVLogger))))


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"fit: {name} must be a positive integer"
                         f"{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


class Trainer:
    """Couples a model, a loss and an optimizer.

    ``fit(batch_size=None)`` is full-batch gradient descent, ``batch_size=1``
    online SGD, anything between mini-batch SGD.

    ``distributed``: a gpudl.distributed context (``gpudl.distributed.init()``)
    for data-parallel training; None (the default) trains in this process
    alone. With one, ``batch_size`` is per rank, each rank trains on its
    shard of every epoch, gradients are averaged before each step, metrics
    are summed over the ranks and only rank 0 writes files and bars."""

    def __init__(self, model, loss: Loss, optimizer: Optimizer, distributed=None):
        if not isinstance(loss, Loss):
            raise TypeError(f"Trainer: loss must be a gpudl.losses.Loss, got {type(loss).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Trainer: optimizer must be a gpudl.optim.Optimizer, "
                            f"got {type(optimizer).__name__}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.loss.backend = model.backend
        #: the data-parallel context, or None (see gpudl.distributed)
        self.distributed = distributed

    # ---- input checks, all before any work
    def _prepare(self, x, y, what="x"):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim < 2:
            raise ShapeError(f"{what}: expected a batch of shape (N, features...), got {x.shape}")
        if x.shape[0] != y.shape[0]:
            raise ShapeError(f"{what} has {x.shape[0]} samples but its targets have {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError(f"{what} is empty")
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{what}: expected numbers, got dtype {x.dtype}")
        bad = ~np.isfinite(x) if x.dtype.kind == "f" else None
        if bad is not None and bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{what} contains {int(bad.sum())} NaN or infinite values "
                             f"(first at index {first})")
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise ValueError(f"the targets of {what} contain NaN or infinite values")
        out_shape = self.model.output_shape(x.shape[1:])
        self.loss.check_targets(y, out_shape)
        be = self.model.backend
        self.loss.backend = be
        return (be.asarray(x, dtype=self.model.dtype),
                be.asarray(y, dtype=self.loss.target_dtype(self.model.dtype)), y)

    # ---- training
    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, shuffle=True,
            seed=None, verbose=True, callbacks=(), augment=None, resume_from=None):
        """Train and return the history: a dict of per-epoch lists
        (loss, accuracy when it applies, and val_ versions with validation_data).

        ``callbacks`` are gpudl.callbacks.Callback objects; ``augment`` is
        called on every training batch as ``augment(x_batch, step)`` and
        returns the batch to train on (see gpudl.augment); ``step`` counts
        optimizer steps, so a seeded augmentation repeats on a resumed run.
        ``resume_from`` names a checkpoint (gpudl.checkpoint.ModelCheckpoint)
        to go on from: the run continues at the epoch after the saved one, up
        to ``epochs`` in all, with the same callbacks in the same order."""
        epochs = _positive_int("epochs", epochs)
        batch_size = _positive_int("batch_size", batch_size, allow_none=True)
        if augment is not None and not callable(augment):
            raise TypeError(f"fit: augment must be callable, got {type(augment).__name__}")
        xd, yd, y_host = self._prepare(x, y)
        val = None
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("fit: validation_data must be a pair (x_val, y_val)")
            val = validation_data
            self._prepare(*val, what="validation_data x")  # fail now, not after epoch 1
        dist = self.distributed
        # distributed, rank > 0: file-writing callbacks are skipped, no bars or lines
        self.callbacks = (_RankCallbackList if dist is not None and not dist.is_main
                          else CallbackList)(callbacks, self)
        if dist is not None:
            verbose = verbose and dist.is_main
            # rank 0's weights on every rank, and one shuffling seed for all
            seed = dist.prepare(self.model, seed)
        n = xd.shape[0]
        self.batch_size = n if batch_size is None else min(batch_size, n)
        self.epochs, self.shuffle, self.augment = epochs, shuffle, augment
        #: the generator that shuffles; a checkpoint saves its state
        self.rng = np.random.default_rng(seed)
        self.history = {"loss": []}
        self.epoch = 0          # epochs completed
        self.stop_training = False
        # train mode for the epochs (forward below also says training=True
        # explicitly), and the caller's mode back afterwards
        was_training = getattr(self.model, "training", False)
        if hasattr(self.model, "train"):
            self.model.train()
        try:
            self.callbacks.call("on_train_begin", {})
            if resume_from is not None:
                from .checkpoint import restore
                restore(self, resume_from)
            while self.epoch < epochs and not self.stop_training:
                self._run_epoch(xd, yd, y_host, val, verbose)
            self.callbacks.call("on_train_end", {"epochs": self.epoch})
        finally:
            if hasattr(self.model, "train"):
                self.model.train(was_training)
        return self.history

    @property
    def step(self) -> int:
        """Optimizer steps taken so far (all fits of this optimizer)."""
        return self.optimizer.iterations

    def _run_epoch(self, xd, yd, y_host, val, verbose):
        n, bs, be = xd.shape[0], self.batch_size, self.model.backend
        epoch = self.epoch + 1
        self.callbacks.call("on_epoch_begin", epoch, {})
        t0 = time.perf_counter()
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        dist = self.distributed
        if dist is not None:  # hook (a): this rank's shard of the epoch's order
            order = dist.shard(order)
            n = len(order)
        total, correct, seen = 0.0, 0, 0
        # disable=None: a bar on a terminal, plain per-epoch lines in a log
        with tqdm(total=n, disable=None if verbose else True, unit="sample", leave=True,
                  desc=f"epoch {epoch}/{self.epochs}", dynamic_ncols=True) as bar:
            for batch, start in enumerate(range(0, n, bs)):
                self.callbacks.call("on_batch_begin", batch, {})
                idx = order[start:start + bs]
                if bs == n and not self.shuffle and dist is None:
                    xb, yb = xd, yd
                else:
                    di = be.asarray(idx.astype(np.int64))
                    xb, yb = be.take_rows(xd, di), be.take_rows(yd, di)
                if self.augment is not None:
                    xb = self.augment(xb, self.step)
                out = self.model.forward(xb, training=True)
                value = self.loss(out, yb)
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"the loss became {value} at epoch {epoch}, batch starting at sample "
                        f"{start}: lower the learning rate (now {self.optimizer.lr})")
                self.model.backward(self.loss.backward(), need_input_grad=False)
                if dist is not None:  # hook (b): the mean gradient over the ranks
                    dist.average_gradients(self.model)
                self.optimizer.step(self.model)
                total += value * len(idx)
                seen += len(idx)
                if self.loss.has_accuracy:
                    correct += self.loss.correct(be.to_numpy(out), y_host[idx])
                bar.update(len(idx))
                bar.set_postfix(loss=f"{value:.4f}")
                blogs = {"loss": value, "size": len(idx)}
                self.callbacks.call("on_batch_end", batch, blogs)
                if self.stop_training:
                    break
            if dist is not None:  # hook (c): the epoch's metrics over every rank
                total, correct, seen = dist.reduce_metrics([total, correct, seen])
                dist.end_epoch(self.model)  # same running statistics on every rank
            logs = {"loss": total / max(seen, 1)}
            if self.loss.has_accuracy:
                logs["accuracy"] = correct / max(seen, 1)
            if val is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(*val).items()})
            logs["time"] = time.perf_counter() - t0
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "time"})
        self.epoch = epoch

        def record():
            for k, v in logs.items():
                self.history.setdefault(k, []).append(v)
        self.callbacks.call("on_epoch_end", epoch, logs, between=record)
        if verbose and bar.disable:
            print(f"epoch {epoch}/{self.epochs}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in logs.items()
                if k != "time" and isinstance(v, (int, float)))
                + f" ({logs['time']:.2f} s)", flush=True)
        return logs

    def evaluate(self, x, y, batch_size=256):
        """Mean loss (and accuracy where it applies) in inference mode."""
        xd, yd, y_host = self._prepare(x, y)
        be = self.model.backend
        n = xd.shape[0]
        total, correct = 0.0, 0
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            di = be.asarray(np.arange(start, stop, dtype=np.int64))
            xb, yb = be.take_rows(xd, di), be.take_rows(yd, di)
            out = self.model.forward(xb, training=False)
            total += self.loss(out, yb) * (stop - start)
            if self.loss.has_accuracy:
                correct += self.loss.correct(be.to_numpy(out), y_host[start:stop])
        result = {"loss": total / n}
        if self.loss.has_accuracy:
            result["accuracy"] = correct / n
        return result

    def predict(self, x, batch_size=256):
        return self.model.predict(x, batch_size=batch_size)
