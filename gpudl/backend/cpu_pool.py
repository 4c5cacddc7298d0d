"""NumPy max and mean pooling, the reference for the CUDA pooling kernels.

Each kernel cell is one strided slice of the padded input (as in cpu_conv),
folded into a running maximum or sum, so no window array is ever built; a
window that covers the whole map (global pooling) is one reduction. The
backward passes scatter with bincount (max) or one strided add per cell
(mean). No Python loop runs over pixels.
"""
from __future__ import annotations

import numpy as np

from ..convshape import check_ndim4, check_pool_grad, check_pool_pads, conv_output_hw
from ..errors import ShapeError
from .cpu_conv import _cells

_ONE = (1, 1)


def _padded(x, pads, fill):
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)


def _whole_map(x_hw, k_hw, pads):
    """A window that is the whole map (global pooling): one reduction, no cells."""
    return tuple(k_hw) == tuple(x_hw) and not any(pads)


def max_pool2d(x, k_hw, stride, pads):
    check_ndim4("max_pool2d", x=x)
    check_pool_pads("max_pool2d", k_hw, pads)
    oh, ow = conv_output_hw(x.shape[2:], k_hw, stride, pads, _ONE, "pool2d")
    xp = _padded(x, pads, -np.inf)
    # a running maximum over the kernel cells; ">" keeps the first maximum on ties
    y = np.full(x.shape[:2] + (oh, ow), -np.inf, x.dtype)
    local = np.zeros(y.shape, np.int64)
    for i, j, (rows, cols) in _cells(k_hw, (oh, ow), stride, _ONE):
        v = xp[:, :, rows, cols]
        better = v > y
        np.copyto(y, v, where=better)
        np.copyto(local, i * x.shape[3] + j, where=better)  # the cell's offset in the image
    corner = ((np.arange(oh)[:, None] * stride[0] - pads[0]) * x.shape[3]
              + np.arange(ow)[None, :] * stride[1] - pads[2])
    local += corner  # flat index of the maximum in its (unpadded) map
    return y, local


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
    return avg_sum(ones, k_hw, stride, pads)[0, 0]


def avg_sum(x, k_hw, stride, pads):
    """Each window's sum, padding counted as zero: one strided add per cell."""
    oh, ow = conv_output_hw(x.shape[2:], k_hw, stride, pads, _ONE, "pool2d")
    xp = _padded(x, pads, 0)
    total = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
    for _, _, (rows, cols) in _cells(k_hw, (oh, ow), stride, _ONE):
        total += xp[:, :, rows, cols]
    return total


def avg_pool2d(x, k_hw, stride, pads):
    check_ndim4("avg_pool2d", x=x)
    if _whole_map(x.shape[2:], k_hw, pads):
        return x.mean(axis=(2, 3), keepdims=True, dtype=x.dtype)
    total = avg_sum(x, k_hw, stride, pads)
    total /= _counts(x.shape[2:], k_hw, stride, pads).astype(x.dtype)
    return total


def avg_pool2d_backward(dy, in_hw, k_hw, stride, pads):
    check_ndim4("avg_pool2d_backward", dy=dy)
    n, c, oh, ow = dy.shape
    check_pool_grad("avg_pool2d_backward", dy, in_hw, k_hw, stride, pads)
    if _whole_map(in_hw, k_hw, pads):
        share = dy / dy.dtype.type(in_hw[0] * in_hw[1])
        return np.broadcast_to(share, (n, c) + tuple(in_hw)).copy()
    share = (dy / _counts(in_hw, k_hw, stride, pads)).astype(dy.dtype)
    top, bottom, left, right = pads
    dxp = np.zeros((n, c, in_hw[0] + top + bottom, in_hw[1] + left + right), dy.dtype)
    for _, _, (rows, cols) in _cells(k_hw, (oh, ow), stride, _ONE):
        dxp[:, :, rows, cols] += share
    return dxp[:, :, top:top + in_hw[0], left:left + in_hw[1]].copy()
