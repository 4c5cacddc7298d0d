"""Callbacks: code the Trainer calls at fixed points of ``fit``, with Keras's
hook names, so users can watch, change or stop training without editing it.

Every hook gets ``logs``, a dict: on_batch_end has the batch's ``loss`` and
``size``; on_epoch_end has the epoch's ``loss`` (and ``accuracy``, ``val_*``,
``time``), and a callback may add keys there that land in the history. A
callback reaches the run through ``self.trainer`` (model, optimizer, history,
``epoch``, ``step``) and ends it by setting ``self.trainer.stop_training``.
"""
from __future__ import annotations


class Callback:
    #: set by the Trainer before on_train_begin
    trainer = None
    #: run after every other callback (and after the history is updated); for
    #: callbacks that save the run
    runs_last = False

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, logs: dict) -> None: ...

    def on_train_end(self, logs: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_batch_begin(self, batch: int, logs: dict) -> None: ...

    def on_batch_end(self, batch: int, logs: dict) -> None: ...

    # extra state a checkpoint must keep for an exact resume (JSON-able)
    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass


class CallbackList:
    """Calls each hook on every callback, in order."""

    def __init__(self, callbacks, trainer):
        callbacks = list(callbacks or ())
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks[{i}] is {type(cb).__name__}, "
                                f"not a gpudl.callbacks.Callback")
            cb.set_trainer(trainer)
        self.callbacks = callbacks

    def __iter__(self):
        return iter(self.callbacks)

    def call(self, hook: str, *args, between=None) -> None:
        """Run ``hook`` on every callback, those with ``runs_last`` after the
        others; ``between`` runs in the gap (the Trainer records the epoch
        there, so checkpoints see the finished epoch and any keys the other
        callbacks added to the logs)."""
        for last in (False, True):
            for cb in self.callbacks:
                if bool(getattr(cb, "runs_last", False)) == last and self._runs(cb):
                    getattr(cb, hook)(*args)
            if not last and between is not None:
                between()

    def _runs(self, cb) -> bool:
        return True


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``."""

    HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
             "on_batch_begin", "on_batch_end")

    def __init__(self, **hooks):
        for name, fn in hooks.items():
            if name not in self.HOOKS:
                raise ValueError(f"LambdaCallback: unknown hook {name!r}; choose from {self.HOOKS}")
            setattr(self, name, fn)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs (the notes' early stopping: stop where validation
    error turns up). With ``restore_best_weights`` the model ends with the
    weights of its best epoch, whether or not training stopped early.

    ``mode`` "min" or "max" ("auto": max for accuracies, else min);
    ``stopped_epoch`` and ``best_epoch`` tell what happened."""

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False, baseline=None):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be a non-negative integer, "
                             f"got {patience!r}")
        if not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ValueError(f"EarlyStopping: min_delta must be a number >= 0, got {min_delta!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.restore_best_weights = bool(restore_best_weights)
        self.baseline = baseline
        self._reset()

    def _reset(self):
        self.best = self.baseline
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights = None

    def on_train_begin(self, logs):
        if self.trainer.epoch == 0:  # a resumed run keeps what set_state restored
            self._reset()

    def _improved(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping: monitor {self.monitor!r} is not among the epoch's "
                           f"logs {sorted(logs)} (pass validation_data to fit for val_*)")
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.trainer.model.state_arrays()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs):
        if self.restore_best_weights and self.best_weights is not None:
            from .checkpoint import set_state_arrays
            set_state_arrays(self.trainer.model, self.best_weights, where="EarlyStopping")

    def get_state(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def set_state(self, state):
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]

    def arrays(self):
        return dict(self.best_weights or {})

    def load_arrays(self, arrays):
        self.best_weights = dict(arrays) or None


class ReduceLROnPlateau(Callback):
    """Multiply the optimizer's learning rate by ``factor`` when ``monitor``
    has not improved by more than ``min_delta`` for ``patience`` epochs
    (Keras's callback, PyTorch's scheduler of the same name), never below
    ``min_lr``; after a reduction ``cooldown`` epochs pass before the count
    starts again. Each epoch's rate lands in the history as ``lr``.

    The optimizer must have a constant lr (a float), not a gpudl.schedules
    schedule, which decides the rate itself. The current rate and the count
    are part of a checkpoint, so a resumed run goes on with the reduced rate."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_delta=1e-4,
                 mode="auto", min_lr=0.0, cooldown=0, verbose=False):
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
                or not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ReduceLROnPlateau: {name} must be a non-negative integer, "
                                 f"got {value!r}")
        for name, value in (("min_delta", min_delta), ("min_lr", min_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"ReduceLROnPlateau: {name} must be a number >= 0, "
                                 f"got {value!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'auto', 'min' or 'max', "
                             f"got {mode!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), patience
        self.min_delta, self.min_lr, self.cooldown = float(min_delta), float(min_lr), cooldown
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.verbose = bool(verbose)
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_train_begin(self, logs):
        if callable(getattr(self.trainer.optimizer, "_lr", None)):
            raise TypeError("ReduceLROnPlateau: the optimizer's lr is a schedule; give it a "
                            "constant lr (a float) to reduce on plateaus")
        if self.trainer.epoch == 0:  # a resumed run keeps what set_state restored
            self.best, self.wait, self.cooldown_counter = None, 0, 0

    def _improved(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        if self.monitor not in logs:
            raise KeyError(f"ReduceLROnPlateau: monitor {self.monitor!r} is not among the "
                           f"epoch's logs {sorted(logs)} (pass validation data to fit for val_*)")
        opt = self.trainer.optimizer
        logs["lr"] = opt.lr  # the rate this epoch ran with
        value = float(logs[self.monitor])
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            new = max(opt.lr * self.factor, self.min_lr)
            if new < opt.lr:
                if self.verbose:
                    print(f"ReduceLROnPlateau: epoch {epoch}: {self.monitor} has not improved "
                          f"for {self.wait} epochs; lr {opt.lr:g} -> {new:g}")
                opt.lr = new
                self.cooldown_counter = self.cooldown
            self.wait = 0

    def get_state(self):
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter,
                "lr": self.trainer.optimizer.lr if self.trainer is not None else None}

    def set_state(self, state):
        self.best, self.wait = state["best"], state["wait"]
        self.cooldown_counter = state["cooldown_counter"]
        if state.get("lr") is not None:
            self.trainer.optimizer.lr = state["lr"]
