"""Max and mean pooling (the notes' pooling layer), and global average pooling.

AvgPool2D leaves padding out of each window's average (PyTorch's
count_include_pad=False): a border window averages only the pixels it covers.
Padding may be at most half the kernel, so every window covers a pixel.
"""
from __future__ import annotations

from ..convshape import conv_output_hw, pair
from ..errors import ShapeError
from .base import Layer


class _Pool2D(Layer):
    def __init__(self, kernel_size, stride=None, padding=0, name=None):
        super().__init__(name)
        owner = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.stride = pair(stride if stride is not None else self.kernel_size, "stride", owner)
        self.padding = pair(padding, "padding", owner, minimum=0)
        for p, k in zip(self.padding, self.kernel_size):
            if p > k // 2:
                raise ValueError(f"{owner}: padding {self.padding} must be at most half the "
                                 f"kernel size {self.kernel_size}")
        self._in_shape = None

    @property
    def pads(self):
        ph, pw = self.padding
        return (ph, ph, pw, pw)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"layer '{self.name}' ({type(self).__name__}) expects per-sample "
                             f"shape (C, H, W), got {tuple(input_shape)}")
        oh, ow = conv_output_hw(input_shape[1:], self.kernel_size, self.stride, self.pads, (1, 1),
                                f"layer '{self.name}'")
        return (input_shape[0], oh, ow)

    def flops(self, input_shape):
        c, oh, ow = self.output_shape(input_shape)
        return self.kernel_size[0] * self.kernel_size[1] * c * oh * ow

    def _check(self, x):
        if x.ndim != 4:
            raise ShapeError(f"layer '{self.name}' ({type(self).__name__}) expects a batch of "
                             f"shape (N, C, H, W), got {tuple(x.shape)}")
        self._out_shape = (x.shape[0],) + self.output_shape(tuple(x.shape[1:]))
        self._in_shape = tuple(x.shape)

    def _in_hw(self):
        return self._need(self._in_shape)[2:]

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "name": self.name}


class MaxPool2D(_Pool2D):
    """The largest value of each window; backward routes each gradient to it."""

    def forward(self, x, training=False):
        self._check(x)
        y, self._argmax = self.backend.max_pool2d(x, self.kernel_size, self.stride, self.pads)
        return y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return self.backend.max_pool2d_backward(grad, self._argmax, self._in_hw(),
                                                self.kernel_size, self.stride, self.pads)


class AvgPool2D(_Pool2D):
    """The mean of each window (the notes' mean pooling), padding not counted."""

    def forward(self, x, training=False):
        self._check(x)
        return self.backend.avg_pool2d(x, self.kernel_size, self.stride, self.pads)

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return self.backend.avg_pool2d_backward(grad, self._in_hw(), self.kernel_size,
                                                self.stride, self.pads)


class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C): the mean of each channel's whole map."""

    def forward(self, x, training=False):
        if x.ndim != 4:
            raise ShapeError(f"layer '{self.name}' (GlobalAvgPool2D) expects (N, C, H, W), "
                             f"got {tuple(x.shape)}")
        self._hw = tuple(x.shape[2:])
        y = self.backend.avg_pool2d(x, self._hw, self._hw, (0, 0, 0, 0))
        self._out_shape = tuple(x.shape[:2])
        return y.reshape(x.shape[0], x.shape[1])

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        g4 = grad.reshape(grad.shape[0], grad.shape[1], 1, 1)
        return self.backend.avg_pool2d_backward(g4, self._hw, self._hw, self._hw, (0, 0, 0, 0))

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"layer '{self.name}' (GlobalAvgPool2D) expects per-sample shape "
                             f"(C, H, W), got {tuple(input_shape)}")
        return (input_shape[0],)

    def flops(self, input_shape):
        return int(input_shape[0] * input_shape[1] * input_shape[2])
