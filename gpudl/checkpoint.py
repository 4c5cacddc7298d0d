"""Checkpoints: everything a run needs to go on exactly where it stopped.

One .npz file holds the model (architecture, parameters, buffers), the
optimizer (hyper-parameters, step count, momentum and other slots), the
epoch, the history, the shuffling generator's state, each layer's own state
(dropout's call counter) and each callback's. It is written atomically
(temporary file, fsync, rename), so a run killed while writing leaves the
previous checkpoint whole. Resuming on the CPU gives the weights of a run
that was never interrupted, bit for bit.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .callbacks import Callback
from .errors import ModelFileError
from .archive import atomic_write, check_writable, read_archive

FORMAT = "gpudl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ModelFileError):
    """A checkpoint is missing, truncated, corrupt or does not fit the run."""


def save_checkpoint(path, trainer) -> None:
    """Write the trainer's whole state to ``path`` atomically."""
    model, opt = trainer.model, trainer.optimizer
    opt_config, opt_arrays = opt.state_dict()
    arrays = {f"model.{k}": v for k, v in model.state_arrays().items()}
    arrays.update({f"optimizer.{k}": v for k, v in opt_arrays.items()})
    callbacks = []
    for i, cb in enumerate(getattr(trainer, "callbacks", ())):
        callbacks.append({"type": type(cb).__name__, "state": cb.get_state()})
        if hasattr(cb, "arrays"):
            arrays.update({f"callback.{i}.{k}": v for k, v in cb.arrays().items()})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": model.get_config(),
            "optimizer": opt_config, "epoch": trainer.epoch, "history": trainer.history,
            "rng": trainer.rng.bit_generator.state,
            "layers": {layer.name: layer.get_state() for layer in model.walk()
                       if layer.get_state()},
            "callbacks": callbacks, "precision": trainer.precision,
            "loss_scaler": (trainer.loss_scaler.state_dict()
                            if getattr(trainer, "loss_scaler", None) is not None else None)}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays), "save_checkpoint")


def read_checkpoint(path) -> tuple[dict, dict]:
    """(metadata, arrays) of a checkpoint file, or a CheckpointError saying what is wrong."""
    return read_archive(path, "__meta__", FORMAT, FORMAT_VERSION, "checkpoint", CheckpointError)


def restore(trainer, path) -> dict:
    """Put a checkpoint's state into ``trainer`` (model, optimizer, generator,
    epoch, history, layer and callback state). The model must have the same
    architecture; returns the metadata."""
    meta, arrays = read_checkpoint(path)
    model = trainer.model
    if meta["model"]["layers"] != model.get_config()["layers"]:
        raise CheckpointError(f"{os.fspath(path)!r} was saved from a different model: "
                              f"its layers differ from this trainer's")
    saved_policy = meta.get("precision", "fp32")
    if saved_policy != trainer.precision:  # a resumed run is exact only under the same policy
        raise CheckpointError(f"{os.fspath(path)!r} was trained with precision {saved_policy!r} "
                              f"but this run uses {trainer.precision!r}: set "
                              f"gpudl.set_precision({saved_policy!r}) (--precision "
                              f"{saved_policy}) to resume it")
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    set_state_arrays(model, state, where=os.fspath(path))
    trainer.optimizer.load_state_dict(
        meta["optimizer"], {k[len("optimizer."):]: v for k, v in arrays.items()
                            if k.startswith("optimizer.")}, model.backend)
    trainer.rng.bit_generator.state = meta["rng"]
    if meta.get("loss_scaler") is not None:
        from .precision import LossScaler
        if getattr(trainer, "loss_scaler", None) is None:
            trainer.loss_scaler = LossScaler()
        trainer.loss_scaler.load_state_dict(meta["loss_scaler"])
    trainer.epoch = int(meta["epoch"])
    trainer.history = {k: list(v) for k, v in meta["history"].items()}
    by_name = {layer.name: layer for layer in model.walk()}
    for name, layer_state in meta["layers"].items():
        by_name[name].set_state(layer_state)
    saved = meta.get("callbacks", [])
    callbacks = list(getattr(trainer, "callbacks", ()))
    for i, (cb, rec) in enumerate(zip(callbacks, saved)):
        if type(cb).__name__ != rec["type"]:
            raise CheckpointError(f"callback {i} is {type(cb).__name__} but the checkpoint "
                                  f"saved a {rec['type']}")
        cb.set_state(rec["state"])
        if hasattr(cb, "load_arrays"):
            p = f"callback.{i}."
            cb.load_arrays({k[len(p):]: v for k, v in arrays.items() if k.startswith(p)})
    return meta


def set_state_arrays(model, state: dict, where="state") -> None:
    """Copy host arrays named as in Sequential.state_arrays into the model,
    checking every name and shape first so a mismatch changes nothing."""
    be = model.backend
    targets = []
    for i, layer in enumerate(model.layers):
        for store, prefix in ((layer.params, f"layers.{i}."), (layer.buffers, f"layers.{i}.buffer.")):
            for k in list(store):
                key = prefix + k
                if key not in state or tuple(state[key].shape) != tuple(store[k].shape):
                    got = tuple(state[key].shape) if key in state else "missing"
                    raise CheckpointError(f"{where}: {key} should have shape "
                                          f"{tuple(store[k].shape)}, found {got}")
                targets.append((store, k, state[key]))
    for store, k, value in targets:
        store[k] = be.asarray(value, dtype=store[k].dtype)


class ModelCheckpoint(Callback):
    """Save a checkpoint at the end of every ``every``-th epoch.

    ``path`` may hold ``{epoch}`` to keep one file per epoch. With
    ``save_best_only`` a file is written only when ``monitor`` improves
    (``mode`` "min" or "max"; "auto": max for accuracies, else min).
    It runs after the other callbacks, so the file holds the finished epoch."""

    runs_last = True

    def __init__(self, path, every=1, monitor="val_loss", save_best_only=False, mode="auto"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"ModelCheckpoint: every must be a positive integer, got {every!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"ModelCheckpoint: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.path, self.every, self.monitor = os.fspath(path), every, monitor
        self.save_best_only = bool(save_best_only)
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.best = None
        self.last_path = None

    def on_train_begin(self, logs):
        # an unwritable path fails now, not after the first epoch's work
        check_writable(self.path.format(epoch=1), "ModelCheckpoint")

    def on_epoch_end(self, epoch, logs):
        if epoch % self.every:
            return
        if self.save_best_only:
            if self.monitor not in logs:
                raise KeyError(f"ModelCheckpoint: monitor {self.monitor!r} is not among the "
                               f"epoch's logs {sorted(logs)} (pass validation_data for val_*)")
            value = float(logs[self.monitor])
            better = self.best is None or (value < self.best if self.mode == "min"
                                           else value > self.best)
            if not better:
                return
            self.best = value
        self.last_path = self.path.format(epoch=epoch)
        save_checkpoint(self.last_path, self.trainer)

    def get_state(self):
        return {"best": self.best}

    def set_state(self, state):
        self.best = state.get("best")
