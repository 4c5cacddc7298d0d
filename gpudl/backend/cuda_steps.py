"""The CUDA backend's side of steps that never wait for the host: step
inputs, captured steps (capture.py), the batch gathered by the epoch's
permutation, and metrics accumulated on the device (kernels/steps.py)."""
from __future__ import annotations

import numpy as np

from ..errors import CaptureError, ShapeError
from ..kernels import reduce as rk
from ..kernels import steps as sk
from . import capture as cap


def _cdiv(a, b):
    return -(-a // b)


def step_input(be, producer):
    values = producer()
    single = not isinstance(values, tuple)
    vals = tuple(np.ascontiguousarray(v) for v in ((values,) if single else values))
    c = be._capture
    if c is None:
        dev = tuple(be._upload(v) for v in vals)
    else:
        dev = tuple(c.alloc(v.shape, v.dtype) for v in vals)
        c.add_input(producer, dev, vals)
    return dev[0] if single else dev


def capture(be, fn):
    """fn() recorded as a captured step (not executed: its first replay runs it)."""
    if be._capture is not None:
        raise CaptureError("capture: a step is already being captured on this backend")
    if be._cp is None:
        c = cap.SimCapture()
        be._capture = c
        try:
            fn()
        finally:
            be._capture = None
        return c
    stream = be.graph_stream()
    c = cap.CupyCapture(be._cp, stream)
    with stream:
        c.begin()
        be._capture = c
        try:
            fn()
        except BaseException:
            be._capture = None
            c.end(failed=True)
            raise
        be._capture = None
        c.end()
    return c


def take_rows_at(be, x, perm, offset, count):
    if x.ndim < 1 or perm.ndim != 1 or tuple(offset.shape) != (1,):
        raise ShapeError(f"take_rows_at: x needs a row axis, perm must be (P,) and offset (1,); "
                         f"got x {tuple(x.shape)}, perm {tuple(perm.shape)}, offset "
                         f"{tuple(offset.shape)}")
    if not 0 <= count <= perm.shape[0]:
        raise ShapeError(f"take_rows_at: count {count} is outside [0, {perm.shape[0]}]")
    x = be._c(x)
    n = x.shape[0]
    d = int(np.prod(x.shape[1:], dtype=np.int64))
    out = be.empty((count,) + tuple(x.shape[1:]), x.dtype)
    be._launch_flat(sk.take_rows_at, count * d, x.reshape(n, d), perm, offset,
                    out.reshape(count, d))
    return out


def metric_add(be, metrics, slot, values, factor=1.0, last=-1):
    values = be._c(values).reshape(-1)
    n = values.shape[0]
    total = be.empty((1,), values.dtype)
    if n == 0:
        total = be.zeros((1,), values.dtype)
    else:
        blocks = max(1, min(_cdiv(n, rk.SUM_THREADS), be._max_blocks))
        partial = be.empty((blocks,), values.dtype)
        be.launch(rk.sum_1d, blocks, rk.SUM_THREADS, values, partial)
        be.launch(rk.sum_1d, 1, rk.SUM_THREADS, partial, total)
    be.launch(sk.metric_add, 1, 1, metrics, int(slot), total, np.float64(factor), int(last))


def correct_flags(be, pred, target, kind, threshold=0.5):
    pred = be._c(pred)
    if kind == "argmax":
        out = be.empty((pred.shape[0],), np.float64)
        be._launch_flat(sk.correct_argmax, pred.shape[0], pred, be._c(target, np.int64), out)
        return out
    flat = pred.reshape(-1)
    out = be.empty((flat.shape[0],), np.float64)
    be._launch_flat(sk.correct_threshold, flat.shape[0], flat,
                    be._c(target, pred.dtype).reshape(-1), pred.dtype.type(threshold), out)
    return out
