"""backward checks the incoming gradient's shape in every layer and container,
before any state changes: a wrong gradient is an error naming the layer, the
expected and the received shapes, and the gradients of the last good backward
stay as they were. Backward before any forward says to call forward first."""
import re

import numpy as np
import pytest

import gpudl
from gpudl.distributed.syncbn import SyncBatchNorm
from gpudl.layers import (LAYER_TYPES, AvgPool2D, BatchNorm, Concat, Conv2D, Conv2DTranspose,
                          Dense, DepthwiseConv2D, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D,
                          Perceptron, ReLU, Residual, SeparableConv2D, Sigmoid, Softmax, Step,
                          Tanh)

IMAGES = (2, 3, 4, 6)

# type name -> (a fresh layer, the batch it takes); outputs have distinct axis
# lengths, so the reversed shape has the same size but a different shape
CASES = {
    "Dense": (lambda: Dense(3, 5), (2, 3)),
    "ReLU": (ReLU, IMAGES),
    "Sigmoid": (Sigmoid, IMAGES),
    "Tanh": (Tanh, IMAGES),
    "Step": (Step, IMAGES),
    "Softmax": (Softmax, (2, 5)),
    "Conv2D": (lambda: Conv2D(3, 4, 3, padding=1), IMAGES),
    "DepthwiseConv2D": (lambda: DepthwiseConv2D(3, 3, depth_multiplier=2), (2, 3, 5, 7)),
    "Conv2DTranspose": (lambda: Conv2DTranspose(3, 2, 2, stride=2), IMAGES),
    "SeparableConv2D": (lambda: SeparableConv2D(3, 5, 3), (2, 3, 5, 7)),
    "Flatten": (Flatten, IMAGES),
    "MaxPool2D": (lambda: MaxPool2D(2), (2, 3, 4, 8)),
    "AvgPool2D": (lambda: AvgPool2D(2), (2, 3, 4, 8)),
    "GlobalAvgPool2D": (GlobalAvgPool2D, IMAGES),
    "BatchNorm": (lambda: BatchNorm(3), IMAGES),
    "SyncBatchNorm": (lambda: SyncBatchNorm(3), IMAGES),
    "Dropout": (lambda: Dropout(0.5, seed=0), IMAGES),
    "Residual": (lambda: Residual([Conv2D(3, 3, 3, padding=1), BatchNorm(3), ReLU()]), IMAGES),
    "Concat": (lambda: Concat([ReLU(), Conv2D(3, 2, 1)]), IMAGES),
    "Sequential": (lambda: gpudl.Sequential([Conv2D(3, 4, 3), ReLU(), Flatten(),
                                             Dense(4 * 2 * 4, 5)]), IMAGES),
}
EXTRA = {"BatchNorm 2-D": (lambda: BatchNorm(3), (4, 3)),
         "BatchNorm frozen": (lambda: _frozen(BatchNorm(3)), IMAGES)}


def _frozen(layer):
    layer.trainable = False
    return layer


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def _grads(layer):
    store = getattr(layer, "grads", None)
    if store is None:  # a Sequential: its layers' gradients
        return {f"{i}.{k}": v for i, child in enumerate(layer.layers)
                for k, v in child.grads.items()}
    return dict(store)


def _name(layer):
    return "Sequential" if isinstance(layer, gpudl.Sequential) else f"layer '{layer.name}'"


def test_every_built_in_layer_type_has_a_case():
    built_in = {n for n, cls in LAYER_TYPES.items() if cls.__module__.startswith("gpudl.")}
    # Perceptron has no backward at all (test_perceptron_backward_is_refused)
    assert built_in - {"Perceptron"} <= set(CASES)


@pytest.mark.parametrize("kind", list(CASES) + list(EXTRA))
def test_wrong_gradient_names_the_shapes_and_keeps_the_gradients(kind):
    make, shape = {**CASES, **EXTRA}[kind]
    layer = make()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = layer.forward(x, training=True)
    good = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    layer.backward(good)
    before = {k: (v, np.array(v, copy=True)) for k, v in _grads(layer).items()}
    assert before or kind in ("ReLU", "Sigmoid", "Tanh", "Step", "Softmax", "Flatten",
                              "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Dropout",
                              "BatchNorm frozen")
    expect = tuple(y.shape)
    for wrong in (expect[::-1], (expect[0] + 1,) + expect[1:]):
        assert wrong != expect
        g = np.ones(wrong, np.float32)
        with pytest.raises(gpudl.ShapeError) as err:
            layer.backward(g)
        message = str(err.value)
        assert _name(layer) in message
        assert re.search(rf"gradient of shape {re.escape(str(wrong))}.*{re.escape(str(expect))}",
                         message), message
        after = _grads(layer)
        assert after.keys() == before.keys()
        for k, (array, values) in before.items():
            assert after[k] is array, f"{kind}: grads[{k!r}] was replaced"
            np.testing.assert_array_equal(after[k], values, err_msg=f"{kind}: grads[{k!r}]")


@pytest.mark.parametrize("kind", list(CASES))
def test_backward_before_forward_says_call_forward_first(kind):
    make, shape = CASES[kind]
    layer = make()
    with pytest.raises(RuntimeError, match="forward") as err:
        layer.backward(np.ones(shape, np.float32))
    assert _name(layer) in str(err.value)


def test_global_avg_pool_backward_before_forward():
    with pytest.raises(RuntimeError, match=r"'globalavgpool2d' \(GlobalAvgPool2D\): backward "
                                           r"called before forward \(call forward first\)"):
        GlobalAvgPool2D().backward(np.ones((2, 3), np.float32))


def test_perceptron_backward_is_refused():
    p = Perceptron(3)
    p.forward(np.ones((2, 3), np.float32))
    with pytest.raises(NotImplementedError, match="Perceptron.fit"):
        p.backward(np.ones((2, 1), np.float32))
    assert p.grads == {}
