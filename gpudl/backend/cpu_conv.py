"""NumPy convolutions, the reference for the CUDA convolution kernels.

Ordinary and grouped convolutions: im2col (one strided copy per kernel cell)
and batched BLAS, a chunk of the batch at a time so the columns stay in cache.
At stride 1 the input gradient, and the forward pass and weight gradient for
few channels per group, use the grid layout below instead: one BLAS product
per kernel cell on a contiguous column slice of the grid, no im2col copy
(_grid_* functions; _grid_wins says when).

Depthwise (one input channel per group): a sum over the KH x KW kernel cells
of whole-array products, which beats thousands of tiny matrix products. A
NumPy ufunc pays ~0.1 us per innermost loop, so the products must run along
long contiguous rows; hence the "grid" layout: channel-major (C, N*HP*WP),
zero-padded images back to back, where kernel cell (i, j) is the flat shift
i*dh*WP + j*dw. Outputs that straddle a row or image edge land in padding
that is cropped away; strides sample the stride-1 grid. Work goes slab of
channels by slab so that a slab's operands stay in L2 across the cells.
No Python loop runs over pixels.

Layout: x (N, C, H, W); w (O, C // groups, KH, KW); pads (top, bottom, left, right).
"""
from __future__ import annotations

import numpy as np

from ..convshape import (check_grad_shape, check_groups, check_groups_arg, check_ndim4,
                         conv_output_hw)

_CHUNK_BYTES = 1 << 23  # im2col columns per batch chunk
_GRID_COLS = 8192  # grid columns per chunk: measured best from 8 to 128 channels
_SLAB_BYTES = 1 << 19  # depthwise: input, output and product slabs; three fit a 2 MiB L2


def _padded(x, pads):
    if not any(pads):
        return x
    (n, c, h, w), (top, bottom, left, right) = x.shape, pads
    xp = np.zeros((n, c, h + top + bottom, w + left + right), x.dtype)  # faster than np.pad
    xp[:, :, top:top + h, left:left + w] = x
    return xp


def _batch_chunks(n, image_bytes):
    """Batch slices whose im2col columns take about _CHUNK_BYTES: a buffer that
    stays in cache instead of up to 150 MB of fresh memory per call."""
    step = max(1, _CHUNK_BYTES // image_bytes)
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


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


def _grid(x_hw, k_hw, pads, dilation, n):
    """Padded size (HP, WP), stride-1 output size (OH1, OW1) of the grid layout
    and the span of grid columns that holds every output (the last one at span - 1)."""
    hp, wp = x_hw[0] + pads[0] + pads[1], x_hw[1] + pads[2] + pads[3]
    oh1, ow1 = hp - (k_hw[0] - 1) * dilation[0], wp - (k_hw[1] - 1) * dilation[1]
    return hp, wp, oh1, ow1, (n - 1) * hp * wp + (oh1 - 1) * wp + ow1


def _to_grid(x, pads, dtype):
    """(N, C, H, W) -> zero-padded, channel-major (C, N * HP * WP); one copy."""
    n, c, h, w = x.shape
    top, bottom, left, right = pads
    g = np.zeros((c, n, h + top + bottom, w + left + right), dtype)
    g[:, :, top:top + h, left:left + w] = x.transpose(1, 0, 2, 3)
    return g.reshape(c, -1)


def _dy_to_grid(dy, groups, hp, wp, stride):
    """(N, O, OH, OW) -> (G, O // G, N * HP * WP): each gradient at the top-left
    corner of its window on the grid, zeros elsewhere (junk positions add nothing)."""
    n, o, oh, ow = dy.shape
    sh, sw = stride
    g = np.zeros((o, n, hp, wp), dy.dtype)
    g[:, :, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw] = dy.transpose(1, 0, 2, 3)
    return g.reshape(groups, o // groups, -1)


def _grid_cells(k_hw, dilation, wp):
    """Kernel cell index i * KW + j and its flat shift on the grid."""
    for i in range(k_hw[0]):
        for j in range(k_hw[1]):
            yield i * k_hw[1] + j, i * dilation[0] * wp + j * dilation[1]


def _slabs(c, row_bytes):
    """Channel slices whose rows of row_bytes fit _SLAB_BYTES (cache blocking)."""
    step = max(1, _SLAB_BYTES // row_bytes)
    return [slice(s, min(s + step, c)) for s in range(0, c, step)]


def _grid_chunks(span):
    """Column ranges [s, e) of the grid, _GRID_COLS at a time, so each chunk's
    operands stay in cache across the kernel cells."""
    return [(s, min(s + _GRID_COLS, span)) for s in range(0, span, _GRID_COLS)]


def _grid_wins(stride, cg, og, op):
    """When the grid beats im2col + BLAS (measured: batch 64, 3x3 and 5x5, 1-128
    channels). Stride 1 only: strides would sample the grid. Each cell's product
    has an inner or outer dimension of only Cg or O/G, so BLAS needs 8 there
    (below that the grid gains little or loses); the input gradient then always
    wins (col2im's strided adds cost more than the junk grid positions); above
    32 (forward) or 16 (weight gradient) channels, im2col's longer products win."""
    if tuple(stride) != (1, 1):
        return False
    return {"forward": 8 <= cg <= 32, "input": min(cg, og) >= 8,
            "weight": 8 <= cg and max(cg, og) <= 16}[op]


def _grid_conv(x, w, pads, dilation, groups):
    """Stride-1 forward: y_grid += W[:, :, i, j] @ x_grid shifted by cell (i, j)."""
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    dtype = np.result_type(x, w)
    hp, wp, oh1, ow1, span = _grid(x.shape[2:], (kh, kw), pads, dilation, n)
    xg = _to_grid(x, pads, dtype).reshape(groups, cg, -1)
    wk = w.astype(dtype, copy=False).transpose(2, 3, 0, 1).reshape(kh * kw, groups, -1, cg)
    yg = np.empty((groups, o // groups, n * hp * wp), dtype)
    chunks = _grid_chunks(span)
    tmp = np.empty((groups, o // groups, chunks[0][1]), dtype)
    for s, e in chunks:
        y, t = yg[:, :, s:e], tmp[:, :, :e - s]
        for k, shift in _grid_cells((kh, kw), dilation, wp):
            np.matmul(wk[k], xg[:, :, s + shift:e + shift], out=t if k else y)
            if k:
                y += t
    y = yg.reshape(o, n, hp, wp)[:, :, :oh1, :ow1]  # crop the valid outputs
    return np.ascontiguousarray(y.transpose(1, 0, 2, 3))


def _grid_backward_input(dy, w, in_hw, pads, dilation, groups):
    """Stride-1 input gradient: the forward pass run backwards, each cell adds
    W[:, :, i, j].T @ dy_grid into the input grid at its shift."""
    n, o = dy.shape[:2]
    _, cg, kh, kw = w.shape
    (h, wd), (top, _, left, _) = in_hw, pads
    hp, wp, oh1, ow1, span = _grid(in_hw, (kh, kw), pads, dilation, n)
    dyg = _dy_to_grid(dy, groups, hp, wp, (1, 1))
    wt = w.astype(dy.dtype, copy=False).transpose(2, 3, 0, 1).reshape(kh * kw, groups, -1, cg)
    wt = wt.swapaxes(2, 3)  # (KH*KW, G, Cg, O/G): each cell's weights, transposed
    dxg = np.zeros((groups, cg, n * hp * wp), dy.dtype)
    chunks = _grid_chunks(span)
    tmp = np.empty((groups, cg, chunks[0][1]), dy.dtype)
    for s, e in chunks:
        t = tmp[:, :, :e - s]
        for k, shift in _grid_cells((kh, kw), dilation, wp):
            dxg[:, :, s + shift:e + shift] += np.matmul(wt[k], dyg[:, :, s:e], out=t)
    dxg = dxg.reshape(groups * cg, n, hp, wp)[:, :, top:top + h, left:left + wd]
    return np.ascontiguousarray(dxg.transpose(1, 0, 2, 3))


def _grid_backward_weight(dy, x, k_hw, pads, dilation, groups):
    """Stride-1 weight gradient: dW[:, :, i, j] = dy_grid @ (x_grid shifted by
    cell (i, j)).T, with the dy grid zero outside the valid outputs."""
    n, o = dy.shape[:2]
    cg = x.shape[1] // groups
    dtype = np.result_type(dy, x)
    hp, wp, oh1, ow1, span = _grid(x.shape[2:], k_hw, pads, dilation, n)
    dyg = _dy_to_grid(dy.astype(dtype, copy=False), groups, hp, wp, (1, 1))
    xgt = _to_grid(x, pads, dtype).reshape(groups, cg, -1).transpose(0, 2, 1)  # (G, N*HP*WP, Cg)
    dw = np.zeros((k_hw[0] * k_hw[1], groups, o // groups, cg), dtype)
    t = np.empty((groups, o // groups, cg), dtype)
    for s, e in _grid_chunks(span):
        for k, shift in _grid_cells(k_hw, dilation, wp):
            dw[k] += np.matmul(dyg[:, :, s:e], xgt[:, s + shift:e + shift], out=t)
    return np.ascontiguousarray(dw.reshape(*k_hw, o, cg).transpose(2, 3, 0, 1))


def _depthwise_conv(x, w, stride, pads, dilation):
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    dtype = np.result_type(x, w)
    hp, wp, oh1, ow1, span = _grid(x.shape[2:], (kh, kw), pads, dilation, n)
    xg = _to_grid(x, pads, dtype)[:, None]  # (C, 1, N*HP*WP), broadcast over the multiplier
    wm = w.reshape(c, o // c, kh * kw, 1).astype(dtype, copy=False)
    yg = np.empty((c, o // c, n * hp * wp), dtype)
    slabs = _slabs(c, span * (o // c) * yg.itemsize)
    prod = np.empty((slabs[0].stop, o // c, span), dtype)
    for cs in slabs:
        y, p = yg[cs, :, :span], prod[:cs.stop - cs.start]
        for k, shift in _grid_cells((kh, kw), dilation, wp):  # y = sum of shifted x * w[k]
            np.multiply(xg[cs, :, shift:shift + span], wm[cs, :, k], out=p if k else y)
            if k:
                y += p
    y = yg.reshape(o, n, hp, wp)[:, :, :oh1:stride[0], :ow1:stride[1]]
    return np.ascontiguousarray(y.transpose(1, 0, 2, 3))


def _depthwise_backward_input(dy, w, in_hw, stride, pads, dilation, groups):
    """The forward pass run backwards: each cell adds dy * w[k] at its shift.
    The multiplier's m filters of a channel scatter separately and are summed at the end."""
    n, o = dy.shape[:2]
    kh, kw = w.shape[2:]
    (h, wd), (top, _, left, _) = in_hw, pads
    hp, wp, oh1, ow1, span = _grid(in_hw, (kh, kw), pads, dilation, n)
    dyg = _dy_to_grid(dy, groups, hp, wp, stride)
    wm = w.reshape(groups, o // groups, kh * kw, 1).astype(dy.dtype, copy=False)
    dxg = np.zeros_like(dyg)
    slabs = _slabs(groups, span * (o // groups) * dyg.itemsize)
    prod = np.empty((slabs[0].stop, o // groups, span), dy.dtype)
    for cs in slabs:
        g, p = dyg[cs, :, :span], prod[:cs.stop - cs.start]
        for k, shift in _grid_cells((kh, kw), dilation, wp):
            dxg[cs, :, shift:shift + span] += np.multiply(g, wm[cs, :, k], out=p)
    dxg = dxg.reshape(groups, o // groups, n, hp, wp)
    dxg = dxg[:, 0] if o == groups else dxg.sum(axis=1)  # (C, N, HP, WP)
    return np.ascontiguousarray(dxg[:, :, top:top + h, left:left + wd].transpose(1, 0, 2, 3))


def _depthwise_backward_weight(dy, x, k_hw, stride, pads, dilation, groups):
    """dw[c, m, k] = <dy grid of filter (c, m), x grid of channel c shifted by cell k>:
    one batched dot product per cell (BLAS), slab by slab so both stay in L2."""
    n, o = dy.shape[:2]
    hp, wp, oh1, ow1, span = _grid(x.shape[2:], k_hw, pads, dilation, n)
    dyg = _dy_to_grid(dy, groups, hp, wp, stride)
    xg = _to_grid(x, pads, dy.dtype)[:, :, None]  # (C, N*HP*WP, 1): columns for matmul
    dw = np.empty((groups, o // groups, k_hw[0] * k_hw[1], 1), dy.dtype)
    for cs in _slabs(groups, span * (o // groups + 1) * dyg.itemsize):
        for k, shift in _grid_cells(k_hw, dilation, wp):
            np.matmul(dyg[cs, :, :span], xg[cs, shift:shift + span], out=dw[cs, :, k])
    return dw.reshape(o, 1, *k_hw)


def conv2d(x, w, stride, pads, dilation, groups=1):
    check_ndim4("conv2d", x=x, w=w)
    check_groups("conv2d", x.shape[1], w.shape, groups)
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    if _depthwise(w, groups):
        return _depthwise_conv(x, w, stride, pads, dilation)
    oh, ow = conv_output_hw(x.shape[2:], (kh, kw), stride, pads, dilation)
    if _grid_wins(stride, cg, o // groups, "forward"):
        return _grid_conv(x, w, pads, dilation, groups)
    wg = w.reshape(groups, o // groups, cg * kh * kw)
    y = np.empty((n, o, oh, ow), np.result_type(x, w))
    for b in _batch_chunks(n, x.shape[1] * kh * kw * oh * ow * x.itemsize):
        cols, _ = _cols(x[b], (kh, kw), stride, pads, dilation, groups)
        y[b] = (wg @ cols).reshape(o, -1, oh, ow).transpose(1, 0, 2, 3)  # (G, Og, nb*OH*OW)
    return y


def conv2d_backward_weight(dy, x, k_hw, stride, pads, dilation, groups=1):
    op = "conv2d_backward_weight"
    check_ndim4(op, dy=dy, x=x)
    n, o, oh, ow = dy.shape
    cg = x.shape[1] // check_groups_arg(op, groups)
    check_groups(op, x.shape[1], (o, cg) + tuple(k_hw), groups, "dw")
    check_grad_shape(op, dy, x.shape[0], o, x.shape[2:], k_hw, stride, pads, dilation)
    if cg == 1 and groups > 1:
        return _depthwise_backward_weight(dy, x, k_hw, stride, pads, dilation, groups)
    if _grid_wins(stride, cg, o // groups, "weight"):
        return _grid_backward_weight(dy, x, k_hw, pads, dilation, groups)
    dw = np.zeros((groups, o // groups, cg * k_hw[0] * k_hw[1]), np.result_type(dy, x))
    for b in _batch_chunks(n, x.shape[1] * k_hw[0] * k_hw[1] * oh * ow * x.itemsize):
        cols, _ = _cols(x[b], k_hw, stride, pads, dilation, groups)
        dw += _dy_groups(dy[b], groups) @ cols.transpose(0, 2, 1)  # (G, Og, Cg*KH*KW)
    return dw.reshape(o, cg, *k_hw)


def conv2d_backward_input(dy, w, in_hw, stride, pads, dilation, groups=1):
    op = "conv2d_backward_input"
    check_ndim4(op, dy=dy, w=w)
    n, o, oh, ow = dy.shape
    _, cg, kh, kw = w.shape
    h, wd = in_hw
    check_groups(op, cg * check_groups_arg(op, groups), w.shape, groups)
    check_grad_shape(op, dy, n, o, in_hw, (kh, kw), stride, pads, dilation)
    if _depthwise(w, groups):
        return _depthwise_backward_input(dy, w, in_hw, stride, pads, dilation, groups)
    if _grid_wins(stride, cg, o // groups, "input"):
        return _grid_backward_input(dy, w, in_hw, pads, dilation, groups)
    wg = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    top, bottom, left, right = pads
    dxp = np.zeros((n, groups * cg, h + top + bottom, wd + left + right), dy.dtype)
    for b in _batch_chunks(n, groups * cg * kh * kw * oh * ow * dy.itemsize):
        dcols = (wg @ _dy_groups(dy[b], groups)).reshape(groups * cg, kh, kw, -1, oh, ow)
        for i, j, (rows, columns) in _cells((kh, kw), (oh, ow), stride, dilation):
            dxp[b, :, rows, columns] += dcols[:, i, j].transpose(1, 0, 2, 3)  # col2im
    return np.ascontiguousarray(dxp[:, :, top:top + h, left:left + wd])
