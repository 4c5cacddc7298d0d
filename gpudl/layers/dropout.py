"""Dropout (inverted): in training each unit is zeroed with probability p and
the survivors scaled by 1 / (1 - p), so inference needs no rescaling and is
the identity. The mask of a forward pass is kept for its backward.

Masks come from a counter-based generator keyed by (seed, call count): the
same seed gives the same masks on every backend, and a run is reproducible.
"""
from __future__ import annotations

import numpy as np

from ..backend.dropout_key import key_and_threshold
from .base import Layer, init_rng


class Dropout(Layer):
    def __init__(self, p=0.5, *, seed=None, name=None):
        super().__init__(name)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        # Drawn from the init generator, so gpudl.manual_seed fixes it too.
        self.seed = int(seed) if seed is not None else int(init_rng().integers(2**63))
        self.calls = 0
        self._mask = None

    def forward(self, x, training=False):
        self._out_shape = tuple(x.shape)
        if not training or self.p == 0.0:
            self._mask = None
            return x
        be = self.backend
        # the draw's key enters as a step input: a captured step draws anew each replay
        keys = be.step_input(self._next_keys)
        self._mask = be.dropout_mask_keyed(x.shape, self.p, keys, x.dtype)
        return be.multiply(x, self._mask)

    def _next_keys(self):
        """[key, threshold] of this call's draw (uint64), and the count moves on."""
        key, threshold = key_and_threshold(self.p, self.seed, self.calls)
        self.calls += 1
        return np.array([key, threshold], dtype=np.uint64)

    def backward(self, grad, need_input_grad=True):
        self._check_grad(grad)
        return grad if self._mask is None else self.backend.multiply(grad, self._mask)

    def flops(self, input_shape):
        n = 1
        for d in input_shape:
            n *= d
        return n

    def get_state(self):
        return {"calls": self.calls}

    def set_state(self, state):
        self.calls = int(state["calls"])

    def get_config(self):
        return {"p": self.p, "seed": self.seed, "name": self.name}
