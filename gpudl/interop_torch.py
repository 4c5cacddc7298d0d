"""gpudl layers to torch modules and back (gpudl.interop is the public face).

Most layers have a plain PyTorch twin. Some need a module of ours, because
PyTorch has no layer that computes the same thing:

    BatchNorm1d/2d     PyTorch's, without the num_batches_tracked counter gpudl
                       does not keep (so the state dicts have the same keys)
    SamePadConv2d      Conv2D(padding="same") with a stride above 1 or an even
                       (dilated) kernel: the total padding depends on the input
                       size and its odd extra goes to the bottom/right, which
                       nn.Conv2d's symmetric padding cannot say
    SeparableConv2d    SeparableConv2D: a depthwise and a pointwise nn.Conv2d
    Branches           Residual / Concat: one nn.Sequential per chain, summed or
                       concatenated on channels
    GlobalAvgPool2d, Heaviside, StepLinear
                       GlobalAvgPool2D ((N, C) out), Step, Perceptron

from_torch reads all of these back, and the plain modules a PyTorch user
writes (an AdaptiveAvgPool2d(1) followed by Flatten is a global average pool).
"""
from __future__ import annotations

import math

import numpy as np

_CLASSES = None


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("gpudl.interop needs PyTorch: pip install 'gpudl[torch]' "
                          "(its CPU build is enough)") from e
    return torch


def same_pads(size, k, s, d):
    """(before, after) padding of one axis for "same": ceil(size / s) outputs,
    the odd extra after (gpudl's, and TensorFlow's, convention)."""
    total = max((math.ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def classes():
    """The module classes of ours, made once torch is imported."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    class SamePadConv2d(nn.Conv2d):
        """nn.Conv2d with "same" padding computed from each input's size."""

        def forward(self, x):
            (t, b), (l, r) = (same_pads(n, k, s, d) for n, k, s, d in zip(
                x.shape[2:], self.kernel_size, self.stride, self.dilation))
            return self._conv_forward(F.pad(x, (l, r, t, b)), self.weight, self.bias)

    class SeparableConv2d(nn.Module):
        def __init__(self, depthwise, pointwise):
            super().__init__()
            self.depthwise, self.pointwise = depthwise, pointwise

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    class Branches(nn.Module):
        """Every chain on the same input; the results summed ("add") or
        concatenated on channels ("concat"). An empty chain is the identity."""

        def __init__(self, chains: dict, merge: str, kind: str):
            super().__init__()
            for name, chain in chains.items():
                self.add_module(name, chain)
            self.names, self.merge, self.kind = list(chains), merge, kind

        def forward(self, x):
            outs = [getattr(self, n)(x) for n in self.names]
            if self.merge == "add":
                y = outs[0]
                for o in outs[1:]:
                    y = y + o
                return y
            return torch.cat(outs, dim=1)

    class GlobalAvgPool2d(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    class Heaviside(nn.Module):
        """1 where x >= 0, else 0 (gpudl's Step)."""

        def forward(self, x):
            return (x >= 0).to(x.dtype)

    class StepLinear(nn.Linear):
        """A Perceptron: the step of a one-output Linear."""

        def forward(self, x):
            return (super().forward(x) >= 0).to(x.dtype)

    def no_count(base):
        class BatchNorm(base):
            """PyTorch's batch norm without num_batches_tracked, which gpudl does not
            keep (with a momentum PyTorch has no use for it either): a state dict
            that carries one still loads."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.register_buffer("num_batches_tracked", None)

            def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs):
                # PyTorch adds the counter to state dicts without version metadata
                super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                              missing_keys, unexpected_keys, error_msgs)
                key = prefix + "num_batches_tracked"
                while key in unexpected_keys:
                    unexpected_keys.remove(key)

        BatchNorm.__name__ = BatchNorm.__qualname__ = base.__name__
        return BatchNorm

    _CLASSES = {c.__name__: c for c in (SamePadConv2d, SeparableConv2d, Branches,
                                         GlobalAvgPool2d, Heaviside, StepLinear)}
    _CLASSES["BatchNorm1d"] = no_count(nn.BatchNorm1d)
    _CLASSES["BatchNorm2d"] = no_count(nn.BatchNorm2d)
    return _CLASSES


# ---------------------------------------------------------------- gpudl -> torch
def to_torch(model, dtype=None, device="cpu"):
    """An nn.Sequential that computes what ``model`` does, in the same mode
    (train or eval), with the weights copied; its state_dict() has exactly the
    keys of model.state_dict()."""
    torch = _torch()
    from .interop import state_dict
    if model.input_shape is None:
        raise ValueError("to_torch: the gpudl model needs an input_shape (batch norm's 1-D or "
                         "2-D form and the shapes follow from it)")
    net = torch.nn.Sequential(*_chain(model.layers, tuple(model.input_shape), torch))
    # convert first, then copy: float64 weights must not pass through float32
    net = net.to(device=device, dtype=dtype if dtype is not None else _torch_dtype(model, torch))
    live = dict(net.named_parameters())
    live.update(dict(net.named_buffers()))
    arrays = state_dict(model)
    if set(arrays) != set(live):  # a bug here, not the user's: the two walks disagree
        raise AssertionError(f"to_torch: keys differ: {sorted(set(arrays) ^ set(live))}")
    with torch.no_grad():
        for key, value in arrays.items():
            live[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    net.train(bool(getattr(model, "training", False)))
    return net


def _torch_dtype(model, torch):
    return torch.float64 if np.dtype(model.dtype) == np.float64 else torch.float32


def _conv(layer, shape, nn, C):
    """nn.Conv2d for a Conv2D; SamePadConv2d where "same" is not a fixed symmetric pad."""
    kw = dict(stride=layer.stride, dilation=layer.dilation, groups=layer.groups,
              bias=layer.use_bias)
    eff = [d * (k - 1) + 1 for k, d in zip(layer.kernel_size, layer.dilation)]
    if layer.padding == "same" and (layer.stride != (1, 1) or any(e % 2 == 0 for e in eff)):
        return C["SamePadConv2d"](layer.in_channels, layer.out_channels, layer.kernel_size, **kw)
    top, bottom, left, right = layer.pads(tuple(shape[1:]))
    return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                     padding=(top, left), **kw)


def _chain(layers, shape, torch):
    """torch modules for a list of gpudl layers (shape: the per-sample input)."""
    from .layers import (AvgPool2D, BatchNorm, Conv2D, Conv2DTranspose, Dense, Dropout,
                         Flatten, GlobalAvgPool2D, MaxPool2D, ReLU, Sigmoid, Softmax, Step, Tanh)
    from .layers.branches import Branches, Residual
    from .layers.perceptron import Perceptron
    from .layers.separable import SeparableConv2D
    nn, C = torch.nn, classes()
    simple = {ReLU: nn.ReLU, Tanh: nn.Tanh, Sigmoid: nn.Sigmoid, Flatten: nn.Flatten,
              GlobalAvgPool2D: C["GlobalAvgPool2d"], Step: C["Heaviside"]}
    out = []
    for layer in layers:
        kind = type(layer)
        if isinstance(layer, Branches):
            chains = {name: nn.Sequential(*_chain(chain, shape, torch))
                      for name, chain in layer.chains.items()}
            mod = C["Branches"](chains, layer.merge,
                                "residual" if isinstance(layer, Residual) else "concat")
        elif isinstance(layer, SeparableConv2D):
            mod = C["SeparableConv2d"](_conv(layer.depthwise, shape, nn, C),
                                       _conv(layer.pointwise, layer.depthwise.output_shape(shape),
                                             nn, C))
        elif isinstance(layer, Conv2D):
            mod = _conv(layer, shape, nn, C)
        elif isinstance(layer, Conv2DTranspose):
            mod = nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                     stride=layer.stride, padding=layer.padding,
                                     output_padding=layer.output_padding,
                                     dilation=layer.dilation, bias=layer.use_bias)
        elif isinstance(layer, Perceptron):
            mod = C["StepLinear"](layer.in_features, 1)
        elif isinstance(layer, Dense):
            mod = nn.Linear(layer.in_features, layer.out_features)
        elif isinstance(layer, BatchNorm):
            cls = C["BatchNorm2d"] if len(shape) == 3 else C["BatchNorm1d"]
            mod = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        elif isinstance(layer, MaxPool2D):
            mod = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif isinstance(layer, AvgPool2D):
            mod = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                               count_include_pad=False)
        elif isinstance(layer, Softmax):
            mod = nn.Softmax(dim=1)
        elif isinstance(layer, Dropout):
            mod = nn.Dropout(layer.p)
        elif kind in simple:
            mod = simple[kind]()
        else:
            raise NotImplementedError(f"to_torch: no PyTorch module for layer '{layer.name}' "
                                      f"({kind.__name__})")
        out.append(mod)
        shape = tuple(layer.output_shape(shape))
    return out


# ---------------------------------------------------------------- torch -> gpudl
def build_model(module, input_shape=None):
    """A gpudl Sequential with the layers of the torch nn.Sequential ``module``
    (weights not yet loaded: gpudl.interop.from_torch loads them)."""
    torch = _torch()
    from .model import Sequential
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"from_torch: can build a gpudl model from an nn.Sequential, got "
                        f"{type(module).__name__}; pass model= to load weights into one")
    params = list(module.parameters())
    dtype = np.float64 if params and params[0].dtype == torch.float64 else np.float32
    problems = []
    layers = _layers(module, "", dtype, torch, problems)
    if problems:
        raise NotImplementedError("from_torch: no gpudl layer for " + "; ".join(problems))
    return Sequential(layers, input_shape=input_shape)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _layers(seq, prefix, dtype, torch, problems):
    from . import layers as L
    from .layers.perceptron import Perceptron
    from .layers.separable import SeparableConv2D
    nn, C = torch.nn, classes()
    mods = list(seq.children())
    out = []
    for i, m in enumerate(mods):
        where = f"'{prefix}{i}' ({type(m).__name__})"
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        layer, why = None, None
        if isinstance(m, C["Branches"]):
            chains = {n: _layers(getattr(m, n), f"{prefix}{i}.{n}.", dtype, torch, problems)
                      for n in m.names}
            if m.kind == "residual":
                layer = L.Residual(chains["block"], merge=m.merge,
                                   shortcut=chains.get("shortcut") or None)
            else:
                layer = L.Concat([c or None for c in chains.values()])
        elif isinstance(m, C["SeparableConv2d"]):
            dw, pw = m.depthwise, m.pointwise
            layer = SeparableConv2D(dw.in_channels, pw.out_channels, dw.kernel_size, dw.stride,
                                    _conv_padding(dw, C), dw.dilation, bias=pw.bias is not None,
                                    dtype=dtype)
        elif isinstance(m, nn.Conv2d):
            why = _conv_unsupported(m)
            if why is None:
                layer = L.Conv2D(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                 _conv_padding(m, C), m.dilation, bias=m.bias is not None,
                                 groups=m.groups, dtype=dtype)
        elif isinstance(m, nn.ConvTranspose2d):
            if m.groups != 1 or m.padding_mode != "zeros":
                why = "groups > 1 or a padding_mode other than zeros"
            else:
                layer = L.Conv2DTranspose(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                          m.padding, m.output_padding, m.dilation,
                                          bias=m.bias is not None, dtype=dtype)
        elif isinstance(m, C["StepLinear"]):
            layer = Perceptron(m.in_features, dtype=dtype)
        elif isinstance(m, nn.Linear):
            if m.bias is None:
                why = "a Linear without bias (gpudl's Dense always has one)"
            else:
                layer = L.Dense(m.in_features, m.out_features, dtype=dtype)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not (m.affine and m.track_running_stats) or m.momentum is None:
                why = "batch norm without affine parameters, running statistics or a momentum"
            else:
                layer = L.BatchNorm(m.num_features, momentum=m.momentum, eps=m.eps, dtype=dtype)
        elif isinstance(m, nn.MaxPool2d):
            if m.ceil_mode or m.return_indices or _pair(m.dilation) != (1, 1):
                why = "ceil_mode, return_indices or dilation"
            else:
                layer = L.MaxPool2D(m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or m.divisor_override or (m.count_include_pad
                                                      and _pair(m.padding) != (0, 0)):
                why = "ceil_mode, divisor_override or count_include_pad with padding"
            else:
                layer = L.AvgPool2D(m.kernel_size, m.stride, m.padding)
        elif isinstance(m, C["GlobalAvgPool2d"]):
            layer = L.GlobalAvgPool2D()
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            # gpudl's global pool gives (N, C): the Flatten PyTorch needs after it
            # becomes a gpudl Flatten, which leaves (N, C) as it is
            if _pair(m.output_size) == (1, 1) and isinstance(nxt, nn.Flatten):
                layer = L.GlobalAvgPool2D()
            else:
                why = "only AdaptiveAvgPool2d(1) followed by Flatten (a global average pool)"
        elif isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                why = "only Flatten(start_dim=1, end_dim=-1)"
            else:
                layer = L.Flatten()
        elif isinstance(m, nn.Softmax):
            if m.dim not in (1, -1):
                why = f"Softmax over dim {m.dim} (gpudl's is over the classes of (N, C))"
            else:
                layer = L.Softmax()
        elif isinstance(m, nn.Dropout):
            layer = L.Dropout(m.p)
        elif isinstance(m, nn.Identity):
            layer = L.Dropout(0.0)
        else:
            simple = {nn.ReLU: L.ReLU, nn.Tanh: L.Tanh, nn.Sigmoid: L.Sigmoid,
                      C["Heaviside"]: L.Step}
            cls = simple.get(type(m))
            if cls is None:
                why = "no gpudl layer of this kind"
            else:
                layer = cls()
        if layer is None:
            problems.append(f"{where}: {why}")
        else:
            out.append(layer)
    return out


def _conv_unsupported(m):
    if m.padding_mode != "zeros":
        return f"padding_mode {m.padding_mode!r} (gpudl pads with zeros)"
    return None


def _conv_padding(m, C):
    if isinstance(m, C["SamePadConv2d"]) or m.padding == "same":
        return "same"  # PyTorch's own "same" also puts an odd extra at the bottom/right
    if m.padding == "valid":
        return "valid"
    return _pair(m.padding)
