"""2-D max and mean pooling (NCHW), forward and backward, one version each.

Layout: x (N, C, H, W); y, dy and argmax (N, C, OH, OW). Geometry arguments:
kernel (kh, kw), stride (sh, sw) and the top/left padding, as in
kernels/conv.py with dilation 1: output (oy, ox) covers input rows
oy*sh - top .. oy*sh - top + kh - 1 (and likewise columns), and the rows and
columns outside the image are skipped, never read.

argmax holds the flat in-plane index ih * W + iw of each window's maximum.
Both backward passes are gathers (one thread per input element, looping over
the windows that contain it), so no element is written twice, no atomics are
needed, and the result does not depend on thread timing.
"""
from numba import cuda

from .conv import _source, _unravel4


@cuda.jit(device=True, inline=True)
def _span(o, s, pad, k, size):
    """[lo, hi): the in-image part of window o along one axis."""
    first = o * s - pad
    return max(first, 0), min(first + k, size)


@cuda.jit
def max_pool2d_fwd(x, y, argmax, kh, kw, sh, sw, top, left):
    c = x.shape[1]
    h = x.shape[2]
    wd = x.shape[3]
    oh = y.shape[2]
    ow = y.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, y.size, stride):
        n, ci, oy, ox = _unravel4(e, c, oh, ow)
        i0, i1 = _span(oy, sh, top, kh, h)
        j0, j1 = _span(ox, sw, left, kw, wd)
        # Seeded with the window's first in-image element rather than -inf,
        # so a window of -inf still names an element, and the strict > keeps
        # the first maximum in row-major order, as the CPU's argmax does. The
        # caller guarantees pads < kernel, so the window is never empty.
        best = x[n, ci, i0, j0]
        idx = i0 * wd + j0
        for ih in range(i0, i1):
            for iw in range(j0, j1):
                v = x[n, ci, ih, iw]
                # A NaN wins once and then holds: np.argmax's choice too.
                if v > best or (v != v and best == best):
                    best = v
                    idx = ih * wd + iw
        y[n, ci, oy, ox] = best
        argmax[n, ci, oy, ox] = idx


@cuda.jit
def max_pool2d_bwd(dy, argmax, dx, kh, kw, sh, sw, top, left):
    """dx[n, c, ih, iw] = sum of dy over the windows whose argmax is (ih, iw)."""
    c = dx.shape[1]
    h = dx.shape[2]
    wd = dx.shape[3]
    oh = dy.shape[2]
    ow = dy.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, dx.size, stride):
        n, ci, ih, iw = _unravel4(e, c, h, wd)
        me = ih * wd + iw
        acc = dx.dtype.type(0)
        # Each kernel cell i maps to at most one output row, and distinct
        # cells to distinct rows, so no window is counted twice.
        for i in range(kh):
            oy = _source(ih + top - i, sh, oh)
            if oy >= 0:
                for j in range(kw):
                    ox = _source(iw + left - j, sw, ow)
                    if ox >= 0 and argmax[n, ci, oy, ox] == me:
                        acc += dy[n, ci, oy, ox]
        dx[n, ci, ih, iw] = acc


@cuda.jit
def avg_pool2d_fwd(x, y, kh, kw, sh, sw, top, left):
    c = x.shape[1]
    h = x.shape[2]
    wd = x.shape[3]
    oh = y.shape[2]
    ow = y.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, y.size, stride):
        n, ci, oy, ox = _unravel4(e, c, oh, ow)
        i0, i1 = _span(oy, sh, top, kh, h)
        j0, j1 = _span(ox, sw, left, kw, wd)
        acc = y.dtype.type(0)
        for ih in range(i0, i1):
            for iw in range(j0, j1):
                acc += x[n, ci, ih, iw]
        # The count as y's type: an int64 divisor would pull float32 to f64.
        y[n, ci, oy, ox] = acc / y.dtype.type((i1 - i0) * (j1 - j0))


@cuda.jit
def avg_pool2d_bwd(dy, dx, kh, kw, sh, sw, top, left):
    """dx[n, c, ih, iw] = sum of dy / count over the windows containing (ih, iw)."""
    c = dx.shape[1]
    h = dx.shape[2]
    wd = dx.shape[3]
    oh = dy.shape[2]
    ow = dy.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, dx.size, stride):
        n, ci, ih, iw = _unravel4(e, c, h, wd)
        acc = dx.dtype.type(0)
        for i in range(kh):
            oy = _source(ih + top - i, sh, oh)
            if oy >= 0:
                i0, i1 = _span(oy, sh, top, kh, h)
                for j in range(kw):
                    ox = _source(iw + left - j, sw, ow)
                    if ox >= 0:
                        j0, j1 = _span(ox, sw, left, kw, wd)
                        # Divide per term, as the CPU does, rather than
                        # share one reciprocal: same rounding per window.
                        acc += dy[n, ci, oy, ox] / dx.dtype.type((i1 - i0) * (j1 - j0))
        dx[n, ci, ih, iw] = acc
