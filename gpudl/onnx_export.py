"""A Sequential's inference network as an ONNX graph (needs ``pip install gpudl[onnx]``).

    model.export_onnx("model.onnx", input_shape=(1, 28, 28))

The graph computes ``model.predict``: dropout is left out and batch norm
uses its running statistics. The batch axis is dynamic ("N"); every other
size is fixed by ``input_shape``, because gpudl's "same" padding depends on
the input size: an odd total padding puts its extra row or column at the
bottom/right, which goes into Conv's ``pads`` as it is (ONNX pads may be
asymmetric), where ``auto_pad=SAME_UPPER`` would be right too but would hide
the numbers. Tensors and nodes are named after the gpudl layers.

Weights are exported as float32 whatever the model's dtype: a float64 model
gives a float32 graph, since that is what ONNX runtimes run fast everywhere
(its outputs then match predict to float32 rounding). gpudl's precision
policy (bf16/fp16 products) does not enter the graph either.

With ``fold_batchnorm`` a BatchNorm directly after a Conv2D, DepthwiseConv2D,
SeparableConv2D, Conv2DTranspose or Dense in the same chain is folded into
that layer's weights and bias (computed in float64, then rounded once);
elsewhere, and with ``fold_batchnorm=False``, it is a BatchNormalization node.
"""
from __future__ import annotations

import os

import numpy as np

from . import layers as L
from .errors import ShapeError

MIN_OPSET = 17


def _handlers():
    """exact class -> handler; exact, since a subclass may compute something else."""
    return {L.Dense: _dense, L.Perceptron: _perceptron, L.Conv2D: _conv,
            L.DepthwiseConv2D: _conv, L.SeparableConv2D: _separable,
            L.Conv2DTranspose: _conv_transpose, L.BatchNorm: _batchnorm,
            L.MaxPool2D: _pool, L.AvgPool2D: _pool, L.GlobalAvgPool2D: _global_avg,
            L.Flatten: _flatten, L.Dropout: _identity, L.ReLU: _unary, L.Sigmoid: _unary,
            L.Tanh: _unary, L.Softmax: _softmax, L.Step: _step,
            L.Residual: _branches, L.Concat: _branches}


#: layers whose output channels a following BatchNorm can be folded into
_FOLDABLE = ("Dense", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")


def check_exportable(model) -> None:
    """A NotImplementedError naming the first layer the exporter cannot write."""
    handlers = _handlers()
    for layer in model.walk():
        if type(layer) not in handlers:
            raise NotImplementedError(
                f"export_onnx: layer '{layer.name}' ({type(layer).__module__}."
                f"{type(layer).__qualname__}) has no ONNX export; supported layers: "
                f"{', '.join(sorted(c.__name__ for c in handlers))}")


def _check_opset(opset, onnx):
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"export_onnx: opset must be an int, got {opset!r}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"export_onnx: opset {opset} is not supported: gpudl writes opset "
                         f"{MIN_OPSET} or later (the installed onnx {onnx.__version__} knows up "
                         f"to {newest})")
    return int(opset)


def to_onnx(model, input_shape=None, opset=MIN_OPSET, fold_batchnorm=True):
    """The ONNX ModelProto of ``model``'s inference network, checked by
    onnx.checker (full check, with shape inference); nothing is written."""
    from .model import _input_shape
    check_exportable(model)
    shape = input_shape if input_shape is not None else model.input_shape
    if shape is None:
        raise ShapeError("export_onnx: the model's input shape is unknown; pass the per-sample "
                         "input_shape=, e.g. (1, 28, 28)")
    shape = _input_shape(shape)
    out_shape = model.output_shape(shape)  # a shape the layers do not accept fails here
    try:
        import onnx
        from onnx import helper
    except ImportError as e:
        raise ImportError("export_onnx needs the onnx package: pip install 'gpudl[onnx]'") from e
    opset = _check_opset(opset, onnx)
    g = _Graph(helper, bool(fold_batchnorm))
    last = g.chain(model.layers, "input", shape)
    g.finish(last)
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, "gpudl", [helper.make_tensor_value_info("input", f32, ["N", *shape])],
        [helper.make_tensor_value_info("output", f32, ["N", *out_shape])],
        initializer=g.initializers,
        doc_string=f"gpudl Sequential, per-sample input {shape}, output {tuple(out_shape)}")
    from . import __version__
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="gpudl",
                              producer_version=__version__,
                              # the oldest IR the opset allows: older runtimes load it too
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, input_shape=None, opset=MIN_OPSET, fold_batchnorm=True):
    """Write ``model``'s inference network to ``path`` as ONNX, atomically:
    every check (unsupported layers, input shape, opset, onnx.checker) runs
    before the file is opened, and a failed write leaves no partial file.
    Returns the ModelProto."""
    from .archive import atomic_write
    proto = to_onnx(model, input_shape=input_shape, opset=opset, fold_batchnorm=fold_batchnorm)
    data = proto.SerializeToString()
    atomic_write(os.fspath(path), lambda f: f.write(data), "export_onnx")
    return proto


def _host(layer, key, store="params"):
    return np.asarray(layer.backend.to_numpy(getattr(layer, store)[key]), dtype=np.float64)


def _bn_scale_shift(bn):
    """(s, t) with BatchNorm(x) = s x + t per channel, in float64."""
    s = _host(bn, "gamma") / np.sqrt(_host(bn, "running_var", "buffers") + bn.eps)
    return s, _host(bn, "beta") - s * _host(bn, "running_mean", "buffers")


class _Graph:
    """Nodes and initializers, built by walking the layers with their shapes."""

    def __init__(self, helper, fold):
        self.helper, self.fold = helper, fold
        self.nodes, self.initializers = [], []
        self._taken = {"input", "output"}

    def name(self, base):
        """A tensor/node name no earlier one has."""
        out, k = base, 1
        while out in self._taken:
            out, k = f"{base}_{k}", k + 1
        self._taken.add(out)
        return out

    def const(self, name, array):
        from onnx import numpy_helper
        name = self.name(name)
        self.initializers.append(numpy_helper.from_array(
            np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op, inputs, name, **attrs):
        """Add one node; its single output tensor shares its (unique) name."""
        name = self.name(name)
        self.nodes.append(self.helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def chain(self, layers, x, shape):
        """The output tensor of ``layers`` applied to tensor ``x`` of per-sample ``shape``."""
        handlers = _handlers()
        i = 0
        while i < len(layers):
            layer = layers[i]
            after = layers[i + 1] if i + 1 < len(layers) else None
            bn = None
            if (self.fold and type(after).__name__ == "BatchNorm"
                    and type(layer).__name__ in _FOLDABLE):
                bn = _bn_scale_shift(after) + (after.name,)
            x = handlers[type(layer)](self, layer, x, shape, bn)
            shape = layer.output_shape(shape)
            if bn is not None:
                i += 1  # the BatchNorm is inside the layer's weights now
            i += 1
        return x

    def finish(self, last):
        """Name the last tensor "output" (an Identity when it is the input itself)."""
        if last == "input":
            self.nodes.append(self.helper.make_node("Identity", ["input"], ["output"],
                                                    name="output"))
            return
        for node in self.nodes:
            node.input[:] = ["output" if t == last else t for t in node.input]
            node.output[:] = ["output" if t == last else t for t in node.output]


def _folded(w, b, bn, axis):
    """Weights w (output channels on ``axis``) and bias b (None: zero) with
    a BatchNorm's (s, t, name) applied after them."""
    if bn is None:
        return w, b
    s, t, _ = bn
    view = [1] * w.ndim
    view[axis] = -1
    w = w * s.reshape(view)
    return w, (t if b is None else s * b + t)


def _label(layer, bn):
    """A folded pair's node is named after both layers ("conv2d+batchnorm")."""
    return layer.name if bn is None else f"{layer.name}+{bn[2]}"


def _dense(g, layer, x, shape, bn, name=None):
    w, b = _folded(_host(layer, "W"), _host(layer, "b"), bn, 0)
    label = name or _label(layer, bn)
    return g.node("Gemm", [x, g.const(f"{layer.name}.W", w), g.const(f"{layer.name}.b", b)],
                  label, transB=1)


def _step(g, layer, x, shape, bn, name=None):
    ge = g.node("GreaterOrEqual", [x, g.const(f"{layer.name}.zero", np.zeros(()))],
                f"{name or layer.name}.ge")
    from onnx import TensorProto
    return g.node("Cast", [ge], name or layer.name, to=TensorProto.FLOAT)


def _perceptron(g, layer, x, shape, bn):
    return _step(g, layer, _dense(g, layer, x, shape, None, f"{layer.name}.gemm"), shape, None,
                 layer.name)


def _conv_node(g, conv, x, hw, w, b, label, prefix):
    top, bottom, left, right = conv.pads(tuple(hw))
    inputs = [x, g.const(f"{prefix}.W", w)]
    if b is not None:
        inputs.append(g.const(f"{prefix}.b", b))
    return g.node("Conv", inputs, label, kernel_shape=list(conv.kernel_size),
                  strides=list(conv.stride), dilations=list(conv.dilation),
                  pads=[top, left, bottom, right], group=conv.groups)


def _conv(g, layer, x, shape, bn):
    w, b = _folded(_host(layer, "W"), _host(layer, "b") if layer.use_bias else None, bn, 0)
    return _conv_node(g, layer, x, shape[1:], w, b, _label(layer, bn), layer.name)


def _separable(g, layer, x, shape, bn):
    dw = layer.depthwise
    mid = _conv_node(g, dw, x, shape[1:], _host(layer, "W_depthwise"), None,
                     f"{layer.name}.depthwise", f"{layer.name}.depthwise")
    b = _host(layer, "b") if "b" in layer.params else None
    w, b = _folded(_host(layer, "W_pointwise"), b, bn, 0)
    return _conv_node(g, layer.pointwise, mid, dw.output_shape(tuple(shape))[1:], w, b,
                      _label(layer, bn), f"{layer.name}.pointwise")


def _conv_transpose(g, layer, x, shape, bn):
    # weight (in, out, kh, kw): the output channels are axis 1
    w, b = _folded(_host(layer, "W"), _host(layer, "b") if layer.use_bias else None, bn, 1)
    inputs = [x, g.const(f"{layer.name}.W", w)]
    if b is not None:
        inputs.append(g.const(f"{layer.name}.b", b))
    (ph, pw), (oph, opw) = layer.padding, layer.output_padding
    # PyTorch's and ONNX's output size agree: (H - 1) S - 2 P + D (K - 1) + 1 + output_padding
    return g.node("ConvTranspose", inputs, _label(layer, bn),
                  kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  dilations=list(layer.dilation), pads=[ph, pw, ph, pw],
                  output_padding=[oph, opw])


def _batchnorm(g, layer, x, shape, bn):
    n = layer.name
    return g.node("BatchNormalization",
                  [x, g.const(f"{n}.gamma", _host(layer, "gamma")),
                   g.const(f"{n}.beta", _host(layer, "beta")),
                   g.const(f"{n}.running_mean", _host(layer, "running_mean", "buffers")),
                   g.const(f"{n}.running_var", _host(layer, "running_var", "buffers"))],
                  n, epsilon=layer.eps)


def _pool(g, layer, x, shape, bn):
    ph, pw = layer.padding
    attrs = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                 pads=[ph, pw, ph, pw])
    if type(layer).__name__ == "MaxPool2D":
        return g.node("MaxPool", [x], layer.name, **attrs)
    # gpudl leaves the padding out of each window's count (PyTorch's count_include_pad=False)
    return g.node("AveragePool", [x], layer.name, count_include_pad=0, **attrs)


def _global_avg(g, layer, x, shape, bn):
    pooled = g.node("GlobalAveragePool", [x], f"{layer.name}.pool")
    return g.node("Flatten", [pooled], layer.name, axis=1)


def _flatten(g, layer, x, shape, bn):
    return g.node("Flatten", [x], layer.name, axis=1)


def _identity(g, layer, x, shape, bn):
    return x  # dropout at inference


def _unary(g, layer, x, shape, bn):
    op = {"ReLU": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh"}[type(layer).__name__]
    return g.node(op, [x], layer.name)


def _softmax(g, layer, x, shape, bn):
    return g.node("Softmax", [x], layer.name, axis=-1)


def _branches(g, layer, x, shape, bn):
    outs = [g.chain(chain, x, tuple(shape)) for chain in layer.chains.values()]
    if layer.merge == "concat":
        return g.node("Concat", outs, layer.name, axis=1)
    y = outs[0]
    for k, other in enumerate(outs[1:]):
        last = k == len(outs) - 2
        y = g.node("Add", [y, other], layer.name if last else f"{layer.name}.add{k}")
    return y
