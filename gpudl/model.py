"""Sequential: a chain of layers, its summary, and saving/loading to one file."""
from __future__ import annotations

import json
import os

import numpy as np

from .archive import atomic_write, check_writable, read_archive  # noqa: F401 (gpudl.model.*)
from .backend import get_backend
from .errors import ModelFileError, ShapeError
from .layers import Layer
from .layers.serialize import layer_from_spec, layer_spec

FORMAT = "gpudl-model"
FORMAT_VERSION = 1


#: the layers whose products follow the precision policy (gpudl/precision.py)
_LOWP_TYPES = ("Dense", "Conv2D", "DepthwiseConv2D", "Conv2DTranspose")


def _precision_line(lowp, total):
    from .precision import POLICIES, get_precision
    policy = get_precision()
    fmt = POLICIES[policy]
    if fmt is None:
        return f"Precision: {policy} (float32 throughout)"
    share = f"{100 * lowp / total:.1f}%" if total else "-"
    return (f"Precision: {policy} ({fmt.upper()} inputs, FP32 accumulate: {lowp:,} FLOPs per "
            f"sample, {share}; the rest and all state in FP32)")


class Sequential:
    """Layers applied in order; backward runs them in reverse."""

    #: the shape of the last forward's output, checked by backward
    _out_shape = None

    def __init__(self, layers, input_shape=None):
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Layer")
        self.layers = layers
        #: the mode forward() runs in when not told: False (inference) until train()
        self.training = False
        self._dedupe_names()
        self.input_shape = (_input_shape(input_shape) if input_shape is not None
                            else self._infer_input())
        if self.input_shape is not None:
            self.output_shape()  # a chain that does not fit together fails here, not mid-epoch

    def _dedupe_names(self):
        """Give every layer, nested ones included, a name no earlier layer has
        ("dense", "dense_1", ...), so names can select layers (freeze)."""
        taken = set()
        for layer in self.walk():
            if layer.name in taken:
                base, k = layer.name, 1
                while f"{base}_{k}" in taken:
                    k += 1
                layer.name = f"{base}_{k}"
            taken.add(layer.name)

    def walk(self):
        """Every layer, containers before their children, in forward order."""
        def visit(layers):
            for layer in layers:
                yield layer
                yield from visit(getattr(layer, "layers", ()))
        return visit(self.layers)

    def _parents(self) -> dict:
        """id(layer) -> the container that holds it, for nested layers."""
        out = {}
        for layer in self.walk():
            for child in getattr(layer, "layers", ()):
                out[id(child)] = layer
        return out

    def _infer_input(self):
        first = self.layers[0]
        return (first.in_features,) if hasattr(first, "in_features") else None

    @property
    def backend(self):
        return self.layers[0].backend

    @property
    def dtype(self):
        for layer in self.layers:
            for p in layer.params.values():
                return np.dtype(p.dtype)
        return np.dtype(np.float32)

    # ---- mode
    def train(self, mode: bool = True) -> "Sequential":
        """Training mode: dropout drops, batch norm uses and updates batch statistics."""
        self.training = bool(mode)
        return self

    def eval(self) -> "Sequential":
        """Inference mode: dropout is the identity, batch norm uses its running averages."""
        return self.train(False)

    # ---- freezing, transfer learning and fine-tuning
    def _select(self, which, what) -> list:
        """Layers named by ints (negative allowed), slices, names (any layer
        that walk() yields, nested ones included) or Layer objects; all
        top-level layers when ``which`` is empty."""
        if not which:
            return list(self.layers)
        found, n = [], len(self.layers)
        by_name = {layer.name: layer for layer in self.walk()}
        ids = {id(layer) for layer in self.walk()}
        for item in which:
            if isinstance(item, slice):
                found += self.layers[item]
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not -n <= item < n:
                    raise IndexError(f"Sequential.{what}: layer index {item} is out of range "
                                     f"for {n} layers (valid: {-n} to {n - 1})")
                found.append(self.layers[item])
            elif isinstance(item, str):
                if item not in by_name:
                    raise KeyError(f"Sequential.{what}: no layer named {item!r}; "
                                   f"layers are: {', '.join(by_name)}")
                found.append(by_name[item])
            elif isinstance(item, Layer):
                if id(item) not in ids:
                    raise ValueError(f"Sequential.{what}: layer '{item.name}' "
                                     f"({type(item).__name__}) is not part of this model")
                found.append(item)
            else:
                raise TypeError(f"Sequential.{what}: expected layer indices, slices, names or "
                                f"Layer objects, got {type(item).__name__}")
        return found

    @staticmethod
    def _set_trainable(layer, flag: bool) -> None:
        """The layer and everything inside it."""
        layer.trainable = flag
        for child in getattr(layer, "layers", ()):
            Sequential._set_trainable(child, flag)

    def freeze(self, *which) -> "Sequential":
        """Stop training the selected layers (all layers when none is given):
        ``freeze()``, ``freeze(0, -2)``, ``freeze(slice(None, -1))``,
        ``freeze("conv2d_1")``, ``freeze(model.layers[3])``. A container's
        children freeze with it.

        A frozen layer computes no weight gradients, the optimizer skips it
        (it creates no momentum for it) and its weights stay bit-identical;
        backward stops below the lowest layer that still trains. A frozen
        BatchNorm runs in inference mode even while the model trains: it
        normalises with its running statistics and leaves them as they are
        (see gpudl.layers.BatchNorm), as in Keras and usual fine-tuning
        practice, so a small new data set does not disturb statistics
        learned on the large one. Returns the model."""
        for layer in self._select(which, "freeze"):
            self._set_trainable(layer, False)
        return self

    def unfreeze(self, *which) -> "Sequential":
        """Train the selected layers again (all layers when none is given);
        same selectors as freeze(). Unfreezing a nested layer also marks the
        containers holding it as trainable (their other children keep their
        state). Give the optimizer a lower learning rate for fine-tuning, and
        use a new optimizer after changing the model (its state is keyed by
        layer index). Returns the model."""
        parents = self._parents()
        for layer in self._select(which, "unfreeze"):
            self._set_trainable(layer, True)
            up = parents.get(id(layer))
            while up is not None:
                up.trainable = True
                up = parents.get(id(up))
        return self

    def pop(self) -> Layer:
        """Remove and return the last layer (the "head"), for transfer learning:
        ``model.pop(); model.freeze(); model.add(Dense(features, classes))``."""
        if len(self.layers) < 2:
            raise ValueError("Sequential.pop: cannot remove the only layer of a model")
        return self.layers.pop()

    def add(self, layer) -> "Sequential":
        """Append a layer (a new head). Its name is made unique in the model and,
        when the input shape is known, it must accept the current output shape:
        otherwise a ShapeError names both and the model is left unchanged.
        Returns the model."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a Layer, got {type(layer).__name__}")
        if any(layer is other for other in self.walk()):
            raise ValueError(f"Sequential.add: layer '{layer.name}' is already in the model")
        if self.input_shape is not None:
            before = self.output_shape()
            try:
                layer.output_shape(before)
            except ShapeError as e:
                last = self.layers[-1]
                raise ShapeError(f"Sequential.add: layer '{layer.name}' ({type(layer).__name__}) "
                                 f"does not fit after '{last.name}' ({type(last).__name__}), whose "
                                 f"output has per-sample shape {before}: {e}") from None
        self.layers.append(layer)
        self._dedupe_names()
        return self

    def trainable_layers(self) -> list:
        """Layers (nested ones included) whose own parameters will be trained."""
        return [layer for layer, on in self._effective() if on and layer.params
                and not hasattr(layer, "layers")]

    def _effective(self):
        """(layer, trains): a layer trains when it and every container around it
        are trainable."""
        def visit(layers, on):
            for layer in layers:
                here = on and layer.trainable
                yield layer, here
                yield from visit(getattr(layer, "layers", ()), here)
        return visit(self.layers, True)

    # ---- computation
    def forward(self, x, training=None):
        """Run every layer; ``training`` overrides the model's mode (train()/eval())."""
        training = self.training if training is None else bool(training)
        for layer in self.layers:
            x = layer.forward(x, training=training)
        self._out_shape = tuple(x.shape)
        return x

    __call__ = forward

    def backward(self, grad, need_input_grad=True):
        """Backpropagate d(loss)/d(output); returns d(loss)/d(input), or None
        with ``need_input_grad=False`` (the first layer may then skip that work)."""
        # first, so that a wrong gradient leaves every layer's gradients as they were
        expect = self._out_shape
        if expect is None:
            raise RuntimeError("Sequential: backward called before forward (call forward first)")
        if tuple(getattr(grad, "shape", ())) != expect:
            raise ShapeError(f"Sequential: gradient of shape {tuple(getattr(grad, 'shape', ()))} "
                             f"does not match the output of its last layer "
                             f"'{self.layers[-1].name}' {expect}")
        first = 0
        if not need_input_grad:
            # nothing below the lowest layer that trains needs a gradient:
            # with a frozen base, backward stops at the new head
            wants = [_trains(layer) for layer in self.layers]
            if not any(wants):
                return None
            first = wants.index(True)
        for layer in reversed(self.layers[first + 1:]):
            grad = layer.backward(grad)
        return self.layers[first].backward(grad, need_input_grad=need_input_grad)

    def predict(self, x, batch_size=None):
        """Host array in, host array out; runs in inference mode. Returns the
        model's outputs as they are: for a classifier trained with
        CrossEntropy those are logits (predict_proba gives probabilities).
        x is a batch (N, ...); a single sample needs its batch axis (x[None]).
        x may also be a data set, np.memmap or iterable of batches (gpudl.stream),
        read batch by batch (batch_size None: 256 a batch)."""
        from .stream import is_source, predict as stream_predict
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
                batch_size, (int, np.integer)) or batch_size <= 0):
            raise ValueError(f"predict: batch_size must be a positive integer or None, "
                             f"got {batch_size!r}")
        if is_source(x) or isinstance(x, np.memmap):
            return stream_predict(self, x, batch_size)
        x = np.asarray(x)
        check_finite(x, "predict: x")
        if self.input_shape is not None and tuple(x.shape) == tuple(self.input_shape):
            # one sample without its batch axis: refused rather than guessed, since for
            # some shapes a batch of samples looks the same
            raise ShapeError(f"predict: x has the shape of one sample {tuple(x.shape)}; models "
                             f"take a batch: add a batch axis, e.g. model.predict(x[None])")
        be = self.backend
        n = x.shape[0]
        bs = n if batch_size is None else int(batch_size)
        outs = [be.to_numpy(self.forward(be.asarray(x[s:s + bs], dtype=self.dtype), training=False))
                for s in range(0, n, bs)]
        return np.concatenate(outs) if outs else np.empty((0,) + self.output_shape())

    def predict_proba(self, x, batch_size=None):
        """Class probabilities of a classifier whose last layer gives logits:
        the softmax over the class axis (1) of predict's outputs, or for
        outputs of width 1 (binary) the sigmoid. A model ending in Softmax or
        Sigmoid already outputs probabilities: use predict."""
        out = self.predict(x, batch_size=batch_size)
        if out.ndim < 2:
            raise ShapeError(f"predict_proba: expected outputs (N, classes, ...), got {out.shape}")
        return sigmoid(out) if out.shape[1] == 1 else softmax(out)

    def output_shape(self, input_shape=None):
        shape = tuple(input_shape) if input_shape is not None else self.input_shape
        if shape is None:
            raise ShapeError("Sequential: the input shape is unknown; pass input_shape=")
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def to(self, device) -> "Sequential":
        """Move every parameter to a device name ("cpu", "cuda") or backend."""
        from .backend import _make
        backend = _make(device) if isinstance(device, str) else device
        for layer in self.layers:
            layer.to(backend)
        return self

    # ---- bookkeeping
    def num_params(self, trainable_only=False) -> int:
        """All parameters, or those that train: a layer's count only when it and
        every container around it are trainable (nested frozen layers count as
        frozen)."""
        if not trainable_only:
            return sum(l.num_params() for l in self.layers)
        return sum(l.num_params() for l, on in self._effective()
                   if on and not hasattr(l, "layers"))

    def summary(self, input_shape=None, print_fn=print) -> str:
        """A table of layer, output shape, parameters and FLOPs per sample.

        Parameters follow the notes (Dense: S_in S_out + S_out); FLOPs are
        multiply-adds per sample, of order S_in S_out for a dense layer."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape
        if shape is None:
            raise ShapeError("Sequential.summary: pass input_shape= (the model cannot infer it)")
        rows = []
        total_flops = lowp_flops = 0
        for layer in self.layers:
            flops = layer.flops(shape)
            inner = layer.summary_rows(shape) if hasattr(layer, "summary_rows") else []
            shape = layer.output_shape(shape)
            total_flops += flops
            if inner:
                lowp_flops += sum(f for label, _, _, f in inner
                                  if label.endswith(tuple(f"({t})" for t in _LOWP_TYPES)))
            elif type(layer).__name__ in _LOWP_TYPES:
                lowp_flops += flops
            rows.append((f"{layer.name} ({type(layer).__name__})", str((None,) + shape),
                         f"{layer.num_params():,}", f"{flops:,}"))
            # a container's children, indented; their counts are inside the row above
            rows += [(f"  {label}", str((None,) + tuple(out)), f"{p:,}", f"{f:,}")
                     for label, out, p, f in inner]
        head = ("Layer (type)", "Output shape", "Params", "FLOPs")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        rule = "-" * (sum(widths) + 6)
        total, trainable = self.num_params(), self.num_params(trainable_only=True)
        lines = [fmt.format(*head), rule] + [fmt.format(*r) for r in rows] + [rule,
                 f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                 f"Non-trainable params: {total - trainable:,}",
                 f"FLOPs per sample: {total_flops:,}", _precision_line(lowp_flops, total_flops)]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def get_config(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "layers": [layer_spec(l) for l in self.layers]}

    def state_arrays(self) -> dict:
        """Host copies of every parameter ("layers.I.NAME") and buffer ("layers.I.buffer.NAME")."""
        out = {}
        for i, layer in enumerate(self.layers):
            for k, v in layer.params.items():
                out[f"layers.{i}.{k}"] = self.backend.to_numpy(v)
            for k, v in layer.buffers.items():
                out[f"layers.{i}.buffer.{k}"] = self.backend.to_numpy(v)
        return out

    def state_dict(self) -> dict:
        """Host copies of every parameter and buffer under PyTorch's dotted keys
        ("0.weight", "4.block.1.running_mean"): exactly the keys of
        gpudl.interop.to_torch(self).state_dict(). See gpudl.interop."""
        from .interop import state_dict
        return state_dict(self)

    def load_state_dict(self, state, strict=True) -> "Sequential":
        """Load a state_dict (NumPy arrays or torch tensors, PyTorch's extras
        such as num_batches_tracked ignored); an error lists every missing,
        extra or mis-shaped key before anything is written. See gpudl.interop."""
        from .interop import load_state_dict
        load_state_dict(self, state, strict=strict)
        return self

    def export_onnx(self, path, input_shape=None, opset=17, fold_batchnorm=True) -> None:
        """Write the inference network as an ONNX graph (see gpudl.onnx_export)."""
        from .onnx_export import export_onnx
        export_onnx(self, path, input_shape=input_shape, opset=opset,
                    fold_batchnorm=fold_batchnorm)

    def save(self, path) -> None:
        """Write architecture and weights to one .npz file, atomically."""
        arrays = self.state_arrays()
        arrays["__config__"] = np.frombuffer(json.dumps(self.get_config()).encode(), np.uint8)
        atomic_write(path, lambda f: np.savez(f, **arrays), "Sequential.save")

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"Sequential([\n  {inner}\n])"


def softmax(z, axis=1):
    """exp(z) / sum(exp(z)) along ``axis``, shifted by the maximum first so
    large logits do not overflow."""
    z = np.asarray(z)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(z):
    """1 / (1 + exp(-z)), without overflow for large |z|."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype if z.dtype.kind == "f"
                                                             else np.float64)


def check_finite(x, what) -> None:
    """A host array with NaN or inf in it is an error naming the first one."""
    if x.dtype.kind in "fc":
        bad = ~np.isfinite(x)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{what} contains {int(bad.sum())} NaN or infinite values "
                             f"(first at index {first})")


def _trains(layer) -> bool:
    """Whether backward through ``layer`` fills any gradient an optimizer reads."""
    if not layer.trainable:
        return False
    children = getattr(layer, "layers", None)
    if children is not None:
        return any(_trains(c) for c in children)
    return bool(layer.params)


def _input_shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)) or not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape):
        example = f" such as ({shape},)" if isinstance(shape, (int, np.integer)) else ""
        raise TypeError(f"Sequential: input_shape must be a tuple of positive per-sample sizes"
                        f"{example}, got {shape!r}")
    return tuple(int(d) for d in shape)


def load(path, device=None, custom_objects=None) -> Sequential:
    """Rebuild a model saved with Sequential.save, on ``device`` ("cpu", "cuda")
    or, by default, the current device. The current device is left as it is.
    ``custom_objects``: {type name: Layer subclass} for layers of your own
    not registered with gpudl.layers.register."""
    path = os.fspath(path)
    config, arrays = read_archive(path, "__config__", FORMAT, FORMAT_VERSION, "model file",
                                  ModelFileError)
    layers = []
    for i, spec in enumerate(config["layers"]):
        try:
            layer = layer_from_spec(spec, custom_objects)
        except ModelFileError as e:
            raise ModelFileError(f"{path!r}: layer {i}: {e}") from None
        for store, prefix in ((layer.params, f"layers.{i}."), (layer.buffers, f"layers.{i}.buffer.")):
            for k in store:
                key = prefix + k
                if key not in arrays or arrays[key].shape != tuple(store[k].shape):
                    got = arrays[key].shape if key in arrays else "missing"
                    raise ModelFileError(f"{path!r}: parameter {key} should have shape "
                                         f"{tuple(store[k].shape)}, found {got}")
                store[k] = layer.backend.asarray(arrays[key], dtype=store[k].dtype)
        layers.append(layer)
    model = Sequential(layers, input_shape=config.get("input_shape"))
    return model.to(device) if device is not None else model
