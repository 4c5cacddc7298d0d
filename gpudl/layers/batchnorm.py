"""Batch normalization: gamma (X - mu) / sqrt(sigma^2 + eps) + beta, as in the notes.

In training mu and sigma^2 come from the batch (per channel, over N, H and W)
and the running averages move towards them; at inference the running
averages are used. Conventions follow PyTorch so weights move between the
two: running = (1 - momentum) running + momentum batch, with momentum = 0.1;
the running variance takes the unbiased batch variance (times M / (M - 1),
M = N H W), while the batch itself is normalised with the biased one.

Frozen (``trainable = False``, as Sequential.freeze sets it), a BatchNorm
always runs in inference mode, even when the model trains: it normalises
with its running statistics and leaves them unchanged, and gamma and beta
get no gradients. tf.keras does the same since TensorFlow 2.0 (so does
Keras 3), and it is the usual practice when fine-tuning: a few batches of
new data would otherwise overwrite statistics learned on the large data
set, and the layers after it would see inputs scaled differently from
those they were trained on. The input gradient is then that of a fixed
affine map, dx = gamma / sqrt(running_var + eps) * dy per channel.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import Layer


class BatchNorm(Layer):
    """For (N, C) and (N, C, H, W) inputs; parameters gamma and beta (C each),
    buffers running_mean and running_var (saved with the model, not trained)."""

    no_decay = frozenset({"gamma", "beta"})

    def __init__(self, num_features, momentum=0.1, eps=1e-5, *, dtype=np.float32, name=None):
        super().__init__(name)
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features <= 0:
            raise ValueError(f"BatchNorm: num_features must be a positive integer, "
                             f"got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must lie in [0, 1], got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"BatchNorm: eps must be positive, got {eps!r}")
        self.num_features, self.momentum, self.eps = int(num_features), float(momentum), float(eps)
        self.dtype = np.dtype(dtype)
        be, c = self.backend, self.num_features
        self.params["gamma"] = be.asarray(np.ones(c), dtype=self.dtype)
        self.params["beta"] = be.zeros((c,), self.dtype)
        self.buffers["running_mean"] = be.zeros((c,), self.dtype)
        self.buffers["running_var"] = be.asarray(np.ones(c), dtype=self.dtype)
        self._saved = None

    def _as4d(self, x):
        if x.ndim not in (2, 4) or x.shape[1] != self.num_features:
            raise ShapeError(f"layer '{self.name}' (BatchNorm) expects (N, {self.num_features}) "
                             f"or (N, {self.num_features}, H, W), got {tuple(x.shape)}")
        return x if x.ndim == 4 else x.reshape(x.shape[0], x.shape[1], 1, 1)

    def forward(self, x, training=False):
        be, x4 = self.backend, self._as4d(x)
        g, b = self.params["gamma"], self.params["beta"]
        if training and not self.trainable:
            training = False  # frozen: inference mode, running statistics kept (see above)
        if training:
            m = x4.shape[0] * x4.shape[2] * x4.shape[3]
            if m < 2:
                raise ValueError(f"layer '{self.name}' (BatchNorm): training needs more than one "
                                 f"value per channel, got input of shape {tuple(x.shape)}")
            mean, var = be.batchnorm_stats(x4)
            y, invstd = be.batchnorm_forward(x4, mean, var, g, b, self.eps)
            mom = self.momentum
            # in place: the buffers keep their address, so a captured step updates them
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            be.axpby(1 - mom, rm, mom, mean, out=rm)
            be.axpby(1 - mom, rv, mom * m / (m - 1), var, out=rv)
            self._saved = (x4, mean, invstd)
        else:
            y, _ = be.batchnorm_forward(x4, self.buffers["running_mean"],
                                        self.buffers["running_var"], g, b, self.eps)
            # frozen: backward is the fixed affine map's, which needs only the shape
            self._saved = None if self.trainable else ("frozen", x4.shape)
        self._out_shape = tuple(x.shape)
        return y.reshape(x.shape)

    def backward(self, grad, need_input_grad=True):
        if self._out_shape is not None:
            self._check_grad(grad)  # before forward, the error below says what forward it needs
        if self._saved is not None and isinstance(self._saved[0], str):  # ("frozen", shape)
            if not need_input_grad:
                return None
            # dx = gamma invstd_running dy: the forward map itself, applied to dy
            # with zero mean and zero shift
            be, c = self.backend, self.num_features
            zeros = be.zeros((c,), self.dtype)
            dx, _ = be.batchnorm_forward(grad.reshape(self._saved[1]), zeros,
                                         self.buffers["running_var"], self.params["gamma"],
                                         zeros, self.eps)
            return dx.reshape(grad.shape)
        if self._saved is None:
            raise RuntimeError(f"layer '{self.name}' (BatchNorm): backward needs a forward with "
                               f"training=True (the batch statistics it differentiates)")
        x4, mean, invstd = self._saved
        dx, dgamma, dbeta = self.backend.batchnorm_backward(grad.reshape(x4.shape), x4, mean,
                                                            invstd, self.params["gamma"])
        if self.trainable:
            self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
        return dx.reshape(grad.shape)

    def output_shape(self, input_shape):
        if len(input_shape) not in (1, 3) or input_shape[0] != self.num_features:
            raise ShapeError(f"layer '{self.name}' (BatchNorm) expects {self.num_features} "
                             f"channels, got per-sample shape {tuple(input_shape)}")
        return tuple(input_shape)

    def flops(self, input_shape):
        return 2 * int(np.prod(input_shape))  # a scale and a shift per element

    def get_config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
                "dtype": self.dtype.name, "name": self.name}
