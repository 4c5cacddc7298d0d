"""Central-difference gradient checks for layers and losses, in float64.

A layer of another dtype (float32 by default) is checked through a float64
copy: in float32 a difference quotient with eps = 1e-6 is mostly rounding
noise, which would be reported as a mismatch. The layer itself is left as it
was; the check is of its code, which is the same at either precision.
"""
from __future__ import annotations

import copy

import numpy as np


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences; f() reads x, which is perturbed in place."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        hi = f()
        flat[i] = orig - eps
        lo = f()
        flat[i] = orig
        gflat[i] = (hi - lo) / (2 * eps)
    return grad


def check_layer(layer, x: np.ndarray, seed: int = 0, eps: float = 1e-6,
                atol: float = 1e-7, rtol: float = 1e-5, training: bool = False) -> dict:
    """Compare a layer's backward with central differences of
    L = sum(forward(x) * g) for a fixed random g. Returns the max errors per
    input/param name; raises AssertionError on a mismatch. CPU backend only
    (the numeric side perturbs host arrays in place). A layer whose arrays
    are not all float64 is checked through a float64 copy (module docstring)."""
    be = layer.backend
    if be.name != "cpu":
        raise ValueError("check_layer runs on the CPU backend (it perturbs arrays in place)")
    if any(np.asarray(a).dtype != np.float64 for store in (layer.params, layer.buffers)
           for a in store.values()):
        layer = float64_copy(layer)
    x = np.array(x, dtype=np.float64)
    g = np.random.default_rng(seed).standard_normal(layer.forward(x, training).shape)

    def loss():
        return float(np.sum(layer.forward(x, training) * g))

    layer.forward(x, training)
    analytic = {"input": layer.backward(g)}
    analytic.update({k: v.copy() for k, v in layer.grads.items()})
    errors = {"input": _compare("input", analytic["input"], numeric_grad(loss, x, eps), atol, rtol)}
    for name, p in layer.params.items():
        if name in analytic:
            errors[name] = _compare(name, analytic[name], numeric_grad(loss, p, eps), atol, rtol)
    return errors


def float64_copy(layer):
    """A deep copy of layer (nested layers included) with float64 params,
    buffers and dtype."""
    twin = copy.deepcopy(layer)
    seen = set()

    def visit(obj):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
            return
        if isinstance(obj, dict):
            for item in obj.values():
                visit(item)
            return
        if not hasattr(obj, "params") or not hasattr(obj, "forward"):
            return
        if "dtype" in vars(obj):
            obj.dtype = np.dtype(np.float64)
        for store in (obj.params, obj.buffers):
            for k in list(store):
                store[k] = np.asarray(store[k], dtype=np.float64)
        # nested layers: Separable's halves, a container's chains
        for name, value in vars(obj).items():
            if name not in ("params", "grads", "buffers", "backend"):
                visit(value)

    visit(twin)
    return twin


def check_loss(loss, pred: np.ndarray, target: np.ndarray, eps: float = 1e-6,
               atol: float = 1e-7, rtol: float = 1e-5) -> float:
    """Compare loss.backward() with central differences of loss(pred, target)."""
    pred = np.array(pred, dtype=np.float64)
    loss(pred, target)
    analytic = loss.backward()
    return _compare("prediction", analytic, numeric_grad(lambda: loss(pred, target), pred, eps),
                    atol, rtol)


def _compare(name, analytic, numeric, atol, rtol) -> float:
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != numeric.shape:
        raise AssertionError(f"gradient of {name}: shape {analytic.shape} != {numeric.shape}")
    err = np.abs(analytic - numeric)
    bound = atol + rtol * np.abs(numeric)
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(f"gradient of {name} differs at {i}: analytic {analytic[i]:.10g}, "
                             f"numeric {numeric[i]:.10g}")
    return float(err.max()) if err.size else 0.0
