"""NumPy max and mean pooling, the reference for the CUDA pooling kernels.

Windows come from one strided slice per kernel cell (as in cpu_conv); the
backward passes scatter with bincount (max) or one strided add per cell
(mean). No Python loop runs over pixels.
"""
from __future__ import annotations

import numpy as np

from ..convshape import check_ndim4, check_pool_grad, check_pool_pads, conv_output_hw
from ..errors import ShapeError
from .cpu_conv import _cells

_ONE = (1, 1)


def _windows(x, k_hw, stride, pads, fill):
    """(N, C, OH, OW, KH*KW) window values over x padded with ``fill``."""
    n, c, h, w = x.shape
    oh, ow = conv_output_hw((h, w), k_hw, stride, pads, _ONE, "pool2d")
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    win = np.empty((n, c, oh, ow, k_hw[0] * k_hw[1]), x.dtype)
    for i, j, (rows, cols) in _cells(k_hw, (oh, ow), stride, _ONE):
        win[..., i * k_hw[1] + j] = xp[:, :, rows, cols]
    return win, (oh, ow)


def max_pool2d(x, k_hw, stride, pads):
    check_ndim4("max_pool2d", x=x)
    check_pool_pads("max_pool2d", k_hw, pads)
    win, (oh, ow) = _windows(x, k_hw, stride, pads, -np.inf)
    local = win.argmax(axis=-1)  # the first maximum on ties
    y = np.take_along_axis(win, local[..., None], axis=-1)[..., 0]
    ih = np.arange(oh)[:, None] * stride[0] - pads[0] + local // k_hw[1]
    iw = np.arange(ow)[None, :] * stride[1] - pads[2] + local % k_hw[1]
    return y, (ih * x.shape[3] + iw).astype(np.int64)


def max_pool2d_backward(dy, argmax, in_hw, k_hw, stride, pads):
    check_ndim4("max_pool2d_backward", dy=dy)
    if argmax.shape != dy.shape:
        raise ShapeError(f"max_pool2d_backward: argmax of shape {argmax.shape} does not match "
                         f"dy of shape {dy.shape}")
    check_pool_grad("max_pool2d_backward", dy, in_hw, k_hw, stride, pads)
    n, c = dy.shape[:2]
    plane = in_hw[0] * in_hw[1]
    target = (np.arange(n * c).reshape(n, c, 1, 1) * plane + argmax).reshape(-1)
    dx = np.bincount(target, weights=dy.reshape(-1), minlength=n * c * plane)
    return dx.astype(dy.dtype).reshape(n, c, *in_hw)


def _counts(in_hw, k_hw, stride, pads):
    """(OH, OW): how many in-image elements each window holds."""
    ones = np.ones((1, 1) + tuple(in_hw))
    return _windows(ones, k_hw, stride, pads, 0.0)[0].sum(axis=-1)[0, 0]


def avg_pool2d(x, k_hw, stride, pads):
    check_ndim4("avg_pool2d", x=x)
    win, _ = _windows(x, k_hw, stride, pads, 0)
    return (win.sum(axis=-1) / _counts(x.shape[2:], k_hw, stride, pads)).astype(x.dtype)


def avg_pool2d_backward(dy, in_hw, k_hw, stride, pads):
    check_ndim4("avg_pool2d_backward", dy=dy)
    n, c, oh, ow = dy.shape
    check_pool_grad("avg_pool2d_backward", dy, in_hw, k_hw, stride, pads)
    share = (dy / _counts(in_hw, k_hw, stride, pads)).astype(dy.dtype)
    top, bottom, left, right = pads
    dxp = np.zeros((n, c, in_hw[0] + top + bottom, in_hw[1] + left + right), dy.dtype)
    for _, _, (rows, cols) in _cells(k_hw, (oh, ow), stride, _ONE):
        dxp[:, :, rows, cols] += share
    return dxp[:, :, top:top + in_hw[0], left:left + in_hw[1]].copy()
