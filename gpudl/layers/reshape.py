"""Flatten: (N, C, H, W) -> (N, C H W), the bridge from convolutions to dense layers."""
from __future__ import annotations

from .base import Layer


class Flatten(Layer):
    def forward(self, x, training=False):
        self._shape = tuple(x.shape)
        y = x.reshape(x.shape[0], -1)
        self._out_shape = tuple(y.shape)
        return y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return grad.reshape(self._shape)

    def output_shape(self, input_shape):
        n = 1
        for d in input_shape:
            n *= d
        return (n,)
