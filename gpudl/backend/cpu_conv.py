"""NumPy convolutions: im2col through strided windows and batched BLAS, the
reference for the CUDA convolution kernels. No Python loop runs over pixels;
col2im loops over the K_h x K_w kernel cells only.

Layout: x (N, C, H, W); w (O, C // groups, KH, KW); pads (top, bottom, left, right).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..convshape import conv_output_hw


def _pad(x, pads):
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def _cols(x, k_hw, stride, pads, dilation, groups):
    """im2col: (G, N*OH*OW, Cg*KH*KW), and (OH, OW)."""
    n, c, h, w = x.shape
    kh, kw = k_hw
    oh, ow = conv_output_hw((h, w), k_hw, stride, pads, dilation)
    xp = _pad(x, pads)
    win = sliding_window_view(xp, (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1),
                              axis=(2, 3))
    win = win[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]][:, :, :oh, :ow]
    cg = c // groups
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return cols.reshape(groups, n * oh * ow, cg * kh * kw), (oh, ow)


def _dy_groups(dy, groups):
    """(N, O, OH, OW) -> (G, Og, N*OH*OW)."""
    n, o, oh, ow = dy.shape
    return dy.reshape(n, groups, o // groups, oh, ow).transpose(1, 2, 0, 3, 4).reshape(
        groups, o // groups, n * oh * ow)


def conv2d(x, w, stride, pads, dilation, groups=1):
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    cols, (oh, ow) = _cols(x, (kh, kw), stride, pads, dilation, groups)
    wg = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    y = cols @ wg  # (G, N*OH*OW, Og)
    y = y.reshape(groups, n, oh, ow, o // groups).transpose(1, 0, 4, 2, 3)
    return np.ascontiguousarray(y.reshape(n, o, oh, ow))


def conv2d_backward_weight(dy, x, k_hw, stride, pads, dilation, groups=1):
    o = dy.shape[1]
    cols, _ = _cols(x, k_hw, stride, pads, dilation, groups)
    dw = _dy_groups(dy, groups) @ cols  # (G, Og, Cg*KH*KW)
    return np.ascontiguousarray(dw.reshape(o, x.shape[1] // groups, k_hw[0], k_hw[1]))


def conv2d_backward_input(dy, w, in_hw, stride, pads, dilation, groups=1):
    n, o, oh, ow = dy.shape
    _, cg, kh, kw = w.shape
    h, wd = in_hw
    expect = conv_output_hw(in_hw, (kh, kw), stride, pads, dilation)
    if expect != (oh, ow):
        from ..errors import ShapeError
        raise ShapeError(f"conv2d_backward_input: an input of {h}x{wd} gives a {expect[0]}x"
                         f"{expect[1]} output, but the gradient is {oh}x{ow}")
    wg = w.reshape(groups, o // groups, cg * kh * kw)
    dcols = _dy_groups(dy, groups).transpose(0, 2, 1) @ wg  # (G, N*OH*OW, Cg*KH*KW)
    dcols = dcols.reshape(groups, n, oh, ow, cg, kh, kw).transpose(1, 0, 4, 5, 6, 2, 3)
    dcols = dcols.reshape(n, groups * cg, kh, kw, oh, ow)
    top, bottom, left, right = pads
    dxp = np.zeros((n, groups * cg, h + top + bottom, wd + left + right), dy.dtype)
    sh, sw = stride
    for i in range(kh):  # col2im: one strided add per kernel cell
        r0 = i * dilation[0]
        for j in range(kw):
            c0 = j * dilation[1]
            dxp[:, :, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw] += dcols[:, :, i, j]
    return np.ascontiguousarray(dxp[:, :, top:top + h, left:left + wd])
