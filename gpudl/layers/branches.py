"""Layers made of layers: parallel branches on one input, merged by a sum or
by concatenation along channels.

    Residual(block)                      y = F(x) + x            (the notes' sum)
    Residual(block, shortcut=proj)       y = F(x) + P(x)         (P: a 1x1 convolution, say)
    Residual(block, merge="concat")      y = [F(x), x] on axis 1 (the notes' concatenation)
    Concat([b1, b2, b3])                 y = [b1(x), b2(x), b3(x)] (an inception-style block)

Backward follows the chain rule for a fork: each branch receives the output
gradient (the sum) or its own slice of it (the concatenation), and the input
gradient is the sum of what the branches send back, so the identity path
passes the gradient through unchanged.
"""
from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from ..errors import ShapeError
from .base import Layer

MERGES = ("add", "concat")


class ChildArrays(MutableMapping):
    """A live view of the children's params, grads or buffers under dotted
    keys "<branch>.<index>.<name>" ("block.0.W"), so optimizers, checkpoints
    and gradient checks treat a container like any other layer.

    A view rather than a copy: layers replace arrays (new gradients each
    step, batch norm's running averages), and reads and writes must reach
    the child that owns them."""

    def __init__(self, owner: "Branches", attr: str):
        self._owner, self._attr = owner, attr

    def _split(self, key):
        branch, sep, rest = key.partition(".")
        index, sep2, name = rest.partition(".")
        chain = self._owner.chains.get(branch)
        if not (sep and sep2 and chain is not None and index.isdigit() and int(index) < len(chain)):
            raise KeyError(key)
        store = getattr(chain[int(index)], self._attr)
        if name not in store:
            raise KeyError(key)
        return store, name

    def __getitem__(self, key):
        store, name = self._split(key)
        return store[name]

    def __setitem__(self, key, value):
        store, name = self._split(key)
        store[name] = value

    def __delitem__(self, key):
        raise TypeError(f"layer '{self._owner.name}': cannot delete {self._attr} entry {key!r}")

    def __iter__(self):
        for branch, chain in self._owner.chains.items():
            for i, layer in enumerate(chain):
                if self._attr == "grads" and not layer.trainable:
                    continue  # a frozen child's old gradients must not reach an optimizer
                for name in getattr(layer, self._attr):
                    yield f"{branch}.{i}.{name}"

    def __len__(self):
        return sum(1 for _ in self)


def _as_chain(what, owner, arg):
    """A layer, a list of layers, a Sequential or None (the identity) -> list of layers."""
    if what is None:
        return []
    if isinstance(what, Layer):
        return [what]
    layers = getattr(what, "layers", what)  # a Sequential
    if isinstance(layers, dict):  # a saved spec
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(f"{owner}: {arg} must be a Layer, a list of layers, a Sequential or None; "
                        f"got {type(what).__name__}") from None
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, dict):
            from .serialize import layer_from_spec
            layer = layer_from_spec(layer)
        if not isinstance(layer, Layer):
            raise TypeError(f"{owner}: item {i} of {arg} is {type(layer).__name__}, not a Layer")
        out.append(layer)
    return out


class Branches(Layer):
    """Runs every chain on the same input and merges the results."""

    def __init__(self, chains: dict, merge: str, name=None):
        super().__init__(name)
        if merge not in MERGES:
            raise ValueError(f"{type(self).__name__}: merge must be one of {MERGES}, got {merge!r}")
        self.merge = merge
        self.chains = chains
        self.params = ChildArrays(self, "params")
        self.grads = ChildArrays(self, "grads")
        self.buffers = ChildArrays(self, "buffers")
        self._sizes = None

    @property
    def no_decay(self):
        return frozenset(f"{b}.{i}.{n}" for b, chain in self.chains.items()
                         for i, layer in enumerate(chain) for n in layer.params
                         if n in layer.no_decay)

    @property
    def layers(self):
        return [layer for chain in self.chains.values() for layer in chain]

    # ---- shapes
    def _chain_shape(self, chain, shape):
        for layer in chain:
            shape = layer.output_shape(shape)
        return tuple(shape)

    def _merged(self, shapes: dict, batch: str = ""):
        """The merged shape, or an error that names every branch's shape."""
        items = list(shapes.items())
        first = items[0][1]
        if self.merge == "add":
            ok = all(s == first for _, s in items)
        else:
            ok = len(first) >= 1 and all(len(s) == len(first) and s[1:] == first[1:]
                                         for _, s in items)
        if not ok:
            listed = ", ".join(f"{b} {batch}{s}" for b, s in items)
            how = ("a sum needs equal shapes" if self.merge == "add" else
                   "a concatenation needs equal shapes apart from the channel axis")
            hint = (" (give a shortcut, such as a 1x1 convolution, that maps one to the other)"
                    if isinstance(self, Residual) and self.merge == "add" else "")
            raise ShapeError(f"layer '{self.name}' ({type(self).__name__}, merge={self.merge!r}) "
                             f"cannot merge {listed}: {how}{hint}")
        if self.merge == "add":
            return first
        return (sum(s[0] for _, s in items),) + tuple(first[1:])

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        return self._merged({b: self._chain_shape(c, shape) for b, c in self.chains.items()})

    def flops(self, input_shape):
        total = 0
        for chain in self.chains.values():
            shape = tuple(input_shape)
            for layer in chain:
                total += layer.flops(shape)
                shape = layer.output_shape(shape)
        if self.merge == "add":  # one addition per element per extra branch
            total += (len(self.chains) - 1) * int(np.prod(self.output_shape(input_shape)))
        return total

    def summary_rows(self, input_shape):
        """(label, output shape, params, flops) of every child, for Sequential.summary."""
        rows = []
        for branch, chain in self.chains.items():
            shape = tuple(input_shape)
            if not chain:
                rows.append((f"{branch}: identity", shape, 0, 0))
            for layer in chain:
                flops = layer.flops(shape)
                shape = layer.output_shape(shape)
                rows.append((f"{branch}: {layer.name} ({type(layer).__name__})", shape,
                             layer.num_params(), flops))
                if isinstance(layer, Branches):
                    rows += [("  " + r[0],) + r[1:] for r in layer.summary_rows(shape)]
        return rows

    # ---- computation
    def forward(self, x, training=False):
        outs = {}
        for branch, chain in self.chains.items():
            y = x
            for layer in chain:
                y = layer.forward(y, training=training)
            outs[branch] = y
        shapes = {b: tuple(y.shape[1:]) for b, y in outs.items()}
        self._merged(shapes, batch=f"(N={x.shape[0]}) ")
        values = list(outs.values())
        be = self.backend
        if self.merge == "add":
            y = values[0]
            for other in values[1:]:
                y = be.axpby(1.0, y, 1.0, other)
        else:
            self._sizes = [int(v.shape[1]) for v in values]
            y = be.concat_channels(values)
        self._out_shape = tuple(y.shape)
        return y

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        be = self.backend
        if self.merge == "add":
            pieces = [grad] * len(self.chains)
        else:
            pieces = be.split_channels(grad, self._need(self._sizes))
        dx = None
        for chain, g in zip(self.chains.values(), pieces):
            for layer in reversed(chain[1:]):
                g = layer.backward(g)
            if chain:
                g = chain[0].backward(g, need_input_grad=need_input_grad)
            if need_input_grad:
                dx = g if dx is None else be.axpby(1.0, dx, 1.0, g)
        return dx

    # ---- bookkeeping
    def to(self, backend):
        for layer in self.layers:
            layer.to(backend)
        self.backend = backend
        return self

    def num_params(self):
        return sum(layer.num_params() for layer in self.layers)

    def _chain_spec(self, chain):
        from .serialize import layer_spec
        return [layer_spec(layer) for layer in chain]


class Residual(Branches):
    """y = F(x) + x (``merge="add"``) or the channel concatenation [F(x), x]
    (``merge="concat"``). ``block`` is F: a layer, a list of layers or a
    Sequential. ``shortcut`` replaces the identity when the shapes differ
    (typically a 1x1 convolution with the block's stride, maybe batch norm)."""

    def __init__(self, block, merge="add", shortcut=None, *, name=None):
        block_layers = _as_chain(block, "Residual", "block")
        if not block_layers:
            raise ValueError("Residual: block must hold at least one layer")
        super().__init__({"block": block_layers,
                          "shortcut": _as_chain(shortcut, "Residual", "shortcut")}, merge, name)

    @property
    def block(self):
        return self.chains["block"]

    @property
    def shortcut(self):
        return self.chains["shortcut"] or None

    def get_config(self):
        return {"block": self._chain_spec(self.block), "merge": self.merge,
                "shortcut": self._chain_spec(self.chains["shortcut"]) or None, "name": self.name}


class Concat(Branches):
    """Parallel branches on one input, concatenated along channels (axis 1).
    Each branch is a layer, a list of layers, a Sequential, or None for the
    input itself."""

    def __init__(self, branches, *, name=None):
        branches = list(branches)
        if len(branches) < 2:
            raise ValueError(f"Concat: needs at least two branches, got {len(branches)}")
        super().__init__({f"b{i}": _as_chain(b, "Concat", f"branch {i}")
                          for i, b in enumerate(branches)}, "concat", name)

    def get_config(self):
        return {"branches": [self._chain_spec(c) for c in self.chains.values()], "name": self.name}
