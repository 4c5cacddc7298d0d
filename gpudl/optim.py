"""Optimizers: one device kernel per parameter update (see Backend.sgd_update)."""
from __future__ import annotations

import math

import numpy as np

from .backend import get_backend


def _check_rate(owner, name, value, low=0.0, low_open=True, high=None):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value) and (value > low if low_open else value >= low) \
        and (high is None or value < high)
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bound += f" and < {high}"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")


class Optimizer:
    """Updates every trainable layer's params from its grads.

    State (such as momentum buffers) is keyed "<layer index>.<param name>", so
    it can be saved with the model and restored."""

    def __init__(self, lr: float):
        _check_rate(type(self).__name__, "lr", lr)
        self.lr = float(lr)
        self.state: dict = {}
        self.iterations = 0

    def step(self, model) -> None:
        for i, layer in enumerate(model.layers):
            if not layer.trainable:
                continue
            for name, param in layer.params.items():
                grad = layer.grads.get(name)
                if grad is None:
                    continue
                self._update(f"{i}.{name}", layer, name, param, grad)
        self.iterations += 1

    def _update(self, key, layer, name, param, grad):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent, as in the notes, descending.

    v_t = momentum * v_{t-1} - lr * g_t,  w_{t+1} = w_t + v_t
    (the notes write "+ mu grad"; descent subtracts). With ``nesterov`` the
    momentum is applied before the gradient is taken, in the usual
    look-ahead form w_{t+1} = w_t + momentum * v_t - lr * g_t.
    ``weight_decay`` adds weight_decay * w to the gradient of weights
    (never to biases).
    With a constant lr, plain momentum follows the same trajectory as
    PyTorch's SGD(momentum=...): their buffer b_t = v_t / (-lr)."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        _check_rate("SGD", "momentum", momentum, 0.0, low_open=False, high=1.0)
        _check_rate("SGD", "weight_decay", weight_decay, 0.0, low_open=False)
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)

    def _update(self, key, layer, name, param, grad):
        be = get_backend() if layer is None else layer.backend
        velocity = None
        if self.momentum:
            velocity = self.state.get(key)
            if velocity is None:
                velocity = self.state[key] = be.zeros(param.shape, param.dtype)
        wd = 0.0 if name in layer.no_decay else self.weight_decay
        be.sgd_update(param, grad, velocity, self.lr, self.momentum, self.nesterov, wd)

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


OPTIMIZERS = {"SGD": SGD}
