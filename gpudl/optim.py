"""Optimizers: one fused device kernel per parameter update (Backend.*_update).

Common to every optimizer (keyword arguments):

- ``lr``: a float, or a schedule (gpudl.schedules, or any callable
  ``f(step) -> lr``) evaluated at the optimizer steps taken so far;
  ``optimizer.lr`` reads the rate the next step will use.
- ``weight_decay``: L2, adds weight_decay * w to the gradient (AdamW: the
  decoupled form, w *= 1 - lr * weight_decay, instead).
- ``l1``: adds l1 * sign(w) to the gradient.
- Neither touches the params a layer lists in ``layer.no_decay`` (biases,
  batch norm's gamma and beta) unless ``decay_all=True``.
- Per-layer override: a layer (or a container's child) with an attribute
  ``weight_decay`` or ``l1`` that is not None uses that value instead of the
  optimizer's for its params (the innermost layer that sets one wins):
  ``model.layers[0].weight_decay = 0.0`` exempts the first layer.
- ``clip_norm``: gradient clipping by global norm, as
  torch.nn.utils.clip_grad_norm_: with N the L2 norm over every gradient the
  step updates, gradients are scaled by clip_norm / (N + 1e-6) when that is
  below 1. The scale goes into the update kernels, so clipping costs one
  sum-of-squares pass and one host read per step. ``last_grad_norm`` is N
  (before clipping) from the last step, None without clip_norm.

Gradient actually followed:  g = scale * grad + weight_decay * w + l1 * sign(w).

State is keyed "<layer index>.<param name>" ("3.block.0.W" inside a
container), one dict of named slots per key. ``state_dict()`` returns
(config, arrays) -- config a JSON-able dict with "class", "iterations" and
the hyper-parameters; arrays host NumPy arrays named "state.<key>.<slot>" (a
per-parameter step counter is a 0-d int64 array) -- and
``load_state_dict(config, arrays, backend)`` puts them back;
``from_config(config, arrays, backend)`` rebuilds an optimizer from them.
"""
from __future__ import annotations

import math

import numpy as np

from . import schedules
from .backend import get_backend
from .backend import hyper as hp


def _check_rate(owner, name, value, low=0.0, low_open=True, high=None):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value) and (value > low if low_open else value >= low) \
        and (high is None or value < high)
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bound += f" and < {high}"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _owners(layer, name):
    """The layer holding param ``name`` and, for a container's dotted key
    "<branch>.<index>.<rest>", the child holding <rest>, outermost first."""
    out = [layer]
    chains = getattr(layer, "chains", None)
    if isinstance(chains, dict):
        branch, _, rest = name.partition(".")
        index, _, leaf = rest.partition(".")
        chain = chains.get(branch)
        if chain is not None and index.isdigit() and int(index) < len(chain):
            out += _owners(chain[int(index)], leaf)
    return out


def _host(x):
    """A host NumPy copy of a NumPy or CuPy array."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.array(x)


def _entries(model):
    """(state key, layer, param name, param, grad) for every param a step updates."""
    out = []
    for i, layer in enumerate(model.layers):
        if not layer.trainable:
            continue
        for name, param in layer.params.items():
            grad = layer.grads.get(name)
            if grad is not None:
                out.append((f"{i}.{name}", layer, name, param, grad))
    return out


def trainable_grads(model):
    """(layer, grad) for every gradient the optimizer's next step would apply."""
    return [(e[1], e[4]) for e in _entries(model)]


class Optimizer:
    """Updates every trainable layer's params from its grads (see the module
    docstring for lr, weight_decay, l1, decay_all, clip_norm and state)."""

    def __init__(self, lr, *, weight_decay=0.0, l1=0.0, clip_norm=None, decay_all=False):
        owner = type(self).__name__
        self.lr = lr
        self.weight_decay = _check_rate(owner, "weight_decay", weight_decay, 0.0, low_open=False)
        self.l1 = _check_rate(owner, "l1", l1, 0.0, low_open=False)
        self.clip_norm = None if clip_norm is None else _check_rate(owner, "clip_norm", clip_norm)
        self.decay_all = bool(decay_all)
        self.state: dict = {}
        self.iterations = 0
        self._grad_norm = None

    # ---- the learning rate
    @property
    def lr(self) -> float:
        """The rate the next step uses: the float given, or schedule(iterations)."""
        if not callable(self._lr):
            return self._lr
        value = self._lr(self.iterations)
        if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value)
                and value >= 0):
            raise ValueError(f"{type(self).__name__}: the lr schedule {self._lr!r} gave "
                             f"{value!r} at step {self.iterations}; it must give a finite "
                             f"number >= 0")
        return float(value)

    @lr.setter
    def lr(self, value):
        self._lr = value if callable(value) else _check_rate(type(self).__name__, "lr", value)

    # ---- one step
    def step(self, model) -> None:
        """One update of every trainable param that has a grad.

        The host's share of the step (the learning rate, the step counts,
        every kernel's row of scalars: gpudl/backend/hyper.py) is one
        producer handed to Backend.step_input, so the rows reach the device
        in one copy and a captured step replays with fresh values; the
        launches read them from there. Clipping's factor is formed on the
        device (Backend.clip_scales): no host read."""
        entries = _entries(model)
        if not entries:
            self.lr  # noqa: B018 -- a bad schedule value is an error even with nothing to update
            self.iterations += 1
            return
        be = model.backend
        regs = [self._regularization(layer, name) for _, layer, name, _, _ in entries]
        for key, layer, _, param, _ in entries:
            if key not in self.state:
                self.state[key] = self._new_state(layer.backend, param)
        # one row array per parameter dtype; where[j] = (its array, its row)
        dtypes, where, counts = [], [], {}
        for e in entries:
            dt = np.dtype(e[3].dtype)
            if dt not in counts:
                dtypes.append(dt)
                counts[dt] = 0
            where.append((dtypes.index(dt), counts[dt]))
            counts[dt] += 1
        host = {}

        def produce():
            lr = self.lr
            rows = [[] for _ in dtypes]
            for (key, _, _, _, _), (wd, l1), (g, _) in zip(entries, regs, where):
                rows[g].append(self._hyper(self.state[key], lr, wd, l1))
            self.iterations += 1
            host["lr"] = lr
            return tuple(np.array(r, dtype=dt) for r, dt in zip(rows, dtypes))

        scales = {dt: 1.0 for dt in dtypes}
        if self.clip_norm is not None:
            self._grad_norm, scales = be.clip_scales([e[4] for e in entries], self.clip_norm)
        rows = be.step_input(produce)
        for (key, layer, name, param, grad), (wd, l1), (g, r) in zip(entries, regs, where):
            self._update(layer.backend, param, grad, self.state[key], host["lr"], wd, l1,
                         scales[np.dtype(param.dtype)], rows[g][r])

    @property
    def last_grad_norm(self):
        """The global gradient norm before clipping at the last step (None
        without clip_norm). On a GPU it is read back from the device here, on
        demand, not during the step."""
        norm = getattr(self, "_grad_norm", None)
        if norm is None or isinstance(norm, (int, float)):
            return norm
        return float(_host(norm)[0])

    @last_grad_norm.setter
    def last_grad_norm(self, value):
        self._grad_norm = value

    @staticmethod
    def global_norm(grads, backends) -> float:
        """sqrt of the sum of squares of every element of every gradient, as a float
        (one Backend.sum_squares call, so one host read, per backend)."""
        groups = {}
        for g, be in zip(grads, backends):
            groups.setdefault(id(be), (be, []))[1].append(g)
        return math.sqrt(sum(be.sum_squares(gs) for be, gs in groups.values()))

    def _hyper(self, slots, lr, weight_decay, l1) -> list:
        """This param's kernel row for the step (hyper.py); advances its own
        counters (Adam's step)."""
        raise NotImplementedError

    def _regularization(self, layer, name):
        """(weight_decay, l1) for param ``name`` of ``layer``: 0 for no-decay
        params unless decay_all; a layer's own weight_decay / l1 attributes win."""
        if not self.decay_all and name in layer.no_decay:
            return 0.0, 0.0
        wd, l1 = self.weight_decay, self.l1
        for owner in _owners(layer, name):
            own_wd = getattr(owner, "weight_decay", None)
            own_l1 = getattr(owner, "l1", None)
            if own_wd is not None:
                wd = _check_rate(f"layer '{owner.name}'", "weight_decay", own_wd, 0.0,
                                 low_open=False)
            if own_l1 is not None:
                l1 = _check_rate(f"layer '{owner.name}'", "l1", own_l1, 0.0, low_open=False)
        return wd, l1

    def _new_state(self, be, param) -> dict:
        """The state slots of a new parameter (zeros shaped like it)."""
        return {}

    def _update(self, be, param, grad, slots, lr, weight_decay, l1, scale, hyper):
        raise NotImplementedError

    # ---- configuration and state
    def get_config(self) -> dict:
        """The constructor's arguments, JSON-able (lr a float or a schedule's config)."""
        lr = self._lr
        if callable(lr):
            if not isinstance(lr, schedules.Schedule):
                raise ValueError(f"{type(self).__name__}: lr is a plain callable {lr!r}, which "
                                 f"cannot be saved; use a gpudl.schedules schedule")
            lr = lr.get_config()
        return {"lr": lr, "weight_decay": self.weight_decay, "l1": self.l1,
                "clip_norm": self.clip_norm, "decay_all": self.decay_all}

    def state_dict(self) -> tuple[dict, dict]:
        """(config, arrays): config = get_config() plus "class" and "iterations";
        arrays = {"state.<key>.<slot>": host NumPy array} (int counters as 0-d int64)."""
        config = {"class": type(self).__name__, "iterations": self.iterations,
                  **self.get_config()}
        arrays = {}
        for key, slots in self.state.items():
            for slot, value in slots.items():
                arrays[f"state.{key}.{slot}"] = (np.array(value, np.int64)
                                                 if isinstance(value, int) else _host(value))
        return config, arrays

    def load_state_dict(self, config: dict, arrays: dict, backend=None) -> None:
        """Restore the step count and slots saved by state_dict(), onto
        ``backend`` (default: the current one). Hyper-parameters stay this
        optimizer's own (use from_config to rebuild with the saved ones); the
        class must match. Nothing changes if anything is malformed."""
        name = type(self).__name__
        if not isinstance(config, dict) or config.get("class") != name:
            raise ValueError(f"{name}.load_state_dict: config is for "
                             f"{config.get('class') if isinstance(config, dict) else config!r}, "
                             f"not {name}")
        iterations = config.get("iterations")
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
                or iterations < 0:
            raise ValueError(f"{name}.load_state_dict: config['iterations'] must be an "
                             f"integer >= 0, got {iterations!r}")
        be = backend or get_backend()
        state = {}
        for full, value in arrays.items():
            key, _, slot = full.rpartition(".")
            if not full.startswith("state.") or "." not in key[len("state."):] or not slot:
                raise ValueError(f"{name}.load_state_dict: array name {full!r} is not "
                                 f"'state.<layer index>.<param>.<slot>'")
            value = np.asarray(value)
            state.setdefault(key[len("state."):], {})[slot] = (
                int(value) if value.ndim == 0 and value.dtype.kind in "iu" else be.asarray(value))
        self.state = state
        self.iterations = int(iterations)


class SGD(Optimizer):
    """Stochastic gradient descent, as in the notes, descending.

    v_t = momentum * v_{t-1} - lr * g_t,  w_{t+1} = w_t + v_t
    (the notes write "+ mu grad"; descent subtracts). With ``nesterov`` the
    momentum is applied before the gradient is taken, in the usual
    look-ahead form w_{t+1} = w_t + momentum * v_t - lr * g_t.
    With a constant lr, plain momentum follows the same trajectory as
    PyTorch's SGD(momentum=...): their buffer b_t = v_t / (-lr).
    Slot: "velocity" (with momentum)."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, *,
                 l1=0.0, clip_norm=None, decay_all=False):
        super().__init__(lr, weight_decay=weight_decay, l1=l1, clip_norm=clip_norm,
                         decay_all=decay_all)
        self.momentum = _check_rate("SGD", "momentum", momentum, 0.0, low_open=False, high=1.0)
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)

    def _new_state(self, be, param):
        return {"velocity": be.zeros(param.shape, param.dtype)} if self.momentum else {}

    def _hyper(self, slots, lr, weight_decay, l1):
        return hp.sgd(lr, self.momentum, weight_decay, l1)

    def _update(self, be, param, grad, slots, lr, weight_decay, l1, scale, hyper):
        be.sgd_update(param, grad, slots.get("velocity"), lr, self.momentum, self.nesterov,
                      weight_decay, l1, scale, hyper=hyper)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma and Ba), as torch.optim.Adam; t counts this param's steps:

        g = grad + weight_decay * w        (decoupled=False: L2 in the gradient)
        w = w - lr * weight_decay * w      (decoupled=True: AdamW, then no L2 term in g)
        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
        m_hat = m / (1 - beta1^t),     v_hat = v / (1 - beta2^t)
        w = w - lr m_hat / (sqrt(v_hat) + eps)

    Slots: "m", "v", "step"."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False, *, l1=0.0, clip_norm=None, decay_all=False):
        super().__init__(lr, weight_decay=weight_decay, l1=l1, clip_norm=clip_norm,
                         decay_all=decay_all)
        owner = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_rate(owner, "betas[0]", betas[0], 0.0, low_open=False, high=1.0),
                      _check_rate(owner, "betas[1]", betas[1], 0.0, low_open=False, high=1.0))
        self.eps = _check_rate(owner, "eps", eps)
        self.decoupled = bool(decoupled)

    def _new_state(self, be, param):
        return {"m": be.zeros(param.shape, param.dtype), "v": be.zeros(param.shape, param.dtype),
                "step": 0}

    def _hyper(self, slots, lr, weight_decay, l1):
        slots["step"] += 1
        return hp.adam(lr, self.betas[0], self.betas[1], self.eps, slots["step"], weight_decay,
                       self.decoupled, l1)

    def _update(self, be, param, grad, slots, lr, weight_decay, l1, scale, hyper):
        be.adam_update(param, grad, slots["m"], slots["v"], lr, self.betas[0], self.betas[1],
                       self.eps, slots["step"], weight_decay, self.decoupled, l1, scale,
                       hyper=hyper)

    def get_config(self):
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps,
                "decoupled": self.decoupled}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as torch.optim.AdamW:
    Adam(..., decoupled=True) with a default weight_decay of 0.01."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, *,
                 l1=0.0, clip_norm=None, decay_all=False):
        super().__init__(lr, betas, eps, weight_decay, decoupled=True, l1=l1,
                         clip_norm=clip_norm, decay_all=decay_all)

    def get_config(self):
        config = super().get_config()
        del config["decoupled"]
        return config


class RMSprop(Optimizer):
    """RMSprop, as torch.optim.RMSprop (not centered):

        g = grad + weight_decay * w
        s = alpha s + (1 - alpha) g^2
        b = momentum b + g / (sqrt(s) + eps),  w = w - lr b     (momentum > 0)
        w = w - lr g / (sqrt(s) + eps)                          (momentum = 0)

    Slots: "square_avg", and "buf" with momentum."""

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0, *,
                 l1=0.0, clip_norm=None, decay_all=False):
        super().__init__(lr, weight_decay=weight_decay, l1=l1, clip_norm=clip_norm,
                         decay_all=decay_all)
        self.alpha = _check_rate("RMSprop", "alpha", alpha, 0.0, low_open=False, high=1.0)
        self.eps = _check_rate("RMSprop", "eps", eps)
        self.momentum = _check_rate("RMSprop", "momentum", momentum, 0.0, low_open=False,
                                    high=1.0)

    def _new_state(self, be, param):
        slots = {"square_avg": be.zeros(param.shape, param.dtype)}
        if self.momentum:
            slots["buf"] = be.zeros(param.shape, param.dtype)
        return slots

    def _hyper(self, slots, lr, weight_decay, l1):
        return hp.rmsprop(lr, self.alpha, self.eps, self.momentum, weight_decay, l1)

    def _update(self, be, param, grad, slots, lr, weight_decay, l1, scale, hyper):
        be.rmsprop_update(param, grad, slots["square_avg"], slots.get("buf"), lr, self.alpha,
                          self.eps, self.momentum, weight_decay, l1, scale, hyper=hyper)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum}


class Adagrad(Optimizer):
    """Adagrad, as torch.optim.Adagrad (lr_decay 0, initial accumulator 0):

        g = grad + weight_decay * w
        a = a + g^2,   w = w - lr g / (sqrt(a) + eps)

    Slot: "sum_sq"."""

    def __init__(self, lr=0.01, eps=1e-10, weight_decay=0.0, *, l1=0.0, clip_norm=None,
                 decay_all=False):
        super().__init__(lr, weight_decay=weight_decay, l1=l1, clip_norm=clip_norm,
                         decay_all=decay_all)
        self.eps = _check_rate("Adagrad", "eps", eps)

    def _new_state(self, be, param):
        return {"sum_sq": be.zeros(param.shape, param.dtype)}

    def _hyper(self, slots, lr, weight_decay, l1):
        return hp.adagrad(lr, self.eps, weight_decay, l1)

    def _update(self, be, param, grad, slots, lr, weight_decay, l1, scale, hyper):
        be.adagrad_update(param, grad, slots["sum_sq"], lr, self.eps, weight_decay, l1, scale,
                          hyper=hyper)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


OPTIMIZERS = {cls.__name__: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad)}


def from_config(config: dict, arrays: dict | None = None, backend=None) -> Optimizer:
    """An optimizer rebuilt from state_dict()'s config (its class and
    hyper-parameters, the step count), and its slots too when ``arrays`` are given."""
    if not isinstance(config, dict) or config.get("class") not in OPTIMIZERS:
        raise ValueError(f"optim.from_config: expected a dict whose 'class' is one of "
                         f"{sorted(OPTIMIZERS)}, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k not in ("class", "iterations")}
    if isinstance(kwargs.get("lr"), dict):
        kwargs["lr"] = schedules.from_config(kwargs["lr"])
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    opt = OPTIMIZERS[config["class"]](**kwargs)
    opt.load_state_dict({"iterations": 0, **config}, arrays or {}, backend)
    return opt
