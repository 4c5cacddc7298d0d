"""Convolution launches for the CUDA backend: shape checks, then the kernels
of gpudl.kernels.conv. Functions take the backend (its launch, empty, _c).

Each conv op takes ``version`` ("direct", "im2col" or "implicit", see
kernels/conv.py and kernels/conv_implicit.py); None picks direct for
depthwise convolutions, where each group is a one-channel GEMM, and
CONV_DEFAULT otherwise. A version named explicitly runs as asked, depthwise
included.

``fmt`` is the precision the backend op was called with ("tf32", "bf16",
"fp16" or None); the inputs arrive already rounded to it. With
GPUDL_TENSOR_CORES=1 (cuda_lowp.tensor_cores_enabled) the im2col version's
GEMMs run on the tensor-core kernels (cuda_mma.matmul) and the implicit
version on kernels/cu/conv_mma.cu (cuda_conv_mma.py); otherwise, and for
the direct version, the FP32 kernels run on the rounded inputs, which gives
the same values up to the order of the FP32 sums.
"""
from __future__ import annotations

import numpy as np

from ..convshape import (check_grad_shape, check_groups, check_groups_arg, check_ndim4,
                         conv_output_hw)
from ..errors import ShapeError
from ..kernels import conv as ck
from ..kernels import conv_implicit as ci
from ..kernels import elementwise as ew
from ..kernels import matmul as mm
from ..kernels import reduce as rk
from . import cuda_conv_mma, cuda_lowp


SIM_REDUCE_THREADS = 16
# Split-K for the implicit weight gradient: each split gets at least this many
# BK-row slabs of the N*OH*OW reduction. The simulator takes 1, so its tiny
# shapes still exercise the split-and-sum path.
IMPLICIT_MIN_SLABS = 8


def _cdiv(a, b):
    return -(-a // b)


def _version(version, groups, cg):
    if version is None:
        return "direct" if groups > 1 and cg == 1 else ck.CONV_DEFAULT
    if version not in ck.VERSIONS:
        raise ValueError(f"unknown conv version {version!r}: choose one of {ck.VERSIONS}")
    return version


def _geometry(stride, pads, dilation):
    """Kernel scalar arguments (sh, sw, dh, dw, top, left) as Python ints."""
    return (int(stride[0]), int(stride[1]), int(dilation[0]), int(dilation[1]),
            int(pads[0]), int(pads[2]))


def _tensor_cores(be, fmt, dtype):
    return fmt is not None and dtype == np.float32 and cuda_lowp.tensor_cores_enabled(be)


def _matmuls(be, variant, a, b, c, fmt=None):
    """c[g] = op(a[g]) @ op(b[g]) for each group: one launch per group of the
    default matmul on contiguous 2-D slices, or of the tensor-core GEMM
    writing straight into c[g] when _tensor_cores() says so."""
    if _tensor_cores(be, fmt, c.dtype):
        from . import cuda_mma
        ta, tb = variant[0] == "t", variant[1] == "t"
        for g in range(c.shape[0]):
            # 2-D float32 slices of matching shapes: the hook never declines these
            if cuda_mma.matmul(be, a[g], b[g], ta, tb, fmt, out=c[g]) is None:
                raise AssertionError(f"cuda_mma declined a {variant} conv GEMM of group {g}")
        return
    kernel = mm.KERNELS[mm.MATMUL_DEFAULT][variant]
    grid, block = mm.launch_config(mm.MATMUL_DEFAULT, c.shape[1], c.shape[2])
    for g in range(c.shape[0]):
        be.launch(kernel, grid, block, a[g], b[g], c[g])


def _swap01(be, src, shape):
    """(A, B, P) -> (B, A, P) as a new array; a free reshape when A or B is 1."""
    a, b, p = src.shape
    if a == 1 or b == 1:
        return src.reshape(shape)
    dst = be.empty(shape, src.dtype)
    be._launch_flat(ck.swap_axes01, dst.size, src, dst.reshape(b, a, p))
    return dst


def _im2col(be, x, k_hw, out_hw, geo, groups):
    n, c = x.shape[:2]
    cols = be.empty((groups, n * out_hw[0] * out_hw[1], c // groups * k_hw[0] * k_hw[1]),
                    x.dtype)
    be._launch_flat(ck.im2col, cols.size, x, cols, *k_hw, *out_hw, *geo)
    return cols


def conv2d(be, x, w, stride, pads, dilation, groups=1, version=None, fmt=None):
    check_ndim4("conv2d", x=x, w=w)
    x, w = be._pair(x, w)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    g, og, cg = check_groups("conv2d", c, w.shape, groups)
    oh, ow = conv_output_hw((h, wd), (kh, kw), stride, pads, dilation, "conv2d")
    geo = _geometry(stride, pads, dilation)
    if _version(version, g, cg) == "direct" or n == 0:
        y = be.empty((n, o, oh, ow), x.dtype)
        be._launch_flat(ck.conv2d_direct_fwd, y.size, x, w, y, *geo)
        return y
    if _version(version, g, cg) == "implicit":
        if _tensor_cores(be, fmt, x.dtype):
            return cuda_conv_mma.conv2d(be, x, w, (oh, ow), stride, pads, dilation, g, fmt)
        y = be.empty((n, o, oh, ow), x.dtype)
        be.launch(ci.conv2d_implicit_fwd, (_cdiv(n * oh * ow, mm.BN), _cdiv(og, mm.BM), g),
                  (mm.TX, mm.TY), x, w, y, *geo)
        return y
    cols = _im2col(be, x, (kh, kw), (oh, ow), geo, g)
    ycols = be.empty((g, og, n * oh * ow), x.dtype)  # row o of y^T = w[o] . window
    _matmuls(be, "nt", w.reshape(g, og, cg * kh * kw), cols, ycols, fmt)
    return _swap01(be, ycols.reshape(o, n, oh * ow), (n, o, oh * ow)).reshape(n, o, oh, ow)


def conv2d_backward_input(be, dy, w, in_hw, stride, pads, dilation, groups=1, version=None,
                          fmt=None):
    check_ndim4("conv2d_backward_input", dy=dy, w=w)
    dy, w = be._pair(dy, w)
    n, o, oh, ow = dy.shape
    _, cg, kh, kw = w.shape
    c = cg * check_groups_arg("conv2d_backward_input", groups)
    g, og, cg = check_groups("conv2d_backward_input", c, w.shape, groups)
    h, wd = int(in_hw[0]), int(in_hw[1])
    check_grad_shape("conv2d_backward_input", dy, n, w.shape[0], (h, wd), (kh, kw), stride, pads,
              dilation)
    geo = _geometry(stride, pads, dilation)
    dx = be.empty((n, c, h, wd), dy.dtype)
    if _version(version, g, cg) == "direct" or n == 0:
        be._launch_flat(ck.conv2d_direct_bwd_input, dx.size, dy, w, dx, *geo)
        return dx
    if _version(version, g, cg) == "implicit":
        if _tensor_cores(be, fmt, dy.dtype):
            return cuda_conv_mma.conv2d_backward_input(be, dy, w, (h, wd), stride, pads,
                                                       dilation, g, fmt)
        be.launch(ci.conv2d_implicit_bwd_input, (_cdiv(n * h * wd, mm.BN), _cdiv(cg, mm.BM), g),
                  (mm.TX, mm.TY), dy, w, dx, *geo)
        return dx
    dyt = _swap01(be, dy.reshape(n, o, oh * ow), (o, n, oh * ow)).reshape(g, og, n * oh * ow)
    dcols = be.empty((g, n * oh * ow, cg * kh * kw), dy.dtype)
    _matmuls(be, "tn", dyt, w.reshape(g, og, cg * kh * kw), dcols, fmt)
    be._launch_flat(ck.col2im, dx.size, dcols, dx, kh, kw, oh, ow, *geo)
    return dx


def conv2d_backward_weight(be, dy, x, k_hw, stride, pads, dilation, groups=1, version=None,
                           fmt=None):
    check_ndim4("conv2d_backward_weight", dy=dy, x=x)
    dy, x = be._pair(dy, x)
    n, c, h, wd = x.shape
    o = dy.shape[1]
    kh, kw = int(k_hw[0]), int(k_hw[1])
    w_shape = (o, c // check_groups_arg("conv2d_backward_weight", groups), kh, kw)
    g, og, cg = check_groups("conv2d_backward_weight", c, w_shape, groups, "dw")
    check_grad_shape("conv2d_backward_weight", dy, n, o, (h, wd), (kh, kw), stride, pads, dilation)
    oh, ow = dy.shape[2:]
    geo = _geometry(stride, pads, dilation)
    dw = be.empty(w_shape, x.dtype)
    if _version(version, g, cg) == "direct" or n == 0:
        bwd_weight_direct(be, dy, x, dw, geo)
        return dw
    if _version(version, g, cg) == "implicit":
        if _tensor_cores(be, fmt, x.dtype):
            return cuda_conv_mma.conv2d_backward_weight(be, dy, x, dw, stride, pads, dilation, g,
                                                        fmt)
        bwd_weight_implicit(be, dy, x, dw, geo, g)
        return dw
    cols = _im2col(be, x, (kh, kw), (oh, ow), geo, g)
    dyt = _swap01(be, dy.reshape(n, o, oh * ow), (o, n, oh * ow)).reshape(g, og, n * oh * ow)
    _matmuls(be, "nn", dyt, cols, dw.reshape(g, og, cg * kh * kw), fmt)
    return dw


def _two_pass(be, kernel, n_out, n_red, out, args):
    """kernel over a reduce_grid into partial rows, then a fixed-order sum of
    the rows into out (skipped when one row already is the answer).
    args(partial) gives the kernel's arguments around its partial array."""
    # Each simulated syncthreads costs about a ms per thread, and the tree
    # runs log2(threads) of them per output: the simulator gets small blocks.
    threads = SIM_REDUCE_THREADS if be.simulator else be._threads
    assert threads & (threads - 1) == 0 and threads <= rk.BLOCK_MAX
    if n_out == 0:
        return
    bx, by = rk.reduce_grid(n_out, n_red, be._max_blocks, threads)
    if by == 1:
        be.launch(kernel, (bx, 1), threads, *args(out.reshape(1, n_out)))
        return
    partial = be.empty((by, n_out), out.dtype)
    be.launch(kernel, (bx, by), threads, *args(partial))
    be.launch(rk.sum_rows_naive, _cdiv(n_out, threads), threads, partial, out.reshape(n_out))


def bwd_weight_direct(be, dy, x, dw, geo):
    kh, kw = dw.shape[2:]
    _two_pass(be, ck.conv2d_direct_bwd_weight, dw.size, dy.shape[0] * dy.shape[2] * dy.shape[3],
              dw, lambda partial: (dy, x, partial, kh, kw) + geo)


def bwd_weight_implicit(be, dy, x, dw, geo, g):
    """dw as Og x (Cg*KH*KW) GEMMs reducing over N*OH*OW, split S ways when
    the output alone gives too few blocks; the S partial sums are then added
    in a fixed order (sum_rows_naive), so the result is deterministic."""
    o, cg, kh, kw = dw.shape
    kk = cg * kh * kw
    blocks = _cdiv(kk, mm.BN) * _cdiv(o // g, mm.BM) * g
    min_slabs = 1 if be.simulator else IMPLICIT_MIN_SLABS
    slabs = _cdiv(dy.shape[0] * dy.shape[2] * dy.shape[3], mm.BK)
    splits = max(1, min(_cdiv(be._max_blocks, blocks), slabs // min_slabs))
    grid = (_cdiv(kk, mm.BN), _cdiv(o // g, mm.BM), g * splits)
    if splits == 1:
        be.launch(ci.conv2d_implicit_bwd_weight, grid, (mm.TX, mm.TY), dy, x,
                  dw.reshape(1, o, kk), kh, kw, *geo)
        return
    partial = be.empty((splits, o, kk), dw.dtype)
    be.launch(ci.conv2d_implicit_bwd_weight, grid, (mm.TX, mm.TY), dy, x, partial, kh, kw, *geo)
    be.launch(rk.sum_rows_naive, _cdiv(dw.size, be._threads), be._threads,
              partial.reshape(splits, dw.size), dw.reshape(dw.size))


# ---- channel bias -----------------------------------------------------------
def _bias_shapes(op, y, b):
    if y.ndim != 4 or b.ndim != 1 or b.shape[0] != y.shape[1]:
        raise ShapeError(f"{op}: y must be (N, C, H, W) and b (C,), got y of shape "
                         f"{tuple(y.shape)} and b of shape {tuple(b.shape)}")


def add_channel_bias(be, y, b):
    _bias_shapes("add_channel_bias", y, b)
    b = be._c(b, y.dtype)
    hw = y.shape[2] * y.shape[3]
    if y.flags.c_contiguous:
        be._launch_flat(ew.add_channel_bias, y.size, y.reshape(-1), b, hw)
    else:  # in place on a view: work on a contiguous copy, then write it back
        tmp = be._c(y)
        be._launch_flat(ew.add_channel_bias, tmp.size, tmp.reshape(-1), b, hw)
        be._assign(y, tmp)


def sum_channels(be, g):
    if g.ndim != 4:
        raise ShapeError(f"sum_channels needs a 4-D (N, C, H, W) array, got shape "
                         f"{tuple(g.shape)}")
    g = be._c(g)
    n, c, h, w = g.shape
    out = be.empty((c,), g.dtype)
    _two_pass(be, rk.sum_channels_partial, c, n * h * w, out,
              lambda partial: (g.reshape(n, c, h * w), partial))
    return out
