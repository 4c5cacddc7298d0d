"""Convolution layers (NCHW, weight (D_out, D_in / groups, K_h, K_w) as in PyTorch).

Counting follows the notes: a convolution has (K_w K_h) D_in D_out + D_out
parameters and of order (K_w K_h) D_in D_out (O_w O_h) FLOPs (multiply-adds
per sample); with groups the D_in factor becomes D_in / groups.
"""
from __future__ import annotations

import numpy as np

from ..convshape import conv_output_hw, pair, resolve_padding
from ..errors import ShapeError
from ..precision import compute_format
from .base import Layer, init_rng


def _glorot(shape, fan_in, fan_out, seed, dtype, backend):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return backend.asarray(init_rng(seed).uniform(-limit, limit, size=shape), dtype=dtype)


def _positive(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


class Conv2D(Layer):
    """A 2-D convolution with kernel size, stride, padding ("valid", "same",
    an int or (ph, pw)), dilation and groups (groups = in_channels is depthwise).

    "same" pads the least that gives ceil(W / S) outputs, the extra row or
    column at the bottom/right when the total is odd (as Keras/TensorFlow)."""

    no_decay = frozenset({"b"})

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid",
                 dilation=1, bias=True, groups=1, *, dtype=np.float32, seed=None, name=None):
        super().__init__(name)
        owner = type(self).__name__
        self.in_channels = _positive(owner, "in_channels", in_channels)
        self.out_channels = _positive(owner, "out_channels", out_channels)
        self.groups = _positive(owner, "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{owner}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.stride = pair(stride, "stride", owner)
        self.dilation = pair(dilation, "dilation", owner)
        resolve_padding(padding, (1, 1), self.kernel_size, self.stride, self.dilation, owner)
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding", owner, 0)
        self.use_bias = bool(bias)
        self.dtype = np.dtype(dtype)
        kh, kw = self.kernel_size
        cg = in_channels // groups
        shape = (out_channels, cg, kh, kw)
        self.params["W"] = _glorot(shape, cg * kh * kw, out_channels // groups * kh * kw,
                                   seed, self.dtype, self.backend)
        if self.use_bias:
            self.params["b"] = self.backend.zeros((out_channels,), self.dtype)
        self._x = None
        self._fmt = None  # the precision policy's format at the last forward

    # ---- geometry
    def pads(self, in_hw):
        return resolve_padding(self.padding, in_hw, self.kernel_size, self.stride,
                               self.dilation, f"layer '{self.name}'")

    def _check_input(self, shape):
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ShapeError(f"layer '{self.name}' ({type(self).__name__}) expects input of "
                             f"shape (batch, {self.in_channels}, H, W), got per-sample "
                             f"shape {tuple(shape)}")

    def output_shape(self, input_shape):
        self._check_input(input_shape)
        hw = tuple(input_shape[1:])
        oh, ow = conv_output_hw(hw, self.kernel_size, self.stride, self.pads(hw), self.dilation,
                                f"layer '{self.name}'")
        return (self.out_channels, oh, ow)

    def flops(self, input_shape):
        _, oh, ow = self.output_shape(input_shape)
        kh, kw = self.kernel_size
        return kh * kw * (self.in_channels // self.groups) * self.out_channels * oh * ow

    # ---- computation
    def forward(self, x, training=False):
        if x.ndim != 4:
            raise ShapeError(f"layer '{self.name}' ({type(self).__name__}) expects a batch of "
                             f"shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self.output_shape(tuple(x.shape[1:]))
        be = self.backend
        self._fmt = compute_format(x.dtype)  # the precision policy's, kept for backward
        y = be.conv2d(x, self.params["W"], self.stride, self.pads(x.shape[2:]), self.dilation,
                      self.groups, precision=self._fmt)
        if self.use_bias:
            be.add_channel_bias(y, self.params["b"])
        self._x, self._out_shape = x, tuple(y.shape)
        return y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        be, x = self.backend, self._x
        pads = self.pads(x.shape[2:])
        if self.trainable:
            self.grads["W"] = be.conv2d_backward_weight(grad, x, self.kernel_size, self.stride,
                                                        pads, self.dilation, self.groups,
                                                        precision=self._fmt)
            if self.use_bias:
                self.grads["b"] = be.sum_channels(grad)
        if not need_input_grad:
            return None
        return be.conv2d_backward_input(grad, self.params["W"], tuple(x.shape[2:]), self.stride,
                                        pads, self.dilation, self.groups, precision=self._fmt)

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "bias": self.use_bias, "groups": self.groups,
                "dtype": self.dtype.name, "name": self.name}


class DepthwiseConv2D(Conv2D):
    """One K_h x K_w kernel per input channel (depth_multiplier of them), no
    mixing across channels: (K_w K_h) D_in * multiplier parameters plus biases."""

    def __init__(self, channels, kernel_size, stride=1, padding="valid", dilation=1,
                 depth_multiplier=1, bias=True, *, dtype=np.float32, seed=None, name=None):
        m = _positive("DepthwiseConv2D", "depth_multiplier", depth_multiplier)
        super().__init__(channels, channels * m, kernel_size, stride, padding, dilation, bias,
                         groups=channels, dtype=dtype, seed=seed, name=name)
        self.depth_multiplier = m

    def get_config(self):
        cfg = super().get_config()
        return {"channels": cfg.pop("in_channels"), "depth_multiplier": self.depth_multiplier,
                **{k: v for k, v in cfg.items() if k not in ("out_channels", "groups")}}
