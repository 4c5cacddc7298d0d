"""Layers: each owns forward and backward, and named params/grads."""
from .activations import ReLU, Sigmoid, Softmax, Step, Tanh
from .base import Layer, manual_seed
from .dense import Dense
from .perceptron import Perceptron

#: class name -> class, for rebuilding a saved model
LAYER_TYPES = {cls.__name__: cls for cls in (Dense, Perceptron, ReLU, Sigmoid, Tanh, Step, Softmax)}

__all__ = ["Layer", "Dense", "Perceptron", "ReLU", "Sigmoid", "Tanh", "Step", "Softmax",
           "LAYER_TYPES", "manual_seed"]
