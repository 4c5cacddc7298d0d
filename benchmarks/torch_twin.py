"""The same network in PyTorch as a gpudl Sequential, with gpudl's weights copied in.

``twin(model, torch, device)`` walks ``model.layers`` (into Residual / Concat
containers: their ``chains`` in order, an empty chain the identity, merged by
``merge`` "add" or "concat") and returns a ``torch.nn.Module`` that computes
the same function, plus the pairs (name, gpudl layer, key, kind, torch tensor)
of every parameter and buffer, live on both sides, so a benchmark can compare
the two after a step.

Conventions are shared, so weights copy as they are: Conv2D "W" (out, in /
groups, kh, kw) and "b"; Dense "W" (out, in) and "b"; BatchNorm "gamma",
"beta", buffers "running_mean", "running_var", same momentum (0.1, PyTorch's
meaning) and eps. One difference is geometric: gpudl's ``padding="same"``
puts an odd total padding's extra row/column at the bottom/right (as
TensorFlow), which PyTorch's symmetric ``padding=`` cannot say; the pads come
from ``Conv2D.pads`` for the actual input size, and an asymmetric pair
becomes a ``ZeroPad2d`` before an unpadded convolution.
"""
from __future__ import annotations


def twin(model, torch, device="cpu", dtype=None):
    """(torch module on ``device``, [(name, gpudl_layer, key, "param"|"buffer", tensor)]).

    ``dtype`` (say torch.float64, for a reference) converts the copy."""
    if model.input_shape is None:
        raise ValueError("torch_twin: the gpudl model needs an input_shape")
    pairs = []
    modules, _ = _chain(model.layers, tuple(model.input_shape), "", torch, pairs)
    net = torch.nn.Sequential(*modules).to(device=device, dtype=dtype)
    # .to() may have replaced tensors: take the live ones from the module tree
    live = dict(net.named_parameters())
    live.update(dict(net.named_buffers()))
    pairs = [(name, layer, key, kind, live[tname]) for name, layer, key, kind, tname in pairs]
    return net, pairs


def _host(layer, store, key):
    return layer.backend.to_numpy(getattr(layer, store)[key])


def _copy(torch, dst, layer, store, key):
    import numpy as np
    src = np.ascontiguousarray(_host(layer, store, key))
    if tuple(dst.shape) != src.shape:
        raise ValueError(f"torch_twin: layer '{layer.name}' {key} has shape {src.shape}, "
                         f"PyTorch expects {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(torch.from_numpy(src))


def _module_classes(torch):
    nn = torch.nn

    class Merge(nn.Module):
        """Run every chain on the input; sum the results or concatenate on channels."""

        def __init__(self, chains, merge):
            super().__init__()
            self.chains = nn.ModuleList(chains)
            self.merge = merge

        def forward(self, x):
            outs = [c(x) for c in self.chains]  # an empty Sequential is the identity
            if self.merge == "add":
                y = outs[0]
                for o in outs[1:]:
                    y = y + o
                return y
            return torch.cat(outs, dim=1)

    class GlobalAvgPool(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    return Merge, GlobalAvgPool


def _chain(layers, shape, prefix, torch, pairs):
    """torch modules for a list of gpudl layers, and the output shape.

    ``prefix`` is the torch name prefix of this chain's modules ("" at the top,
    "3.chains.0." inside a container), for finding the tensors after .to()."""
    from gpudl.layers import (AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten,
                              GlobalAvgPool2D, MaxPool2D, ReLU, Sigmoid, Tanh)
    from gpudl.layers.branches import Branches
    nn = torch.nn
    Merge, GlobalAvgPool = _module_classes(torch)
    out = []

    def add_pair(layer, key, kind, tname):
        pairs.append((f"{layer.name}.{key}", layer, key, kind, tname))

    for layer in layers:
        here = f"{prefix}{len(out)}"
        if isinstance(layer, Branches):
            chains = []
            for j, chain in enumerate(layer.chains.values()):
                mods, _ = _chain(chain, shape, f"{here}.chains.{j}.", torch, pairs)
                chains.append(nn.Sequential(*mods))
            mod = Merge(chains, layer.merge)
        elif isinstance(layer, Conv2D):
            top, bottom, left, right = layer.pads(tuple(shape[1:]))
            conv_pad = (top, left) if (top, left) == (bottom, right) else (0, 0)
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                             stride=layer.stride, padding=conv_pad, dilation=layer.dilation,
                             groups=layer.groups, bias=layer.use_bias)
            _copy(torch, conv.weight, layer, "params", "W")
            if layer.use_bias:
                _copy(torch, conv.bias, layer, "params", "b")
            if conv_pad == (0, 0) and (top, bottom, left, right) != (0, 0, 0, 0):
                mod = nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
                cname = f"{here}.1"
            else:
                mod, cname = conv, here
            add_pair(layer, "W", "param", f"{cname}.weight")
            if layer.use_bias:
                add_pair(layer, "b", "param", f"{cname}.bias")
        elif isinstance(layer, Dense):
            mod = nn.Linear(layer.in_features, layer.out_features)
            _copy(torch, mod.weight, layer, "params", "W")
            _copy(torch, mod.bias, layer, "params", "b")
            add_pair(layer, "W", "param", f"{here}.weight")
            add_pair(layer, "b", "param", f"{here}.bias")
        elif isinstance(layer, BatchNorm):
            cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            mod = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum)
            for tkey, key, store in (("weight", "gamma", "params"), ("bias", "beta", "params"),
                                     ("running_mean", "running_mean", "buffers"),
                                     ("running_var", "running_var", "buffers")):
                _copy(torch, getattr(mod, tkey), layer, store, key)
                add_pair(layer, key, "param" if store == "params" else "buffer",
                         f"{here}.{tkey}")
        elif isinstance(layer, MaxPool2D):
            mod = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif isinstance(layer, AvgPool2D):
            mod = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                               count_include_pad=False)
        elif isinstance(layer, GlobalAvgPool2D):
            mod = GlobalAvgPool()
        elif isinstance(layer, Flatten):
            mod = nn.Flatten()
        elif isinstance(layer, ReLU):
            mod = nn.ReLU()
        elif isinstance(layer, Tanh):
            mod = nn.Tanh()
        elif isinstance(layer, Sigmoid):
            mod = nn.Sigmoid()
        elif isinstance(layer, Dropout) and layer.p == 0:
            mod = nn.Identity()
        else:
            raise NotImplementedError(f"torch_twin: no PyTorch twin for layer '{layer.name}' "
                                      f"({type(layer).__name__})")
        out.append(mod)
        shape = tuple(layer.output_shape(shape))
    return out, shape
