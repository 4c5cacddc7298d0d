"""Activations, softmax and losses of the CUDA backend: a mixin of CUDABackend
(cuda.py), which supplies _c, _pair, _same_shape, _launch_flat, _rows and _mean."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..kernels import elementwise as ew
from ..kernels import loss as lk
from ..kernels import softmax as sk
from .base import BCE_RANGE
from .cpu import BCE_EPS


class CUDAActivations:
    # ---- activations -------------------------------------------------------
    def _unary(self, kernel, x):
        x = self._c(x)
        out = self.empty(x.shape, x.dtype)
        self._launch_flat(kernel, x.size, x.reshape(-1), out.reshape(-1))
        return out

    def _binary(self, kernel, op, a, grad, name):
        self._same_shape(op, a, grad, (name, "grad"))
        a, grad = self._pair(a, grad)
        out = self.empty(a.shape, a.dtype)
        self._launch_flat(kernel, a.size, a.reshape(-1), grad.reshape(-1), out.reshape(-1))
        return out

    def relu(self, x):
        return self._unary(ew.relu, x)

    def relu_backward(self, x, grad):
        return self._binary(ew.relu_backward, "relu_backward", x, grad, "x")

    def sigmoid(self, x):
        return self._unary(ew.sigmoid, x)

    def sigmoid_backward(self, y, grad):
        return self._binary(ew.sigmoid_backward, "sigmoid_backward", y, grad, "y")

    def tanh(self, x):
        return self._unary(ew.tanh, x)

    def tanh_backward(self, y, grad):
        return self._binary(ew.tanh_backward, "tanh_backward", y, grad, "y")

    def step(self, x):
        return self._unary(ew.step, x)

    def softmax(self, x):
        if x.ndim != 2:
            raise ShapeError(f"softmax needs a 2-D (N, C) array, got shape {tuple(x.shape)}")
        x = self._c(x)
        out = self.empty(x.shape, x.dtype)
        self._rows(sk.softmax, x.shape[0], x, out)
        return out

    def softmax_backward(self, y, grad):
        self._same_shape("softmax_backward", y, grad, ("y", "grad"))
        if y.ndim != 2:
            raise ShapeError(f"softmax_backward needs 2-D (N, C) arrays, got shape {tuple(y.shape)}")
        y, grad = self._pair(y, grad)
        out = self.empty(y.shape, y.dtype)
        self._rows(sk.softmax_backward, y.shape[0], y, grad, out)
        return out

    # ---- losses ------------------------------------------------------------
    def softmax_cross_entropy(self, logits, labels, reduce=True):
        if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ShapeError(f"softmax_cross_entropy: logits must be (N, C) and labels (N,), got "
                             f"logits of shape {tuple(logits.shape)} and labels of shape "
                             f"{tuple(labels.shape)}")
        n, c = logits.shape
        if isinstance(labels, np.ndarray) and self._capture is None:  # host: checking is free
            self._check_labels(labels, c)
        logits = self._c(logits)
        labels = self._c(labels, np.int64)
        losses = self.empty((n,), logits.dtype)
        grad = self.empty(logits.shape, logits.dtype)
        self._rows(lk.softmax_cross_entropy, n, logits, labels, losses, grad)
        if not reduce:
            return losses, grad
        loss = self._mean(losses)
        if loss != loss:  # NaN: find out whether a label caused it (kernels cannot raise)
            self._check_labels(self.to_numpy(labels), c)
        return loss, grad

    def _elementwise_loss(self, op, pred, target):
        self._same_shape(op, pred, target, ("pred", "target"))
        pred = self._c(pred)
        target = self._c(target, pred.dtype)
        losses = self.empty((pred.size,), pred.dtype)
        grad = self.empty(pred.shape, pred.dtype)
        return pred, target, losses, grad

    def mse(self, pred, target, reduce=True):
        pred, target, losses, grad = self._elementwise_loss("mse", pred, target)
        t = pred.dtype.type
        self._launch_flat(lk.mse, pred.size, pred.reshape(-1), target.reshape(-1), losses,
                          grad.reshape(-1), t(2.0 / pred.size))
        return (self._mean(losses) if reduce else losses), grad

    def binary_cross_entropy(self, pred, target, from_logits=False, reduce=True):
        pred, target, losses, grad = self._elementwise_loss("binary_cross_entropy", pred, target)
        t = pred.dtype.type
        args = (pred.reshape(-1), target.reshape(-1), losses, grad.reshape(-1))
        if from_logits:
            self._launch_flat(lk.binary_cross_entropy_logits, pred.size, *args, t(pred.size))
        else:
            self._launch_flat(lk.binary_cross_entropy, pred.size, *args,
                              t(BCE_EPS), t(1 - BCE_EPS), t(pred.size))
            if reduce:
                loss = self._mean(losses)
                if loss == math.inf:  # the kernel's mark of a prediction outside [0, 1]
                    raise ValueError(BCE_RANGE.format(""))
                return loss, grad
        return (self._mean(losses) if reduce else losses), grad
