"""Ready-made networks. Each builder takes the per-sample input shape and the
number of classes, so the same network trains on the 8x8 digits, MNIST
(1, 28, 28) or CIFAR-10 (3, 32, 32)."""
from __future__ import annotations

from .layers import (AvgPool2D, BatchNorm, Conv2D, Dense, DepthwiseConv2D, Dropout, Flatten,
                     GlobalAvgPool2D, MaxPool2D, ReLU, Residual, Tanh)
from .model import Sequential


def mlp(in_shape=(64,), classes=10, hidden=(256, 128)):
    """Dense layers with ReLU between them, on flattened inputs."""
    width = 1
    for d in (in_shape,) if isinstance(in_shape, int) else in_shape:
        width *= d
    layers = [] if isinstance(in_shape, int) or len(in_shape) == 1 else [Flatten()]
    for h in hidden:
        layers += [Dense(width, h), ReLU()]
        width = h
    return Sequential(layers + [Dense(width, classes)],
                      input_shape=(in_shape,) if isinstance(in_shape, int) else in_shape)


def small_cnn(in_shape=(1, 8, 8), classes=10, channels=(16, 32)):
    """Two 3x3 convolutions (the second with stride 2), ReLU, and a dense head."""
    c, h, w = in_shape
    c1, c2 = channels
    return Sequential([
        Conv2D(c, c1, 3, padding="same"), ReLU(),
        Conv2D(c1, c2, 3, stride=2, padding="same"), ReLU(),
        Flatten(), Dense(c2 * -(-h // 2) * -(-w // 2), classes)], input_shape=in_shape)


def lenet(in_shape=(1, 32, 32), classes=10, classic=False):
    """LeNet-5 (LeCun et al., 1998): 5x5 convolutions of 6 and 16 channels, each
    followed by 2x2 subsampling, then dense layers of 120 and 84 units.

    Inputs smaller than 32x32 are zero-padded by the first convolution (28x28
    MNIST gets the usual 2 pixels) so the feature maps are LeNet's: 28x28, 14,
    10, 5. ``classic`` uses tanh and average pooling as the paper; the default
    uses ReLU and max pooling, which train faster."""
    c, h, w = in_shape
    if h > 32 or w > 32:
        raise ValueError(f"lenet: expects images of at most 32x32, got {h}x{w}")
    act, pool = (Tanh, AvgPool2D) if classic else (ReLU, MaxPool2D)
    features = [Conv2D(c, 6, 5, padding=((32 - h) // 2, (32 - w) // 2)), act(), pool(2),
                Conv2D(6, 16, 5), act(), pool(2), Flatten()]
    shape = tuple(in_shape)
    for layer in features:
        shape = layer.output_shape(shape)
    return Sequential(features + [Dense(shape[0], 120), act(), Dense(120, 84), act(),
                                  Dense(84, classes)], input_shape=in_shape)


def _conv_bn(cin, cout, k, stride=1, relu=True):
    layers = [Conv2D(cin, cout, k, stride=stride, padding="same", bias=False), BatchNorm(cout)]
    return layers + [ReLU()] if relu else layers


def basic_block(cin, cout, stride=1):
    """ResNet's basic block: two 3x3 convolutions with batch norm, added to
    the input, or to a 1x1 strided projection of it when the shape changes
    (He et al., 2016, option B)."""
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = _conv_bn(cin, cout, 1, stride, relu=False)
    return [Residual(_conv_bn(cin, cout, 3, stride) + _conv_bn(cout, cout, 3, relu=False),
                     shortcut=shortcut), ReLU()]


def resnet(in_shape=(3, 32, 32), classes=10, widths=(16, 32, 64), blocks=1, dropout=0.0):
    """A CIFAR-style residual network: a 3x3 stem, stages of basic blocks (the
    stages after the first halve the size with stride 2 and double the width),
    global average pooling and a dense classifier. ``blocks=3`` is ResNet-20;
    the default, one block per stage, is ResNet-8."""
    c = in_shape[0]
    layers = _conv_bn(c, widths[0], 3)
    cin = widths[0]
    for i, width in enumerate(widths):
        for j in range(blocks):
            layers += basic_block(cin, width, stride=2 if i > 0 and j == 0 else 1)
            cin = width
    layers += [GlobalAvgPool2D()]
    if dropout:
        layers += [Dropout(dropout)]
    return Sequential(layers + [Dense(cin, classes)], input_shape=in_shape)


def mobilenet(in_shape=(3, 32, 32), classes=10, widths=(32, 64, 128, 128), strides=(1, 2, 2, 1)):
    """MobileNet-style (Howard et al., 2017): a 3x3 stem, then depthwise-separable
    blocks, each a 3x3 depthwise convolution and a 1x1 pointwise one, both
    followed by batch norm and ReLU; global average pooling and a dense head."""
    if len(widths) != len(strides):
        raise ValueError(f"mobilenet: widths {widths} and strides {strides} differ in length")
    layers = _conv_bn(in_shape[0], widths[0], 3)
    cin = widths[0]
    for width, stride in zip(widths, strides):
        layers += [DepthwiseConv2D(cin, 3, stride=stride, padding="same", bias=False),
                   BatchNorm(cin), ReLU()] + _conv_bn(cin, width, 1)
        cin = width
    return Sequential(layers + [GlobalAvgPool2D(), Dense(cin, classes)], input_shape=in_shape)


#: name -> (builder, whether it takes images (N, C, H, W) rather than flat vectors)
MODELS = {"mlp": (mlp, False), "cnn": (small_cnn, True), "lenet": (lenet, True),
          "resnet": (resnet, True), "mobilenet": (mobilenet, True)}
