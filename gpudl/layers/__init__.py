"""Layers: each owns forward and backward, and named params/grads."""
from .activations import ReLU, Sigmoid, Softmax, Step, Tanh
from .base import Layer, manual_seed
from .batchnorm import BatchNorm
from .branches import Concat, Residual
from .conv import Conv2D, DepthwiseConv2D
from .conv_transpose import Conv2DTranspose
from .dense import Dense
from .dropout import Dropout
from .perceptron import Perceptron
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .reshape import Flatten
from .separable import SeparableConv2D
from .serialize import register

#: class name -> class, for rebuilding a saved model
LAYER_TYPES = {cls.__name__: cls for cls in (
    Dense, Perceptron, ReLU, Sigmoid, Tanh, Step, Softmax, Conv2D, DepthwiseConv2D,
    Conv2DTranspose, SeparableConv2D, Flatten, MaxPool2D, AvgPool2D, GlobalAvgPool2D, BatchNorm, Dropout,
    Residual, Concat)}

__all__ = ["Layer", "Dense", "Perceptron", "ReLU", "Sigmoid", "Tanh", "Step", "Softmax",
           "Conv2D", "DepthwiseConv2D", "Conv2DTranspose", "SeparableConv2D", "Flatten",
           "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "BatchNorm", "Dropout", "Residual", "Concat",
           "LAYER_TYPES", "manual_seed", "register"]
