"""Channel concatenation and split launches for the CUDA backend: shape checks
(Backend._concat_shapes, _split_sizes), then one launch of gpudl.kernels.concat
per part. Functions take the backend (its _launch_flat, empty, _c).

Every array is handled as C-contiguous (N, C * S), S = H * W (1 for 2-D), so
channel block [c0, c0 + C_i) of an image is columns [c0 * S, (c0 + C_i) * S).
"""
from __future__ import annotations

import numpy as np

from ..kernels import concat as ck


def _flat_channels(x):
    """(N, C, ...) C-contiguous -> the (N, C * S) view the kernels take."""
    n = x.shape[0]
    return x.reshape(n, int(np.prod(x.shape[1:], dtype=np.int64)))


def concat_channels(be, xs):
    shapes = be._concat_shapes(xs)
    dtype = np.result_type(*[x.dtype for x in xs])
    parts = [be._c(x, dtype) for x in xs]
    rest = shapes[0][2:]
    s = int(np.prod(rest, dtype=np.int64))
    out = be.empty((shapes[0][0], sum(sh[1] for sh in shapes)) + rest, dtype)
    whole = _flat_channels(out)
    c0 = 0
    for part, shape in zip(parts, shapes):
        be._launch_flat(ck.concat_channels, part.size, _flat_channels(part), whole, c0 * s)
        c0 += shape[1]
    return out


def split_channels(be, g, sizes):
    sizes = be._split_sizes(g, sizes)
    g = be._c(g)
    n, rest = g.shape[0], tuple(g.shape[2:])
    s = int(np.prod(rest, dtype=np.int64))
    whole = _flat_channels(g)
    pieces = []
    c0 = 0
    for size in sizes:
        piece = be.empty((n, size) + rest, g.dtype)
        be._launch_flat(ck.split_channels, piece.size, whole, _flat_channels(piece), c0 * s)
        pieces.append(piece)
        c0 += size
    return pieces
