"""NumPy convolutions, the reference for the CUDA convolution kernels.

Ordinary and grouped convolutions: im2col through strided windows and
batched BLAS. Depthwise (one input channel per group): a sum over the
K_h x K_w kernel cells of whole-array products, which beats thousands of
tiny matrix products. No Python loop runs over pixels.

Layout: x (N, C, H, W); w (O, C // groups, KH, KW); pads (top, bottom, left, right).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..convshape import (check_grad_shape, check_groups, check_groups_arg, check_ndim4,
                         conv_output_hw)


def _windows(x, k_hw, stride, pads, dilation):
    """A strided view (N, C, OH, OW, KH, KW) of the padded input, and (OH, OW)."""
    kh, kw = k_hw
    oh, ow = conv_output_hw(x.shape[2:], k_hw, stride, pads, dilation)
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(pads) else x
    win = sliding_window_view(xp, (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1),
                              axis=(2, 3))
    return win[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]][:, :, :oh, :ow], (oh, ow)


def _cols(x, k_hw, stride, pads, dilation, groups):
    """im2col: (G, N*OH*OW, Cg*KH*KW), and (OH, OW)."""
    n, c = x.shape[:2]
    win, (oh, ow) = _windows(x, k_hw, stride, pads, dilation)
    cg = c // groups
    cols = win.reshape(n, groups, cg, oh, ow, *k_hw).transpose(1, 0, 3, 4, 2, 5, 6)
    return cols.reshape(groups, n * oh * ow, cg * k_hw[0] * k_hw[1]), (oh, ow)


def _dy_groups(dy, groups):
    """(N, O, OH, OW) -> (G, Og, N*OH*OW)."""
    n, o, oh, ow = dy.shape
    return dy.reshape(n, groups, o // groups, oh, ow).transpose(1, 2, 0, 3, 4).reshape(
        groups, o // groups, n * oh * ow)


def _depthwise(w, groups):
    return w.shape[1] == 1 and groups > 1


def conv2d(x, w, stride, pads, dilation, groups=1):
    check_ndim4("conv2d", x=x, w=w)
    check_groups("conv2d", x.shape[1], w.shape, groups)
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    if _depthwise(w, groups):
        win, (oh, ow) = _windows(x, (kh, kw), stride, pads, dilation)
        wm = w.reshape(groups, o // groups, kh, kw)
        y = np.zeros((n, groups, o // groups, oh, ow), np.result_type(x, w))
        for i in range(kh):
            for j in range(kw):
                y += win[:, :, None, :, :, i, j] * wm[None, :, :, i, j, None, None]
        return y.reshape(n, o, oh, ow)
    cols, (oh, ow) = _cols(x, (kh, kw), stride, pads, dilation, groups)
    wg = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    y = cols @ wg  # (G, N*OH*OW, Og)
    y = y.reshape(groups, n, oh, ow, o // groups).transpose(1, 0, 4, 2, 3)
    return np.ascontiguousarray(y.reshape(n, o, oh, ow))


def conv2d_backward_weight(dy, x, k_hw, stride, pads, dilation, groups=1):
    op = "conv2d_backward_weight"
    check_ndim4(op, dy=dy, x=x)
    n, o, oh, ow = dy.shape
    cg = x.shape[1] // check_groups_arg(op, groups)
    check_groups(op, x.shape[1], (o, cg) + tuple(k_hw), groups, "dw")
    check_grad_shape(op, dy, x.shape[0], o, x.shape[2:], k_hw, stride, pads, dilation)
    if cg == 1 and groups > 1:
        win, _ = _windows(x, k_hw, stride, pads, dilation)
        dy5 = dy.reshape(n, groups, o // groups, oh, ow)
        dw = np.empty((groups, o // groups) + tuple(k_hw), dy.dtype)
        for i in range(k_hw[0]):
            for j in range(k_hw[1]):
                dw[:, :, i, j] = np.einsum("ncmhw,nchw->cm", dy5, win[..., i, j], optimize=True)
        return dw.reshape(o, 1, *k_hw)
    cols, _ = _cols(x, k_hw, stride, pads, dilation, groups)
    dw = _dy_groups(dy, groups) @ cols  # (G, Og, Cg*KH*KW)
    return np.ascontiguousarray(dw.reshape(o, cg, *k_hw))


def conv2d_backward_input(dy, w, in_hw, stride, pads, dilation, groups=1):
    op = "conv2d_backward_input"
    check_ndim4(op, dy=dy, w=w)
    n, o, oh, ow = dy.shape
    _, cg, kh, kw = w.shape
    h, wd = in_hw
    check_groups(op, cg * check_groups_arg(op, groups), w.shape, groups)
    check_grad_shape(op, dy, n, o, in_hw, (kh, kw), stride, pads, dilation)
    if _depthwise(w, groups):
        dy5 = dy.reshape(n, groups, o // groups, oh, ow)
        wm = w.reshape(groups, o // groups, kh, kw)

        def cell(i, j):  # (N, C, OH, OW): what kernel cell (i, j) sends back
            return np.einsum("ncmhw,cm->nchw", dy5, wm[:, :, i, j], optimize=True)
    else:
        wg = w.reshape(groups, o // groups, cg * kh * kw)
        dcols = _dy_groups(dy, groups).transpose(0, 2, 1) @ wg  # (G, N*OH*OW, Cg*KH*KW)
        dcols = dcols.reshape(groups, n, oh, ow, cg, kh, kw).transpose(1, 0, 4, 5, 6, 2, 3)
        dcols = dcols.reshape(n, groups * cg, kh, kw, oh, ow)

        def cell(i, j):
            return dcols[:, :, i, j]
    top, bottom, left, right = pads
    dxp = np.zeros((n, groups * cg, h + top + bottom, wd + left + right), dy.dtype)
    sh, sw = stride
    for i in range(kh):  # col2im: one strided add per kernel cell
        r0 = i * dilation[0]
        for j in range(kw):
            c0 = j * dilation[1]
            dxp[:, :, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw] += cell(i, j)
    return np.ascontiguousarray(dxp[:, :, top:top + h, left:left + wd])
