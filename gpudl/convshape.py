"""Convolution geometry shared by layers and backends: sizes, padding, the notes' formula.

Output size along one axis, the notes' (W + P - K) / S + 1 with a dilated
kernel K_eff = D (K - 1) + 1 and P the total padding on that axis.
"""
from __future__ import annotations

import math

from .errors import ShapeError


def pair(value, name, owner, minimum=1):
    """An int or a pair of ints -> (a, b), each >= minimum."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        a, b = value
    else:
        a = b = value
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{owner}: {name} must be an int >= {minimum} or a pair of them, "
                             f"got {value!r}")
    return int(a), int(b)


def effective_kernel(k: int, dilation: int) -> int:
    return dilation * (k - 1) + 1


def output_size(size: int, k: int, stride: int, pad_total: int, dilation: int = 1) -> int:
    """(W + P - K_eff) // S + 1; may be <= 0 for a configuration with no output."""
    return (size + pad_total - effective_kernel(k, dilation)) // stride + 1


def same_padding(size: int, k: int, stride: int, dilation: int = 1) -> tuple:
    """(before, after) padding that makes the output ceil(size / stride), the
    smallest that does; an odd total puts the extra row/column after
    (bottom/right), as Keras and TensorFlow do."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective_kernel(k, dilation) - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, in_hw, kernel, stride, dilation, owner) -> tuple:
    """"valid" | "same" | int | (ph, pw) -> (top, bottom, left, right)."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            return (same_padding(in_hw[0], kernel[0], stride[0], dilation[0])
                    + same_padding(in_hw[1], kernel[1], stride[1], dilation[1]))
        raise ValueError(f"{owner}: padding must be 'valid', 'same', an int or a pair, "
                         f"got {padding!r}")
    ph, pw = pair(padding, "padding", owner, minimum=0)
    return (ph, ph, pw, pw)


def conv_output_hw(in_hw, kernel, stride, pads, dilation, owner="conv") -> tuple:
    """(OH, OW) of a convolution; an empty output is an error naming the sizes."""
    oh = output_size(in_hw[0], kernel[0], stride[0], pads[0] + pads[1], dilation[0])
    ow = output_size(in_hw[1], kernel[1], stride[1], pads[2] + pads[3], dilation[1])
    if oh <= 0 or ow <= 0:
        raise ShapeError(
            f"{owner}: input {in_hw[0]}x{in_hw[1]} with padding (top, bottom, left, right) "
            f"{pads}, kernel {kernel[0]}x{kernel[1]}, dilation {dilation} "
            f"(effective kernel {effective_kernel(kernel[0], dilation[0])}x"
            f"{effective_kernel(kernel[1], dilation[1])}) and stride {stride} gives an empty "
            f"output ({oh}x{ow})")
    return oh, ow


# ---- argument checks shared by both backends
def check_pool_pads(op, k_hw, pads):
    """A max-pooling window wholly in the padding would have no element to name."""
    if pads[0] >= k_hw[0] or pads[1] >= k_hw[0] or pads[2] >= k_hw[1] or pads[3] >= k_hw[1]:
        raise ValueError(f"{op}: pads {tuple(pads)} must each be smaller than the "
                         f"kernel {tuple(k_hw)} along their axis")


def check_pool_grad(op, dy, in_hw, k_hw, stride, pads):
    expect = conv_output_hw(in_hw, k_hw, stride, pads, (1, 1), op)
    if tuple(dy.shape[2:]) != expect:
        raise ShapeError(f"{op}: an input of {in_hw[0]}x{in_hw[1]} with kernel {tuple(k_hw)}, "
                         f"stride {tuple(stride)} and pads {tuple(pads)} gives a "
                         f"{expect[0]}x{expect[1]} output, but dy has shape {tuple(dy.shape)}")


def check_groups_arg(op, groups):
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be an int >= 1, got {groups!r}")
    return groups


def check_groups(op, c, w_shape, groups, what="w"):
    """(G, Og, Cg) after checking that w_shape = (O, C // G, KH, KW) fits C channels."""
    check_groups_arg(op, groups)
    o, cg = w_shape[0], w_shape[1]
    if c % groups or o % groups or cg != c // groups:
        raise ShapeError(f"{op}: {c} input channels and {what} of shape {tuple(w_shape)} do not "
                         f"fit groups={groups}: both C and O must divide by groups and "
                         f"{what} must be (O, C // groups, KH, KW)")
    return groups, o // groups, cg


def check_ndim4(op, **arrays):
    for name, a in arrays.items():
        if a.ndim != 4:
            raise ShapeError(f"{op}: {name} must be 4-D (NCHW), got shape {tuple(a.shape)}")


def check_grad_shape(op, dy, n, o, in_hw, k_hw, stride, pads, dilation):
    expect = conv_output_hw(in_hw, k_hw, stride, pads, dilation, op)
    if tuple(dy.shape) != (n, o) + expect:
        raise ShapeError(f"{op}: an input of {in_hw[0]}x{in_hw[1]} with {n} images and {o} "
                         f"output channels gives a gradient of shape {(n, o) + expect}, but dy "
                         f"has shape {tuple(dy.shape)}")
