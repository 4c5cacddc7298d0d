"""Optimizer launches for the CUDA backend: one fused kernel per update
(kernels/optim.py), and gradient clipping's factor computed on the device.

Each kernel reads its scalars from a device row (gpudl/backend/hyper.py) and
the clipping factor from a (1,) device array. The optimizer hands over rows
it filled through Backend.step_input, so nothing is copied per launch; a
direct call with plain numbers (tests, user code) gets its row copied up
here, which a captured step refuses (CaptureError), as it should.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..kernels import optim as ok
from ..kernels import reduce as rk
from . import hyper as hp


def _cdiv(a, b):
    return -(-a // b)


def _args(be, op, param, grad, **slots):
    """Checks, then (flat param, flat grad of param's dtype)."""
    be._check_state(op, param, grad, **slots)
    return param.reshape(-1), be._c(grad, param.dtype).reshape(-1)


def _row(be, hyper, values, dtype):
    if hyper is None:
        return be.asarray(np.asarray(values, np.float64), dtype=dtype)
    if hyper.dtype != dtype or hyper.ndim != 1 or hyper.shape[0] != len(values):
        raise ShapeError(f"optimizer hyper row must be ({len(values)},) of {np.dtype(dtype)}, "
                         f"got shape {tuple(hyper.shape)} of {hyper.dtype}")
    return hyper


def _scale(be, grad_scale, dtype):
    """The clipping factor as a (1,) device array typed like the parameter."""
    if hasattr(grad_scale, "shape"):
        return grad_scale
    if float(grad_scale) == 1.0:  # the common case: one cached array per dtype
        return be._constant(1.0, dtype)
    return be.asarray(np.array([grad_scale], np.float64), dtype=dtype)


def sgd_update(be, param, grad, velocity, lr, momentum, nesterov, weight_decay, l1,
               grad_scale, hyper):
    if momentum != 0.0 and velocity is None:
        raise ShapeError("sgd_update with momentum needs a velocity array, got None")
    p, g = _args(be, "sgd_update", param, grad, velocity=velocity)
    row = _row(be, hyper, hp.sgd(lr, momentum, weight_decay, l1), param.dtype)
    sc = _scale(be, grad_scale, param.dtype)
    if momentum == 0.0:
        be._launch_flat(ok.sgd, p.size, p, g, row, sc)
    else:
        be._launch_flat(ok.sgd_momentum, p.size, p, g, velocity.reshape(-1), row, sc,
                        bool(nesterov))


def adam_update(be, param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay, decoupled,
                l1, grad_scale, hyper):
    p, g = _args(be, "adam_update", param, grad, m=m, v=v)
    row = _row(be, hyper, hp.adam(lr, beta1, beta2, eps, step, weight_decay, decoupled, l1),
               param.dtype)
    be._launch_flat(ok.adam, p.size, p, g, m.reshape(-1), v.reshape(-1), row,
                    _scale(be, grad_scale, param.dtype))


def rmsprop_update(be, param, grad, square_avg, buf, lr, alpha, eps, momentum, weight_decay,
                   l1, grad_scale, hyper):
    if momentum != 0.0 and buf is None:
        raise ShapeError("rmsprop_update with momentum needs a buf array, got None")
    p, g = _args(be, "rmsprop_update", param, grad, square_avg=square_avg, buf=buf)
    row = _row(be, hyper, hp.rmsprop(lr, alpha, eps, momentum, weight_decay, l1), param.dtype)
    sc = _scale(be, grad_scale, param.dtype)
    if momentum == 0.0:
        be._launch_flat(ok.rmsprop, p.size, p, g, square_avg.reshape(-1), row, sc)
    else:
        be._launch_flat(ok.rmsprop_momentum, p.size, p, g, square_avg.reshape(-1),
                        buf.reshape(-1), row, sc)


def adagrad_update(be, param, grad, sum_sq, lr, eps, weight_decay, l1, grad_scale, hyper):
    p, g = _args(be, "adagrad_update", param, grad, sum_sq=sum_sq)
    row = _row(be, hyper, hp.adagrad(lr, eps, weight_decay, l1), param.dtype)
    be._launch_flat(ok.adagrad, p.size, p, g, sum_sq.reshape(-1), row,
                    _scale(be, grad_scale, param.dtype))


def _sum_squares_into(be, flat, dtype):
    """Every array's block partials into its slice of one buffer (sum_squares),
    the buffer summed by one block (sum_1d): a (1,) array of dtype."""
    blocks = [max(1, min(_cdiv(a.size, be._threads), be._max_blocks)) for a in flat]
    partial = be.empty((sum(blocks),), dtype)
    out = be.empty((1,), dtype)
    offset = 0
    for a, b in zip(flat, blocks):
        be.launch(ok.sum_squares, b, be._threads, a, partial[offset:offset + b])
        offset += b
    be.launch(rk.sum_1d, 1, rk.SUM_THREADS, partial, out)
    return out


def _groups(be, arrays):
    groups = {}
    for a in arrays:
        if a.size:
            groups.setdefault(np.dtype(a.dtype), []).append(be._c(a).reshape(-1))
    return groups


def sum_squares(be, arrays):
    """One host read per dtype present (Backend.sum_squares)."""
    return sum(float(be.to_numpy(_sum_squares_into(be, flat, dtype))[0])
               for dtype, flat in _groups(be, arrays).items())


def clip_scales(be, grads, clip_norm):
    """(norm_and_scale (2,) float64, {dtype: (1,) scale}) on the device: the
    per-dtype sums widened into one float64 vector, then one thread forms
    N and the factor (kernels/optim.clip_factor), then the factor rounded to
    each dtype. No host read: Optimizer.last_grad_norm reads it on demand."""
    groups = _groups(be, grads)
    totals = be.zeros((max(1, len(groups)),), np.float64)
    for i, (dtype, flat) in enumerate(groups.items()):
        be.launch(ok.store_f64, 1, 1, _sum_squares_into(be, flat, dtype), totals, i)
    norm_scale = be.empty((2,), np.float64)
    be.launch(ok.clip_factor, 1, 1, totals, np.float64(clip_norm), norm_scale)
    scales = {}
    for g in grads:
        dt = np.dtype(g.dtype)
        if dt not in scales:
            scales[dt] = be.empty((1,), dt)
            be.launch(ok.narrow_from_f64, 1, 1, norm_scale, 1, scales[dt])
    return norm_scale, scales
