"""Transposed convolution: the gradient of a convolution with respect to its input.

Weight (D_in, D_out, K_h, K_w) as in PyTorch. Output size per axis
(H - 1) S - 2 P + D (K - 1) + output_padding + 1. Its forward is a
convolution's input gradient, its input gradient a convolution's forward,
so the backend's three convolution ops serve all of it.

output_padding adds rows below (and columns to the right of) PyTorch's output:
the first min(output_padding, padding) of them are rows the padding would have
cut, so the convolution's bottom padding shrinks to padding - output_padding;
past that they are rows no input reaches. Those rows stay zero as long as fewer
than a stride's worth are appended; otherwise the convolution's geometry wants
an input taller by (output_padding - padding) // stride, so the input gets that
many zero rows (which scatter nothing) and its gradient loses them again.
"""
from __future__ import annotations

import numpy as np

from ..convshape import effective_kernel, pair
from ..errors import ShapeError
from ..precision import compute_format
from .base import Layer
from .conv import _glorot, _positive


class Conv2DTranspose(Layer):
    no_decay = frozenset({"b"})

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, dilation=1, bias=True, *, dtype=np.float32, seed=None,
                 name=None):
        super().__init__(name)
        owner = "Conv2DTranspose"
        self.in_channels = _positive(owner, "in_channels", in_channels)
        self.out_channels = _positive(owner, "out_channels", out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.stride = pair(stride, "stride", owner)
        self.dilation = pair(dilation, "dilation", owner)
        self.padding = pair(padding, "padding", owner, minimum=0)
        self.output_padding = pair(output_padding, "output_padding", owner, minimum=0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"{owner}: output_padding {self.output_padding} must be smaller "
                                 f"than the stride {self.stride} or the dilation {self.dilation}")
        self.use_bias = bool(bias)
        self.dtype = np.dtype(dtype)
        kh, kw = self.kernel_size
        self.params["W"] = _glorot((in_channels, out_channels, kh, kw), out_channels * kh * kw,
                                   in_channels * kh * kw, seed, self.dtype, self.backend)
        if self.use_bias:
            self.params["b"] = self.backend.zeros((out_channels,), self.dtype)
        self._x = None
        self._fmt = None  # the precision policy's format at the last forward

    @property
    def pads(self):
        (ph, pw), (oph, opw) = self.padding, self.output_padding
        return (ph, max(ph - oph, 0), pw, max(pw - opw, 0))

    @property
    def _input_extra(self):
        """Zero rows and columns appended to the input (see the module docstring)."""
        return tuple(max(op - p, 0) // s for op, p, s in
                     zip(self.output_padding, self.padding, self.stride))

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ShapeError(f"layer '{self.name}' (Conv2DTranspose) expects input of shape "
                             f"(batch, {self.in_channels}, H, W), got per-sample shape "
                             f"{tuple(input_shape)}")
        hw = []
        for size, k, s, p, d, op in zip(input_shape[1:], self.kernel_size, self.stride,
                                        self.padding, self.dilation, self.output_padding):
            out = (size - 1) * s - 2 * p + effective_kernel(k, d) + op
            if out <= 0:
                raise ShapeError(f"layer '{self.name}' (Conv2DTranspose): input size {size} with "
                                 f"stride {s}, padding {p}, kernel {k}, dilation {d} gives an "
                                 f"empty output ({out})")
            hw.append(out)
        return (self.out_channels, hw[0], hw[1])

    def flops(self, input_shape):
        # every input pixel scatters a K_h x K_w x D_out patch
        kh, kw = self.kernel_size
        return kh * kw * self.in_channels * self.out_channels * input_shape[1] * input_shape[2]

    def forward(self, x, training=False):
        if x.ndim != 4:
            raise ShapeError(f"layer '{self.name}' (Conv2DTranspose) expects (batch, "
                             f"{self.in_channels}, H, W), got {tuple(x.shape)}")
        _, oh, ow = self.output_shape(tuple(x.shape[1:]))
        be = self.backend
        self._fmt = compute_format(x.dtype)  # the precision policy's, kept for backward
        extra = self._input_extra
        if any(extra):
            x = be.pad_bottom_right(x, *extra)
        y = be.conv2d_backward_input(x, self.params["W"], (oh, ow), self.stride, self.pads,
                                     self.dilation, precision=self._fmt)
        if self.use_bias:
            be.add_channel_bias(y, self.params["b"])
        self._x, self._out_shape = x, tuple(y.shape)
        return y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        be = self.backend
        if self.trainable:
            # the forward's "dy" is our input, its "x" our output gradient
            self.grads["W"] = be.conv2d_backward_weight(self._x, grad, self.kernel_size,
                                                        self.stride, self.pads, self.dilation,
                                                        precision=self._fmt)
            if self.use_bias:
                self.grads["b"] = be.sum_channels(grad)
        if not need_input_grad:
            return None
        dx = be.conv2d(grad, self.params["W"], self.stride, self.pads, self.dilation,
                       precision=self._fmt)
        if any(self._input_extra):
            extra = self._input_extra
            dx = be.crop_bottom_right(dx, dx.shape[2] - extra[0], dx.shape[3] - extra[1])
        return dx

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "output_padding": list(self.output_padding),
                "dilation": list(self.dilation), "bias": self.use_bias,
                "dtype": self.dtype.name, "name": self.name}
