"""PyTorch both ways: state dicts with PyTorch's keys, and whole networks.

gpudl already stores weights in PyTorch's layouts (Dense "W" is Linear's
(out, in) weight, Conv2D "W" is Conv2d's (out, in / groups, kh, kw),
Conv2DTranspose "W" is ConvTranspose2d's (in, out, kh, kw), batch norm's
momentum has PyTorch's meaning), so moving weights is a matter of names. The
names are those of the module ``to_torch`` builds: the top-level layers are
numbered as in an ``nn.Sequential`` (activations and pooling count, as they
do in PyTorch), a Residual or Concat container holds one ``nn.Sequential``
per chain under the chain's name ("block", "shortcut", "b0", ...), so

    Dense (layer 7)                     7.weight, 7.bias
    BatchNorm (layer 1)                 1.weight, 1.bias, 1.running_mean, 1.running_var
    Conv2D inside Residual (layer 3)    3.block.0.weight
    SeparableConv2D (layer 2)           2.depthwise.weight, 2.pointwise.weight, 2.pointwise.bias

    model.state_dict()            host arrays under those keys
    model.load_state_dict(d)      arrays or torch tensors, e.g. torch.load(f, weights_only=True)
                                  or safetensors.numpy.load_file(f); read_state_dict(path) reads both
    to_torch(model)               an equivalent torch.nn.Module, weights copied
    from_torch(module_or_dict, model=None)
                                  weights into ``model``, or a new gpudl model built from an
                                  nn.Sequential of supported layers

torch is imported only by to_torch and from_torch (the ``gpudl[torch]`` extra).
"""
from __future__ import annotations

import os

import numpy as np

from .errors import ModelFileError

#: PyTorch state-dict entries gpudl has no use for, accepted and dropped on load
IGNORED_SUFFIXES = ("num_batches_tracked",)


class StateDictError(ValueError):
    """A state dict that does not fit the model: every missing, unexpected and
    mis-shaped key is listed, and nothing was loaded."""


def _entries(layer):
    """(PyTorch suffix, store, gpudl key) of one layer's arrays."""
    from .layers import BatchNorm, Conv2D, Conv2DTranspose, Dense
    from .layers.separable import SeparableConv2D
    if isinstance(layer, SeparableConv2D):
        out = [("depthwise.weight", "params", "W_depthwise"),
               ("pointwise.weight", "params", "W_pointwise")]
        return out + ([("pointwise.bias", "params", "b")] if "b" in layer.params else [])
    if isinstance(layer, (Conv2D, Conv2DTranspose, Dense)):
        return [("weight", "params", "W")] + (
            [("bias", "params", "b")] if "b" in layer.params else [])
    if isinstance(layer, BatchNorm):
        return [("weight", "params", "gamma"), ("bias", "params", "beta"),
                ("running_mean", "buffers", "running_mean"),
                ("running_var", "buffers", "running_var")]
    if layer.params or layer.buffers:
        raise NotImplementedError(
            f"interop: layer '{layer.name}' ({type(layer).__name__}) holds arrays "
            f"{sorted(layer.params) + sorted(layer.buffers)} with no PyTorch name")
    return []


def walk(layers, prefix=""):
    """(key, layer, store, gpudl key) of every array, keys as in the module
    docstring; ``layers`` is a model's (or a chain's) list of layers."""
    from .layers.branches import Branches
    for i, layer in enumerate(layers):
        here = f"{prefix}{i}."
        if isinstance(layer, Branches):
            for cname, chain in layer.chains.items():
                yield from walk(chain, f"{here}{cname}.")
            continue
        for suffix, store, key in _entries(layer):
            yield here + suffix, layer, store, key


def _batchnorm_prefixes(layers, prefix=""):
    from .layers import BatchNorm
    from .layers.branches import Branches
    for i, layer in enumerate(layers):
        if isinstance(layer, Branches):
            for cname, chain in layer.chains.items():
                yield from _batchnorm_prefixes(chain, f"{prefix}{i}.{cname}.")
        elif isinstance(layer, BatchNorm):
            yield f"{prefix}{i}."


def state_dict(model) -> dict:
    """Host copies of every parameter and buffer, under PyTorch's keys."""
    return {key: np.array(layer.backend.to_numpy(getattr(layer, store)[name]))
            for key, layer, store, name in walk(model.layers)}


def as_array(value, key="value"):
    """A NumPy array from an array, a torch tensor (any device; bfloat16 and
    float16 widened to float32) or anything np.asarray takes."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        t = value.detach().cpu()
        if str(t.dtype) in ("torch.bfloat16",):
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001 - say which entry could not be read
        raise StateDictError(f"load_state_dict: entry {key!r} is not an array "
                             f"({type(value).__name__}): {e}") from e


def read_state_dict(path) -> dict:
    """The arrays of a weights file: .safetensors (safetensors.numpy), .pt/.pth/.bin
    (torch.load with weights_only=True) or .npz."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_state_dict: no such file {path!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors.numpy import load_file
        return load_file(path)
    if ext in (".pt", ".pth", ".bin"):
        import torch
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict):
            raise ModelFileError(f"read_state_dict: {path!r} holds a {type(data).__name__}, "
                                 f"not a state dict")
        return {k: as_array(v, k) for k, v in data.items()}
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    raise ModelFileError(f"read_state_dict: {path!r}: expected a .safetensors, .pt, .pth, "
                         f".bin or .npz file")


def _problems(missing, unexpected, wrong):
    lines = []
    if missing:
        lines.append(f"missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    for key, want, got in wrong:
        lines.append(f"{key}: the model has shape {want}, the state dict {got}")
    return lines


def load_state_dict(model, state, strict=True) -> None:
    """Copy ``state`` (a mapping of key -> array or tensor, a torch module, or a
    path for read_state_dict) into ``model``. Every key and shape is checked
    before anything is written; ``strict=False`` skips missing and unexpected
    keys (shapes are still checked). num_batches_tracked entries of batch-norm
    layers are ignored."""
    if isinstance(state, (str, os.PathLike)):
        state = read_state_dict(state)
    elif hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not hasattr(state, "keys"):
        raise TypeError(f"load_state_dict: expected a mapping of names to arrays, a torch "
                        f"module or a file path, got {type(state).__name__}")
    expected = {key: (layer, store, name) for key, layer, store, name in walk(model.layers)}
    ignorable = {p + s for p in _batchnorm_prefixes(model.layers) for s in IGNORED_SUFFIXES}
    given = list(state.keys())
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in given if k not in expected and k not in ignorable]
    wrong, targets = [], []
    for key in given:
        if key not in expected:
            continue
        layer, store, name = expected[key]
        value = as_array(state[key], key)
        have = getattr(layer, store)[name]
        if tuple(value.shape) != tuple(have.shape):
            wrong.append((key, tuple(have.shape), tuple(value.shape)))
        elif value.dtype.kind not in "fiu":
            wrong.append((key, f"{tuple(have.shape)} of numbers", f"dtype {value.dtype}"))
        else:
            targets.append((layer, store, name, value))
    lines = _problems(missing if strict else [], unexpected if strict else [], wrong)
    if lines:
        raise StateDictError(f"load_state_dict: the state dict does not fit the model "
                             f"({len(expected)} arrays):\n  " + "\n  ".join(lines))
    for layer, store, name, value in targets:
        arrays = getattr(layer, store)
        arrays[name] = layer.backend.asarray(value, dtype=arrays[name].dtype)


def to_torch(model, dtype=None, device="cpu"):
    """An equivalent ``torch.nn.Module`` with the weights copied (see
    gpudl.interop_torch); ``dtype`` (torch.float64, say) converts the copy."""
    from .interop_torch import to_torch as build
    return build(model, dtype=dtype, device=device)


def from_torch(source, model=None, input_shape=None):
    """Load PyTorch weights into a gpudl model and return it.

    ``source``: a torch module or a state dict (arrays or tensors). With
    ``model``, its weights are replaced (keys as in the module docstring;
    errors list every missing, extra or mis-shaped key). Without, ``source``
    must be an ``nn.Sequential`` of supported layers (the modules to_torch
    makes included): a gpudl model of the same layers is built, with
    ``input_shape`` (per sample) if given, and loaded."""
    if model is not None:
        load_state_dict(model, source)
        return model
    if not (hasattr(source, "state_dict") and hasattr(source, "named_children")):
        raise TypeError("from_torch: a state dict carries no architecture; pass model= (a "
                        "gpudl model with the same layers) or a torch nn.Sequential")
    from .interop_torch import build_model
    model = build_model(source, input_shape)
    load_state_dict(model, source.state_dict())
    return model
