"""Pooling launches for the CUDA backend: shape checks, then the kernels of
gpudl.kernels.pool. Functions take the backend (its _launch_flat, empty, _c).

max_pool2d_backward takes the pooling geometry so that its gather visits
only the (at most KH*KW) windows that contain each input element.
"""
from __future__ import annotations

import numpy as np

from ..convshape import check_ndim4, check_pool_grad, check_pool_pads, conv_output_hw
from ..errors import ShapeError
from ..kernels import pool as pk

_ONE = (1, 1)


def _geometry(k_hw, stride, pads):
    """Kernel scalar arguments (kh, kw, sh, sw, top, left) as Python ints."""
    return (int(k_hw[0]), int(k_hw[1]), int(stride[0]), int(stride[1]),
            int(pads[0]), int(pads[2]))


def max_pool2d(be, x, k_hw, stride, pads):
    check_ndim4("max_pool2d", x=x)
    check_pool_pads("max_pool2d", k_hw, pads)
    x = be._c(x)
    n, c, h, w = x.shape
    oh, ow = conv_output_hw((h, w), k_hw, stride, pads, _ONE, "max_pool2d")
    y = be.empty((n, c, oh, ow), x.dtype)
    argmax = be.empty((n, c, oh, ow), np.int64)
    be._launch_flat(pk.max_pool2d_fwd, y.size, x, y, argmax, *_geometry(k_hw, stride, pads))
    return y, argmax


def max_pool2d_backward(be, dy, argmax, in_hw, k_hw, stride, pads):
    check_ndim4("max_pool2d_backward", dy=dy, argmax=argmax)
    if tuple(argmax.shape) != tuple(dy.shape):
        raise ShapeError(f"max_pool2d_backward: argmax of shape {tuple(argmax.shape)} does not "
                         f"match dy of shape {tuple(dy.shape)}")
    dy = be._c(dy)
    argmax = be._c(argmax, np.int64)
    n, c, oh, ow = dy.shape
    h, w = int(in_hw[0]), int(in_hw[1])
    check_pool_grad("max_pool2d_backward", dy, (h, w), k_hw, stride, pads)
    geo = _geometry(k_hw, stride, pads)
    dx = be.empty((n, c, h, w), dy.dtype)
    be._launch_flat(pk.max_pool2d_bwd, dx.size, dy, argmax, dx, *geo)
    return dx


def avg_pool2d(be, x, k_hw, stride, pads):
    check_ndim4("avg_pool2d", x=x)
    x = be._c(x)
    n, c, h, w = x.shape
    oh, ow = conv_output_hw((h, w), k_hw, stride, pads, _ONE, "avg_pool2d")
    y = be.empty((n, c, oh, ow), x.dtype)
    be._launch_flat(pk.avg_pool2d_fwd, y.size, x, y, *_geometry(k_hw, stride, pads))
    return y


def avg_pool2d_backward(be, dy, in_hw, k_hw, stride, pads):
    check_ndim4("avg_pool2d_backward", dy=dy)
    dy = be._c(dy)
    h, w = int(in_hw[0]), int(in_hw[1])
    check_pool_grad("avg_pool2d_backward", dy, (h, w), k_hw, stride, pads)
    dx = be.empty((dy.shape[0], dy.shape[1], h, w), dy.dtype)
    be._launch_flat(pk.avg_pool2d_bwd, dx.size, dy, dx, *_geometry(k_hw, stride, pads))
    return dx
