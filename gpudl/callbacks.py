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

    def call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``."""

    HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
             "on_batch_begin", "on_batch_end")

    def __init__(self, **hooks):
        for name, fn in hooks.items():
            if name not in self.HOOKS:
                raise ValueError(f"LambdaCallback: unknown hook {name!r}; choose from {self.HOOKS}")
            setattr(self, name, fn)
