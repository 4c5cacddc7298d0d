"""NumPy batch normalization, the reference for the CUDA batch-norm kernels.

Statistics over N, H, W per channel, in two passes (mean, then squared
deviations from it): E[x^2] - E[x]^2 cancels catastrophically in float32
when the mean is large against the spread.
"""
from __future__ import annotations

import numpy as np

from ..convshape import check_ndim4
from ..errors import ShapeError

_AXES = (0, 2, 3)


def _per_channel(op, c, **vectors):
    for name, v in vectors.items():
        if tuple(v.shape) != (c,):
            raise ShapeError(f"{op}: {name} must have shape ({c},) for {c} channels, "
                             f"got {tuple(v.shape)}")


def _bcast(v):
    return v.reshape(1, -1, 1, 1)


def batchnorm_stats(x):
    check_ndim4("batchnorm_stats", x=x)
    mean = x.mean(axis=_AXES)
    var = np.square(x - _bcast(mean)).mean(axis=_AXES)
    return mean.astype(x.dtype), var.astype(x.dtype)


def batchnorm_forward(x, mean, var, gamma, beta, eps):
    check_ndim4("batchnorm_forward", x=x)
    _per_channel("batchnorm_forward", x.shape[1], mean=mean, var=var, gamma=gamma, beta=beta)
    invstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    y = (x - _bcast(mean)) * _bcast(gamma * invstd) + _bcast(beta)
    return y.astype(x.dtype, copy=False), invstd


def batchnorm_backward(dy, x, mean, invstd, gamma):
    check_ndim4("batchnorm_backward", dy=dy, x=x)
    if dy.shape != x.shape:
        raise ShapeError(f"batchnorm_backward: dy of shape {dy.shape} and x of shape {x.shape} "
                         f"differ")
    _per_channel("batchnorm_backward", x.shape[1], mean=mean, invstd=invstd, gamma=gamma)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    xhat = (x - _bcast(mean)) * _bcast(invstd)
    dbeta = dy.sum(axis=_AXES)
    dgamma = (dy * xhat).sum(axis=_AXES)
    dx = _bcast(gamma * invstd) * (dy - _bcast(dbeta / m) - xhat * _bcast(dgamma / m))
    return dx.astype(x.dtype, copy=False), dgamma.astype(x.dtype), dbeta.astype(x.dtype)
