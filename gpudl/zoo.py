"""Ready-made networks for the data sets gpudl ships with (8x8 digits by default)."""
from __future__ import annotations

from .layers import Conv2D, Dense, Flatten, ReLU
from .model import Sequential


def mlp(in_features=64, classes=10, hidden=(256, 128)):
    """Dense layers with ReLU between them."""
    layers, width = [], in_features
    for h in hidden:
        layers += [Dense(width, h), ReLU()]
        width = h
    return Sequential(layers + [Dense(width, classes)])


def small_cnn(in_shape=(1, 8, 8), classes=10, channels=(16, 32)):
    """Two 3x3 convolutions (the second with stride 2), ReLU, and a dense head."""
    c, h, w = in_shape
    c1, c2 = channels
    return Sequential([
        Conv2D(c, c1, 3, padding="same"), ReLU(),
        Conv2D(c1, c2, 3, stride=2, padding="same"), ReLU(),
        Flatten(), Dense(c2 * -(-h // 2) * -(-w // 2), classes)], input_shape=in_shape)


#: name -> (builder, whether it takes images (N, C, H, W) rather than flat vectors)
MODELS = {"mlp": (mlp, False), "cnn": (small_cnn, True)}
