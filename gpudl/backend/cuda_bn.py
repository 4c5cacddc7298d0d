"""Batch-normalization launches for the CUDA backend: shape checks, then the
kernels of gpudl.kernels.batchnorm. Functions take the backend (its launch,
empty, _c). Semantics follow cpu_bn.py.

Each per-channel sum runs as a reduce_grid of (channel, y-slice) blocks into
(by, C) partials, then a one-thread-per-channel pass adding the rows in
order (which also divides by M, or scales by invstd), so the second pass
always runs, even when by == 1, and results are deterministic.
"""
from __future__ import annotations

from ..convshape import check_ndim4
from ..errors import ShapeError
from ..kernels import batchnorm as bk
from ..kernels import reduce as rk
from .cuda_conv import SIM_REDUCE_THREADS


def _cdiv(a, b):
    return -(-a // b)


def _per_channel(op, x, **vectors):
    c = x.shape[1]
    for name, v in vectors.items():
        if tuple(v.shape) != (c,):
            raise ShapeError(f"{op}: {name} must have shape ({c},) for x of shape "
                             f"{tuple(x.shape)}, got {name} of shape {tuple(v.shape)}")


def _threads(be):
    # Each simulated syncthreads is slow and the tree runs log2(threads) of
    # them per channel: the simulator gets small blocks (as cuda_conv does).
    threads = SIM_REDUCE_THREADS if be.simulator else be._threads
    assert threads & (threads - 1) == 0 and threads <= rk.BLOCK_MAX
    return threads


def _grid(be, c, m):
    """(bx, by) blocks and threads for C channel sums of M terms each."""
    threads = _threads(be)
    return rk.reduce_grid(c, m, be._max_blocks, threads), threads


def _view3(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w)


def _channel_launch(be, kernel, c, *args):
    be.launch(kernel, max(1, _cdiv(c, be._threads)), be._threads, *args)


def batchnorm_stats(be, x):
    check_ndim4("batchnorm_stats", x=x)
    x = be._c(x)
    n, c, h, w = x.shape
    m = n * h * w
    mean = be.empty((c,), x.dtype)
    var = be.empty((c,), x.dtype)
    if c == 0:
        return mean, var
    (bx, by), threads = _grid(be, c, m)
    x3 = _view3(x)
    t = x.dtype.type
    partial = be.empty((by, c), x.dtype)
    be.launch(rk.sum_channels_partial, (bx, by), threads, x3, partial)
    _channel_launch(be, bk.channel_mean, c, partial, t(m), mean)
    be.launch(bk.sqdev_partial, (bx, by), threads, x3, mean, partial)
    _channel_launch(be, bk.channel_mean, c, partial, t(m), var)
    return mean, var


def batchnorm_forward(be, x, mean, var, gamma, beta, eps):
    check_ndim4("batchnorm_forward", x=x)
    _per_channel("batchnorm_forward", x, mean=mean, var=var, gamma=gamma, beta=beta)
    x = be._c(x)
    mean, var, gamma, beta = (be._c(v, x.dtype) for v in (mean, var, gamma, beta))
    n, c, h, w = x.shape
    t = x.dtype.type
    invstd = be.empty((c,), x.dtype)
    y = be.empty(x.shape, x.dtype)
    if c == 0:
        return y, invstd
    _channel_launch(be, bk.channel_invstd, c, var, t(eps), invstd)
    be._launch_flat(bk.forward_apply, x.size, x.reshape(-1), mean, invstd, gamma, beta,
                    h * w, y.reshape(-1))
    return y, invstd


def batchnorm_backward(be, dy, x, mean, invstd, gamma):
    check_ndim4("batchnorm_backward", dy=dy, x=x)
    if dy.shape != x.shape:
        raise ShapeError(f"batchnorm_backward: dy has shape {tuple(dy.shape)} but x has shape "
                         f"{tuple(x.shape)}; they must match")
    _per_channel("batchnorm_backward", x, mean=mean, invstd=invstd, gamma=gamma)
    dy, x = be._pair(dy, x)
    mean, invstd, gamma = (be._c(v, x.dtype) for v in (mean, invstd, gamma))
    n, c, h, w = x.shape
    m = n * h * w
    t = x.dtype.type
    dx = be.empty(x.shape, x.dtype)
    dgamma = be.empty((c,), x.dtype)
    dbeta = be.empty((c,), x.dtype)
    if c == 0:
        return dx, dgamma, dbeta
    (bx, by), threads = _grid(be, c, m)
    p_dy = be.empty((by, c), x.dtype)
    p_dyxmu = be.empty((by, c), x.dtype)
    be.launch(bk.backward_partial, (bx, by), threads, _view3(dy), _view3(x), mean, p_dy, p_dyxmu)
    _channel_launch(be, bk.backward_finish, c, p_dy, p_dyxmu, invstd, dgamma, dbeta)
    be._launch_flat(bk.backward_apply, x.size, dy.reshape(-1), x.reshape(-1), mean, invstd,
                    gamma, dgamma, dbeta, t(1.0 / m if m else 0.0), h * w, dx.reshape(-1))
    return dx, dgamma, dbeta
