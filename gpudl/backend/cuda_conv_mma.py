"""Implicit-GEMM convolutions on tensor cores for the CUDA backend
(kernels/conv_mma.py): cuda_conv's "implicit" version calls these when a
precision is given and tensor_cores_enabled() says so.

The inputs arrive rounded to the format (float32 arrays). On a GPU they are
narrowed to the 16-bit storage the kernels read (exact) and the CUDA C++
kernels run; under the simulator the numba twins run on the float32 arrays.
The forward takes the cp.async entry for the weight when its rows are whole
16-byte chunks (conv_mma.misaligned), the gathering one otherwise.
"""
from __future__ import annotations

import numpy as np

from ..kernels import conv_mma as cm
from ..kernels import gemm_mma as gm
from ..kernels import reduce as rk
from .cuda_mma import _storage

# Split-K for the weight gradient: each split gets at least this many
# k-slabs of the N*OH*OW reduction (the simulator takes 1, so its tiny
# shapes still split).
MIN_SLABS = 8


def _cdiv(a, b):
    return -(-a // b)


def _run(be, op, fmt, in0, in1, out, geo, splits=1):
    be.tensor_core_launches += 1  # the profiler marks the op that made it (profile.py)
    if be._cp is None:  # simulator: the twin on the rounded float32 values, flat like the .cu's
        in1 = in1.reshape(in1.shape[0], -1) if op.startswith("fwd") else in1.reshape(-1)
        be.launch(cm.TWINS[fmt][op], cm.grid(op, geo, splits), (gm.THREADS,), in0.reshape(-1),
                  in1, out.reshape(-1), *geo)
        return
    cp = be._cp
    cm.launch(op, fmt, _storage(cp, be._c(in0), fmt), _storage(cp, be._c(in1), fmt), out, geo,
              splits, stream=cp.cuda.get_current_stream())


def _geo(x_shape, w_shape, out_hw, stride, pads, dilation, groups):
    return cm.geometry(x_shape, w_shape, out_hw, tuple(int(s) for s in stride),
                       tuple(int(d) for d in dilation), (int(pads[0]), int(pads[2])), int(groups))


def conv2d(be, x, w, out_hw, stride, pads, dilation, groups, fmt):
    x, w = be._c(x), be._c(w)
    geo = _geo(x.shape, w.shape, out_hw, stride, pads, dilation, groups)
    y = be.empty((x.shape[0], w.shape[0]) + tuple(out_hw), np.float32)
    # TF32 reads w itself; a 16-bit copy is a fresh (aligned) array, so w's
    # address only ever errs towards the gathering entry
    ptr = 0 if be._cp is None else w.data.ptr
    op = "fwd" if cm.misaligned(fmt, w[0].size, ptr) is None else "fwd_unaligned"
    _run(be, op, fmt, x, w, y, geo)
    return y


def conv2d_backward_input(be, dy, w, in_hw, stride, pads, dilation, groups, fmt):
    dy, w = be._c(dy), be._c(w)
    n = dy.shape[0]
    c = w.shape[1] * groups
    geo = _geo((n, c) + tuple(in_hw), w.shape, dy.shape[2:], stride, pads, dilation, groups)
    dx = be.empty((n, c) + tuple(in_hw), np.float32)
    _run(be, "bwd_input", fmt, dy, w, dx, geo)
    return dx


def conv2d_backward_weight(be, dy, x, dw, stride, pads, dilation, groups, fmt):
    """dw (O, Cg, KH, KW) written in place: split-K partial sums, then added
    in a fixed order (sum_rows_naive), so the result is deterministic."""
    dy, x = be._c(dy), be._c(x)
    o, cg, kh, kw = dw.shape
    kc = cg * kh * kw
    geo = _geo(x.shape, dw.shape, dy.shape[2:], stride, pads, dilation, groups)
    blocks = _cdiv(kc, gm.BN) * _cdiv(o // groups, gm.BM) * groups
    slabs = _cdiv(dy.shape[0] * dy.shape[2] * dy.shape[3], cm.slab_depth(fmt))
    splits = max(1, min(_cdiv(be._max_blocks, blocks), slabs // (1 if be.simulator else MIN_SLABS)))
    if splits == 1:
        _run(be, "bwd_weight", fmt, dy, x, dw, geo)
        return dw
    partial = be.empty((splits, o, kc), np.float32)
    _run(be, "bwd_weight", fmt, dy, x, partial, geo, splits)
    be.launch(rk.sum_rows_naive, _cdiv(dw.size, be._threads), be._threads,
              partial.reshape(splits, dw.size), dw.reshape(dw.size))
    return dw
