"""Flatten: (N, C, H, W) -> (N, C H W), the bridge from convolutions to dense layers."""
from __future__ import annotations

from .base import Layer


class Flatten(Layer):
    def forward(self, x, training=False):
        self._shape = tuple(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad, need_input_grad=True):
        return grad.reshape(self._shape)

    def output_shape(self, input_shape):
        n = 1
        for d in input_shape:
            n *= d
        return (n,)
