"""The notes' convolution matrix: a convolution written as a dense layer.

For the 4x4 image and 3x3 kernel of the notes it is the 16 x 4 matrix M
printed there, and the convolution is M^T times the flattened image. Built
by index arithmetic, independently of the backends, so tests can use it as
an oracle: forward = M^T x, input gradient = M dy, and the weight gradient
sums, for each kernel cell, the updates of every matrix entry holding it.
"""
from __future__ import annotations

import numpy as np

from .convshape import conv_output_hw, pair, resolve_padding


def conv_matrix(weight, input_shape, stride=1, padding=0, dilation=1, groups=1,
                return_index=False):
    """Dense matrix M (C H W, O OH OW) with vec(conv(x)) = M^T vec(x).

    ``weight`` is (K_h, K_w) for one channel in and out, or (O, C, K_h, K_w);
    ``input_shape`` is (H, W) or (C, H, W); padding as Conv2D takes it; with
    ``groups`` the weight is (O, C / groups, K_h, K_w) as in Conv2D.
    With ``return_index`` also returns an int matrix of the same shape giving
    the flat index into ``weight`` of each entry (-1 where M is 0)."""
    w = np.asarray(weight)
    if w.ndim == 2:
        w = w[None, None]
    shape = tuple(input_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    o, cg, kh, kw = w.shape
    c = cg * groups
    if shape[0] != c or o % groups:
        raise ValueError(f"conv_matrix: weight {w.shape} with groups={groups} does not fit "
                         f"input_shape {input_shape}")
    _, h, wd = shape
    stride, dilation = pair(stride, "stride", "conv_matrix"), pair(dilation, "dilation", "conv_matrix")
    pads = resolve_padding(padding, (h, wd), (kh, kw), stride, dilation, "conv_matrix")
    oh, ow = conv_output_hw((h, wd), (kh, kw), stride, pads, dilation, "conv_matrix")
    index = np.full((c * h * wd, o * oh * ow), -1, dtype=np.int64)
    for oc in range(o):
        for i in range(oh):
            for j in range(ow):
                col = (oc * oh + i) * ow + j
                for gc in range(cg):
                    ic = oc // (o // groups) * cg + gc  # input channel of this group
                    for p in range(kh):
                        r = i * stride[0] - pads[0] + p * dilation[0]
                        if not 0 <= r < h:
                            continue
                        for q in range(kw):
                            s = j * stride[1] - pads[2] + q * dilation[1]
                            if 0 <= s < wd:
                                index[(ic * h + r) * wd + s, col] = ((oc * cg + gc) * kh + p) * kw + q
    m = np.where(index >= 0, w.reshape(-1)[np.maximum(index, 0)], 0).astype(w.dtype)
    return (m, index) if return_index else m
