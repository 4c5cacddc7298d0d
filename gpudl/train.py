"""Trainer: full-batch, mini-batch and online gradient descent with history."""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
from tqdm.auto import tqdm

from . import graph as graphs
from . import precision as prec
from . import stream as streams
from .callbacks import CallbackList
from .data import validation_split_indices
from .losses import Loss
from .optim import Optimizer
from .train_checks import check_arrays, diverged, metrics_result, warn_double_softmax


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


def _positive_int(name, value, allow_none=False, where="fit"):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{where}: {name} must be a positive integer"
                         f"{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _split(x, y, fraction, seed):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        return x, y, None  # _prepare names what is wrong
    train, val = validation_split_indices(x.shape[0], fraction, seed)
    return x[train], y[train], (x[val], y[val])


class Trainer:
    """Couples a model, a loss and an optimizer.

    ``fit(batch_size=None)`` is full-batch gradient descent, ``batch_size=1``
    online SGD, anything between mini-batch SGD.

    ``distributed``: a gpudl.distributed context (``gpudl.distributed.init()``)
    for data-parallel training; None (the default) trains in this process
    alone. With one, ``batch_size`` is per rank, each rank trains on its
    shard of every epoch, gradients are averaged before each step, metrics
    are summed over the ranks and only rank 0 writes files and bars.

    ``precision``: "fp32", "tf32", "bf16-mixed" or "fp16-mixed" (see
    gpudl.precision); None (the default) takes gpudl.get_precision() when
    fit starts. fit, evaluate and predict run under it. With "fp16-mixed" a
    ``loss_scaler`` (gpudl.precision.LossScaler, one with the defaults if
    None) scales the loss gradient; a step whose gradients overflow is
    skipped and counted in ``trainer.loss_scaler.skipped``."""

    def __init__(self, model, loss: Loss, optimizer: Optimizer, distributed=None,
                 precision=None, loss_scaler=None):
        if not all(hasattr(model, a) for a in ("forward", "backward", "backend", "output_shape")):
            raise TypeError(f"Trainer: model must be a gpudl.Sequential (or have its forward, "
                            f"backward, output_shape and backend), got {type(model).__name__}")
        if not isinstance(loss, Loss):
            raise TypeError(f"Trainer: loss must be a gpudl.losses.Loss, got {type(loss).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Trainer: optimizer must be a gpudl.optim.Optimizer, "
                            f"got {type(optimizer).__name__}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        warn_double_softmax(model, loss)
        self.loss.backend = model.backend
        self.augment = None
        self.callbacks = CallbackList((), self)
        self._metrics = None     # float64 [loss sum, correct, last batch's loss sum, unused]
        #: the data-parallel context, or None (see gpudl.distributed)
        self.distributed = distributed
        if precision is not None:
            prec.check_policy(precision, "Trainer: precision")
        if loss_scaler is not None and not isinstance(loss_scaler, prec.LossScaler):
            raise TypeError(f"Trainer: loss_scaler must be a gpudl.precision.LossScaler, "
                            f"got {type(loss_scaler).__name__}")
        self._precision = precision
        self.loss_scaler = loss_scaler

    @property
    def precision(self) -> str:
        """The policy this trainer runs under: its own, else the global one."""
        return self._precision or prec.get_precision()

    def _policy(self):
        """The trainer's policy for a block (fit, evaluate, predict), with its
        loss scaler made for fp16-mixed."""
        policy = self.precision
        if prec.needs_loss_scaling(policy) and self.loss_scaler is None:
            self.loss_scaler = prec.LossScaler()
        return prec.using(policy)

    # ---- input checks, all before any work
    def _prepare(self, x, y, what="x"):
        x, y = check_arrays(self.model, self.loss, x, y, what)
        be = self.model.backend
        self.loss.backend = be
        return (be.asarray(x, dtype=self.model.dtype),
                be.asarray(y, dtype=self.loss.target_dtype(self.model.dtype)), y)

    # ---- training
    def fit(self, x, y=None, epochs=1, batch_size=32, validation_data=None, shuffle=True,
            seed=None, verbose=True, callbacks=(), augment=None, resume_from=None,
            graph="auto", validation_split=None, stream="auto"):
        """Train and return the history: a dict of per-epoch lists
        (loss, accuracy when it applies, and val_ versions with validation_data).

        x, y are arrays, or x is a data set (y=None; validation_data may be one
        too): see gpudl.stream for what ``stream`` ("auto", True, False) streams
        from the host through a background loader thread and what is uploaded
        once; the same seed gives the same batches either way.

        ``validation_split`` (a fraction in (0, 1), instead of validation_data):
        hold out that share of x, y for the val_ metrics; the samples are
        gpudl.data.validation_split_indices(len(x), fraction, seed), so a seeded fit
        (and its resumed run) holds out the same ones.

        ``verbose``: True (or 1) a progress bar per epoch in a terminal and a
        line per epoch elsewhere; 2 a line per epoch, printed as it ends; False
        (or 0) nothing.

        ``callbacks`` are gpudl.callbacks.Callback objects; ``augment`` is
        called on every training batch as ``augment(x_batch, step)`` and
        returns the batch to train on (see gpudl.augment); ``step`` counts
        optimizer steps, so a seeded augmentation repeats on a resumed run.
        ``resume_from`` names a checkpoint (gpudl.checkpoint.ModelCheckpoint)
        to go on from: the run continues at the epoch after the saved one, up
        to ``epochs`` in all, with the same callbacks in the same order.

        ``graph`` (True, False or "auto"; see gpudl.graph): capture each batch
        shape's step once and replay it (on a GPU, one CUDA graph launch a
        step). ``self.graph_info`` says afterwards what was done and why.
        Nothing is read back inside a step: the loss and accuracy accumulate
        on the device and are read for the progress bar at most every
        ``progress_interval`` seconds and at the end of the epoch, where a
        NaN or infinite loss stops the run naming the batches it arose in
        (on the CPU, where reading is free, after the very batch)."""
        epochs = _positive_int("epochs", epochs)
        batch_size = _positive_int("batch_size", batch_size, allow_none=True)
        if augment is not None and not callable(augment):
            raise TypeError(f"fit: augment must be callable, got {type(augment).__name__}")
        if graph not in (True, False, "auto"):
            raise ValueError(f"fit: graph must be True, False or 'auto', got {graph!r}")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"fit: shuffle must be True or False, got {shuffle!r}")
        if validation_split is not None:
            if validation_data is not None:
                raise ValueError("fit: give validation_data or validation_split, not both")
            if seed is None and self.distributed is not None:
                raise ValueError("fit: validation_split in a distributed run needs a seed "
                                 "(every rank must hold out the same samples)")
        src = streams.source(x, y, stream, "fit")
        streams.check_fit(src, shuffle, self.distributed, epochs, validation_split)
        if validation_split is not None:
            if src is not None:
                src, validation_data = streams.split(src, validation_split, seed)
            else:
                x, y, validation_data = _split(*streams.arrays_of(x, y), validation_split, seed)
        self._feed = None if src is None else streams.Feed(self.model, self.loss, src)
        xd, yd, _ = self._prepare(*streams.arrays_of(x, y)) if src is None else (None,) * 3
        # checked (and for arrays uploaded) once, now: fail before epoch 1
        val = None if validation_data is None else streams.validation(
            self, validation_data, stream, epochs)
        dist = self.distributed
        # distributed, rank > 0: file-writing callbacks are skipped, no bars or lines
        self.callbacks = (_RankCallbackList if dist is not None and not dist.is_main
                          else CallbackList)(callbacks, self)
        if dist is not None:
            verbose = verbose if dist.is_main else False
            # rank 0's weights on every rank, and one shuffling seed for all
            seed = dist.prepare(self.model, seed)
        self._n = n = xd.shape[0] if src is None else src.n  # None: an iterable's own batches
        self.batch_size = n if batch_size is None else min(batch_size, n or batch_size)
        self.epochs, self.shuffle, self.augment = epochs, shuffle, augment
        use_graph, why = graphs.plan(graph, self)
        self.graph_info = {"requested": graph, "captured": use_graph, "reason": why,
                           "steps": {}}
        #: the generator that shuffles; a checkpoint saves its state
        self.rng = np.random.default_rng(seed)
        self.history = {"loss": []}
        self.epoch = 0          # epochs completed
        self.stop_training = False
        be = self.model.backend
        self._xd, self._yd = xd, yd
        self._perm = None       # the epoch's order on the device, refilled in place
        self._metrics = be.zeros((4,), np.float64)
        self._steps = {}        # (count, full) -> step runner for the current fingerprint
        self._fingerprint = None
        # train mode for the epochs (forward below also says training=True
        # explicitly), and the caller's mode back afterwards
        was_training = getattr(self.model, "training", False)
        if hasattr(self.model, "train"):
            self.model.train()
        try:
            with self._policy(), self._graph_stream(use_graph):
                self.callbacks.call("on_train_begin", {})
                if resume_from is not None:
                    from .checkpoint import restore
                    restore(self, resume_from)
                self._loss_start = None  # set in the first epoch (_run_epoch)
                while self.epoch < epochs and not self.stop_training:
                    self._run_epoch(val, verbose, use_graph)
                self.callbacks.call("on_train_end", {"epochs": self.epoch})
        finally:
            if hasattr(self.model, "train"):
                self.model.train(was_training)
            self._steps = {}    # the graphs (and their memory pools) go with the fit
        return self.history

    #: seconds between progress-bar reads of the device metrics
    progress_interval = 0.3
    #: samples whose mean loss is the reference divergence is measured against
    START_SAMPLES = 32

    @contextlib.contextmanager
    def _graph_stream(self, use_graph):
        """On a real GPU a graphed fit runs on the backend's non-blocking
        stream (capture needs one), after the uploads made on the default
        stream, and the default stream sees its results afterwards."""
        be = self.model.backend
        if not use_graph or getattr(be, "_cp", None) is None:
            yield
            return
        be.synchronize()
        stream = be.graph_stream()
        with stream:
            yield
        stream.synchronize()

    @property
    def step(self) -> int:
        """Optimizer steps taken so far (all fits of this optimizer)."""
        return self.optimizer.iterations

    def train_on_batch(self, xb, yb):
        """One optimizer step on device arrays xb, yb of the model's backend:
        forward in training mode, the loss (added to the device metrics,
        nothing read back), backward, the optimizer's update."""
        be = self.model.backend
        if self._metrics is None:
            self._metrics = be.zeros((4,), np.float64)
        if self.augment is not None:
            from .augment import Augment
            step = (lambda: self.step) if isinstance(self.augment, Augment) else self.step
            xb = self.augment(xb, step)
        scaler = self.loss_scaler if prec.needs_loss_scaling(self.precision) else None
        # FP16 overflows are expected (the scaler handles them): no NumPy warnings
        with np.errstate(over="ignore", invalid="ignore") if scaler else contextlib.nullcontext():
            out = self.model.forward(xb, training=True)
            self.loss.accumulate(out, yb, self._metrics)
            grad = self.loss.backward()
            if scaler is not None:
                grad = be.axpby(scaler.scale, grad, 0.0, grad)
            self.model.backward(grad, need_input_grad=False)
        if self.distributed is not None:  # hook (b): the mean gradient over the ranks
            self.distributed.average_gradients(self.model)
        if scaler is not None and not self._unscale(scaler):
            return  # an overflowed step: skipped, the scale lowered
        self.optimizer.step(self.model)

    def _unscale(self, scaler) -> bool:
        """Divide the loss scale out of every gradient in place (so clipping
        and the update see true gradients); False when one holds inf/NaN,
        which is read back on the host, as PyTorch's GradScaler does."""
        from .optim import trainable_grads
        grads = trainable_grads(self.model)
        inv = 1.0 / scaler.scale
        total = 0.0
        for layer, g in grads:
            layer.backend.axpby(inv, g, 0.0, g, out=g)
        by_backend = {}
        for layer, g in grads:
            by_backend.setdefault(id(layer.backend), (layer.backend, []))[1].append(g)
        for be, gs in by_backend.values():
            total += be.sum_squares(gs)
        return scaler.update(found_inf=not math.isfinite(total))

    def _batch_offset(self):
        return np.array([self._batch_start], np.int64)

    def _step_fn(self, count, full):
        """The device work of one step on the batch of ``count`` samples that
        starts at self._batch_start in the epoch's order."""
        def run():
            if full:
                xb, yb = self._xd, self._yd
            else:
                be = self.model.backend
                offset = be.step_input(self._batch_offset)
                xb = be.take_rows_at(self._xd, self._perm, offset, count)
                yb = be.take_rows_at(self._yd, self._perm, offset, count)
            self.train_on_batch(xb, yb)
        return run

    def _runner(self, count, full, use_graph):
        key = (count, full)
        runner = self._steps.get(key)
        if runner is None:
            fn = self._step_fn(count, full)
            runner = graphs.GraphedStep(fn, self.model.backend) if use_graph else fn
            self._steps[key] = runner
        return runner

    def _read_metrics(self):
        return self.model.backend.to_numpy(self._metrics)

    def _check_loss(self, value, epoch, first, last, starts):
        """value: the mean loss over batches first..last (or the epoch so far)."""
        where = (f"batch starting at sample {starts[first]}" if first == last else
                 f"batches {first}-{last} (samples {starts[first]}-{starts[last + 1] - 1})")
        error = diverged(value, getattr(self, "_loss_start", None), self.loss,
                         self.optimizer.lr, epoch, where)
        if error is not None:
            raise error

    def _run_epoch(self, val, verbose, use_graph=False):
        bs, be, feed, n = self.batch_size, self.model.backend, self._feed, self._n
        epoch = self.epoch + 1
        self.callbacks.call("on_epoch_begin", epoch, {})
        t0 = time.perf_counter()
        # drawn the same way for a streamed data set, so both see the same batches
        order = None if n is None else self.rng.permutation(n) if self.shuffle else np.arange(n)
        dist = self.distributed
        if dist is not None:  # hook (a): this rank's shard of the epoch's order
            order = dist.shard(order)
            n = len(order)
        full = feed is None and bs >= n and not self.shuffle and dist is None
        if feed is None and not full:  # one upload of the order per epoch, into one buffer
            order = np.ascontiguousarray(order, np.int64)
            if self._perm is None or self._perm.shape[0] != order.shape[0]:
                self._perm = be.zeros(order.shape, np.int64)
            be.set_array(self._perm, order)
        if use_graph and self._fingerprint is not None \
                and graphs.fingerprint(self) != self._fingerprint:
            self._steps = {}  # something the graphs baked in changed since: capture again
        be.set_array(self._metrics, np.zeros(4))
        batch_hooks = any(graphs._batch_hooks(cb) for cb in self.callbacks)
        starts, seen, checked, last_read = [0], 0, 0, time.perf_counter()
        # (count, x, y): streamed batches come prepared by the loader thread, closed
        # with the epoch however it ends; else x, y are None: gathered on the device
        batches = feed.epoch(order, bs) if feed is not None else (
            (min(bs, n - s), None, None) for s in range(0, n, bs))
        # disable=None: a bar on a terminal, plain per-epoch lines in a log
        # verbose=2 (Keras's): no bar, one line per epoch, printed as it ends
        with tqdm(total=n, disable=None if verbose == 1 else True, unit="sample", leave=True,
                  desc=f"epoch {epoch}/{self.epochs}", dynamic_ncols=True) as bar, \
                contextlib.closing(batches):
            plain = bool(bar.disable)  # read now: closing the bar sets bar.disable
            for batch, (count, xb, yb) in enumerate(batches):
                starts.append(starts[-1] + count)
                self.callbacks.call("on_batch_begin", batch, {})
                self._batch_start = starts[batch]
                if xb is not None:
                    self.train_on_batch(xb, yb)
                else:
                    runner = self._runner(count, full, use_graph)
                    runner()
                if use_graph:
                    self.graph_info["steps"][count] = runner.mode
                seen += count
                bar.update(count)
                # divergence is measured against the mean loss of the fit's first
                # 32 samples (fewer make a noisy reference): one read per fit
                start_loss = (self._loss_start is None
                              and seen >= min(n or self.START_SAMPLES, self.START_SAMPLES))
                if batch_hooks or be.reads_are_free:  # the batch's own loss, at once
                    m = self._read_metrics()
                    value = float(m[2]) / count
                    self._check_loss(float(m[0]) / seen, epoch, batch, batch, starts)
                    checked = batch + 1
                    bar.set_postfix(loss=f"{value:.4f}")
                    self.callbacks.call("on_batch_end", batch, {"loss": value, "size": count})
                elif start_loss or time.perf_counter() - last_read > self.progress_interval:
                    m = self._read_metrics()  # the bar's running mean, a few times a second
                    self._check_loss(float(m[0]) / seen, epoch, checked, batch, starts)
                    checked, last_read = batch + 1, time.perf_counter()
                    bar.set_postfix(loss=f"{m[0] / seen:.4f}")
                if start_loss:
                    self._loss_start = float(m[0]) / seen
                if self.stop_training:
                    break
            if use_graph:  # as the graphs saw it; epoch-end callbacks may change it
                self._fingerprint = graphs.fingerprint(self)
            m = self._read_metrics()
            if checked < batch + 1:
                self._check_loss(float(m[0]) / max(seen, 1), epoch, checked, batch, starts)
            total, correct = float(m[0]), float(m[1])
            if dist is not None:  # hook (c): the epoch's metrics over every rank
                total, correct, seen = dist.reduce_metrics([total, correct, seen])
                dist.end_epoch(self.model)  # same running statistics on every rank
            logs = {"loss": total / max(seen, 1)}
            if self.loss.has_accuracy:
                logs["accuracy"] = correct / max(seen, 1)
            if val is not None:
                logs.update({f"val_{k}": v for k, v in (self._evaluate(*val) if isinstance(
                    val, tuple) else val.evaluate()).items()})
            logs["time"] = time.perf_counter() - t0
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "time"})
        self.epoch = epoch

        def record():
            for k, v in logs.items():
                self.history.setdefault(k, []).append(v)
        self.callbacks.call("on_epoch_end", epoch, logs, between=record)
        if verbose and plain:  # no bar was shown: the epoch's line instead
            print(f"epoch {epoch}/{self.epochs}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in logs.items()
                if k != "time" and isinstance(v, (int, float)))
                + f" ({logs['time']:.2f} s)", flush=True)
        return logs

    def evaluate(self, x, y=None, batch_size=256, metrics=None, stream="auto"):
        """Mean loss (and accuracy where it applies) in inference mode; x may
        be a data set (y=None), streamed as fit streams it (gpudl.stream).

        ``metrics``: names from gpudl.metrics.METRICS for a classifier with
        (N, classes) outputs: "top_k" (adds top_5_accuracy; "top_3" for k=3),
        "confusion" (confusion_matrix) and "precision_recall_f1" (per-class
        precision, recall, f1, support and their macro means); these need
        the outputs on the host, so the forward pass runs a second time."""
        from . import metrics as metrics_mod
        batch_size = _positive_int("batch_size", batch_size, where="evaluate")
        names = metrics_mod.check_names(metrics) if metrics is not None else []
        src = streams.source(x, y, stream, "evaluate")
        with self._policy():
            if src is not None:
                return streams.evaluate(self, src, batch_size, names)
            x, y = streams.arrays_of(x, y)
            result = self._evaluate(*self._prepare(x, y), batch_size=batch_size)
            if names:
                result.update(metrics_mod.compute(names, self.model.predict(
                    x, batch_size=batch_size), np.asarray(y)))
        return result

    def _evaluate(self, xd, yd, y_host=None, batch_size=256):
        """evaluate() on device arrays: batches are row slices (views, no
        copy), metrics accumulate on the device and are read once."""
        be = self.model.backend
        n = xd.shape[0]
        metrics = be.zeros((4,), np.float64)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            out = self.model.forward(xd[start:stop], training=False)
            self.loss.accumulate(out, yd[start:stop], metrics)
        return metrics_result(self.loss, be.to_numpy(metrics), n)

    def predict(self, x, batch_size=256):
        """The model's outputs (for a classifier: logits; see predict_proba);
        x may be a data set or an iterable of batches (see Sequential.predict)."""
        with self._policy():
            return self.model.predict(x, batch_size=batch_size)

    def predict_proba(self, x, batch_size=256):
        """Class probabilities as the loss reads the outputs: softmax for
        CrossEntropy, sigmoid for BinaryCrossEntropy(from_logits=True), the
        outputs themselves for BinaryCrossEntropy() (already probabilities);
        other losses fall back to Sequential.predict_proba."""
        from .losses import BinaryCrossEntropy, CrossEntropy
        from .model import sigmoid, softmax
        if isinstance(self.loss, BinaryCrossEntropy):
            out = self.predict(x, batch_size)
            return sigmoid(out) if self.loss.from_logits else out
        if isinstance(self.loss, CrossEntropy):
            return softmax(self.predict(x, batch_size))
        with self._policy():
            return self.model.predict_proba(x, batch_size=batch_size)
