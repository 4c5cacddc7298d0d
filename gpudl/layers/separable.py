"""Depthwise-separable convolution: a K_h x K_w kernel per channel, then a 1x1
convolution that mixes channels (the notes' inception-hypothesis layer).

Parameters (K_w K_h) D_in + D_in D_out, plus D_out biases on the pointwise part.
"""
from __future__ import annotations

import numpy as np

from .base import Layer
from .conv import Conv2D


class SeparableConv2D(Layer):
    no_decay = frozenset({"b"})

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid",
                 dilation=1, bias=True, *, dtype=np.float32, seed=None, name=None):
        super().__init__(name)
        # Two inner convolutions hold the geometry; their arrays live in our params.
        self.depthwise = Conv2D(in_channels, in_channels, kernel_size, stride, padding,
                                dilation, bias=False, groups=in_channels, dtype=dtype,
                                seed=seed, name=f"{self.name}.depthwise")
        self.pointwise = Conv2D(in_channels, out_channels, 1, bias=bias, dtype=dtype,
                                seed=None if seed is None else seed + 1,
                                name=f"{self.name}.pointwise")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.params = {"W_depthwise": self.depthwise.params["W"],
                       "W_pointwise": self.pointwise.params["W"]}
        if bias:
            self.params["b"] = self.pointwise.params["b"]

    def _sync(self):
        """Point the inner layers at our (possibly replaced or moved) arrays."""
        self.depthwise.params["W"] = self.params["W_depthwise"]
        self.pointwise.params["W"] = self.params["W_pointwise"]
        if "b" in self.params:
            self.pointwise.params["b"] = self.params["b"]
        self.depthwise.backend = self.pointwise.backend = self.backend
        self.depthwise.trainable = self.pointwise.trainable = self.trainable

    def output_shape(self, input_shape):
        return self.pointwise.output_shape(self.depthwise.output_shape(input_shape))

    def flops(self, input_shape):
        mid = self.depthwise.output_shape(input_shape)
        return self.depthwise.flops(input_shape) + self.pointwise.flops(mid)

    def forward(self, x, training=False):
        self._sync()
        y = self.pointwise.forward(self.depthwise.forward(x, training), training)
        self._out_shape = tuple(y.shape)
        return y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        self._sync()
        grad = self.pointwise.backward(grad)
        dx = self.depthwise.backward(grad, need_input_grad)
        if self.trainable:
            self.grads = {"W_depthwise": self.depthwise.grads["W"],
                          "W_pointwise": self.pointwise.grads["W"]}
            if "b" in self.params:
                self.grads["b"] = self.pointwise.grads["b"]
        return dx

    def get_config(self):
        d = self.depthwise
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(d.kernel_size), "stride": list(d.stride),
                "padding": d.padding if isinstance(d.padding, str) else list(d.padding),
                "dilation": list(d.dilation), "bias": "b" in self.params,
                "dtype": d.dtype.name, "name": self.name}
