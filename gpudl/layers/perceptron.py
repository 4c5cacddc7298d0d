"""Rosenblatt's perceptron: one threshold unit, trained by the perceptron rule."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .dense import Dense


class Perceptron(Dense):
    """A single unit: 1 if w . x + b >= 0 else 0.

    ``fit`` applies the perceptron rule online (one sample at a time):
    w <- w - lr (y_hat - y) x, b <- b - lr (y_hat - y), which changes the
    weights only on mistakes. It converges on linearly separable data (NAND)
    and never on data that is not (XOR)."""

    def __init__(self, in_features: int, *, dtype=np.float32, seed=None, name=None):
        super().__init__(in_features, 1, dtype=dtype, seed=seed, name=name)

    def forward(self, x, training=False):
        return self.backend.step(super().forward(x, training))

    def backward(self, grad, need_input_grad=True):
        raise NotImplementedError(
            "Perceptron has no useful gradient (its step has derivative 0); "
            "train it with Perceptron.fit (the perceptron rule), or use Dense + Sigmoid")

    def predict(self, x):
        be = self.backend
        return be.to_numpy(self.forward(be.asarray(np.asarray(x), dtype=self.dtype)))[:, 0]

    def fit(self, x, y, epochs: int = 100, lr: float = 1.0, shuffle: bool = True, seed=None):
        """Train by the perceptron rule; returns the number of mistakes in each epoch.

        Stops early after the first epoch without a mistake."""
        x = np.asarray(x, dtype=self.dtype)
        y = np.asarray(y, dtype=self.dtype).reshape(-1)
        if x.ndim != 2 or x.shape[1] != self.in_features or x.shape[0] != y.shape[0]:
            raise ShapeError(f"Perceptron.fit: x must be (N, {self.in_features}) and y (N,), "
                             f"got x {x.shape} and y {y.shape}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"Perceptron.fit: y must hold 0/1 targets, got {np.unique(y)}")
        if not lr > 0:
            raise ValueError(f"Perceptron.fit: lr must be positive, got {lr}")
        be = self.backend
        rng = np.random.default_rng(seed)
        xd = be.asarray(x)
        yd = be.asarray(y.reshape(-1, 1))
        mistakes = []
        for _ in range(epochs):
            order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
            wrong = 0
            for i in order:
                idx = be.asarray(np.array([i], dtype=np.int64))
                xi = be.take_rows(xd, idx)
                err = be.axpby(1.0, self.forward(xi), -1.0, be.take_rows(yd, idx))
                if float(be.to_numpy(err)[0, 0]) != 0.0:
                    wrong += 1
                    # (y_hat - y) x is the perceptron criterion's gradient.
                    be.sgd_update(self.params["W"], be.matmul(err, xi, trans_a=True), None, lr)
                    be.sgd_update(self.params["b"], be.sum_rows(err), None, lr)
            mistakes.append(wrong)
            if wrong == 0:
                break
        return mistakes

    def get_config(self):
        return {"in_features": self.in_features, "dtype": self.dtype.name, "name": self.name}
