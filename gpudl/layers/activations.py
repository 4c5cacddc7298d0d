"""Elementwise activations and softmax; each backward is the derivative it names."""
from __future__ import annotations

from ..errors import ShapeError
from .base import Layer


class _Activation(Layer):
    """Output and input share one shape: forward records it for backward's check."""

    def flops(self, input_shape):
        # one operation per element, the same order as the notes would count
        n = 1
        for d in input_shape:
            n *= d
        return n


class ReLU(_Activation):
    def forward(self, x, training=False):
        self._x, self._out_shape = x, tuple(x.shape)
        return self.backend.relu(x)

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return self.backend.relu_backward(self._x, grad)


class Sigmoid(_Activation):
    def forward(self, x, training=False):
        self._y = self.backend.sigmoid(x)
        self._out_shape = tuple(x.shape)
        return self._y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return self.backend.sigmoid_backward(self._y, grad)


class Tanh(_Activation):
    def forward(self, x, training=False):
        self._y = self.backend.tanh(x)
        self._out_shape = tuple(x.shape)
        return self._y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return self.backend.tanh_backward(self._y, grad)


class Step(_Activation):
    """The perceptron's threshold: 1 where x >= 0, else 0.

    Its derivative is zero wherever it exists, so backward passes back zeros:
    a network of steps cannot learn by backpropagation, which is why the
    perceptron has its own rule (see Perceptron.fit)."""

    def forward(self, x, training=False):
        self._out_shape = tuple(x.shape)
        return self.backend.step(x)

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return self.backend.axpby(0.0, grad, 0.0, grad)


class Softmax(_Activation):
    """Row-wise softmax over the last axis of (N, C).

    Use it to read probabilities; for training, CrossEntropy takes the logits
    directly (softmax and its log fused, which is both stabler and cheaper)."""

    def forward(self, x, training=False):
        if x.ndim != 2:
            raise ShapeError(f"layer '{self.name}' (Softmax) expects (batch, classes), "
                             f"got {tuple(x.shape)}")
        self._y = self.backend.softmax(x)
        self._out_shape = tuple(x.shape)
        return self._y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return self.backend.softmax_backward(self._y, grad)
