"""Sequential: a chain of layers, its summary, and saving/loading to one file."""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import numpy as np

from .backend import get_backend
from .errors import ModelFileError, ShapeError
from .layers import Layer
from .layers.serialize import layer_from_spec, layer_spec

FORMAT = "gpudl-model"
FORMAT_VERSION = 1


class Sequential:
    """Layers applied in order; backward runs them in reverse."""

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
        self.input_shape = tuple(input_shape) if input_shape is not None else self._infer_input()
        if self.input_shape is not None:
            self.output_shape()  # a chain that does not fit together fails here, not mid-epoch

    def _dedupe_names(self):
        seen = {}
        for layer in self.walk():
            n = seen.get(layer.name, 0)
            seen[layer.name] = n + 1
            if n:
                layer.name = f"{layer.name}_{n}"

    def walk(self):
        """Every layer, containers before their children, in forward order."""
        def visit(layers):
            for layer in layers:
                yield layer
                yield from visit(getattr(layer, "layers", ()))
        return visit(self.layers)

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

    # ---- computation
    def forward(self, x, training=None):
        """Run every layer; ``training`` overrides the model's mode (train()/eval())."""
        training = self.training if training is None else bool(training)
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    __call__ = forward

    def backward(self, grad, need_input_grad=True):
        """Backpropagate d(loss)/d(output); returns d(loss)/d(input), or None
        with ``need_input_grad=False`` (the first layer may then skip that work)."""
        for layer in reversed(self.layers[1:]):
            grad = layer.backward(grad)
        return self.layers[0].backward(grad, need_input_grad=need_input_grad)

    def predict(self, x, batch_size=None):
        """Host array in, host array out; runs in inference mode."""
        x = np.asarray(x)
        be = self.backend
        n = x.shape[0]
        bs = n if batch_size is None else int(batch_size)
        outs = [be.to_numpy(self.forward(be.asarray(x[s:s + bs], dtype=self.dtype), training=False))
                for s in range(0, n, max(bs, 1))]
        return np.concatenate(outs) if outs else np.empty((0,) + self.output_shape())

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
        return sum(l.num_params() for l in self.layers if l.trainable or not trainable_only)

    def summary(self, input_shape=None, print_fn=print) -> str:
        """A table of layer, output shape, parameters and FLOPs per sample.

        Parameters follow the notes (Dense: S_in S_out + S_out); FLOPs are
        multiply-adds per sample, of order S_in S_out for a dense layer."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape
        if shape is None:
            raise ShapeError("Sequential.summary: pass input_shape= (the model cannot infer it)")
        rows = []
        total_flops = 0
        for layer in self.layers:
            flops = layer.flops(shape)
            inner = layer.summary_rows(shape) if hasattr(layer, "summary_rows") else []
            shape = layer.output_shape(shape)
            total_flops += flops
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
                 f"FLOPs per sample: {total_flops:,}"]
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

    def save(self, path) -> None:
        """Write architecture and weights to one .npz file, atomically."""
        arrays = self.state_arrays()
        arrays["__config__"] = np.frombuffer(json.dumps(self.get_config()).encode(), np.uint8)
        atomic_write(path, lambda f: np.savez(f, **arrays))

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"Sequential([\n  {inner}\n])"


def atomic_write(path, write) -> None:
    """Write through a temporary file in the same folder, then rename over path,
    so an interrupted write never leaves a half-written file at path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path, device=None) -> Sequential:
    """Rebuild a model saved with Sequential.save, on ``device`` ("cpu", "cuda")
    or, by default, the current device. The current device is left as it is."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"no model file at {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        config = json.loads(arrays.pop("__config__").tobytes().decode())
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path!r} is not a readable gpudl model file "
                             f"(truncated or corrupt?): {e}") from e
    if config.get("format") != FORMAT:
        raise ModelFileError(f"{path!r} is not a gpudl model file (format {config.get('format')!r})")
    if config.get("version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has model format version {config['version']}; "
                             f"this gpudl reads up to {FORMAT_VERSION}")
    layers = []
    for i, spec in enumerate(config["layers"]):
        try:
            layer = layer_from_spec(spec)
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
