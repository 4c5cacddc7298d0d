"""The Layer contract: forward and backward side by side, named params and grads."""
from __future__ import annotations

import numpy as np

from ..backend import get_backend
from ..errors import ShapeError

_init_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that initialises new layers' weights (and nothing else)."""
    global _init_rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative integer, got {seed!r}")
    _init_rng = np.random.default_rng(seed)


def init_rng(seed=None) -> np.random.Generator:
    return np.random.default_rng(seed) if seed is not None else _init_rng


class Layer:
    """A layer owns ``params`` and ``grads`` (same keys) and the arrays it caches
    in ``forward`` for ``backward``.

    ``forward(x, training=False)`` returns the output; ``backward(grad)`` takes
    d(loss)/d(output), fills ``grads`` and returns d(loss)/d(input). With
    ``need_input_grad=False`` a layer may skip that work and return None (the
    trainer asks this of the first layer, whose input is the data). Shapes
    handled by ``output_shape`` and ``flops`` are per sample (no batch axis).
    """

    #: parameter names that weight decay leaves alone
    no_decay = frozenset()
    #: the shape of the last forward's output: backward's gradient must have it
    _out_shape = None

    def __init__(self, name: str | None = None):
        self.params: dict = {}
        self.grads: dict = {}
        #: state saved with the model but not trained (batch norm's running statistics)
        self.buffers: dict = {}
        self.trainable = True
        self.name = name or type(self).__name__.lower()
        self.backend = get_backend()

    # ---- the contract
    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, grad, need_input_grad=True):
        raise NotImplementedError

    def output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    def flops(self, input_shape: tuple) -> int:
        """Floating-point work per sample, counted as the course notes count it."""
        return 0

    def get_config(self) -> dict:
        return {"name": self.name}

    def get_state(self) -> dict:
        """Scalars beyond params and buffers that a checkpoint must keep for an
        exact resume (dropout's call counter); JSON-able."""
        return {}

    def set_state(self, state: dict) -> None:
        pass

    # ---- shared helpers
    def _need(self, saved):
        """What forward saved for backward; an error if forward has not run."""
        if saved is None:
            raise RuntimeError(f"layer '{self.name}' ({type(self).__name__}): backward called "
                               f"before forward (call forward first)")
        return saved

    def _check_grad(self, grad):
        """Backward's first step, before any state changes (no gradient is half
        overwritten): grad must have the shape of the last forward's output."""
        expect = self._need(self._out_shape)
        got = tuple(getattr(grad, "shape", ()))
        if got != expect:
            raise ShapeError(f"layer '{self.name}' ({type(self).__name__}): gradient of shape "
                             f"{got} does not match its output {expect}")

    def num_params(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def to(self, backend) -> "Layer":
        """Move parameters (and gradients) to another backend."""
        if backend is self.backend:
            return self
        for store in (self.params, self.grads, self.buffers):
            for k, v in store.items():
                store[k] = backend.asarray(self.backend.to_numpy(v))
        self.backend = backend
        return self

    def _check_features(self, x, features: int, what: str = "features"):
        if x.ndim != 2 or x.shape[1] != features:
            raise ShapeError(
                f"layer '{self.name}' ({type(self).__name__}) expects input of shape "
                f"(batch, {features}) ({what}), got {tuple(x.shape)}")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"
