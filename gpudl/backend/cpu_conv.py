"""NumPy convolutions, the reference for the CUDA convolution kernels.

Ordinary and grouped convolutions: im2col (one strided copy per kernel
cell) and batched BLAS. Depthwise (one input channel per group): a sum over the
K_h x K_w kernel cells of whole-array products, which beats thousands of
tiny matrix products. No Python loop runs over pixels.

Layout: x (N, C, H, W); w (O, C // groups, KH, KW); pads (top, bottom, left, right).
"""
from __future__ import annotations

import numpy as np

from ..convshape import (check_grad_shape, check_groups, check_groups_arg, check_ndim4,
                         conv_output_hw)


def _padded(x, pads):
    top, bottom, left, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(pads) else x


def _cells(k_hw, out_hw, stride, dilation):
    """For each kernel cell (i, j), the slices of the padded input it reads
    for every output position: rows i*dh, i*dh + sh, ...; likewise columns."""
    (kh, kw), (oh, ow), (sh, sw), (dh, dw) = k_hw, out_hw, stride, dilation
    for i in range(kh):
        for j in range(kw):
            yield i, j, (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
                         slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def _cols(x, k_hw, stride, pads, dilation, groups):
    """im2col as (G, Cg*KH*KW, N*OH*OW), one strided copy per kernel cell
    (rows of the image stay contiguous), and (OH, OW)."""
    n, c = x.shape[:2]
    oh, ow = conv_output_hw(x.shape[2:], k_hw, stride, pads, dilation)
    xp = _padded(x, pads)
    cols = np.empty((c, k_hw[0], k_hw[1], n, oh, ow), x.dtype)
    for i, j, (rows, columns) in _cells(k_hw, (oh, ow), stride, dilation):
        cols[:, i, j] = xp[:, :, rows, columns].transpose(1, 0, 2, 3)
    return cols.reshape(groups, (c // groups) * k_hw[0] * k_hw[1], n * oh * ow), (oh, ow)


def _dy_groups(dy, groups):
    """(N, O, OH, OW) -> (G, Og, N*OH*OW)."""
    n, o, oh, ow = dy.shape
    return np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(groups, o // groups, n * oh * ow)


def _depthwise(w, groups):
    return w.shape[1] == 1 and groups > 1


def conv2d(x, w, stride, pads, dilation, groups=1):
    check_ndim4("conv2d", x=x, w=w)
    check_groups("conv2d", x.shape[1], w.shape, groups)
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    if _depthwise(w, groups):
        oh, ow = conv_output_hw(x.shape[2:], (kh, kw), stride, pads, dilation)
        xp = _padded(x, pads)
        wm = w.reshape(groups, o // groups, kh, kw)
        y = np.zeros((n, groups, o // groups, oh, ow), np.result_type(x, w))
        for i, j, (rows, columns) in _cells((kh, kw), (oh, ow), stride, dilation):
            y += xp[:, :, None, rows, columns] * wm[None, :, :, i, j, None, None]
        return y.reshape(n, o, oh, ow)
    cols, (oh, ow) = _cols(x, (kh, kw), stride, pads, dilation, groups)
    y = w.reshape(groups, o // groups, cg * kh * kw) @ cols  # (G, Og, N*OH*OW)
    return np.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))


def conv2d_backward_weight(dy, x, k_hw, stride, pads, dilation, groups=1):
    op = "conv2d_backward_weight"
    check_ndim4(op, dy=dy, x=x)
    n, o, oh, ow = dy.shape
    cg = x.shape[1] // check_groups_arg(op, groups)
    check_groups(op, x.shape[1], (o, cg) + tuple(k_hw), groups, "dw")
    check_grad_shape(op, dy, x.shape[0], o, x.shape[2:], k_hw, stride, pads, dilation)
    if cg == 1 and groups > 1:
        xp = _padded(x, pads)
        dy5 = dy.reshape(n, groups, o // groups, oh, ow)
        dw = np.empty((groups, o // groups) + tuple(k_hw), dy.dtype)
        for i, j, (rows, columns) in _cells(k_hw, (oh, ow), stride, dilation):
            dw[:, :, i, j] = np.einsum("ncmhw,nchw->cm", dy5, xp[:, :, rows, columns],
                                       optimize=True)
        return dw.reshape(o, 1, *k_hw)
    cols, _ = _cols(x, k_hw, stride, pads, dilation, groups)
    dw = _dy_groups(dy, groups) @ cols.transpose(0, 2, 1)  # (G, Og, Cg*KH*KW)
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
        wg = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
        dcols = (wg @ _dy_groups(dy, groups)).reshape(groups * cg, kh, kw, n, oh, ow)

        def cell(i, j):
            return dcols[:, i, j].transpose(1, 0, 2, 3)
    top, bottom, left, right = pads
    dxp = np.zeros((n, groups * cg, h + top + bottom, wd + left + right), dy.dtype)
    for i, j, (rows, columns) in _cells((kh, kw), (oh, ow), stride, dilation):
        dxp[:, :, rows, columns] += cell(i, j)  # col2im: one strided add per kernel cell
    return np.ascontiguousarray(dxp[:, :, top:top + h, left:left + wd])
