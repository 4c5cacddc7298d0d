"""Affine resampling of NCHW images: the per-pixel half of data augmentation.

Each sample n has six numbers theta[n] (drawn and composed on the host by
gpudl.augment: a shift, a horizontal flip and a rotation about the centre)
that map an output pixel (i, j) to the point of the input it shows:

    sy = theta[n, 0] * i + theta[n, 1] * j + theta[n, 2]
    sx = theta[n, 3] * i + theta[n, 4] * j + theta[n, 5]

The point is then read with bilinear interpolation between its four
neighbouring pixels, or with nearest (exact copies) when every theta is a
pure integer shift or flip; a neighbour outside the image counts as `fill`.
One thread per output element, grid-stride, in flat NCHW order, so
consecutive threads write consecutive addresses (and read nearby ones).

fill arrives typed like the images and every constant is cast to that
type, so a float32 kernel has no float64 instruction; theta is an array of
the same dtype. The NumPy twin is CPUBackend.augment_affine, in the same
order of operations.
"""
import math

from numba import cuda

from .conv import _unravel4


@cuda.jit(device=True, inline=True)
def _tap(x, n, ci, iy, ix, fill):
    """x[n, ci, iy, ix], or fill outside the image."""
    if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3]:
        return x[n, ci, iy, ix]
    return fill


@cuda.jit
def affine_sample(x, theta, out, fill, nearest):
    """out[n, c, i, j] = x[n, c] sampled at (sy, sx) as above; x and out (N, C, H, W)."""
    dt = out.dtype.type
    one = dt(1)
    half = dt(0.5)
    c = out.shape[1]
    h = out.shape[2]
    wd = out.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, out.size, stride):
        n, ci, i, j = _unravel4(e, c, h, wd)
        fi = dt(i)
        fj = dt(j)
        sy = theta[n, 0] * fi + theta[n, 1] * fj + theta[n, 2]
        sx = theta[n, 3] * fi + theta[n, 4] * fj + theta[n, 5]
        if nearest:
            iy = int(math.floor(sy + half))
            ix = int(math.floor(sx + half))
            out[n, ci, i, j] = _tap(x, n, ci, iy, ix, fill)
        else:
            # math.floor is float-typed on the device and int-typed in the
            # simulator: dt() of it is the same float on both
            fy = dt(math.floor(sy))
            fx = dt(math.floor(sx))
            y0 = int(fy)
            x0 = int(fx)
            wy = sy - fy
            wx = sx - fx
            y1 = y0 + 1
            x1 = x0 + 1
            top = (one - wx) * _tap(x, n, ci, y0, x0, fill) + wx * _tap(x, n, ci, y0, x1, fill)
            bot = (one - wx) * _tap(x, n, ci, y1, x0, fill) + wx * _tap(x, n, ci, y1, x1, fill)
            out[n, ci, i, j] = (one - wy) * top + wy * bot
