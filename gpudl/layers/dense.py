"""Fully connected layer z = W a + b, with W of shape (out, in) as in the notes."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..precision import compute_format
from .base import Layer, init_rng


def _check_positive_int(layer, arg, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{layer}: {arg} must be a positive integer, got {value!r}")


class Dense(Layer):
    """z = W a + b for a batch a of shape (N, in): z = a W^T + b, shape (N, out).

    Weights start Glorot-uniform (limit sqrt(6 / (in + out))), biases at zero.
    Parameters: in * out + out. FLOPs per sample: in * out multiply-adds, the
    notes' order S_in * S_out.
    """

    no_decay = frozenset({"b"})

    def __init__(self, in_features: int, out_features: int, *, dtype=np.float32,
                 seed=None, name=None):
        super().__init__(name)
        _check_positive_int("Dense", "in_features", in_features)
        _check_positive_int("Dense", "out_features", out_features)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dtype = np.dtype(dtype)
        limit = np.sqrt(6.0 / (in_features + out_features))
        w = init_rng(seed).uniform(-limit, limit, size=(out_features, in_features))
        self.params["W"] = self.backend.asarray(w, dtype=self.dtype)
        self.params["b"] = self.backend.zeros((out_features,), self.dtype)
        self._x = None
        self._fmt = None  # the precision policy's format at the last forward

    def forward(self, x, training=False):
        self._check_features(x, self.in_features, "in_features")
        be = self.backend
        # the precision policy's format for this step's products, kept for backward
        self._fmt = compute_format(x.dtype)
        z = be.matmul(x, self.params["W"], trans_b=True, precision=self._fmt)
        be.add_bias(z, self.params["b"])
        self._x, self._out_shape = x, tuple(z.shape)
        return z

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        be = self.backend
        if self.trainable:
            # The notes' delta rule: dL/dW = delta a^T, dL/db = delta 1.
            self.grads["W"] = be.matmul(grad, self._x, trans_a=True, precision=self._fmt)
            self.grads["b"] = be.sum_rows(grad)
        # The first layer's input gradient is a whole extra matmul nobody reads.
        if not need_input_grad:
            return None
        return be.matmul(grad, self.params["W"], precision=self._fmt)

    def output_shape(self, input_shape):
        if len(input_shape) != 1 or input_shape[0] != self.in_features:
            raise ShapeError(f"layer '{self.name}' (Dense) expects {self.in_features} input "
                             f"features, but receives per-sample shape {tuple(input_shape)}")
        return (self.out_features,)

    def flops(self, input_shape):
        return self.in_features * self.out_features

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "dtype": self.dtype.name, "name": self.name}
